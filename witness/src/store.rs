//! Durable Raft storage for a witness: the log, the vote and the state
//! machine in one redb file, so an epoch once granted is never granted
//! again after a restart.
//!
//! Every write is a redb transaction committed (fsynced) before openraft is
//! told it is done. The state machine is small (the witness state and the
//! audit trail) and is persisted whole on every apply; snapshots are that
//! same JSON document.

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, LogState, RaftLogReader, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::model::{Command, WitnessState};

/// What applying a command returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyOutcome {
    pub result: Result<(), String>,
    pub epoch: u64,
}

openraft::declare_raft_types!(
    /// The witness group's openraft types.
    pub TypeConfig:
        D = Command,
        R = ApplyOutcome,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const K_VOTE: &str = "vote";
const K_COMMITTED: &str = "committed";
const K_PURGED: &str = "last_purged";
const K_SM: &str = "state_machine";
const K_SNAPSHOT: &str = "snapshot";

fn rerr(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read(&e).into()
}
fn werr(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write(&e).into()
}

/// Opens (or creates) the witness database.
pub fn open(path: &Path) -> Result<Arc<Database>, redb::Error> {
    let db = Database::create(path)?;
    let tx = db.begin_write()?;
    {
        tx.open_table(LOG)?;
        tx.open_table(META)?;
    }
    tx.commit()?;
    Ok(Arc::new(db))
}

fn get_meta<T: for<'de> Deserialize<'de>>(
    db: &Database,
    key: &str,
) -> Result<Option<T>, StorageError<NodeId>> {
    let tx = db.begin_read().map_err(rerr)?;
    let t = tx.open_table(META).map_err(rerr)?;
    match t.get(key).map_err(rerr)? {
        None => Ok(None),
        Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(rerr)?)),
    }
}

fn put_meta<T: Serialize>(db: &Database, key: &str, value: &T) -> Result<(), StorageError<NodeId>> {
    let bytes = serde_json::to_vec(value).map_err(werr)?;
    let tx = db.begin_write().map_err(werr)?;
    {
        let mut t = tx.open_table(META).map_err(werr)?;
        t.insert(key, bytes.as_slice()).map_err(werr)?;
    }
    tx.commit().map_err(werr)
}

/// The Raft log and vote.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    pub fn new(db: Arc<Database>) -> LogStore {
        LogStore { db }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let tx = self.db.begin_read().map_err(rerr)?;
        let t = tx.open_table(LOG).map_err(rerr)?;
        let mut out = vec![];
        for item in t.range(range).map_err(rerr)? {
            let (_, v) = item.map_err(rerr)?;
            out.push(serde_json::from_slice(v.value()).map_err(rerr)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged: Option<LogId<NodeId>> = get_meta(&self.db, K_PURGED)?;
        let tx = self.db.begin_read().map_err(rerr)?;
        let t = tx.open_table(LOG).map_err(rerr)?;
        let last = match t.last().map_err(rerr)? {
            Some((_, v)) => {
                let e: Entry<TypeConfig> = serde_json::from_slice(v.value()).map_err(rerr)?;
                Some(e.log_id)
            }
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        put_meta(&self.db, K_VOTE, vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        get_meta(&self.db, K_VOTE)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        put_meta(&self.db, K_COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(get_meta::<Option<LogId<NodeId>>>(&self.db, K_COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let tx = self.db.begin_write().map_err(werr)?;
        {
            let mut t = tx.open_table(LOG).map_err(werr)?;
            for e in entries {
                let bytes = serde_json::to_vec(&e).map_err(werr)?;
                t.insert(e.log_id.index, bytes.as_slice()).map_err(werr)?;
            }
        }
        tx.commit().map_err(werr)?;
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let tx = self.db.begin_write().map_err(werr)?;
        {
            let mut t = tx.open_table(LOG).map_err(werr)?;
            t.retain_in(log_id.index.., |_, _| false).map_err(werr)?;
        }
        tx.commit().map_err(werr)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        put_meta(&self.db, K_PURGED, &log_id)?;
        let tx = self.db.begin_write().map_err(werr)?;
        {
            let mut t = tx.open_table(LOG).map_err(werr)?;
            t.retain_in(..=log_id.index, |_, _| false).map_err(werr)?;
        }
        tx.commit().map_err(werr)
    }
}

/// The applied state, persisted whole.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SmData {
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, BasicNode>,
    pub state: WitnessState,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

/// The witness state machine; publishes every applied state on a watch.
pub struct StateMachine {
    db: Arc<Database>,
    data: SmData,
    published: watch::Sender<WitnessState>,
    snapshot_seq: u64,
}

impl StateMachine {
    pub fn new(
        db: Arc<Database>,
    ) -> Result<(StateMachine, watch::Receiver<WitnessState>), StorageError<NodeId>> {
        let data: SmData = get_meta(&db, K_SM)?.unwrap_or_default();
        let (tx, rx) = watch::channel(data.state.clone());
        Ok((
            StateMachine {
                db,
                data,
                published: tx,
                snapshot_seq: 0,
            },
            rx,
        ))
    }

    fn persist(&self) -> Result<(), StorageError<NodeId>> {
        put_meta(&self.db, K_SM, &self.data)?;
        self.published.send_replace(self.data.state.clone());
        Ok(())
    }
}

/// Builds snapshots from a copy of the applied state.
pub struct Builder {
    db: Arc<Database>,
    data: SmData,
    seq: u64,
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let bytes = serde_json::to_vec(&self.data).map_err(rerr)?;
        let meta = SnapshotMeta {
            last_log_id: self.data.last_applied,
            last_membership: self.data.membership.clone(),
            snapshot_id: format!(
                "{}-{}",
                self.data.last_applied.map_or(0, |l| l.index),
                self.seq
            ),
        };
        put_meta(
            &self.db,
            K_SNAPSHOT,
            &StoredSnapshot {
                meta: meta.clone(),
                data: bytes.clone(),
            },
        )?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Builder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>>
    {
        Ok((self.data.last_applied, self.data.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ApplyOutcome>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut out = vec![];
        for e in entries {
            self.data.last_applied = Some(e.log_id);
            let result = match e.payload {
                EntryPayload::Blank => Ok(()),
                EntryPayload::Normal(cmd) => self.data.state.apply(&cmd),
                EntryPayload::Membership(m) => {
                    self.data.membership = StoredMembership::new(Some(e.log_id), m);
                    Ok(())
                }
            };
            out.push(ApplyOutcome {
                result,
                epoch: self.data.state.cluster.epoch,
            });
        }
        self.persist()?;
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_seq += 1;
        Builder {
            db: self.db.clone(),
            data: self.data.clone(),
            seq: self.snapshot_seq,
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(vec![])))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = snapshot.into_inner();
        let data: SmData = serde_json::from_slice(&bytes).map_err(rerr)?;
        self.data = SmData {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            state: data.state,
        };
        put_meta(
            &self.db,
            K_SNAPSHOT,
            &StoredSnapshot {
                meta: meta.clone(),
                data: bytes,
            },
        )?;
        self.persist()
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let s: Option<StoredSnapshot> = get_meta(&self.db, K_SNAPSHOT)?;
        Ok(s.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::testing::{StoreBuilder, Suite};

    struct Build;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Build {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<NodeId>> {
            let dir = tempfile::tempdir().map_err(werr)?;
            let db = open(&dir.path().join("w.redb")).map_err(werr)?;
            let (sm, _) = StateMachine::new(db.clone())?;
            Ok((dir, LogStore::new(db), sm))
        }
    }

    /// openraft's own storage conformance suite.
    #[test]
    fn openraft_storage_suite() {
        Suite::test_all(Build).unwrap();
    }

    /// What was applied and voted survives reopening the file.
    #[tokio::test]
    async fn state_and_vote_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.redb");
        {
            let db = open(&path).unwrap();
            let mut log = LogStore::new(db.clone());
            log.save_vote(&Vote::new(7, 2)).await.unwrap();
            let (mut sm, _) = StateMachine::new(db).unwrap();
            let entries = [
                Command::Init {
                    primary: "a".into(),
                    datacenters: vec!["a".into(), "b".into()],
                    wall_ms: 1,
                },
                Command::Failover {
                    from_epoch: 1,
                    to: "b".into(),
                    wall_ms: 2,
                    forced: false,
                    evidence: "test".into(),
                },
            ]
            .into_iter()
            .enumerate()
            .map(|(i, c)| Entry {
                log_id: LogId::new(openraft::CommittedLeaderId::new(7, 2), i as u64 + 1),
                payload: EntryPayload::Normal(c),
            });
            let out = sm.apply(entries).await.unwrap();
            assert_eq!(out[1].epoch, 2);
        }
        let db = open(&path).unwrap();
        let mut log = LogStore::new(db.clone());
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(7, 2)));
        let (mut sm, rx) = StateMachine::new(db).unwrap();
        assert_eq!(rx.borrow().cluster.epoch, 2);
        assert_eq!(rx.borrow().cluster.primary, "b");
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(2));
        // Replaying the same failover after the restart is refused.
        let replay = Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(8, 1), 3),
            payload: EntryPayload::Normal(Command::Failover {
                from_epoch: 1,
                to: "b".into(),
                wall_ms: 3,
                forced: false,
                evidence: "replayed".into(),
            }),
        };
        let out = sm.apply([replay]).await.unwrap();
        assert!(out[0].result.is_err());
        assert_eq!(out[0].epoch, 2);
    }
}

//! The change log: every write the front door passed to the primary's
//! Milvus and Milvus acknowledged, kept on disk (redb, fsync'd) until the
//! standby has applied it.
//!
//! A write (an insert or upsert's rows, a delete's keys) is written in two
//! steps so that its cost overlaps the Milvus call instead of adding to
//! it: [`ChangeLog::prepare`] writes and flushes the request while Milvus
//! applies it, and [`ChangeLog::acknowledge`] (a small transaction, not
//! flushed: the next flush carries it) records Milvus's answer: in async
//! mode just after the client got it, in sync mode before (the standby
//! must apply it first). A write Milvus refused is
//! [`ChangeLog::abandon`]ed. The source reads only up to the first write
//! still waiting for its answer, so it sees acknowledged writes only, in
//! order. A write prepared and never answered (the agent died in between)
//! is dropped when the log is opened, and a scan pass asked for: Milvus
//! may have applied it.
//!
//! Positions are dense and increasing. The replication source reads after
//! the position the standby last acknowledged and [`ChangeLog::trim`]s on
//! every acknowledgement, so the log holds exactly the writes acknowledged
//! to clients and not yet applied on the standby: its oldest entry's
//! age is the replication lag, whatever the collections' size.
//!
//! The log is bounded (`frontdoor.change_log_max_mb`). A write that
//! would pass the bound is not logged: the log is cleared and marked
//! *overflowed*, and the source runs a full scan pass, which finds every
//! row the standby lacks (the scan capture is exact on its own, only
//! slower).

use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, Result};
use prost::Message;
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::watch;

use dr_proto::pb::ChangeLogEntry;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Position -> what Milvus answered (`acked_ms`, and the keys it assigned
/// to an auto-id insert), as a `ChangeLogEntry` holding only those.
const ACKS: TableDefinition<u64, &[u8]> = TableDefinition::new("acks");

/// What the log holds now.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Depth {
    pub entries: u64,
    pub bytes: u64,
    /// `acked_ms` of the oldest entry (0 when empty).
    pub oldest_ms: i64,
}

struct Inner {
    next: u64,
    depth: Depth,
    /// Prepared, not yet acknowledged nor abandoned: position -> when
    /// (ms since the Unix epoch).
    pending: std::collections::BTreeMap<u64, i64>,
}

impl Inner {
    /// The newest position up to which every write is answered: what the
    /// source may read.
    fn ready(&self) -> u64 {
        self.pending
            .first_key_value()
            .map_or(self.next - 1, |(p, _)| p - 1)
    }
}

pub struct ChangeLog {
    db: Database,
    inner: Mutex<Inner>,
    max_bytes: u64,
    /// The newest position up to which every write is acknowledged (or
    /// abandoned).
    appended: watch::Sender<u64>,
    /// Every position up to this one is applied on the standby (trimmed).
    applied: watch::Sender<u64>,
    /// Set when a write was not logged (bound reached, or a write the door
    /// could not describe), or a drain asked: a scan pass must run.
    rescan: watch::Sender<bool>,
    /// Why the pending scan pass was asked for (the first reason since the
    /// last pass), for the log line that starts it.
    rescan_why: Mutex<Option<String>>,
}

/// Why a scan pass is asked for when the log reaches its bound.
pub const OVERFLOW: &str =
    "the change log reached frontdoor.change_log_max_mb and was cleared (the standby was away or slower than the writes)";

/// Where a write went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    At(u64),
    /// Not logged: the bound was reached; a scan pass will find it.
    Overflowed,
}

impl ChangeLog {
    pub fn open(path: &Path, max_bytes: u64) -> Result<ChangeLog> {
        // redb caches up to 1 GiB of pages by default; an entry is written
        // once and read once soon after, so the OS's page cache serves it.
        let db = redb::Builder::new()
            .set_cache_size(16 << 20)
            .create(path)
            .with_context(|| {
                format!(
                "open the front door's change log {}; if it is corrupt, stop the agent, move it \
                 away and start again (a full scan pass then finds what it held)",
                path.display()
            )
            })?;
        // Writes prepared and never answered: the agent stopped while
        // Milvus had them. Dropped; a scan pass settles whether Milvus
        // applied them.
        let txn = db.begin_write()?;
        let unanswered = {
            let mut log = txn.open_table(LOG)?;
            let acks = txn.open_table(ACKS)?;
            let mut unanswered = Vec::new();
            for e in log.iter()? {
                let k = e?.0.value();
                if acks.get(k)?.is_none() {
                    unanswered.push(k);
                }
            }
            for k in &unanswered {
                log.remove(k)?;
            }
            let mut meta = txn.open_table(META)?;
            if !unanswered.is_empty() {
                meta.insert("rescan", 1)?;
            }
            unanswered.len()
        };
        txn.commit()?;
        if unanswered > 0 {
            tracing::warn!(
                writes = unanswered,
                "front door: writes were passed to Milvus and not answered before the agent stopped; a scan pass replicates whichever Milvus applied"
            );
        }
        let (next, applied, rescan, depth) = {
            let r = db.begin_read()?;
            let meta = r.open_table(META)?;
            let log = r.open_table(LOG)?;
            let get = |k: &str| -> Result<Option<u64>> { Ok(meta.get(k)?.map(|v| v.value())) };
            let mut depth = Depth::default();
            let mut last = None;
            for e in log.iter()? {
                let (k, v) = e?;
                depth.entries += 1;
                depth.bytes += v.value().len() as u64;
                last = Some(k.value());
            }
            depth.oldest_ms = oldest_acked_ms(&r.open_table(ACKS)?)?;
            let applied = get("applied")?.unwrap_or(0);
            let next = get("next")?
                .unwrap_or(1)
                .max(last.map_or(0, |l| l + 1))
                .max(applied + 1);
            (next, applied, get("rescan")?.unwrap_or(0) == 1, depth)
        };
        let rescan_why = if unanswered > 0 {
            Some("writes passed to Milvus were not answered before the agent stopped".to_string())
        } else if rescan {
            Some("asked for before the agent stopped, and not run yet".to_string())
        } else {
            None
        };
        Ok(ChangeLog {
            db,
            inner: Mutex::new(Inner {
                next,
                depth,
                pending: Default::default(),
            }),
            max_bytes,
            appended: watch::channel(next - 1).0,
            applied: watch::channel(applied).0,
            rescan: watch::channel(rescan).0,
            rescan_why: Mutex::new(rescan_why),
        })
    }

    /// Appends `entry`, acknowledged, durably (the call returns once it is
    /// on disk): a write Milvus has already answered.
    pub fn append(&self, entry: &ChangeLogEntry) -> Result<Appended> {
        self.write(entry, true)
    }

    /// Writes `entry` durably, before Milvus has answered it: the source
    /// does not read it (nor anything after it) until it is
    /// [`acknowledge`](Self::acknowledge)d or [`abandon`](Self::abandon)ed.
    pub fn prepare(&self, entry: &ChangeLogEntry) -> Result<Appended> {
        self.write(entry, false)
    }

    fn write(&self, entry: &ChangeLogEntry, acked: bool) -> Result<Appended> {
        let bytes = entry.encode_to_vec();
        let mut inner = self.inner.lock().unwrap();
        if inner.depth.bytes + bytes.len() as u64 > self.max_bytes {
            let txn = self.db.begin_write()?;
            {
                txn.open_table(LOG)?.retain(|_, _| false)?;
                txn.open_table(ACKS)?.retain(|_, _| false)?;
                let mut meta = txn.open_table(META)?;
                meta.insert("rescan", 1)?;
                meta.insert("next", inner.next)?;
                meta.insert("applied", inner.next - 1)?;
            }
            txn.commit()?;
            inner.depth = Depth::default();
            // Writes in flight find their entry gone when answered.
            inner.pending.clear();
            self.applied.send_replace(inner.next - 1);
            self.appended.send_replace(inner.next - 1);
            self.asked(OVERFLOW);
            return Ok(Appended::Overflowed);
        }
        let at = inner.next;
        let txn = self.db.begin_write()?;
        {
            txn.open_table(LOG)?.insert(at, bytes.as_slice())?;
            if acked {
                txn.open_table(ACKS)?
                    .insert(at, ack_of(entry.acked_ms, None).as_slice())?;
            }
            txn.open_table(META)?.insert("next", at + 1)?;
        }
        txn.commit()?;
        inner.next = at + 1;
        inner.depth.entries += 1;
        inner.depth.bytes += bytes.len() as u64;
        if acked {
            if inner.depth.oldest_ms == 0 {
                inner.depth.oldest_ms = entry.acked_ms;
            }
        } else {
            inner.pending.insert(at, dr_proto::now_ms());
        }
        self.publish(&inner);
        Ok(Appended::At(at))
    }

    /// Milvus acknowledged the write prepared at `at`, at `acked_ms`,
    /// assigning `ids` (auto-id) or not. Not flushed: the entry itself is on
    /// disk since [`prepare`](Self::prepare), and the record of its answer
    /// reaches the disk with the next durable commit. An agent killed before
    /// that finds the entry unanswered at its restart: it is dropped and a
    /// scan pass replicates what Milvus applied, as for a write that was
    /// never answered (nothing acknowledged is lost; it takes a scan).
    /// `false`:
    /// the entry is gone (the log overflowed, or a new epoch dropped it),
    /// so the write is not in the log.
    pub fn acknowledge(
        &self,
        at: u64,
        acked_ms: i64,
        ids: Option<dr_proto::pb::Keys>,
    ) -> Result<bool> {
        let mut inner = self.inner.lock().unwrap();
        if inner.pending.remove(&at).is_none() {
            return Ok(false);
        }
        let mut txn = self.db.begin_write()?;
        // No flush on the client's path: the next durable commit (the next
        // write's prepare, a trim) carries it.
        txn.set_durability(redb::Durability::None);
        txn.open_table(ACKS)?
            .insert(at, ack_of(acked_ms, ids).as_slice())?;
        txn.commit()?;
        if inner.depth.oldest_ms == 0 {
            inner.depth.oldest_ms = acked_ms;
        }
        self.publish(&inner);
        Ok(true)
    }

    /// Milvus did not apply the write prepared at `at`: drops it.
    pub fn abandon(&self, at: u64) -> Result<()> {
        let mut inner = self.inner.lock().unwrap();
        if inner.pending.remove(&at).is_none() {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        let freed = txn
            .open_table(LOG)?
            .remove(at)?
            .map_or(0, |v| v.value().len() as u64);
        txn.commit()?;
        if freed > 0 {
            inner.depth.entries = inner.depth.entries.saturating_sub(1);
            inner.depth.bytes = inner.depth.bytes.saturating_sub(freed);
        }
        self.publish(&inner);
        Ok(())
    }

    fn publish(&self, inner: &Inner) {
        let ready = inner.ready();
        self.appended.send_if_modified(|v| {
            let changed = *v != ready;
            *v = ready;
            changed
        });
    }

    /// Asks for a scan pass, saying `why` (a write the log could not
    /// describe, a switchover's drain); the request survives a restart.
    pub fn request_rescan(&self, why: &str) -> Result<()> {
        let txn = self.db.begin_write()?;
        txn.open_table(META)?.insert("rescan", 1)?;
        txn.commit()?;
        self.asked(why);
        Ok(())
    }

    fn asked(&self, why: &str) {
        self.rescan_why
            .lock()
            .unwrap()
            .get_or_insert_with(|| why.to_string());
        self.rescan.send_replace(true);
    }

    /// Whether a scan pass was asked for, and why; clears the request (the
    /// caller runs the pass).
    pub fn take_rescan(&self) -> Result<Option<String>> {
        if !*self.rescan.borrow() {
            return Ok(None);
        }
        let txn = self.db.begin_write()?;
        txn.open_table(META)?.insert("rescan", 0)?;
        txn.commit()?;
        self.rescan.send_replace(false);
        let why = self.rescan_why.lock().unwrap().take();
        Ok(Some(why.unwrap_or_else(|| "asked for".into())))
    }

    /// Up to `max_entries` entries after position `after`, in order (at
    /// least one if there is any, whatever `max_bytes`).
    pub fn read_after(
        &self,
        after: u64,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, ChangeLogEntry)>> {
        let ready = *self.appended.borrow();
        if ready <= after {
            return Ok(Vec::new());
        }
        let r = self.db.begin_read()?;
        let t = r.open_table(LOG)?;
        let acks = r.open_table(ACKS)?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for e in t.range(after + 1..=ready)? {
            let (k, v) = e?;
            if !out.is_empty() && bytes + v.value().len() > max_bytes {
                break;
            }
            let Some(ack) = acks.get(k.value())? else {
                // Cannot happen up to `ready`; stop rather than pass it.
                break;
            };
            bytes += v.value().len();
            let mut entry = ChangeLogEntry::decode(v.value())
                .with_context(|| format!("decode change log entry {}", k.value()))?;
            let ack = ChangeLogEntry::decode(ack.value())
                .with_context(|| format!("decode the answer of change log entry {}", k.value()))?;
            entry.acked_ms = ack.acked_ms;
            if ack.ids.is_some() {
                entry.ids = ack.ids;
            }
            out.push((k.value(), entry));
            if out.len() >= max_entries {
                break;
            }
        }
        Ok(out)
    }

    /// The standby applied everything up to `upto`: drops it.
    pub fn trim(&self, upto: u64) -> Result<()> {
        let mut inner = self.inner.lock().unwrap();
        if upto <= *self.applied.borrow() {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        let depth = {
            let mut log = txn.open_table(LOG)?;
            let mut freed = (0u64, 0u64);
            log.retain_in(..=upto, |_, v| {
                freed.0 += 1;
                freed.1 += v.len() as u64;
                false
            })?;
            let mut acks = txn.open_table(ACKS)?;
            acks.retain_in(..=upto, |_, _| false)?;
            txn.open_table(META)?.insert("applied", upto)?;
            let oldest_ms = oldest_acked_ms(&acks)?;
            Depth {
                entries: inner.depth.entries.saturating_sub(freed.0),
                bytes: inner.depth.bytes.saturating_sub(freed.1),
                oldest_ms,
            }
        };
        txn.commit()?;
        inner.depth = depth;
        drop(inner);
        self.applied.send_replace(upto);
        Ok(())
    }

    /// Drops every entry not from `epoch`: writes accepted as primary in an
    /// older epoch and never applied by the standby belong to the divergent
    /// writes of that epoch (kept by the export when it was demoted), not
    /// to the stream of this one. Returns how many.
    pub fn keep_only_epoch(&self, epoch: u64) -> Result<u64> {
        let mut inner = self.inner.lock().unwrap();
        let txn = self.db.begin_write()?;
        let dropped;
        let depth = {
            let mut log = txn.open_table(LOG)?;
            let mut depth = Depth::default();
            let mut gone = Vec::new();
            log.retain(|k, v| {
                let keep = ChangeLogEntry::decode(v).is_ok_and(|e| e.epoch == epoch);
                if keep {
                    depth.entries += 1;
                    depth.bytes += v.len() as u64;
                } else {
                    gone.push(k);
                }
                keep
            })?;
            dropped = gone.len() as u64;
            let mut acks = txn.open_table(ACKS)?;
            for k in &gone {
                acks.remove(k)?;
                inner.pending.remove(k);
            }
            depth.oldest_ms = oldest_acked_ms(&acks)?;
            depth
        };
        txn.commit()?;
        inner.depth = depth;
        self.publish(&inner);
        Ok(dropped)
    }

    /// A time such that every write acknowledged to a client before it is
    /// readable now: now, or when the oldest write still waiting for
    /// Milvus's answer was prepared (writes behind it wait for it, and were
    /// acknowledged after it was prepared). Taken before a read that comes
    /// back empty, it says the reader has everything acknowledged before it.
    pub fn readable_as_of(&self) -> i64 {
        let inner = self.inner.lock().unwrap();
        let now = dr_proto::now_ms();
        inner
            .pending
            .first_key_value()
            .map_or(now, |(_, at)| (*at).min(now))
    }

    pub fn depth(&self) -> Depth {
        self.inner.lock().unwrap().depth
    }

    /// The newest position every entry up to which the standby applied.
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    pub fn subscribe_appended(&self) -> watch::Receiver<u64> {
        self.appended.subscribe()
    }

    pub fn subscribe_applied(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    pub fn subscribe_rescan(&self) -> watch::Receiver<bool> {
        self.rescan.subscribe()
    }

    /// Entries on disk (for tests and status).
    pub fn len(&self) -> Result<u64> {
        let r = self.db.begin_read()?;
        Ok(r.open_table(LOG)?.len()?)
    }

    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
}

/// The stored answer of a write.
fn ack_of(acked_ms: i64, ids: Option<dr_proto::pb::Keys>) -> Vec<u8> {
    ChangeLogEntry {
        acked_ms,
        ids,
        ..Default::default()
    }
    .encode_to_vec()
}

/// `acked_ms` of the first acknowledged entry (0 when none): the age of
/// the oldest write not applied on the standby. Writes to different
/// collections may be answered out of position order by at most one
/// Milvus call; the first by position stands for the oldest.
fn oldest_acked_ms(acks: &impl ReadableTable<u64, &'static [u8]>) -> Result<i64> {
    Ok(match acks.first()? {
        Some((_, v)) => ChangeLogEntry::decode(v.value())?.acked_ms,
        None => 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(epoch: u64, acked_ms: i64, collection: &str) -> ChangeLogEntry {
        ChangeLogEntry {
            epoch,
            acked_ms,
            database: "default".into(),
            collection: collection.into(),
            rows_request: vec![7; 100],
            ..Default::default()
        }
    }

    #[test]
    fn appends_survive_a_reopen_and_trim_drops_what_the_standby_applied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.redb");
        {
            let log = ChangeLog::open(&path, 1 << 20).unwrap();
            for i in 0..5 {
                assert_eq!(
                    log.append(&entry(3, 1000 + i, "c")).unwrap(),
                    Appended::At(i as u64 + 1)
                );
            }
            log.trim(2).unwrap();
            assert_eq!(log.depth().entries, 3);
            assert_eq!(log.depth().oldest_ms, 1002);
        }
        let log = ChangeLog::open(&path, 1 << 20).unwrap();
        assert_eq!(log.applied(), 2);
        let d = log.depth();
        assert_eq!((d.entries, d.oldest_ms), (3, 1002));
        let got = log.read_after(2, 10, usize::MAX).unwrap();
        assert_eq!(
            got.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        assert_eq!(got[0].1.acked_ms, 1002);
        // Positions keep increasing after a reopen.
        assert_eq!(log.append(&entry(3, 2000, "c")).unwrap(), Appended::At(6));
        log.trim(6).unwrap();
        assert_eq!(log.depth(), Depth::default());
        assert!(log.is_empty().unwrap());
        // An old acknowledgement trims nothing more.
        log.trim(4).unwrap();
        assert_eq!(log.applied(), 6);
    }

    #[test]
    fn reads_are_bounded_by_entries_and_bytes_but_never_empty() {
        let dir = tempfile::tempdir().unwrap();
        let log = ChangeLog::open(&dir.path().join("l"), 1 << 20).unwrap();
        for i in 0..10 {
            log.append(&entry(1, i, "c")).unwrap();
        }
        assert_eq!(log.read_after(0, 4, usize::MAX).unwrap().len(), 4);
        assert_eq!(log.read_after(0, 100, 1).unwrap().len(), 1);
        assert_eq!(log.read_after(8, 100, usize::MAX).unwrap().len(), 2);
        assert!(log.read_after(10, 100, usize::MAX).unwrap().is_empty());
    }

    #[test]
    fn past_its_bound_the_log_is_cleared_and_a_scan_is_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l");
        let one = entry(1, 1, "c").encoded_len() as u64;
        let log = ChangeLog::open(&path, one * 3).unwrap();
        for _ in 0..3 {
            assert!(matches!(
                log.append(&entry(1, 1, "c")).unwrap(),
                Appended::At(_)
            ));
        }
        assert_eq!(log.take_rescan().unwrap(), None);
        assert_eq!(log.append(&entry(1, 1, "c")).unwrap(), Appended::Overflowed);
        assert_eq!(log.depth().entries, 0);
        assert!(log.is_empty().unwrap());
        drop(log);
        // The request survives a restart, and is taken once.
        let log = ChangeLog::open(&path, one * 3).unwrap();
        assert!(log.take_rescan().unwrap().is_some());
        assert_eq!(log.take_rescan().unwrap(), None);
        // Asked for again, it says why (the first reason since the last
        // pass).
        log.request_rescan("a drain").unwrap();
        log.request_rescan("another").unwrap();
        assert_eq!(log.take_rescan().unwrap().as_deref(), Some("a drain"));
        assert_eq!(log.append(&entry(1, 1, "c")).unwrap(), Appended::At(4));
    }

    #[test]
    fn entries_of_other_epochs_are_dropped_when_a_new_epoch_starts() {
        let dir = tempfile::tempdir().unwrap();
        let log = ChangeLog::open(&dir.path().join("l"), 1 << 20).unwrap();
        log.append(&entry(1, 10, "a")).unwrap();
        log.append(&entry(1, 11, "a")).unwrap();
        log.append(&entry(2, 12, "b")).unwrap();
        assert_eq!(log.keep_only_epoch(2).unwrap(), 2);
        let d = log.depth();
        assert_eq!((d.entries, d.oldest_ms), (1, 12));
        let left = log.read_after(0, 10, usize::MAX).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].1.collection, "b");
    }

    fn positions(got: &[(u64, ChangeLogEntry)]) -> Vec<u64> {
        got.iter().map(|(k, _)| *k).collect()
    }

    #[test]
    fn a_prepared_write_is_read_only_once_answered_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let log = ChangeLog::open(&dir.path().join("log.redb"), 1 << 20).unwrap();
        let appended = log.subscribe_appended();
        let Appended::At(a) = log.prepare(&entry(1, 0, "c")).unwrap() else {
            panic!("not logged")
        };
        // A write to another collection, answered first, waits behind it.
        assert_eq!(log.append(&entry(1, 500, "d")).unwrap(), Appended::At(2));
        let Appended::At(c) = log.prepare(&entry(1, 0, "c")).unwrap() else {
            panic!("not logged")
        };
        assert!(log.read_after(0, 10, usize::MAX).unwrap().is_empty());
        assert_eq!(*appended.borrow(), 0);
        assert_eq!(log.depth().entries, 3);
        let ids = dr_proto::pb::Keys {
            ints: vec![41, 42],
            strs: vec![],
        };
        assert!(log.acknowledge(a, 700, Some(ids.clone())).unwrap());
        assert_eq!(*appended.borrow(), 2);
        let got = log.read_after(0, 10, usize::MAX).unwrap();
        assert_eq!(positions(&got), vec![1, 2]);
        // The answer is merged in: the time and the keys Milvus assigned.
        assert_eq!(got[0].1.acked_ms, 700);
        assert_eq!(got[0].1.ids, Some(ids));
        assert_eq!(got[0].1.collection, "c");
        assert_eq!(got[1].1.acked_ms, 500);
        // Refused by Milvus: it leaves the log and no longer holds it up.
        log.abandon(c).unwrap();
        assert_eq!(*appended.borrow(), 3);
        assert_eq!(
            positions(&log.read_after(0, 10, usize::MAX).unwrap()),
            vec![1, 2]
        );
        assert_eq!(log.depth().entries, 2);
        assert!(
            !log.acknowledge(c, 900, None).unwrap(),
            "an abandoned write is not in the log"
        );
        log.trim(2).unwrap();
        assert_eq!(log.depth(), Depth::default());
        assert!(log.is_empty().unwrap());
    }

    #[test]
    fn a_write_prepared_and_never_answered_is_dropped_on_reopen_and_a_scan_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.redb");
        {
            let log = ChangeLog::open(&path, 1 << 20).unwrap();
            log.append(&entry(1, 100, "c")).unwrap();
            log.prepare(&entry(1, 0, "c")).unwrap();
            log.append(&entry(1, 300, "c")).unwrap();
            assert!(!*log.subscribe_rescan().borrow());
        }
        let log = ChangeLog::open(&path, 1 << 20).unwrap();
        assert!(*log.subscribe_rescan().borrow(), "a scan pass settles it");
        let got = log.read_after(0, 10, usize::MAX).unwrap();
        assert_eq!(positions(&got), vec![1, 3]);
        assert_eq!(log.depth().entries, 2);
        assert_eq!(log.depth().oldest_ms, 100);
        assert_eq!(log.append(&entry(1, 400, "c")).unwrap(), Appended::At(4));
    }

    #[test]
    fn an_overflow_or_a_new_epoch_drops_prepared_writes_and_their_answer_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let log = ChangeLog::open(&dir.path().join("log.redb"), 1 << 20).unwrap();
        let Appended::At(a) = log.prepare(&entry(1, 0, "c")).unwrap() else {
            panic!("not logged")
        };
        assert_eq!(log.keep_only_epoch(2).unwrap(), 1);
        assert!(!log.acknowledge(a, 10, None).unwrap());
        assert!(log.read_after(0, 10, usize::MAX).unwrap().is_empty());

        let small = ChangeLog::open(&dir.path().join("small.redb"), 250).unwrap();
        let Appended::At(b) = small.prepare(&entry(1, 0, "c")).unwrap() else {
            panic!("not logged")
        };
        assert_eq!(
            small.prepare(&entry(1, 0, "c")).unwrap(),
            Appended::At(b + 1)
        );
        assert_eq!(
            small.prepare(&entry(1, 0, "c")).unwrap(),
            Appended::Overflowed
        );
        assert!(!small.acknowledge(b, 10, None).unwrap());
        assert_eq!(
            *small.subscribe_appended().borrow(),
            b + 1,
            "nothing holds the source up"
        );
        assert!(small.read_after(0, 10, usize::MAX).unwrap().is_empty());
    }

    #[test]
    fn what_is_readable_is_as_of_the_oldest_write_still_waiting_for_milvus() {
        let dir = tempfile::tempdir().unwrap();
        let log = ChangeLog::open(&dir.path().join("log.redb"), 1 << 20).unwrap();
        let before = dr_proto::now_ms();
        assert!(log.readable_as_of() >= before, "nothing waits: now");
        let Appended::At(a) = log.prepare(&entry(1, 0, "c")).unwrap() else {
            panic!("not logged")
        };
        let prepared = dr_proto::now_ms();
        std::thread::sleep(std::time::Duration::from_millis(20));
        // A later write, answered, waits behind the first: it is not
        // readable, and the time says so.
        assert_eq!(log.append(&entry(1, 5, "c")).unwrap(), Appended::At(a + 1));
        let as_of = log.readable_as_of();
        assert!(
            (before..=prepared).contains(&as_of),
            "{before} <= {as_of} <= {prepared}"
        );
        assert!(log.read_after(0, 10, usize::MAX).unwrap().is_empty());
        assert!(log.acknowledge(a, 10, None).unwrap());
        assert!(log.readable_as_of() >= prepared + 20);
        assert_eq!(log.read_after(0, 10, usize::MAX).unwrap().len(), 2);
    }
}

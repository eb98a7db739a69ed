//! The change log: every write the front door passed to the primary's
//! Milvus and Milvus acknowledged, kept on disk (redb, one fsync'd
//! transaction per write) until the standby has applied it.
//!
//! Positions are dense and increasing. The replication source reads after
//! the position the standby last acknowledged and [`ChangeLog::trim`]s on
//! every acknowledgement, so the log holds exactly the writes acknowledged
//! to clients and not yet applied on the standby: its oldest entry's
//! age is the replication lag, whatever the collections' size.
//!
//! The log is bounded (`frontdoor.change_log_max_bytes`). A write that
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
}

pub struct ChangeLog {
    db: Database,
    inner: Mutex<Inner>,
    max_bytes: u64,
    /// The newest position written.
    appended: watch::Sender<u64>,
    /// Every position up to this one is applied on the standby (trimmed).
    applied: watch::Sender<u64>,
    /// Set when a write was not logged (bound reached, or a write the door
    /// could not describe): a scan pass must run.
    rescan: watch::Sender<bool>,
}

/// Where a write went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    At(u64),
    /// Not logged: the bound was reached; a scan pass will find it.
    Overflowed,
}

impl ChangeLog {
    pub fn open(path: &Path, max_bytes: u64) -> Result<ChangeLog> {
        let db = Database::create(path).with_context(|| {
            format!(
                "open the front door's change log {}; if it is corrupt, stop the agent, move it \
                 away and start again (a full scan pass then finds what it held)",
                path.display()
            )
        })?;
        let txn = db.begin_write()?;
        {
            txn.open_table(LOG)?;
            txn.open_table(META)?;
        }
        txn.commit()?;
        let (next, applied, rescan, depth) = {
            let r = db.begin_read()?;
            let meta = r.open_table(META)?;
            let log = r.open_table(LOG)?;
            let get = |k: &str| -> Result<Option<u64>> { Ok(meta.get(k)?.map(|v| v.value())) };
            let mut depth = Depth::default();
            let mut last = None;
            for e in log.iter()? {
                let (k, v) = e?;
                if depth.entries == 0 {
                    depth.oldest_ms = ChangeLogEntry::decode(v.value())
                        .context("decode the change log's oldest entry")?
                        .acked_ms;
                }
                depth.entries += 1;
                depth.bytes += v.value().len() as u64;
                last = Some(k.value());
            }
            let applied = get("applied")?.unwrap_or(0);
            let next = get("next")?
                .unwrap_or(1)
                .max(last.map_or(0, |l| l + 1))
                .max(applied + 1);
            (next, applied, get("rescan")?.unwrap_or(0) == 1, depth)
        };
        Ok(ChangeLog {
            db,
            inner: Mutex::new(Inner { next, depth }),
            max_bytes,
            appended: watch::channel(next - 1).0,
            applied: watch::channel(applied).0,
            rescan: watch::channel(rescan).0,
        })
    }

    /// Appends `entry`, durably (the call returns once it is on disk).
    pub fn append(&self, entry: &ChangeLogEntry) -> Result<Appended> {
        let bytes = entry.encode_to_vec();
        let mut inner = self.inner.lock().unwrap();
        if inner.depth.bytes + bytes.len() as u64 > self.max_bytes {
            let txn = self.db.begin_write()?;
            {
                txn.open_table(LOG)?.retain(|_, _| false)?;
                let mut meta = txn.open_table(META)?;
                meta.insert("rescan", 1)?;
                meta.insert("next", inner.next)?;
                meta.insert("applied", inner.next - 1)?;
            }
            txn.commit()?;
            inner.depth = Depth::default();
            self.applied.send_replace(inner.next - 1);
            self.appended.send_replace(inner.next - 1);
            self.rescan.send_replace(true);
            return Ok(Appended::Overflowed);
        }
        let at = inner.next;
        let txn = self.db.begin_write()?;
        {
            txn.open_table(LOG)?.insert(at, bytes.as_slice())?;
            txn.open_table(META)?.insert("next", at + 1)?;
        }
        txn.commit()?;
        inner.next = at + 1;
        if inner.depth.entries == 0 {
            inner.depth.oldest_ms = entry.acked_ms;
        }
        inner.depth.entries += 1;
        inner.depth.bytes += bytes.len() as u64;
        drop(inner);
        self.appended.send_replace(at);
        Ok(Appended::At(at))
    }

    /// Asks for a scan pass (a write the log could not describe).
    pub fn request_rescan(&self) -> Result<()> {
        let txn = self.db.begin_write()?;
        txn.open_table(META)?.insert("rescan", 1)?;
        txn.commit()?;
        self.rescan.send_replace(true);
        Ok(())
    }

    /// Whether a scan pass was asked for; clears the request (the caller
    /// runs the pass).
    pub fn take_rescan(&self) -> Result<bool> {
        if !*self.rescan.borrow() {
            return Ok(false);
        }
        let txn = self.db.begin_write()?;
        txn.open_table(META)?.insert("rescan", 0)?;
        txn.commit()?;
        self.rescan.send_replace(false);
        Ok(true)
    }

    /// Up to `max_entries` entries after position `after`, in order (at
    /// least one if there is any, whatever `max_bytes`).
    pub fn read_after(
        &self,
        after: u64,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, ChangeLogEntry)>> {
        let r = self.db.begin_read()?;
        let t = r.open_table(LOG)?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for e in t.range(after + 1..)? {
            let (k, v) = e?;
            if !out.is_empty() && bytes + v.value().len() > max_bytes {
                break;
            }
            bytes += v.value().len();
            out.push((
                k.value(),
                ChangeLogEntry::decode(v.value())
                    .with_context(|| format!("decode change log entry {}", k.value()))?,
            ));
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
            txn.open_table(META)?.insert("applied", upto)?;
            let oldest_ms = match log.first()? {
                Some((_, v)) => ChangeLogEntry::decode(v.value())?.acked_ms,
                None => 0,
            };
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
        let mut dropped = 0;
        let depth = {
            let mut log = txn.open_table(LOG)?;
            let mut depth = Depth::default();
            log.retain(|_, v| {
                let keep = ChangeLogEntry::decode(v).is_ok_and(|e| e.epoch == epoch);
                if keep {
                    if depth.entries == 0 {
                        depth.oldest_ms = ChangeLogEntry::decode(v).map_or(0, |e| e.acked_ms);
                    }
                    depth.entries += 1;
                    depth.bytes += v.len() as u64;
                } else {
                    dropped += 1;
                }
                keep
            })?;
            depth
        };
        txn.commit()?;
        inner.depth = depth;
        Ok(dropped)
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
        assert!(!log.take_rescan().unwrap());
        assert_eq!(log.append(&entry(1, 1, "c")).unwrap(), Appended::Overflowed);
        assert_eq!(log.depth().entries, 0);
        assert!(log.is_empty().unwrap());
        drop(log);
        // The request survives a restart, and is taken once.
        let log = ChangeLog::open(&path, one * 3).unwrap();
        assert!(log.take_rescan().unwrap());
        assert!(!log.take_rescan().unwrap());
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
}

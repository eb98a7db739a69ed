//! The source's capture base: for every replicated scope (database,
//! collection, partition), the hash of every row as the sink holds it.
//!
//! A capture pass merges the primary-key ordered scan of the primary with
//! this base, range by range, so memory stays bounded by one page whatever
//! the collection size. The base lives on disk (redb).
//!
//! Crash safety: a batch's changes are written to the base *before* it is
//! sent, and the batch's keys are kept in the `pending` table until the sink
//! acknowledges it. After a restart or a broken stream,
//! [`Base::recover_pending`] marks every pending key as [`UNKNOWN`], so the
//! next pass resends it (or its delete) whatever the sink did with the
//! unacknowledged batch. Row hashes are never `UNKNOWN` (their low bit is 1).

use std::ops::Bound;
use std::path::Path;

use anyhow::{Context, Result};
use prost::Message;
use redb::{Database, ReadableTable, TableDefinition};

use crate::milvus::Pk;
use dr_proto::pb;

/// Hash value meaning "the sink may hold anything for this key".
pub const UNKNOWN: u64 = 0;

const INT: TableDefinition<(u64, i64), u64> = TableDefinition::new("int_rows");
const STR: TableDefinition<(u64, &str), u64> = TableDefinition::new("str_rows");
const SCOPES: TableDefinition<&str, u64> = TableDefinition::new("scopes");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// seq -> encoded PendingKeys.
const PENDING: TableDefinition<u64, &[u8]> = TableDefinition::new("pending");
/// scope name -> the lineage in which it was seeded from the sink's
/// inventory.
const SEEDED: TableDefinition<&str, &str> = TableDefinition::new("seeded");

#[derive(Clone, PartialEq, prost::Message)]
struct PendingScope {
    #[prost(uint64, tag = "1")]
    scope: u64,
    #[prost(int64, repeated, tag = "2")]
    ints: Vec<i64>,
    #[prost(string, repeated, tag = "3")]
    strs: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PendingKeys {
    #[prost(message, repeated, tag = "1")]
    scopes: Vec<PendingScope>,
}

/// One change of the base: `Some(hash)` = the sink will hold this row,
/// `None` = the sink will not hold this key.
pub type Change = (Pk, Option<u64>);

pub struct Base {
    db: Database,
}

impl Base {
    pub fn open(path: &Path) -> Result<Base> {
        // redb caches up to 1 GiB of pages by default: the whole base of
        // a large deployment would stay in the agent's memory. Passes read
        // the base in key order, which the OS's page cache serves well.
        let db = redb::Builder::new()
            .set_cache_size(32 << 20)
            .create(path)
            .with_context(|| {
                format!(
                    "open the capture base {}; if it is corrupt, stop the agent and run \
                 `dr-agent --config FILE reset-capture-base` (everything is then resent once)",
                    path.display()
                )
            })?;
        let txn = db.begin_write()?;
        {
            txn.open_table(INT)?;
            txn.open_table(STR)?;
            txn.open_table(SCOPES)?;
            txn.open_table(META)?;
            txn.open_table(PENDING)?;
            txn.open_table(SEEDED)?;
        }
        txn.commit()?;
        let base = Base { db };
        if base.meta("lineage")?.is_none() {
            base.set_meta("lineage", uuid::Uuid::new_v4().to_string().as_bytes())?;
        }
        Ok(base)
    }

    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let r = self.db.begin_read()?;
        let t = r.open_table(META)?;
        Ok(t.get(key)?.map(|v| v.value().to_vec()))
    }

    pub fn set_meta(&self, key: &str, value: &[u8]) -> Result<()> {
        let txn = self.db.begin_write()?;
        txn.open_table(META)?.insert(key, value)?;
        txn.commit()?;
        Ok(())
    }

    /// The id of this base's history. A sink that reports another lineage
    /// holds data this base knows nothing about.
    pub fn lineage(&self) -> Result<String> {
        let raw = self.meta("lineage")?.unwrap_or_default();
        String::from_utf8(raw).map_err(|_| {
            anyhow::anyhow!(
                "the capture base's lineage is corrupt; fix: stop the agent and run \
                 `dr-agent --config FILE reset-capture-base` (everything is then resent once)"
            )
        })
    }

    /// The epoch of the newest source that wrote to this base (0 for a
    /// base from before epochs were recorded, or a new one).
    pub fn epoch(&self) -> Result<u64> {
        Ok(self.meta_u64("epoch")?.unwrap_or(0))
    }

    /// A number in the metadata; a value of the wrong size is corruption.
    fn meta_u64(&self, key: &str) -> Result<Option<u64>> {
        let Some(v) = self.meta(key)? else {
            return Ok(None);
        };
        let bytes: [u8; 8] = v.try_into().map_err(|_| {
            anyhow::anyhow!(
                "the capture base's {key} is corrupt; fix: stop the agent and run \
                 `dr-agent --config FILE reset-capture-base` (everything is then resent once)"
            )
        })?;
        Ok(Some(u64::from_le_bytes(bytes)))
    }

    pub fn set_epoch(&self, epoch: u64) -> Result<()> {
        self.set_meta("epoch", &epoch.to_le_bytes())
    }

    pub fn next_seq(&self) -> Result<u64> {
        Ok(self.meta_u64("next_seq")?.unwrap_or(1))
    }

    pub fn set_next_seq(&self, seq: u64) -> Result<()> {
        self.set_meta("next_seq", &seq.to_le_bytes())
    }

    /// Forgets everything: the sink's content is unknown. Starts a new lineage.
    pub fn reset(&self) -> Result<String> {
        let lineage = uuid::Uuid::new_v4().to_string();
        let txn = self.db.begin_write()?;
        {
            txn.delete_table(INT)?;
            txn.delete_table(STR)?;
            txn.delete_table(SCOPES)?;
            txn.delete_table(PENDING)?;
            txn.delete_table(SEEDED)?;
            txn.open_table(INT)?;
            txn.open_table(STR)?;
            txn.open_table(SCOPES)?;
            txn.open_table(PENDING)?;
            txn.open_table(SEEDED)?;
            let mut m = txn.open_table(META)?;
            m.insert("lineage", lineage.as_bytes())?;
            m.remove("catalog")?;
            m.remove("catalog_ids")?;
            m.remove("epoch")?;
            m.remove("next_seq")?;
        }
        txn.commit()?;
        Ok(lineage)
    }

    /// The numeric id of a scope name, created on first use.
    pub fn scope_id(&self, name: &str) -> Result<u64> {
        {
            let r = self.db.begin_read()?;
            if let Some(v) = r.open_table(SCOPES)?.get(name)? {
                return Ok(v.value());
            }
        }
        let txn = self.db.begin_write()?;
        let id = {
            let mut t = txn.open_table(SCOPES)?;
            let next = t
                .iter()?
                .filter_map(|e| e.ok())
                .map(|(_, v)| v.value())
                .max()
                .unwrap_or(0)
                + 1;
            t.insert(name, next)?;
            next
        };
        txn.commit()?;
        Ok(id)
    }

    /// Scope names whose name starts with `prefix`.
    pub fn scopes_with_prefix(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let r = self.db.begin_read()?;
        let t = r.open_table(SCOPES)?;
        let mut out = vec![];
        for e in t.iter()? {
            let (k, v) = e?;
            if k.value().starts_with(prefix) {
                out.push((k.value().to_string(), v.value()));
            }
        }
        Ok(out)
    }

    /// Whether `name` was seeded from the sink's inventory in the current
    /// lineage.
    pub fn seeded(&self, name: &str) -> Result<bool> {
        let lineage = self.lineage()?;
        let r = self.db.begin_read()?;
        let t = r.open_table(SEEDED)?;
        Ok(t.get(name)?.is_some_and(|v| v.value() == lineage))
    }

    /// Replaces what the base says of `scope` by what the sink reports it
    /// holds (`rows`, in any order). Call it with every page of one
    /// inventory, `first` on the first, then [`Base::mark_seeded`].
    pub fn seed(&self, scope: u64, first: bool, rows: &[(Pk, u64)]) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut ints = txn.open_table(INT)?;
            let mut strs = txn.open_table(STR)?;
            if first {
                ints.retain_in((scope, i64::MIN)..=(scope, i64::MAX), |_, _| false)?;
                strs.retain_in::<(u64, &str), _>(
                    (
                        Bound::Included((scope, "")),
                        Bound::Excluded((scope + 1, "")),
                    ),
                    |_, _| false,
                )?;
            }
            for (pk, h) in rows {
                match pk {
                    Pk::Int(k) => {
                        ints.insert((scope, *k), *h)?;
                    }
                    Pk::Str(k) => {
                        strs.insert((scope, k.as_str()), *h)?;
                    }
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Records that scope `name` now holds the sink's inventory.
    pub fn mark_seeded(&self, name: &str) -> Result<()> {
        let lineage = self.lineage()?;
        let txn = self.db.begin_write()?;
        txn.open_table(SEEDED)?.insert(name, lineage.as_str())?;
        txn.commit()?;
        Ok(())
    }

    /// Drops a scope and all its rows (collection dropped or recreated).
    pub fn drop_scope(&self, name: &str) -> Result<()> {
        let Some(id) = ({
            let r = self.db.begin_read()?;
            let v = r.open_table(SCOPES)?.get(name)?.map(|v| v.value());
            v
        }) else {
            return Ok(());
        };
        let txn = self.db.begin_write()?;
        {
            txn.open_table(INT)?
                .retain_in((id, i64::MIN)..=(id, i64::MAX), |_, _| false)?;
            let mut s = txn.open_table(STR)?;
            s.retain_in::<(u64, &str), _>(
                (Bound::Included((id, "")), Bound::Excluded((id + 1, ""))),
                |_, _| false,
            )?;
            txn.open_table(SCOPES)?.remove(name)?;
            txn.open_table(SEEDED)?.remove(name)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Base entries of `scope` with key in `(after, upto]` (unbounded where
    /// `None`), in key order.
    pub fn range(
        &self,
        scope: u64,
        after: Option<&Pk>,
        upto: Option<&Pk>,
        is_str: bool,
    ) -> Result<Vec<(Pk, u64)>> {
        let r = self.db.begin_read()?;
        let mut out = Vec::new();
        if is_str {
            let t = r.open_table(STR)?;
            let lo = match after {
                Some(Pk::Str(s)) => Bound::Excluded((scope, s.as_str())),
                _ => Bound::Included((scope, "")),
            };
            let hi = match upto {
                Some(Pk::Str(s)) => Bound::Included((scope, s.as_str())),
                _ => Bound::Excluded((scope + 1, "")),
            };
            for e in t.range::<(u64, &str)>((lo, hi))? {
                let (k, v) = e?;
                out.push((Pk::Str(k.value().1.to_string()), v.value()));
            }
        } else {
            let t = r.open_table(INT)?;
            let lo = match after {
                Some(Pk::Int(v)) => Bound::Excluded((scope, *v)),
                _ => Bound::Included((scope, i64::MIN)),
            };
            let hi = match upto {
                Some(Pk::Int(v)) => Bound::Included((scope, *v)),
                _ => Bound::Included((scope, i64::MAX)),
            };
            for e in t.range::<(u64, i64)>((lo, hi))? {
                let (k, v) = e?;
                out.push((Pk::Int(k.value().1), v.value()));
            }
        }
        Ok(out)
    }

    /// Records the changes of batch `seq` before it is sent: the base now
    /// says what the sink will hold once it applies the batch, and the keys
    /// stay pending until [`Base::ack`].
    pub fn stage(&self, seq: u64, scope: u64, changes: &[Change]) -> Result<()> {
        self.stage_scopes(seq, &[(scope, changes)])
    }

    /// [`Base::stage`] for a batch that changes several scopes (a delete
    /// across every partition of a collection).
    pub fn stage_scopes(&self, seq: u64, scopes: &[(u64, &[Change])]) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut keys = PendingKeys::default();
            let mut ints = txn.open_table(INT)?;
            let mut strs = txn.open_table(STR)?;
            for &(scope, changes) in scopes {
                let mut pending = PendingScope {
                    scope,
                    ..Default::default()
                };
                for (pk, h) in changes {
                    match (pk, h) {
                        (Pk::Int(k), Some(h)) => {
                            ints.insert((scope, *k), *h)?;
                            pending.ints.push(*k);
                        }
                        (Pk::Int(k), None) => {
                            ints.remove((scope, *k))?;
                            pending.ints.push(*k);
                        }
                        (Pk::Str(k), Some(h)) => {
                            strs.insert((scope, k.as_str()), *h)?;
                            pending.strs.push(k.clone());
                        }
                        (Pk::Str(k), None) => {
                            strs.remove((scope, k.as_str()))?;
                            pending.strs.push(k.clone());
                        }
                    }
                }
                keys.scopes.push(pending);
            }
            txn.open_table(PENDING)?
                .insert(seq, keys.encode_to_vec().as_slice())?;
            txn.open_table(META)?
                .insert("next_seq", (seq + 1).to_le_bytes().as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Records a batch without row changes (DDL, pass marks).
    pub fn stage_empty(&self, seq: u64) -> Result<()> {
        self.stage(seq, 0, &[])
    }

    /// The sink has applied every batch up to `seq`.
    pub fn ack(&self, seq: u64) -> Result<()> {
        let txn = self.db.begin_write()?;
        txn.open_table(PENDING)?.retain_in(..=seq, |_, _| false)?;
        txn.commit()?;
        Ok(())
    }

    /// The sink acknowledged batch `seq` without applying its rows (it
    /// holds that collection): its keys become [`UNKNOWN`], so they are
    /// resent once the collection is retried. Returns how many keys.
    pub fn unapply(&self, seq: u64) -> Result<usize> {
        self.forget_pending(Some(seq))
    }

    /// Marks the keys of every unacknowledged batch as [`UNKNOWN`]; returns
    /// how many keys that touched.
    pub fn recover_pending(&self) -> Result<usize> {
        self.forget_pending(None)
    }

    /// Marks the keys of pending batch `only` (or of all) as [`UNKNOWN`]
    /// and drops them from the pending table.
    fn forget_pending(&self, only: Option<u64>) -> Result<usize> {
        let txn = self.db.begin_write()?;
        let mut n = 0;
        {
            let mut pending = txn.open_table(PENDING)?;
            let mut ints = txn.open_table(INT)?;
            let mut strs = txn.open_table(STR)?;
            let mut all = Vec::new();
            for e in pending.iter()? {
                let (k, v) = e?;
                if only.is_some_and(|s| s != k.value()) {
                    continue;
                }
                all.push(PendingKeys::decode(v.value()).context("decode a pending batch")?);
            }
            for keys in all {
                for s in keys.scopes {
                    for k in s.ints {
                        ints.insert((s.scope, k), UNKNOWN)?;
                        n += 1;
                    }
                    for k in s.strs {
                        strs.insert((s.scope, k.as_str()), UNKNOWN)?;
                        n += 1;
                    }
                }
            }
            pending.retain(|k, _| only.is_some_and(|s| s != k))?;
        }
        txn.commit()?;
        Ok(n)
    }

    /// Marks `keys` of `scope` as [`UNKNOWN`] (inserting those the base
    /// lacks), in one transaction: the next pass resends the primary's row
    /// for each, or a delete where the primary has none. Anti-entropy calls
    /// it for keys where the sink holds something else than the base says.
    pub fn invalidate(&self, scope: u64, keys: &[Pk]) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut ints = txn.open_table(INT)?;
            let mut strs = txn.open_table(STR)?;
            for pk in keys {
                match pk {
                    Pk::Int(k) => {
                        ints.insert((scope, *k), UNKNOWN)?;
                    }
                    Pk::Str(k) => {
                        strs.insert((scope, k.as_str()), UNKNOWN)?;
                    }
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    pub fn pending_count(&self) -> Result<usize> {
        let r = self.db.begin_read()?;
        let t = r.open_table(PENDING)?;
        Ok(t.iter()?.count())
    }
}

/// The diff of one page against the base range it covers.
#[derive(Debug, Default, PartialEq)]
pub struct PageDiff {
    /// Row indexes (into the page) of rows the sink never had.
    pub inserts: Vec<usize>,
    /// Row indexes of rows the sink may hold in another version.
    pub upserts: Vec<usize>,
    /// Keys the sink holds that the primary no longer has.
    pub deletes: Vec<Pk>,
}

impl PageDiff {
    pub fn is_empty(&self) -> bool {
        self.inserts.is_empty() && self.upserts.is_empty() && self.deletes.is_empty()
    }
}

/// A scanned page's keys with their row hashes and positions, the form
/// [`diff_page`] takes.
pub fn indexed(keys: Vec<Pk>, hashes: &[u64]) -> Vec<(Pk, u64, usize)> {
    keys.into_iter()
        .zip(hashes.iter().copied())
        .enumerate()
        .map(|(i, (k, h))| (k, h, i))
        .collect()
}

/// Merges a page (keys sorted ascending with their hashes) with the base
/// entries of the same key range.
pub fn diff_page(page: &[(Pk, u64, usize)], base: &[(Pk, u64)]) -> PageDiff {
    let mut d = PageDiff::default();
    let (mut i, mut j) = (0, 0);
    while i < page.len() || j < base.len() {
        match (page.get(i), base.get(j)) {
            (Some((pk, h, idx)), Some((bk, bh))) => match pk.cmp(bk) {
                std::cmp::Ordering::Less => {
                    d.inserts.push(*idx);
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    d.deletes.push(bk.clone());
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    if h != bh {
                        d.upserts.push(*idx);
                    }
                    i += 1;
                    j += 1;
                }
            },
            (Some((_, _, idx)), None) => {
                d.inserts.push(*idx);
                i += 1;
            }
            (None, Some((bk, _))) => {
                d.deletes.push(bk.clone());
                j += 1;
            }
            (None, None) => break,
        }
    }
    d
}

/// Converts keys to the wire form.
pub fn keys_to_pb(keys: &[Pk]) -> pb::Keys {
    let mut k = pb::Keys::default();
    for pk in keys {
        match pk {
            Pk::Int(v) => k.ints.push(*v),
            Pk::Str(s) => k.strs.push(s.clone()),
        }
    }
    k
}

pub fn keys_from_pb(k: &pb::Keys) -> Vec<Pk> {
    k.ints
        .iter()
        .map(|v| Pk::Int(*v))
        .chain(k.strs.iter().map(|s| Pk::Str(s.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_finds_inserts_upserts_and_deletes() {
        let page = vec![
            (Pk::Int(1), 11, 0),
            (Pk::Int(2), 99, 1),
            (Pk::Int(4), 44, 2),
        ];
        let base = vec![
            (Pk::Int(1), 11),
            (Pk::Int(2), 22),
            (Pk::Int(3), 33),
            (Pk::Int(5), 55),
        ];
        let d = diff_page(&page, &base);
        assert_eq!(d.inserts, vec![2]);
        assert_eq!(d.upserts, vec![1]);
        assert_eq!(d.deletes, vec![Pk::Int(3), Pk::Int(5)]);
    }

    #[test]
    fn unknown_entries_are_always_resent() {
        let page = vec![(Pk::Int(1), 11, 0)];
        let base = vec![(Pk::Int(1), UNKNOWN)];
        assert_eq!(diff_page(&page, &base).upserts, vec![0]);
    }

    #[test]
    fn invalidated_keys_are_resent_or_deleted_by_the_next_pass() {
        let dir = tempfile::tempdir().unwrap();
        let b = Base::open(&dir.path().join("b.redb")).unwrap();
        let s = b.scope_id("db/c/").unwrap();
        let other = b.scope_id("db/d/").unwrap();
        b.stage(1, s, &[(Pk::Int(1), Some(11)), (Pk::Int(2), Some(21))])
            .unwrap();
        b.stage(2, other, &[(Pk::Int(1), Some(11))]).unwrap();
        b.ack(2).unwrap();
        // 1: different on the sink; 3: on the sink only (the base lacks it).
        b.invalidate(s, &[Pk::Int(1), Pk::Int(3)]).unwrap();
        let base = b.range(s, None, None, false).unwrap();
        assert_eq!(
            base,
            vec![
                (Pk::Int(1), UNKNOWN),
                (Pk::Int(2), 21),
                (Pk::Int(3), UNKNOWN)
            ]
        );
        // The primary still has 1 and 2 as the base had them, not 3.
        let page = vec![(Pk::Int(1), 11, 0), (Pk::Int(2), 21, 1)];
        let d = diff_page(&page, &base);
        assert_eq!(d.upserts, vec![0], "the primary's row 1 is resent");
        assert_eq!(d.deletes, vec![Pk::Int(3)], "3 is deleted on the sink");
        assert!(d.inserts.is_empty());
        assert_eq!(
            b.range(other, None, None, false).unwrap(),
            vec![(Pk::Int(1), 11)],
            "other scopes are untouched"
        );
        let t = b.scope_id("db/t/").unwrap();
        b.invalidate(t, &[Pk::Str("k".into())]).unwrap();
        assert_eq!(
            b.range(t, None, None, true).unwrap(),
            vec![(Pk::Str("k".into()), UNKNOWN)]
        );
    }

    #[test]
    fn staged_changes_survive_and_pending_becomes_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("base.redb");
        let scope;
        {
            let b = Base::open(&path).unwrap();
            scope = b.scope_id("default/c/").unwrap();
            b.stage(1, scope, &[(Pk::Int(1), Some(11)), (Pk::Int(2), Some(21))])
                .unwrap();
            b.ack(1).unwrap();
            b.stage(2, scope, &[(Pk::Int(2), None), (Pk::Int(3), Some(31))])
                .unwrap();
            assert_eq!(b.pending_count().unwrap(), 1);
        }
        // Restart: batch 2 was never acknowledged.
        let b = Base::open(&path).unwrap();
        assert_eq!(b.next_seq().unwrap(), 3);
        assert_eq!(b.recover_pending().unwrap(), 2);
        let r = b.range(scope, None, None, false).unwrap();
        assert_eq!(
            r,
            vec![
                (Pk::Int(1), 11),
                (Pk::Int(2), UNKNOWN),
                (Pk::Int(3), UNKNOWN)
            ]
        );
        assert_eq!(
            b.range(scope, Some(&Pk::Int(1)), Some(&Pk::Int(2)), false)
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn a_batch_the_sink_held_is_resent_and_others_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let b = Base::open(&dir.path().join("b.redb")).unwrap();
        let s = b.scope_id("db/c/").unwrap();
        b.stage(1, s, &[(Pk::Int(1), Some(11))]).unwrap();
        b.stage(2, s, &[(Pk::Int(2), Some(21))]).unwrap();
        assert_eq!(b.unapply(2).unwrap(), 1);
        b.ack(2).unwrap();
        assert_eq!(
            b.range(s, None, None, false).unwrap(),
            vec![(Pk::Int(1), 11), (Pk::Int(2), UNKNOWN)]
        );
        assert_eq!(b.pending_count().unwrap(), 0);
    }

    #[test]
    fn corrupt_metadata_is_an_error_naming_the_fix_and_reset_mends_it() {
        let dir = tempfile::tempdir().unwrap();
        let b = Base::open(&dir.path().join("b.redb")).unwrap();
        b.set_epoch(4).unwrap();
        assert_eq!(b.epoch().unwrap(), 4);
        b.set_meta("next_seq", b"xyz").unwrap();
        b.set_meta("lineage", &[0xff, 0xfe]).unwrap();
        for e in [b.next_seq().unwrap_err(), b.lineage().unwrap_err()] {
            assert!(e.to_string().contains("reset-capture-base"), "{e}");
        }
        b.reset().unwrap();
        assert_eq!(b.next_seq().unwrap(), 1);
        assert!(!b.lineage().unwrap().is_empty());
        assert_eq!(
            b.epoch().unwrap(),
            0,
            "a reset base belongs to no epoch yet"
        );
    }

    #[test]
    fn seeding_replaces_a_scope_with_the_sinks_inventory_once_per_lineage() {
        let dir = tempfile::tempdir().unwrap();
        let b = Base::open(&dir.path().join("b.redb")).unwrap();
        let s = b.scope_id("db/c/").unwrap();
        let other = b.scope_id("db/d/").unwrap();
        b.stage(1, s, &[(Pk::Int(1), Some(11)), (Pk::Int(9), Some(99))])
            .unwrap();
        b.stage(2, other, &[(Pk::Int(1), Some(5))]).unwrap();
        assert!(!b.seeded("db/c/").unwrap());
        b.seed(s, true, &[(Pk::Int(2), 21)]).unwrap();
        b.seed(s, false, &[(Pk::Int(3), 31)]).unwrap();
        b.mark_seeded("db/c/").unwrap();
        assert!(b.seeded("db/c/").unwrap());
        assert_eq!(
            b.range(s, None, None, false).unwrap(),
            vec![(Pk::Int(2), 21), (Pk::Int(3), 31)],
            "what the base said before is replaced"
        );
        assert_eq!(b.range(other, None, None, false).unwrap().len(), 1);
        // A new lineage must seed again.
        b.reset().unwrap();
        assert!(!b.seeded("db/c/").unwrap());
    }

    #[test]
    fn string_scopes_are_isolated_and_droppable() {
        let dir = tempfile::tempdir().unwrap();
        let b = Base::open(&dir.path().join("b.redb")).unwrap();
        let s1 = b.scope_id("db/a/").unwrap();
        let s2 = b.scope_id("db/b/").unwrap();
        assert_ne!(s1, s2);
        b.stage(
            1,
            s1,
            &[
                (Pk::Str("x".into()), Some(1)),
                (Pk::Str("y".into()), Some(3)),
            ],
        )
        .unwrap();
        b.stage(2, s2, &[(Pk::Str("x".into()), Some(5))]).unwrap();
        assert_eq!(b.range(s1, None, None, true).unwrap().len(), 2);
        assert_eq!(
            b.range(s1, Some(&Pk::Str("x".into())), None, true).unwrap(),
            vec![(Pk::Str("y".into()), 3)]
        );
        b.drop_scope("db/a/").unwrap();
        assert_eq!(b.range(s1, None, None, true).unwrap().len(), 0);
        assert_eq!(b.range(s2, None, None, true).unwrap().len(), 1);
        let old = b.lineage().unwrap();
        let new = b.reset().unwrap();
        assert_ne!(old, new);
        assert_eq!(b.range(s2, None, None, true).unwrap().len(), 0);
    }
}

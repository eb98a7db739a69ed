//! Anti-entropy: the source checks, every `replication.anti_entropy_interval`,
//! that the standby holds what its capture base says.
//!
//! A capture pass only diffs the primary against the base, so a row written,
//! changed or deleted straight in the standby's Milvus (around milvus-dr)
//! would stay forever. Between two passes, once the sink has acknowledged
//! every batch (so it holds exactly what the base says), a run asks the sink
//! for its inventory of every seeded scope (`Replication.Inventory`: keys and
//! row hashes in primary-key order) and merges it with the base, page by
//! page. Keys where they differ are marked [`UNKNOWN`] in the base; the next
//! pass then resends the primary's row, or a delete where the primary has
//! none. Memory stays bounded by one inventory page.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;
use tonic::transport::Channel;
use tracing::{debug, warn};

use super::base::{Base, UNKNOWN};
use super::catalog::{Catalog, CollectionEntry};
use super::SharedState;
use crate::milvus::{Pk, PkType};
use dr_proto::pb::replication_client::ReplicationClient;

/// Sample keys kept per collection (log, alert).
pub const SAMPLES: usize = 10;

/// When the next run is due: one interval after the source started, then
/// one interval after the end of the previous run. A zero interval: never.
#[derive(Debug)]
pub struct Schedule {
    every: Duration,
    next: Option<Instant>,
}

impl Schedule {
    pub fn new(every: Duration) -> Schedule {
        Schedule {
            every,
            next: (!every.is_zero()).then(|| Instant::now() + every),
        }
    }

    pub fn due(&self) -> bool {
        self.next.is_some_and(|t| Instant::now() >= t)
    }

    /// A run ended now.
    pub fn ran(&mut self) {
        if let Some(next) = &mut self.next {
            *next = Instant::now() + self.every;
        }
    }
}

/// What anti-entropy has done on this agent (part of the shared
/// [`ReplicationState`](super::ReplicationState)).
#[derive(Debug, Default, Clone)]
pub struct State {
    /// Set by the source: runs are scheduled (a nonzero interval).
    pub enabled: bool,
    /// Runs completed since the agent started.
    pub runs: u64,
    /// When the newest run ended (ms since the epoch; 0: never).
    pub last_run_ms: i64,
    /// Rows repaired since the agent started, by `database.collection`;
    /// every collection a run checked is listed (0 until repaired).
    pub repairs: BTreeMap<String, u64>,
    /// Runs that repaired rows.
    pub repairing_runs: u64,
    /// The newest complete run repaired rows (until a run repairs nothing).
    pub repairing: bool,
    /// What the newest run that repaired rows found, by collection.
    pub findings: Vec<Finding>,
}

/// Rows of one collection that the standby held otherwise than replication
/// left them.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// `database.collection`
    pub collection: String,
    /// On the standby only (written straight into it).
    pub extra_on_standby: u64,
    /// On both, with content other than replication sent.
    pub different_on_standby: u64,
    /// Sent by replication, gone from the standby (deleted straight on it).
    pub missing_on_standby: u64,
    /// Up to [`SAMPLES`] of those keys.
    pub sample_keys: Vec<String>,
}

impl Finding {
    pub fn rows(&self) -> u64 {
        self.extra_on_standby + self.different_on_standby + self.missing_on_standby
    }

    fn add(&mut self, m: &Mismatch) {
        self.extra_on_standby += m.extra.len() as u64;
        self.different_on_standby += m.different.len() as u64;
        self.missing_on_standby += m.missing.len() as u64;
        for k in m.keys() {
            if self.sample_keys.len() >= SAMPLES {
                break;
            }
            self.sample_keys.push(k.to_string());
        }
    }
}

/// Where the sink's inventory and the base disagree, over one key range.
#[derive(Debug, Default, PartialEq)]
pub struct Mismatch {
    /// On the sink, absent from the base.
    pub extra: Vec<Pk>,
    /// On the sink with another hash than the base's.
    pub different: Vec<Pk>,
    /// In the base, absent from the sink.
    pub missing: Vec<Pk>,
}

impl Mismatch {
    pub fn is_empty(&self) -> bool {
        self.extra.is_empty() && self.different.is_empty() && self.missing.is_empty()
    }

    pub fn keys(&self) -> impl Iterator<Item = &Pk> {
        self.extra
            .iter()
            .chain(self.different.iter())
            .chain(self.missing.iter())
    }
}

/// Merges the sink's inventory (keys ascending, with their row hashes) with
/// the base entries of the same key range. Base entries already
/// [`UNKNOWN`] are left out: the next pass resends them whatever the sink
/// holds.
pub fn compare(sink: &[(Pk, u64)], base: &[(Pk, u64)]) -> Mismatch {
    use std::cmp::Ordering;
    let mut m = Mismatch::default();
    let (mut i, mut j) = (0, 0);
    loop {
        match (sink.get(i), base.get(j)) {
            (Some((sk, sh)), Some((bk, bh))) => match sk.cmp(bk) {
                Ordering::Less => {
                    m.extra.push(sk.clone());
                    i += 1;
                }
                Ordering::Greater => {
                    if *bh != UNKNOWN {
                        m.missing.push(bk.clone());
                    }
                    j += 1;
                }
                Ordering::Equal => {
                    if *bh != UNKNOWN && sh != bh {
                        m.different.push(sk.clone());
                    }
                    i += 1;
                    j += 1;
                }
            },
            (Some((sk, _)), None) => {
                m.extra.push(sk.clone());
                i += 1;
            }
            (None, Some((bk, bh))) => {
                if *bh != UNKNOWN {
                    m.missing.push(bk.clone());
                }
                j += 1;
            }
            (None, None) => return m,
        }
    }
}

/// What a run needs from the source.
pub struct Ctx<'a> {
    pub base: &'a Base,
    pub client: ReplicationClient<Channel>,
    pub epoch: u64,
    pub page_rows: usize,
    pub state: &'a SharedState,
}

/// One run, between two passes, once the sink has acknowledged every batch:
/// checks every seeded scope of the collections the last pass replicated
/// (`catalog`; not those in `held`), marks what differs for resending, and
/// records the outcome in the shared state. A scope whose inventory cannot
/// be read is logged and skipped; the run goes on.
pub async fn run(cx: Ctx<'_>, catalog: &Catalog, held: &BTreeSet<String>) -> Result<()> {
    let started = Instant::now();
    let (mut findings, mut failed, mut rows) = (Vec::new(), 0usize, 0u64);
    for entry in &catalog.collections {
        if !entry.loaded || held.contains(&entry.key()) {
            continue;
        }
        let Some(pk_type) = entry.info.pk_type() else {
            continue;
        };
        let mut found = Finding {
            collection: entry.key(),
            ..Default::default()
        };
        let mut checked = false;
        for part in entry.scan_partitions() {
            let name = super::source::scope_name(entry, part.as_deref());
            if !cx.base.seeded(&name)? {
                continue;
            }
            let scope = cx.base.scope_id(&name)?;
            let is_str = pk_type == PkType::Str;
            match check_scope(&cx, entry, part.as_deref(), scope, is_str, &mut found).await {
                Ok(n) => {
                    checked = true;
                    rows += n;
                }
                Err(e) if e.downcast_ref::<StoreError>().is_some() => return Err(e),
                Err(e) => {
                    failed += 1;
                    warn!(
                        collection = %entry.key(), partition = part.as_deref().unwrap_or(""),
                        error = %format!("{e:#}"),
                        "anti-entropy could not read the standby's inventory; this collection is checked again next run"
                    );
                }
            }
        }
        if checked {
            findings.push(found);
        }
    }
    let repaired: u64 = findings.iter().map(Finding::rows).sum();
    let now = dr_proto::now_ms();
    for f in findings.iter().filter(|f| f.rows() > 0) {
        warn!(
            collection = %f.collection,
            extra_on_standby = f.extra_on_standby,
            different_on_standby = f.different_on_standby,
            missing_on_standby = f.missing_on_standby,
            sample_keys = ?f.sample_keys,
            "anti-entropy: the standby held rows that replication did not leave there \
             (someone writes around milvus-dr into the standby's Milvus); resending them from the primary"
        );
    }
    debug!(
        rows,
        repaired,
        failed,
        ms = started.elapsed().as_millis() as u64,
        "anti-entropy run done"
    );
    let mut st = cx.state.lock().unwrap();
    let ae = &mut st.anti_entropy;
    ae.runs += 1;
    ae.last_run_ms = now;
    for f in &findings {
        *ae.repairs.entry(f.collection.clone()).or_default() += f.rows();
    }
    if repaired > 0 {
        ae.repairing = true;
        ae.repairing_runs += 1;
        ae.findings = findings.into_iter().filter(|f| f.rows() > 0).collect();
    } else if failed == 0 {
        ae.repairing = false;
    }
    Ok(())
}

/// A capture-base error: not a reason to skip a scope, the session ends.
#[derive(Debug)]
struct StoreError(anyhow::Error);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for StoreError {}

fn store<T>(r: Result<T>) -> Result<T> {
    r.map_err(|e| StoreError(e).into())
}

/// Compares one scope with the sink's inventory, page by page, and marks
/// what differs [`UNKNOWN`]. Adds to `found`; returns the rows the sink
/// reported.
async fn check_scope(
    cx: &Ctx<'_>,
    entry: &CollectionEntry,
    partition: Option<&str>,
    scope: u64,
    is_str: bool,
    found: &mut Finding,
) -> Result<u64> {
    let mut pages = super::source::Inventory::open(
        &mut cx.client.clone(),
        cx.epoch,
        entry,
        partition,
        cx.page_rows,
    )
    .await?;
    let mut after: Option<Pk> = None;
    let mut rows = 0u64;
    while let Some(sink) = pages.next().await? {
        let Some(last) = sink.last().map(|(k, _)| k.clone()) else {
            continue;
        };
        rows += sink.len() as u64;
        let base_rows = store(cx.base.range(scope, after.as_ref(), Some(&last), is_str))?;
        repair(cx.base, scope, &compare(&sink, &base_rows), found)?;
        after = Some(last);
    }
    // Whatever the base has after the sink's last key, the sink lacks.
    let rest = store(cx.base.range(scope, after.as_ref(), None, is_str))?;
    repair(cx.base, scope, &compare(&[], &rest), found)?;
    Ok(rows)
}

fn repair(base: &Base, scope: u64, m: &Mismatch, found: &mut Finding) -> Result<()> {
    if m.is_empty() {
        return Ok(());
    }
    let keys: Vec<Pk> = m.keys().cloned().collect();
    store(base.invalidate(scope, &keys))?;
    found.add(m);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(v: &[(i64, u64)]) -> Vec<(Pk, u64)> {
        v.iter().map(|(k, h)| (Pk::Int(*k), *h)).collect()
    }

    fn keys(v: &[i64]) -> Vec<Pk> {
        v.iter().map(|k| Pk::Int(*k)).collect()
    }

    #[test]
    fn compare_finds_extra_different_and_missing_keys() {
        let sink = int(&[(1, 11), (2, 99), (4, 44), (6, 66)]);
        let base = int(&[(1, 11), (2, 21), (3, 31), (6, 66), (7, 71)]);
        let m = compare(&sink, &base);
        assert_eq!(m.extra, keys(&[4]));
        assert_eq!(m.different, keys(&[2]));
        assert_eq!(m.missing, keys(&[3, 7]));
        assert_eq!(compare(&sink, &sink), Mismatch::default());
    }

    #[test]
    fn compare_handles_empty_sides_and_string_keys() {
        let s = |k: &str, h: u64| (Pk::Str(k.into()), h);
        assert_eq!(
            compare(&[s("a", 1), s("b", 2)], &[]).extra,
            vec![Pk::Str("a".into()), Pk::Str("b".into())]
        );
        assert_eq!(
            compare(&[], &[s("a", 1)]).missing,
            vec![Pk::Str("a".into())]
        );
        let m = compare(&[s("a", 1), s("c", 3)], &[s("b", 2), s("c", 4)]);
        assert_eq!(m.extra, vec![Pk::Str("a".into())]);
        assert_eq!(m.missing, vec![Pk::Str("b".into())]);
        assert_eq!(m.different, vec![Pk::Str("c".into())]);
        assert!(compare(&[], &[]).is_empty());
    }

    #[test]
    fn keys_the_base_already_resends_are_no_mismatch() {
        // UNKNOWN: the next pass resends them whatever the sink holds.
        let sink = int(&[(1, 11)]);
        let base = int(&[(1, UNKNOWN), (2, UNKNOWN)]);
        assert!(compare(&sink, &base).is_empty());
    }

    #[test]
    fn findings_count_every_key_and_keep_ten_samples() {
        let mut f = Finding::default();
        let m = Mismatch {
            extra: keys(&(0..8).collect::<Vec<_>>()),
            different: keys(&[100, 101]),
            missing: keys(&[200, 201, 202]),
        };
        f.add(&m);
        f.add(&m);
        assert_eq!(
            (
                f.extra_on_standby,
                f.different_on_standby,
                f.missing_on_standby
            ),
            (16, 4, 6)
        );
        assert_eq!(f.rows(), 26);
        assert_eq!(f.sample_keys.len(), SAMPLES);
        assert_eq!(f.sample_keys[0], "0");
        assert_eq!(f.sample_keys[9], "101");
    }

    #[test]
    fn the_schedule_waits_one_interval_and_zero_is_off() {
        let off = Schedule::new(Duration::ZERO);
        assert!(!off.due());
        let mut s = Schedule::new(Duration::from_millis(30));
        assert!(!s.due(), "not at once: one interval after the start");
        std::thread::sleep(Duration::from_millis(40));
        assert!(s.due());
        s.ran();
        assert!(!s.due(), "one interval after the previous run");
    }
}

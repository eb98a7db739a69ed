//! Conditions the agent watches and alerts on while they hold, resolved
//! when they clear: replication lag over `monitoring.lag_alert` (raised by
//! the acting primary, whose writes are at risk), collections held on a
//! permanent apply error, a primary fenced for longer than a moment, and
//! rows anti-entropy found written around milvus-dr into the standby.

use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{Alert, Sender, Severity};
use crate::replication::{ReplicationState, Role, SharedState};

/// Replication lag over `monitoring.lag_alert`.
pub const LAG: &str = "replication_lag";
/// A collection held on a permanent apply error.
pub const HELD: &str = "replication_held";
/// Named primary by the witnesses but not acting (lease lost, or its
/// Milvus unhealthy).
pub const FENCED: &str = "primary_fenced";
/// Fences shorter than this (a switchover's hand-over, a failover in
/// progress) are not alerted.
pub const FENCED_GRACE_MS: i64 = 10_000;
/// An anti-entropy run repaired rows on the standby (resolved after the
/// next run that repairs nothing).
pub const ANTI_ENTROPY: &str = "anti_entropy_repair";
/// With the front door: the newest scan pass found writes on the primary
/// that did not come through it (resolved by the next pass finding none).
pub const BYPASS: &str = "bypass_writes";
/// Sync mode: the standby does not confirm writes in time.
pub const SYNC_DEGRADED: &str = "sync_degraded";
/// With the front door: the change log reached its bound and was cleared
/// (resolved once the standby acknowledged the scan pass that replicates
/// what it held).
pub const CHANGE_LOG_OVERFLOW: &str = "change_log_overflow";

/// What the previous evaluation saw of counted events, so that one that
/// came and went between two evaluations is still alerted once.
#[derive(Debug, Default, Clone, Copy)]
pub struct Seen {
    /// `anti_entropy.repairing_runs`.
    pub repairs: u64,
    /// `log_overflows`.
    pub overflows: u64,
}

/// What should be active now: each key with its alert, or `None` (clear).
/// `seen`: the counts as of the previous evaluation, so that a repairing
/// run (an overflow) is alerted even if a clean run (the recovery)
/// followed it before this evaluation.
pub fn evaluate(
    st: &ReplicationState,
    now_ms: i64,
    lag_alert: Duration,
    dc: &str,
    fenced_since_ms: Option<i64>,
    seen: Seen,
) -> Vec<(&'static str, Option<Alert>)> {
    let lag = if st.role == Role::Source {
        // Unknown until the standby first acknowledges a pass (the stream
        // state shows a standby that never connected).
        st.lag_ms(now_ms)
            .filter(|l| *l as u128 > lag_alert.as_millis())
    } else {
        None
    };
    let lag = lag.map(|l| Alert {
        key: LAG.into(),
        severity: Severity::Error,
        summary: format!(
            "replication from {dc} lags {:.1} s (over the {:.0} s alert threshold)",
            l as f64 / 1000.0,
            lag_alert.as_secs_f64()
        ),
        detail: json!({
            "lag_ms": l,
            "epoch": st.epoch,
            "connected": st.connected,
            "applied_snapshot_ms": st.applied_snapshot_ms,
            "last_error": st.last_error,
        }),
    });
    // Raised by the primary too (its status shows what the standby holds),
    // so one datacenter pages, not both.
    let held: Vec<String> = st
        .collections
        .iter()
        .filter(|c| st.role == Role::Source && c.state.starts_with("held"))
        .map(|c| format!("{}.{}: {}", c.database, c.collection, c.state))
        .collect();
    let held = (!held.is_empty()).then(|| Alert {
        key: HELD.into(),
        severity: Severity::Error,
        summary: format!(
            "{} collection(s) held on a permanent apply error; the others keep replicating",
            held.len()
        ),
        detail: json!({ "collections": held, "epoch": st.epoch }),
    });
    let fenced = fenced_since_ms
        .filter(|since| st.role == Role::Fenced && now_ms - since >= FENCED_GRACE_MS)
        .map(|since| Alert {
            key: FENCED.into(),
            severity: Severity::Critical,
            summary: format!(
                "{dc} is the named primary at epoch {} but has not acted as primary for {:.0} s: nothing replicates",
                st.epoch,
                (now_ms - since) as f64 / 1000.0
            ),
            detail: json!({ "epoch": st.epoch, "why": st.failover, "since_ms": since }),
        });
    vec![
        (LAG, lag),
        (HELD, held),
        (FENCED, fenced),
        (ANTI_ENTROPY, anti_entropy(st, dc, seen.repairs)),
        (BYPASS, bypass(st, dc)),
        (
            SYNC_DEGRADED,
            (st.sync_degraded && st.role == Role::Source).then(|| Alert {
                key: SYNC_DEGRADED.into(),
                severity: Severity::Error,
                summary: format!(
                    "sync replication from {dc} is degraded: the standby did not apply a write within replication.sync_timeout; writes are refused or acknowledged without it (replication.sync_on_timeout) until it catches up"
                ),
                detail: json!({
                    "epoch": st.epoch,
                    "connected": st.connected,
                    "unapplied_writes": st.log_depth.entries,
                    "last_error": st.last_error,
                }),
            }),
        ),
        (CHANGE_LOG_OVERFLOW, overflow(st, dc, seen.overflows)),
    ]
}

/// Raised by the primary from the change log's overflow until the standby
/// acknowledged a scan pass that started after it (or, when the recovery
/// came before this evaluation, once).
fn overflow(st: &ReplicationState, dc: &str, overflows_alerted: u64) -> Option<Alert> {
    let recovering = st.log_overflow_ms > 0 && st.applied_snapshot_ms < st.log_overflow_ms;
    if st.role != Role::Source || !(recovering || st.log_overflows > overflows_alerted) {
        return None;
    }
    Some(Alert {
        key: CHANGE_LOG_OVERFLOW.into(),
        severity: Severity::Error,
        summary: format!(
            "the change log of {dc} reached frontdoor.change_log_max_mb and was cleared: the writes it held reach the standby by a full scan pass instead, slower ({})",
            if recovering { "in progress" } else { "done" }
        ),
        detail: json!({
            "overflows": st.log_overflows,
            "overflow_ms": st.log_overflow_ms,
            "recovered": !recovering,
            "epoch": st.epoch,
            "connected": st.connected,
            "cause": "the standby was away, or applied writes slower than clients made them, for longer than the log holds: raise frontdoor.change_log_max_mb, or bring the standby back sooner",
        }),
    })
}

/// Raised by the primary while its newest scan pass found rows that did
/// not come through the front door.
fn bypass(st: &ReplicationState, dc: &str) -> Option<Alert> {
    let b = &st.bypass;
    if st.role != Role::Source || !st.change_log || b.last_pass_rows == 0 {
        return None;
    }
    let names: Vec<&str> = b.findings.iter().map(|f| f.0.as_str()).collect();
    Some(Alert {
        key: BYPASS.into(),
        severity: Severity::Warning,
        summary: format!(
            "the scan of {dc}'s Milvus found {} row(s) written around the front door ({}); replicated from the scan, not the change log: until the next scan they were not on the standby",
            b.last_pass_rows,
            names.join(", ")
        ),
        detail: json!({
            "collections": b.findings.iter().map(|(c, n, sample)| json!({"collection": c, "rows": n, "sample_keys": sample})).collect::<Vec<_>>(),
            "rows": b.last_pass_rows,
            "epoch": st.epoch,
            "cause": "a client writes straight into the primary's Milvus instead of through the front door (check clients that do not use the service name)",
        }),
    })
}

/// Raised by the primary (the source runs anti-entropy) while its newest
/// run repaired rows, or a repairing run has not been alerted yet.
fn anti_entropy(st: &ReplicationState, dc: &str, repairs_alerted: u64) -> Option<Alert> {
    let ae = &st.anti_entropy;
    if st.role != Role::Source || !(ae.repairing || ae.repairing_runs > repairs_alerted) {
        return None;
    }
    let sum = |f: fn(&crate::replication::antientropy::Finding) -> u64| -> u64 {
        ae.findings.iter().map(f).sum()
    };
    let (extra, different, missing) = (
        sum(|f| f.extra_on_standby),
        sum(|f| f.different_on_standby),
        sum(|f| f.missing_on_standby),
    );
    let names: Vec<&str> = ae.findings.iter().map(|f| f.collection.as_str()).collect();
    Some(Alert {
        key: ANTI_ENTROPY.into(),
        severity: Severity::Warning,
        summary: format!(
            "anti-entropy found {} row(s) on the standby of {dc} that replication did not leave there ({extra} extra, {different} different, {missing} missing; {}) and resends them from the primary: someone writes around milvus-dr into the standby's Milvus",
            extra + different + missing,
            names.join(", ")
        ),
        detail: json!({
            "collections": ae.findings,
            "rows_extra_on_standby": extra,
            "rows_different_on_standby": different,
            "rows_missing_on_standby": missing,
            "epoch": st.epoch,
            "run_ms": ae.last_run_ms,
            "cause": "someone writes around milvus-dr into the standby's Milvus: these rows were not written by replication; they were resent from the primary (check who writes to the standby's Milvus)",
        }),
    })
}

/// Raises and resolves [`evaluate`]'s alerts every `every` until `stop`.
pub async fn run(
    state: SharedState,
    alerts: Sender,
    lag_alert: Duration,
    dc: String,
    every: Duration,
    stop: CancellationToken,
) {
    let mut fenced_since = None;
    let mut seen = Seen::default();
    loop {
        let now = dr_proto::now_ms();
        let conditions = {
            let st = state.lock().unwrap();
            fenced_since = (st.role == Role::Fenced).then(|| fenced_since.unwrap_or(now));
            let v = evaluate(&st, now, lag_alert, &dc, fenced_since, seen);
            seen = Seen {
                repairs: st.anti_entropy.repairing_runs,
                overflows: st.log_overflows,
            };
            v
        };
        for (key, alert) in conditions {
            match alert {
                Some(a) => {
                    // WARN: the condition's own ERROR, if any, is logged
                    // where it happens (the sink's refusal), once.
                    if alerts.raise(a.clone()) {
                        tracing::warn!(alert = key, summary = %a.summary, "alert raised");
                    }
                }
                None => {
                    if alerts.resolve(key) {
                        tracing::info!(alert = key, "alert resolved");
                    }
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dr_proto::pb;

    fn source(applied: i64) -> ReplicationState {
        ReplicationState {
            role: Role::Source,
            epoch: 3,
            applied_snapshot_ms: applied,
            ..Default::default()
        }
    }

    fn active(v: &[(&'static str, Option<Alert>)]) -> Vec<&'static str> {
        v.iter()
            .filter(|(_, a)| a.is_some())
            .map(|(k, _)| *k)
            .collect()
    }

    #[test]
    fn lag_is_alerted_by_the_primary_over_the_threshold_only() {
        let t = Duration::from_secs(60);
        assert!(active(&evaluate(
            &source(100_000),
            150_000,
            t,
            "dc-a",
            None,
            Seen::default()
        ))
        .is_empty());
        let v = evaluate(&source(100_000), 170_001, t, "dc-a", None, Seen::default());
        assert_eq!(active(&v), vec![LAG]);
        let a = v[0].1.as_ref().unwrap();
        assert!(a.summary.contains("lags 70.0 s"), "{}", a.summary);
        assert_eq!(a.detail["epoch"], 3);
        // A standby's own view does not page (the primary does).
        let standby = ReplicationState {
            role: Role::Sink,
            ..source(100_000)
        };
        assert!(active(&evaluate(
            &standby,
            999_999,
            t,
            "dc-b",
            None,
            Seen::default()
        ))
        .is_empty());
    }

    #[test]
    fn held_collections_are_alerted_until_none_is_held() {
        let mut st = source(100_000);
        st.collections = vec![
            pb::CollectionStatus {
                database: "db".into(),
                collection: "x".into(),
                state: "held: schema conflict".into(),
                ..Default::default()
            },
            pb::CollectionStatus {
                database: "db".into(),
                collection: "c".into(),
                state: "replicating".into(),
                ..Default::default()
            },
        ];
        let v = evaluate(
            &st,
            100_500,
            Duration::from_secs(60),
            "dc-a",
            None,
            Seen::default(),
        );
        assert_eq!(active(&v), vec![HELD]);
        assert_eq!(
            v[1].1.as_ref().unwrap().detail["collections"][0],
            "db.x: held: schema conflict"
        );
        // The standby holds the same list: only the primary pages.
        let standby = ReplicationState {
            role: Role::Sink,
            ..st.clone()
        };
        assert!(active(&evaluate(
            &standby,
            100_500,
            Duration::from_secs(60),
            "dc-b",
            None,
            Seen::default()
        ))
        .is_empty());
        st.collections.truncate(0);
        assert!(active(&evaluate(
            &st,
            100_500,
            Duration::from_secs(60),
            "dc-a",
            None,
            Seen::default()
        ))
        .is_empty());
    }

    #[test]
    fn writes_around_the_front_door_are_alerted_until_a_clean_pass() {
        let t = Duration::from_secs(60);
        let mut st = ReplicationState {
            role: Role::Source,
            change_log: true,
            ..Default::default()
        };
        let bypass = |v: &[(&'static str, Option<Alert>)]| {
            v.iter()
                .find(|(k, _)| *k == BYPASS)
                .and_then(|(_, a)| a.clone())
        };
        assert!(bypass(&evaluate(&st, 1, t, "dc-a", None, Seen::default())).is_none());
        st.bypass.last_pass_rows = 2;
        st.bypass.findings = vec![("db.c".into(), 2, vec!["7".into(), "9".into()])];
        let a = bypass(&evaluate(&st, 1, t, "dc-a", None, Seen::default())).expect("raised");
        assert!(
            a.summary
                .contains("2 row(s) written around the front door (db.c)"),
            "{}",
            a.summary
        );
        assert_eq!(a.detail["collections"][0]["sample_keys"][1], "9");
        // Not on a standby, and not without the change log.
        st.role = Role::Sink;
        assert!(bypass(&evaluate(&st, 1, t, "dc-a", None, Seen::default())).is_none());
        st.role = Role::Source;
        st.bypass.last_pass_rows = 0;
        assert!(bypass(&evaluate(&st, 1, t, "dc-a", None, Seen::default())).is_none());
    }

    #[test]
    fn degraded_sync_mode_is_alerted_by_the_primary() {
        let t = Duration::from_secs(60);
        let mut st = ReplicationState {
            role: Role::Source,
            change_log: true,
            ..Default::default()
        };
        let sync = |v: &[(&'static str, Option<Alert>)]| {
            v.iter()
                .find(|(k, _)| *k == SYNC_DEGRADED)
                .and_then(|(_, a)| a.clone())
        };
        assert!(sync(&evaluate(&st, 1, t, "dc-a", None, Seen::default())).is_none());
        st.sync_degraded = true;
        st.log_depth.entries = 7;
        let a = sync(&evaluate(&st, 1, t, "dc-a", None, Seen::default())).expect("raised");
        assert_eq!(a.severity, Severity::Error);
        assert!(
            a.summary.contains("sync replication from dc-a is degraded"),
            "{}",
            a.summary
        );
        assert_eq!(a.detail["unapplied_writes"], 7);
        st.role = Role::Sink;
        assert!(sync(&evaluate(&st, 1, t, "dc-a", None, Seen::default())).is_none());
    }

    /// `kind`'s alert as [`evaluate`] decides it for `st` at 100.5 s (dc-a,
    /// lag alert after 60 s, not fenced).
    fn decided(st: &ReplicationState, seen: Seen, kind: &str) -> Option<Alert> {
        evaluate(st, 100_500, Duration::from_secs(60), "dc-a", None, seen)
            .into_iter()
            .find(|(k, _)| *k == kind)
            .unwrap_or_else(|| panic!("evaluate decides {kind}"))
            .1
    }

    #[test]
    fn anti_entropy_repairs_are_alerted_by_the_primary_until_a_clean_run() {
        use crate::replication::antientropy::Finding;
        let t = Duration::from_secs(60);
        let ae = |st: &ReplicationState, seen: u64| {
            decided(
                st,
                Seen {
                    repairs: seen,
                    overflows: 0,
                },
                ANTI_ENTROPY,
            )
        };
        let mut st = source(100_000);
        st.anti_entropy.runs = 1;
        assert!(ae(&st, 0).is_none(), "a clean run");
        st.anti_entropy.runs = 2;
        st.anti_entropy.repairing = true;
        st.anti_entropy.repairing_runs = 1;
        st.anti_entropy.findings = vec![Finding {
            collection: "db.c".into(),
            extra_on_standby: 1,
            different_on_standby: 2,
            missing_on_standby: 3,
            sample_keys: vec!["7".into(), "8".into()],
        }];
        let a = ae(&st, 0).expect("raised");
        assert_eq!(
            active(&evaluate(&st, 100_500, t, "dc-a", None, Seen::default())),
            vec![ANTI_ENTROPY]
        );
        assert_eq!(a.severity, Severity::Warning);
        assert!(
            a.summary.contains("6 row(s)")
                && a.summary.contains("1 extra, 2 different, 3 missing")
                && a.summary.contains("db.c")
                && a.summary.contains("writes around milvus-dr"),
            "{}",
            a.summary
        );
        assert_eq!(a.detail["collections"][0]["collection"], "db.c");
        assert_eq!(a.detail["collections"][0]["missing_on_standby"], 3);
        assert_eq!(a.detail["collections"][0]["sample_keys"][1], "8");
        assert_eq!(a.detail["rows_extra_on_standby"], 1);
        assert!(a.detail["cause"]
            .as_str()
            .unwrap()
            .contains("standby's Milvus"));
        // Still active while the newest run repaired rows, seen or not.
        assert!(ae(&st, 1).is_some());
        // The next run repaired nothing: resolved once that run was seen...
        st.anti_entropy.repairing = false;
        assert!(ae(&st, 1).is_none());
        // ...but a repairing run not evaluated yet is alerted first.
        assert!(ae(&st, 0).is_some());
        // Only the primary runs anti-entropy and alerts on it.
        st.anti_entropy.repairing = true;
        let standby = ReplicationState {
            role: Role::Sink,
            ..st.clone()
        };
        assert!(ae(&standby, 0).is_none());
    }

    #[test]
    fn a_fenced_primary_is_alerted_after_the_grace_and_resolved_when_it_acts() {
        let t = Duration::from_secs(60);
        let fenced = ReplicationState {
            role: Role::Fenced,
            failover: "primary at epoch 3 but not acting: no lease".into(),
            ..source(0)
        };
        // A short fence (a switchover's hand-over) is not alerted.
        assert!(active(&evaluate(
            &fenced,
            105_000,
            t,
            "dc-a",
            Some(100_000),
            Seen::default()
        ))
        .is_empty());
        let v = evaluate(&fenced, 110_000, t, "dc-a", Some(100_000), Seen::default());
        assert_eq!(active(&v), vec![FENCED]);
        let a = v[2].1.as_ref().unwrap();
        assert!(
            a.summary.contains("epoch 3") && a.summary.contains("10 s"),
            "{}",
            a.summary
        );
        assert_eq!(
            a.detail["why"],
            "primary at epoch 3 but not acting: no lease"
        );
        // Acting again (or demoted): cleared.
        assert!(active(&evaluate(
            &source(109_000),
            110_000,
            t,
            "dc-a",
            Some(100_000),
            Seen::default()
        ))
        .is_empty());
    }

    #[test]
    fn a_change_log_overflow_is_alerted_until_the_standby_applied_the_scan_after_it() {
        let ov = |st: &ReplicationState, seen: u64| {
            decided(
                st,
                Seen {
                    repairs: 0,
                    overflows: seen,
                },
                CHANGE_LOG_OVERFLOW,
            )
        };
        let mut st = source(100_000);
        assert!(ov(&st, 0).is_none(), "never overflowed");
        st.log_overflows = 1;
        st.log_overflow_ms = 100_200;
        let a = ov(&st, 0).expect("raised");
        assert_eq!(a.severity, Severity::Error);
        assert_eq!(a.detail["recovered"], false);
        assert!(ov(&st, 1).is_some(), "held until the standby has the scan");
        st.applied_snapshot_ms = 100_300;
        assert!(ov(&st, 1).is_none(), "recovered and already alerted");
        assert_eq!(
            ov(&st, 0)
                .expect("came and went between two evaluations")
                .detail["recovered"],
            true
        );
        st.applied_snapshot_ms = 0;
        st.role = Role::Sink;
        assert!(ov(&st, 0).is_none(), "a standby does not raise it");
    }
}

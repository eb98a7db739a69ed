//! What drctl prints: status, witness and verify tables.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use dr_agent::client::VerifyReport;
use dr_proto::pb;
use dr_witness::api::WitnessStatus;

/// Status of one agent as `drctl status --json` prints it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentStatus {
    pub datacenter: String,
    pub reachable: bool,
    pub error: Option<String>,
    pub role: Option<String>,
    pub epoch: Option<u64>,
    pub milvus_healthy: Option<bool>,
    pub milvus_detail: Option<String>,
    pub connected: Option<bool>,
    pub acked_seq: Option<u64>,
    /// Seconds; `None` when nothing was ever applied.
    pub lag_seconds: Option<f64>,
    pub applied_snapshot_ms: Option<i64>,
    pub last_pass_duration_ms: Option<i64>,
    pub rows_upserted: Option<u64>,
    pub rows_deleted: Option<u64>,
    pub collections: Vec<CollectionLine>,
    pub last_error: Option<String>,
    /// With witnesses: why the agent is or is not acting as primary.
    pub failover: Option<String>,
    pub lease_remaining_ms: Option<i64>,
    /// The front door, when the agent has one.
    #[serde(default)]
    pub frontdoor: Option<FrontdoorLine>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FrontdoorLine {
    pub listen: String,
    pub mode: String,
    pub sync_state: String,
    pub accepting_writes: bool,
    pub requests: u64,
    pub refused_writes: u64,
    pub unapplied_writes: u64,
    pub unapplied_bytes: u64,
    pub bypass_rows: u64,
    pub log_overflows: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CollectionLine {
    pub collection: String,
    pub state: String,
    pub rows: u64,
}

pub fn to_agent_status(dc: &str, r: Result<pb::StatusReply>) -> AgentStatus {
    match r {
        Err(e) => AgentStatus {
            datacenter: dc.into(),
            reachable: false,
            error: Some(format!("{e:#}")),
            role: None,
            epoch: None,
            milvus_healthy: None,
            milvus_detail: None,
            connected: None,
            acked_seq: None,
            lag_seconds: None,
            applied_snapshot_ms: None,
            last_pass_duration_ms: None,
            rows_upserted: None,
            rows_deleted: None,
            collections: vec![],
            last_error: None,
            failover: None,
            lease_remaining_ms: None,
            frontdoor: None,
        },
        Ok(s) => {
            let r = s.replication.unwrap_or_default();
            AgentStatus {
                datacenter: s.datacenter,
                reachable: true,
                error: None,
                role: Some(s.role),
                epoch: Some(s.epoch),
                milvus_healthy: Some(s.milvus_healthy),
                milvus_detail: Some(s.milvus_detail),
                connected: Some(r.connected),
                acked_seq: Some(r.acked_seq),
                lag_seconds: (r.lag_ms >= 0).then(|| r.lag_ms as f64 / 1000.0),
                applied_snapshot_ms: Some(r.applied_snapshot_ms),
                last_pass_duration_ms: Some(r.last_pass_duration_ms),
                rows_upserted: Some(r.rows_upserted),
                rows_deleted: Some(r.rows_deleted),
                collections: r
                    .collections
                    .into_iter()
                    .map(|c| CollectionLine {
                        collection: format!("{}.{}", c.database, c.collection),
                        state: c.state,
                        rows: c.rows,
                    })
                    .collect(),
                last_error: (!r.last_error.is_empty()).then_some(r.last_error),
                failover: (!s.failover.is_empty()).then_some(s.failover),
                lease_remaining_ms: (s.lease_remaining_ms > 0).then_some(s.lease_remaining_ms),
                frontdoor: s.frontdoor.map(|f| FrontdoorLine {
                    listen: f.listen,
                    mode: f.mode,
                    sync_state: f.sync_state,
                    accepting_writes: f.accepting_writes,
                    requests: f.requests,
                    refused_writes: f.refused_writes,
                    unapplied_writes: f.log_entries,
                    unapplied_bytes: f.log_bytes,
                    bypass_rows: f.bypass_rows,
                    log_overflows: f.log_overflows,
                }),
            }
        }
    }
}

/// A table for humans.
pub fn status_table(all: &[AgentStatus]) -> String {
    let mut out = format!(
        "{:<10} {:<8} {:<6} {:<8} {:<10} {:>10} {:>10}  {}\n",
        "DC", "ROLE", "EPOCH", "MILVUS", "STREAM", "LAG", "ACKED", "NOTE"
    );
    for s in all {
        if !s.reachable {
            out += &format!(
                "{:<10} {:<8} {:<6} {:<8} {:<10} {:>10} {:>10}  {}\n",
                s.datacenter,
                "?",
                "?",
                "?",
                "?",
                "?",
                "?",
                s.error.clone().unwrap_or_default()
            );
            continue;
        }
        let lag = s
            .lag_seconds
            .map(|l| format!("{l:.1}s"))
            .unwrap_or_else(|| "never".into());
        out += &format!(
            "{:<10} {:<8} {:<6} {:<8} {:<10} {:>10} {:>10}  {}\n",
            s.datacenter,
            s.role.clone().unwrap_or_default(),
            s.epoch.unwrap_or_default(),
            if s.milvus_healthy == Some(true) {
                "healthy"
            } else {
                "DOWN"
            },
            if s.connected == Some(true) {
                "connected"
            } else {
                "down"
            },
            lag,
            s.acked_seq.unwrap_or_default(),
            s.last_error.clone().unwrap_or_default()
        );
        if let Some(f) = &s.failover {
            out += &format!("    failover: {f}");
            if let Some(l) = s.lease_remaining_ms {
                out += &format!(" (lease {:.1}s left)", l as f64 / 1000.0);
            }
            out += "\n";
        }
        if let Some(f) = &s.frontdoor {
            out += &format!(
                "    front door {}: {}, {}; {} call(s), {} write(s) refused; {} write(s) ({} bytes) not yet on the standby; {} row(s) found written around it\n",
                f.listen,
                if f.accepting_writes { "accepting writes" } else { "refusing writes (not the acting primary)" },
                f.sync_state,
                f.requests,
                f.refused_writes,
                f.unapplied_writes,
                f.unapplied_bytes,
                f.bypass_rows
            );
            if f.log_overflows > 0 {
                out += &format!(
                    "    front door: the change log reached its bound {} time(s) since the agent started (cleared; a scan pass replicated what it held)\n",
                    f.log_overflows
                );
            }
        }
        for c in &s.collections {
            out += &format!(
                "    {:<40} {:>10} rows  {}\n",
                c.collection, c.rows, c.state
            );
        }
    }
    out
}

/// The witness view for humans: leader, epoch, primary, each witness's
/// latest observation, lease remaining, the newest audit entries.
pub fn witness_table(all: &[(u64, Result<WitnessStatus>)]) -> String {
    let mut out = format!(
        "{:<8} {:<10} {:<7} {:<6} {:<10} {:<9}  {}\n",
        "WITNESS", "RAFT", "LEADER", "EPOCH", "PRIMARY", "LEASE", "OBSERVATION"
    );
    let mut newest: Option<&WitnessStatus> = None;
    let mut notes = String::new();
    for (id, r) in all {
        match r {
            Err(e) => {
                out += &format!(
                    "{id:<8} {:<10} {:<7} {:<6} {:<10} {:<9}  {e:#}\n",
                    "?", "?", "?", "?", "?"
                )
            }
            Ok(s) => {
                let obs = s
                    .observation
                    .iter()
                    .map(|(dc, v)| {
                        if v.healthy {
                            format!("{dc} healthy")
                        } else {
                            format!(
                                "{dc} UNHEALTHY {:.1}s (milvus {}, agent silent {})",
                                v.unhealthy_for_ms as f64 / 1000.0,
                                if v.milvus_ok { "ok" } else { "down" },
                                v.agent_silent_ms.map_or("never heard".into(), |m| format!(
                                    "{:.1}s",
                                    m as f64 / 1000.0
                                ))
                            )
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                out += &format!(
                    "{:<8} {:<10} {:<7} {:<6} {:<10} {:<9}  {}\n",
                    id,
                    s.raft_state,
                    s.leader.map_or("?".into(), |l| l.to_string()),
                    s.cluster.epoch,
                    s.cluster.primary,
                    s.lease_remaining_ms
                        .map_or("-".into(), |l| format!("{:.1}s", l as f64 / 1000.0)),
                    obs
                );
                if s.raft_state == "Leader" && !s.leader_confirmed {
                    notes += &format!(
                        "witness {id} is an UNCONFIRMED leader (no quorum acknowledgement for {}): cut off from its peers, it decides nothing\n",
                        s.quorum_ack_ms
                            .map_or("this term".into(), |m| format!("{:.1}s", m as f64 / 1000.0))
                    );
                }
                if newest.is_none_or(|n| s.cluster.version > n.cluster.version) {
                    newest = Some(s);
                }
            }
        }
    }
    out += &notes;
    if let Some(s) = newest {
        if let Some(leader) = all.iter().find_map(|(id, r)| {
            r.as_ref()
                .ok()
                .filter(|s| s.leader == Some(*id) && s.leader_confirmed)
                .map(|s| s.verdict.clone())
        }) {
            out += &format!("leader decision: {leader:?}\n");
        }
        if !s.cluster.needs_resync.is_empty() {
            out += &format!(
                "awaiting resync (no automatic failback): {:?}\n",
                s.cluster.needs_resync
            );
        }
        for dc in &s.cluster.needs_resync {
            out += &match s.cluster.divergent.get(dc) {
                None => format!(
                    "  {dc}: divergent writes not kept yet (its agent keeps them when it comes back; mark-resynced waits)\n"
                ),
                Some(d) if d.rows == 0 && d.deleted_keys == 0 => {
                    format!("  {dc}: held no divergent writes from epoch {}\n", d.primary_epoch)
                }
                Some(d) => format!(
                    "  {dc}: divergent writes from epoch {} kept: {} rows, {} deleted keys, at {}\n",
                    d.primary_epoch, d.rows, d.deleted_keys, d.location
                ),
            };
        }
        out += "recent decisions:\n";
        for a in s.audit.iter().rev().take(8) {
            out += &format!("  epoch {:<4} {}  [{}]\n", a.epoch, a.what, a.evidence);
        }
    }
    out
}

/// Human-readable verify output.
pub fn verify_text(r: &VerifyReport) -> String {
    let mut out = format!(
        "primary {} vs standby {}{}\n",
        r.primary,
        r.standby,
        if r.settled {
            ""
        } else {
            " (standby had not caught up: differences may be lag)"
        }
    );
    for c in &r.collections {
        let verdict = if c.identical { "identical" } else { "DIFFERS" };
        out += &format!(
            "{:<40} {:<9} primary {:>9} rows, standby {:>9} rows\n",
            c.collection, verdict, c.primary_rows, c.standby_rows
        );
        if let Some(e) = &c.error {
            out += &format!("    {e}\n");
        }
        for (what, keys) in [
            ("missing on standby", &c.missing_on_standby),
            ("extra on standby", &c.extra_on_standby),
            ("different content", &c.different),
        ] {
            if !keys.is_empty() {
                out += &format!("    {what}: {}\n", keys.join(", "));
            }
        }
        if c.truncated {
            out += "    (more differences not listed)\n";
        }
    }
    out += if r.identical {
        "RESULT: identical\n"
    } else {
        "RESULT: clusters differ\n"
    };
    out
}

fn secs(ms: Option<u64>) -> String {
    ms.map_or("-".into(), |v| format!("{:.1}s", v as f64 / 1000.0))
}

/// A drill report for humans: the steps, RTO and RPO, the verdict.
pub fn drill_text(r: &dr_agent::drill::run::Report) -> String {
    let mut out = format!(
        "drill {} ({:?}): {} -> {}, epoch {} -> {}\n\n{:<40} {:>9}  {:<16} {}\n",
        r.id,
        r.kind,
        r.from,
        r.to,
        r.from_epoch,
        r.to_epoch.map_or("-".into(), |e| e.to_string()),
        "STEP",
        "AFTER",
        "SEEN BY",
        "DETAIL"
    );
    for s in &r.steps {
        let detail: String = s.detail.chars().take(100).collect();
        out += &format!(
            "{:<40} {:>9}  {:<16} {}\n",
            s.name,
            if s.wall_ms.is_some() {
                secs(s.after_ms)
            } else {
                "NOT SEEN".into()
            },
            s.by,
            detail
        );
    }
    let m = &r.markers;
    out += &format!(
        "\nRTO {} (to \"{}\"; target {})\nRPO {} (target {}): {} markers written, newest acknowledged {:?}, newest on {} {:?}, {} lost\n",
        secs(r.rto_ms),
        r.rto_step,
        secs(Some(r.rto_target_ms)),
        r.rpo_ms.map_or("unknown".into(), |v| format!("{v} ms")),
        secs(Some(r.rpo_target_ms)),
        m.written,
        m.newest_acked.map(|x| x.0),
        r.to,
        m.newest_present.map(|x| x.0),
        m.lost
    );
    for p in &r.problems {
        out += &format!("problem: {p}\n");
    }
    for n in &r.next {
        out += &format!("next: {n}\n");
    }
    out += &format!(
        "{}RESULT: {}\n",
        if r.in_audit {
            "recorded in the witnesses' audit\n"
        } else {
            "NOT recorded in the witnesses' audit\n"
        },
        if r.passed { "PASS" } else { "FAIL" }
    );
    out
}

pub fn drill_list(all: &[dr_agent::drill::run::Report]) -> String {
    let mut out = format!(
        "{:<32} {:<10} {:<12} {:>8} {:>9}  {}\n",
        "ID", "KIND", "FROM -> TO", "RTO", "RPO", "RESULT"
    );
    for r in all {
        out += &format!(
            "{:<32} {:<10} {:<12} {:>8} {:>9}  {}\n",
            r.id,
            format!("{:?}", r.kind).to_lowercase(),
            format!("{}->{}", r.from, r.to),
            secs(r.rto_ms),
            r.rpo_ms.map_or("-".into(), |v| format!("{v}ms")),
            if r.passed { "PASS" } else { "FAIL" }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn witness_table_flags_an_unconfirmed_leader_and_shows_only_a_confirmed_ones_verdict() {
        let status = |id: u64, leader: Option<u64>, confirmed: bool, verdict: &str| WitnessStatus {
            id,
            leader,
            leader_confirmed: confirmed,
            quorum_ack_ms: Some(if confirmed { 40 } else { 3_200 }),
            term: 2,
            raft_state: "Leader".into(),
            cluster: Default::default(),
            observation: Default::default(),
            agents: Default::default(),
            verdict: dr_witness::decide::Verdict::Stable(verdict.into()),
            lease_remaining_ms: None,
            audit: vec![],
            timing: Default::default(),
        };
        // Witness 1 is cut off and no longer names itself; witness 2 leads.
        let all = vec![
            (1, Ok(status(1, None, false, "stale"))),
            (2, Ok(status(2, Some(2), true, "current"))),
        ];
        let t = witness_table(&all);
        assert!(
            t.contains("witness 1 is an UNCONFIRMED leader (no quorum acknowledgement for 3.2s)"),
            "{t}"
        );
        assert!(!t.contains("witness 2 is an UNCONFIRMED"), "{t}");
        assert!(
            t.contains("Stable(\"current\")") && !t.contains("stale"),
            "{t}"
        );
        // A leader that does not say it is confirmed (an older witness, or
        // an unconfirmed one): no decision state is shown as the leader's.
        let all = vec![(2, Ok(status(2, Some(2), false, "unsure")))];
        assert!(!witness_table(&all).contains("leader decision"));
    }

    #[test]
    fn witness_table_shows_leader_epoch_and_unreachable_witnesses() {
        let all = vec![(1, Err(anyhow::anyhow!("connection refused")))];
        let t = witness_table(&all);
        assert!(
            t.contains("WITNESS") && t.contains("connection refused"),
            "{t}"
        );
    }
}

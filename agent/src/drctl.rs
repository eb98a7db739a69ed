//! The logic behind `drctl`: reaching agents' admin APIs, status and verify.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;

use crate::tls::TlsFiles;
use dr_proto::pb::{self, admin_client::AdminClient, witness_client::WitnessClient};
use dr_witness::decide::OperatorRequest;
use dr_witness::model::Outcome;
use dr_witness::service::WitnessStatus;

/// `drctl.yaml`: which agents to talk to, with which operator certificate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrctlConfig {
    pub agents: BTreeMap<String, AgentRef>,
    /// The witness quorum (id -> address), for `drctl witness ...` and the
    /// witness view in `drctl status`.
    #[serde(default)]
    pub witnesses: BTreeMap<u64, String>,
    pub tls: DrctlTls,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentRef {
    /// e.g. `https://127.0.0.1:7443`
    pub address: String,
    /// DNS name in the agent's certificate; default `agent.<datacenter>`.
    #[serde(default)]
    pub identity: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrctlTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl DrctlConfig {
    fn tls_files(&self) -> TlsFiles {
        TlsFiles {
            ca: self.tls.ca.clone(),
            cert: self.tls.cert.clone(),
            key: self.tls.key.clone(),
        }
    }

    fn witness_client(&self, id: u64) -> Result<WitnessClient<Channel>> {
        let addr = self
            .witnesses
            .get(&id)
            .with_context(|| format!("no witness {id} in the drctl config"))?;
        let ch = dr_witness::network::channel(&self.tls_files(), id, addr)?;
        Ok(WitnessClient::new(ch))
    }

    /// Every witness's status (or why it could not be reached).
    pub async fn witness_status(&self) -> Vec<(u64, Result<WitnessStatus>)> {
        let mut out = vec![];
        for id in self.witnesses.keys() {
            let r = async {
                let mut c = self.witness_client(*id)?;
                let mut req = tonic::Request::new(pb::Json {
                    body: b"{}".to_vec(),
                });
                req.set_timeout(Duration::from_secs(3));
                let reply = c
                    .status(req)
                    .await
                    .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
                Ok(serde_json::from_slice(&reply.into_inner().body)?)
            }
            .await;
            out.push((*id, r));
        }
        out
    }

    /// Sends an operator request to the leader (tries every witness).
    pub async fn witness_command(&self, req: &OperatorRequest) -> Result<String> {
        let body = serde_json::to_vec(req)?;
        let mut errors = vec![];
        for id in self.witnesses.keys() {
            let r = async {
                let mut c = self.witness_client(*id)?;
                let mut r = tonic::Request::new(pb::Json { body: body.clone() });
                r.set_timeout(Duration::from_secs(10));
                c.operator(r)
                    .await
                    .map_err(|s| anyhow::anyhow!("{}", s.message()))
            }
            .await;
            match r {
                Ok(reply) => {
                    let text: serde_json::Value = serde_json::from_slice(&reply.into_inner().body)?;
                    return Ok(format!("witness {id}: {}", text.as_str().unwrap_or("ok")));
                }
                Err(e) => errors.push(format!("witness {id}: {e:#}")),
            }
        }
        bail!("no witness accepted the request: {}", errors.join("; "))
    }

    pub fn load(path: &Path) -> Result<DrctlConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read the drctl config {}", path.display()))?;
        let mut c: DrctlConfig = serde_norway::from_str(&text).with_context(|| {
            format!(
                "{}: invalid drctl config (see deploy/examples/drctl.yaml)",
                path.display()
            )
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut c.tls.ca, &mut c.tls.cert, &mut c.tls.key] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if c.agents.is_empty() {
            bail!("{}: agents: list at least one agent", path.display());
        }
        Ok(c)
    }

    pub async fn connect(&self, dc: &str) -> Result<AdminClient<Channel>> {
        let a = self
            .agents
            .get(dc)
            .with_context(|| format!("no agent {dc} in the drctl config"))?;
        let identity = a.identity.clone().unwrap_or_else(|| format!("agent.{dc}"));
        let tls = self.tls_files();
        let liveness = dr_proto::channel::Liveness::default();
        let ch = dr_proto::channel::endpoint(&a.address, tls.client_config(&identity)?, liveness)?
            .timeout(Duration::from_secs(3600))
            .connect_with_connector(dr_proto::channel::connector(liveness))
            .await
            .with_context(|| format!("connect to agent {dc} at {}", a.address))?;
        Ok(AdminClient::new(ch).max_decoding_message_size(crate::milvus::MAX_MESSAGE_BYTES))
    }

    /// Drops a collection the agent of `dc` keeps unmanaged.
    pub async fn drop_unmanaged(&self, dc: &str, collection: &str) -> Result<String> {
        let mut c = self.connect(dc).await?;
        let r = c
            .drop_unmanaged(pb::DropUnmanagedRequest {
                collection: collection.to_string(),
            })
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        Ok(r.into_inner().message)
    }

    pub async fn status(&self, dc: &str) -> Result<pb::StatusReply> {
        let mut c = self.connect(dc).await?;
        Ok(c.status(pb::StatusRequest {}).await?.into_inner())
    }
}

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
        for c in &s.collections {
            out += &format!(
                "    {:<40} {:>10} rows  {}\n",
                c.collection, c.rows, c.state
            );
        }
    }
    out
}

/// The newest committed state any reachable witness reports.
pub async fn newest_cluster(cfg: &DrctlConfig) -> Option<dr_witness::model::Cluster> {
    cfg.witness_status()
        .await
        .into_iter()
        .filter_map(|(_, r)| r.ok().map(|s| s.cluster))
        .max_by_key(|c| c.version)
}

/// Follows a requested switchover until it completes or is aborted, and
/// reports how long it took and what the witnesses recorded.
pub async fn await_switchover(cfg: &DrctlConfig, from_epoch: u64, to: &str) -> Result<String> {
    let started = std::time::Instant::now();
    let mut begun = false;
    loop {
        let all = cfg.witness_status().await;
        let newest = all
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok())
            .max_by_key(|s| s.cluster.version);
        if let Some(s) = newest {
            if s.cluster.epoch > from_epoch {
                // The entry that raised the epoch past ours.
                let evidence = s
                    .audit
                    .iter()
                    .rev()
                    .find(|a| {
                        a.epoch > from_epoch
                            && matches!(
                                a.outcome,
                                Some(
                                    Outcome::SwitchoverComplete { .. }
                                        | Outcome::FailoverCommitted { .. }
                                )
                            )
                    })
                    .map(|a| format!("{}: {}", a.what, a.evidence))
                    .unwrap_or_default();
                return Ok(format!(
                    "epoch {}: {} is primary; committed {:.1}s after the request ({evidence})",
                    s.cluster.epoch,
                    s.cluster.primary,
                    started.elapsed().as_secs_f64()
                ));
            }
            let switching = s.cluster.phase != dr_witness::model::Phase::Stable;
            if begun && !switching {
                let why = s
                    .audit
                    .iter()
                    .rev()
                    .find_map(|a| match &a.outcome {
                        Some(Outcome::SwitchoverAborted { why }) => Some(why.clone()),
                        _ => None,
                    })
                    .unwrap_or_else(|| "no reason recorded".into());
                bail!("the switchover to {to} was aborted: {why}");
            }
            begun |= switching;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("no outcome after 10 minutes; see `drctl witness status`");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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
        out += "recent decisions:\n";
        for a in s.audit.iter().rev().take(8) {
            out += &format!("  epoch {:<4} {}  [{}]\n", a.epoch, a.what, a.evidence);
        }
    }
    out
}

/// Result of comparing one collection on both clusters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CollectionVerify {
    pub collection: String,
    pub primary_rows: u64,
    pub standby_rows: u64,
    pub identical: bool,
    /// Keys the primary has and the standby lacks.
    pub missing_on_standby: Vec<String>,
    /// Keys the standby has and the primary lacks.
    pub extra_on_standby: Vec<String>,
    /// Keys whose content differs.
    pub different: Vec<String>,
    /// More differences exist than were listed.
    pub truncated: bool,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VerifyReport {
    pub primary: String,
    pub standby: String,
    /// Whether the standby had applied the primary's state as of the start
    /// of verify before comparing.
    pub settled: bool,
    pub identical: bool,
    pub collections: Vec<CollectionVerify>,
}

pub struct VerifyOptions {
    pub buckets: u32,
    pub limit: u32,
    /// Wait up to this long for the standby to apply the primary's state as
    /// of the start of verify.
    pub settle: Duration,
}

/// Compares the two clusters by content: bucket digests first, then the
/// keys of the differing buckets.
pub async fn verify(cfg: &DrctlConfig, opts: &VerifyOptions) -> Result<VerifyReport> {
    let dcs: Vec<String> = cfg.agents.keys().cloned().collect();
    if dcs.len() != 2 {
        bail!("verify needs exactly two agents in the drctl config");
    }
    let mut roles = BTreeMap::new();
    for dc in &dcs {
        let s = cfg
            .status(dc)
            .await
            .with_context(|| format!("status of {dc}"))?;
        roles.insert(dc.clone(), s.role);
    }
    let primary = dcs
        .iter()
        .find(|d| roles[*d] == "source")
        .cloned()
        .unwrap_or_else(|| dcs[0].clone());
    let standby = dcs
        .iter()
        .find(|d| **d != primary)
        .cloned()
        .unwrap_or_default();

    // Settle: the standby must have applied the primary's state as of now.
    let start = dr_proto::now_ms();
    let deadline = tokio::time::Instant::now() + opts.settle;
    let mut settled = false;
    loop {
        let s = cfg.status(&standby).await?;
        if s.replication
            .as_ref()
            .is_some_and(|r| r.applied_snapshot_ms >= start)
        {
            settled = true;
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let (mut pc, mut sc) = (cfg.connect(&primary).await?, cfg.connect(&standby).await?);
    let req = pb::DigestRequest {
        collections: vec![],
        buckets: opts.buckets,
    };
    let (pd, sd) = tokio::try_join!(pc.digest(req.clone()), sc.digest(req))?;
    let (pd, sd) = (pd.into_inner(), sd.into_inner());
    let key = |d: &pb::CollectionDigest| format!("{}.{}", d.database, d.collection);
    let pmap: BTreeMap<String, &pb::CollectionDigest> =
        pd.collections.iter().map(|d| (key(d), d)).collect();
    let smap: BTreeMap<String, &pb::CollectionDigest> =
        sd.collections.iter().map(|d| (key(d), d)).collect();
    let names: BTreeSet<&String> = pmap.keys().chain(smap.keys()).collect();
    let mut report = VerifyReport {
        primary: primary.clone(),
        standby: standby.clone(),
        settled,
        identical: true,
        collections: vec![],
    };
    for name in names {
        let mut cv = CollectionVerify {
            collection: name.clone(),
            ..Default::default()
        };
        match (pmap.get(name), smap.get(name)) {
            (Some(p), None) => {
                cv.primary_rows = p.rows;
                cv.error = Some("collection missing on the standby".into());
            }
            (None, Some(s)) => {
                cv.standby_rows = s.rows;
                cv.error = Some("collection exists only on the standby".into());
            }
            (Some(p), Some(s)) => {
                cv.primary_rows = p.rows;
                cv.standby_rows = s.rows;
                if !p.error.is_empty() || !s.error.is_empty() {
                    cv.error = Some(
                        format!("primary: {} standby: {}", p.error, s.error)
                            .trim()
                            .to_string(),
                    );
                    cv.identical = p.error == s.error && p.rows == s.rows;
                } else {
                    let differing: Vec<u32> = (0..opts.buckets)
                        .filter(|&b| {
                            let i = b as usize;
                            p.buckets.get(i) != s.buckets.get(i)
                                || p.counts.get(i) != s.counts.get(i)
                        })
                        .collect();
                    if differing.is_empty() {
                        cv.identical = true;
                    } else {
                        narrow(&mut pc, &mut sc, p, &differing, opts, &mut cv).await?;
                    }
                }
            }
            (None, None) => unreachable!(),
        }
        report.identical &= cv.identical;
        report.collections.push(cv);
    }
    Ok(report)
}

async fn narrow(
    pc: &mut AdminClient<Channel>,
    sc: &mut AdminClient<Channel>,
    d: &pb::CollectionDigest,
    differing: &[u32],
    opts: &VerifyOptions,
    cv: &mut CollectionVerify,
) -> Result<()> {
    let req = pb::BucketRowsRequest {
        collection: Some(pb::CollectionRef {
            database: d.database.clone(),
            collection: d.collection.clone(),
        }),
        buckets: opts.buckets,
        wanted: differing.to_vec(),
        limit: opts.limit.saturating_mul(4).max(1000),
    };
    let (pr, sr) = tokio::try_join!(pc.bucket_rows(req.clone()), sc.bucket_rows(req))?;
    let (pr, sr) = (pr.into_inner(), sr.into_inner());
    let fmt = |k: &Option<pb::key_hash::Key>| match k {
        Some(pb::key_hash::Key::Int(v)) => v.to_string(),
        Some(pb::key_hash::Key::Str(s)) => format!("{s:?}"),
        None => String::new(),
    };
    let pm: BTreeMap<String, u64> = pr.rows.iter().map(|r| (fmt(&r.key), r.hash)).collect();
    let sm: BTreeMap<String, u64> = sr.rows.iter().map(|r| (fmt(&r.key), r.hash)).collect();
    let limit = opts.limit as usize;
    for (k, h) in &pm {
        match sm.get(k) {
            None => cv.missing_on_standby.push(k.clone()),
            Some(sh) if sh != h => cv.different.push(k.clone()),
            _ => {}
        }
    }
    for k in sm.keys() {
        if !pm.contains_key(k) {
            cv.extra_on_standby.push(k.clone());
        }
    }
    cv.truncated = pr.truncated || sr.truncated;
    for v in [
        &mut cv.missing_on_standby,
        &mut cv.extra_on_standby,
        &mut cv.different,
    ] {
        if v.len() > limit {
            v.truncate(limit);
            cv.truncated = true;
        }
    }
    // Digests differed, so something differs even if the listing came up empty.
    cv.identical = false;
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_loads_with_witnesses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("drctl.yaml");
        std::fs::write(&path, include_str!("../../deploy/examples/drctl.yaml")).unwrap();
        let c = DrctlConfig::load(&path).unwrap();
        assert_eq!(c.agents.len(), 2);
        assert_eq!(c.witnesses.len(), 3);
        assert!(c.witnesses[&2].starts_with("https://"));
    }

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
    fn a_witness_status_without_the_confirmation_fields_still_parses() {
        let mut v = serde_json::to_value(WitnessStatus {
            id: 1,
            leader: Some(1),
            leader_confirmed: true,
            quorum_ack_ms: Some(5),
            term: 1,
            raft_state: "Leader".into(),
            cluster: Default::default(),
            observation: Default::default(),
            agents: Default::default(),
            verdict: dr_witness::decide::Verdict::NotLeader,
            lease_remaining_ms: None,
            audit: vec![],
            timing: Default::default(),
        })
        .unwrap();
        let obj = v.as_object_mut().unwrap();
        obj.remove("leader_confirmed");
        obj.remove("quorum_ack_ms");
        let s: WitnessStatus = serde_json::from_value(v).unwrap();
        assert_eq!(
            (s.leader, s.leader_confirmed, s.quorum_ack_ms),
            (Some(1), false, None)
        );
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

//! The operator's client: reaching the agents' admin APIs and the
//! witnesses from outside, with an operator certificate (`drctl.yaml`).
//! Status, switchover and verify as data; `drctl` (src/bin/drctl) renders
//! them, and the tests and scripts use them directly.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;

use crate::tls::TlsFiles;
use dr_proto::pb::{self, admin_client::AdminClient, witness_client::WitnessClient};
use dr_witness::api::WitnessStatus;
use dr_witness::decide::OperatorRequest;
use dr_witness::model::Outcome;

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
    /// `drctl drill`: targets and where reports are kept.
    #[serde(default)]
    pub drill: crate::drill::run::DrillConfig,
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
        let ch = dr_witness::api::channel(&self.tls_files().load_for_client()?, id, addr)?;
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

    /// Sends an operator request to the leader (tries every witness). While
    /// the leader is committing another decision it asks to retry: this
    /// does, for up to 15 s.
    pub async fn witness_command(&self, req: &OperatorRequest) -> Result<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            match self.witness_command_once(req).await {
                Err(e)
                    if format!("{e:#}").contains("being committed; retry")
                        && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                r => return r,
            }
        }
    }

    async fn witness_command_once(&self, req: &OperatorRequest) -> Result<String> {
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
        for p in [&mut c.tls.ca, &mut c.tls.cert, &mut c.tls.key]
            .into_iter()
            .chain(c.drill.dir.as_mut())
        {
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
        let tls = self.tls_files().client_config(&identity)?;
        let liveness = dr_proto::channel::Liveness::default();
        let ch = dr_proto::channel::endpoint(&a.address, liveness)?
            .timeout(Duration::from_secs(3600))
            .connect_with_connector(dr_proto::channel::connector(&tls, liveness))
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
}

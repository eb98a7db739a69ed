//! Drills, the operator's part (`drctl drill`): a planned switchover or a
//! simulated outage of the primary, measured end to end from the agents'
//! events, the witnesses' observations and audit, and marker rows.
//!
//! RTO: outage start (or the switchover request) to the last step that
//! moves clients: the service verified through the name when DNS switching
//! and its proof are configured, else the last DNS step, else the new
//! primary acting. RPO: the newest marker the old primary acknowledged
//! minus the newest marker present on the new primary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::kind;
use crate::client::DrctlConfig;
use dr_proto::now_ms;
use dr_proto::pb;
use dr_witness::api::WitnessStatus;
use dr_witness::decide::OperatorRequest;
use dr_witness::model::{Outcome, Phase};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Failover,
    Switchover,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Failover => "failover",
            Kind::Switchover => "switchover",
        }
    }
}

/// `drctl.yaml` `drill:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillConfig {
    /// Where reports are kept (default: `$XDG_STATE_HOME/milvus-dr/drills`,
    /// else `~/.local/state/milvus-dr/drills`).
    #[serde(default)]
    pub dir: Option<PathBuf>,
    #[serde(default = "d_rto")]
    pub rto_target_ms: u64,
    #[serde(default = "d_rpo")]
    pub rpo_target_ms: u64,
}

/// Markers written before a drilled outage starts, at least.
const MIN_MARKERS: u64 = 10;

fn d_rto() -> u64 {
    60_000
}
fn d_rpo() -> u64 {
    1_000
}

impl Default for DrillConfig {
    fn default() -> Self {
        DrillConfig {
            dir: None,
            rto_target_ms: d_rto(),
            rpo_target_ms: d_rpo(),
        }
    }
}

impl DrillConfig {
    pub fn dir(&self) -> PathBuf {
        if let Some(d) = &self.dir {
            return d.clone();
        }
        let base = std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/state")))
            .unwrap_or_else(|| PathBuf::from("."));
        base.join("milvus-dr/drills")
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub kind: Kind,
    /// Start even though the standby is unhealthy or behind.
    pub force: bool,
    pub rto_target: Duration,
    pub rpo_target: Duration,
    /// Markers are written this long before the outage or request.
    pub warmup: Duration,
    /// The drill gives up (and ends the outage) after this long.
    pub timeout: Duration,
}

/// One measured step.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Step {
    pub name: String,
    /// Wall clock (ms since the Unix epoch) of whoever observed it.
    pub wall_ms: Option<u64>,
    /// Since the outage start (or the switchover request).
    pub after_ms: Option<u64>,
    /// Who observed it.
    pub by: String,
    pub detail: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Markers {
    pub written: u64,
    pub failed: u64,
    /// Newest marker the old primary acknowledged: (seq, written_ms).
    pub newest_acked: Option<(u64, u64)>,
    /// Newest marker present on the new primary.
    pub newest_present: Option<(u64, u64)>,
    /// Markers the old primary acknowledged that the new one lacked
    /// (deleted from the old primary after the drill).
    pub lost: u64,
}

/// A drill's report, as kept and printed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub id: String,
    pub kind: Kind,
    pub started_wall_ms: u64,
    pub from: String,
    pub to: String,
    pub from_epoch: u64,
    pub to_epoch: Option<u64>,
    pub steps: Vec<Step>,
    pub rto_ms: Option<u64>,
    /// The step RTO runs to.
    pub rto_step: String,
    pub rpo_ms: Option<u64>,
    pub markers: Markers,
    pub rto_target_ms: u64,
    pub rpo_target_ms: u64,
    pub passed: bool,
    /// Why it did not pass, and anything odd seen.
    pub problems: Vec<String>,
    /// The witnesses' audit holds notes naming this drill.
    pub in_audit: bool,
    /// What the operator does next.
    pub next: Vec<String>,
}

/// Why a drill did not start.
#[derive(Debug)]
pub struct Refused(pub Vec<String>);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the drill was not started: {} (use --force to drill anyway)",
            self.0.join("; ")
        )
    }
}

impl std::error::Error for Refused {}

pub fn new_id() -> String {
    let now = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let tail = &uuid::Uuid::new_v4().simple().to_string()[..4];
    format!("drill-{now}-{tail}")
}

fn leader(all: &[(u64, Result<WitnessStatus>)]) -> Option<&WitnessStatus> {
    all.iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .find(|s| s.leader_confirmed)
}

/// What the drill starts from, or why it must not start.
pub fn preflight(
    all: &[(u64, Result<WitnessStatus>)],
    kind: Kind,
) -> Result<(WitnessStatus, Vec<String>)> {
    let Some(l) = leader(all) else {
        bail!("no witness is a confirmed leader: a drill needs the quorum (see `drctl witness status`)");
    };
    let c = &l.cluster;
    let mut why = vec![];
    if c.epoch == 0 {
        bail!("the witnesses are not initialised");
    }
    if c.phase != Phase::Stable {
        why.push("a switchover is under way".to_string());
    }
    let Some(standby) = c.standby().cloned() else {
        bail!("only one datacenter: nothing to drill");
    };
    // The anti-flap window holds failovers only; a switchover is planned.
    if let Some(last) = c.last_failover_wall_ms.filter(|_| kind == Kind::Failover) {
        let age = (now_ms().max(0) as u64).saturating_sub(last);
        if age < l.timing.anti_flap_ms {
            why.push(format!(
                "the last failover was {} s ago, within the {} s anti-flap window: the witnesses would hold this one",
                age / 1000,
                l.timing.anti_flap_ms / 1000
            ));
        }
    }
    if c.needs_resync.contains(&standby) {
        why.push(format!(
            "the standby {standby} was demoted by a failover and is not resynchronised (`drctl verify`, then `drctl witness mark-resynced {standby}`)"
        ));
    }
    for (dc, role) in [(&c.primary, "primary"), (&standby, "standby")] {
        match l.observation.get(dc) {
            Some(v) if v.healthy => {}
            Some(v) => why.push(format!(
                "the {role} {dc} looks unhealthy to the leader (Milvus ok: {}, agent silent for {:?} ms)",
                v.milvus_ok, v.agent_silent_ms
            )),
            None => why.push(format!("the leader has no observation of the {role} {dc}")),
        }
    }
    match l.agents.get(&standby) {
        None => why.push(format!("no heartbeat from the standby {standby}'s agent")),
        Some(a) if a.ago_ms > l.timing.lease_ms => why.push(format!(
            "the standby {standby}'s agent last heartbeat was {} ms ago",
            a.ago_ms
        )),
        Some(a) => match a.heartbeat.lag_ms {
            Some(lag) if lag <= l.timing.data_loss_budget_ms => {}
            Some(lag) => why.push(format!(
                "the standby {standby} is {lag} ms behind, over the {} ms data-loss budget",
                l.timing.data_loss_budget_ms
            )),
            None => why.push(format!(
                "the standby {standby} has not applied a replication pass yet"
            )),
        },
    }
    Ok((l.clone(), why))
}

async fn admin(
    cfg: &DrctlConfig,
    dc: &str,
) -> Result<pb::admin_client::AdminClient<tonic::transport::Channel>> {
    cfg.connect(dc).await
}

async fn drill_call(
    cfg: &DrctlConfig,
    dc: &str,
    id: &str,
    action: pb::DrillAction,
    outage_max_ms: u64,
    discard_after_seq: Option<u64>,
) -> Result<pb::DrillReply> {
    let mut c = admin(cfg, dc).await?;
    let r = c
        .drill(pb::DrillRequest {
            id: id.to_string(),
            action: action as i32,
            outage_max_ms,
            discard_after_seq,
        })
        .await
        .map_err(|s| anyhow::anyhow!("agent {dc}: {}", s.message()))?;
    Ok(r.into_inner())
}

async fn events(cfg: &DrctlConfig, dc: &str, since: u64) -> Vec<pb::AgentEvent> {
    match admin(cfg, dc).await {
        Ok(mut c) => c
            .events(pb::EventsRequest {
                since_wall_ms: since,
            })
            .await
            .map(|r| r.into_inner().events)
            .unwrap_or_default(),
        Err(_) => vec![],
    }
}

/// Adds a note to the witnesses' audit, retrying while a decision is
/// being committed.
async fn note(cfg: &DrctlConfig, what: String, evidence: String) -> bool {
    for _ in 0..20 {
        let req = OperatorRequest::Note {
            what: what.clone(),
            evidence: evidence.clone(),
            by: String::new(),
        };
        match cfg.witness_command(&req).await {
            Ok(_) => return true,
            Err(e) => tracing::debug!(error = %format!("{e:#}"), "audit note not taken yet"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

/// What the polling loop learns from the witnesses.
#[derive(Default)]
struct Watch {
    /// Per witness: since when (wall ms) it has seen the old primary down.
    unhealthy_since: BTreeMap<u64, u64>,
    committed: Option<(u64, u64, String)>, // (wall_ms, epoch, evidence)
    last_verdict: String,
}

impl Watch {
    fn observe(
        &mut self,
        all: &[(u64, Result<WitnessStatus>)],
        from: &str,
        from_epoch: u64,
        to: &str,
    ) {
        let now = now_ms().max(0) as u64;
        for (id, s) in all {
            let Ok(s) = s else { continue };
            if let Some(v) = s.observation.get(from).filter(|v| !v.healthy) {
                let since = now.saturating_sub(v.unhealthy_for_ms);
                let e = self.unhealthy_since.entry(*id).or_insert(since);
                *e = (*e).min(since);
            }
            if s.leader_confirmed {
                self.last_verdict = format!("{:?}", s.verdict);
            }
            if self.committed.is_none() && s.cluster.epoch > from_epoch && s.cluster.primary == to {
                let entry = s.audit.iter().find(|a| {
                    a.epoch > from_epoch
                        && matches!(
                            &a.outcome,
                            Some(Outcome::FailoverCommitted { to: t, .. } | Outcome::SwitchoverComplete { to: t }) if t == to
                        )
                });
                self.committed = Some(match entry {
                    Some(a) => (a.wall_ms, a.epoch, format!("{}: {}", a.what, a.evidence)),
                    None => (now, s.cluster.epoch, "seen in the witness status".into()),
                });
            }
        }
    }
}

fn first(evs: &[pb::AgentEvent], kind: &str, epoch: Option<u64>) -> Option<pb::AgentEvent> {
    evs.iter()
        .filter(|e| e.kind == kind && epoch.is_none_or(|x| e.epoch == x))
        .min_by_key(|e| e.wall_ms)
        .cloned()
}

/// Runs a drill and returns its report (kept in `dir`, noted in the
/// witnesses' audit). `Refused` when a precondition fails without `force`.
pub async fn run(cfg: &DrctlConfig, opts: &Options, dir: &Path) -> Result<Report> {
    let all = cfg.witness_status().await;
    let (leader, why) = preflight(&all, opts.kind)?;
    if !why.is_empty() && !opts.force {
        return Err(Refused(why).into());
    }
    let c = leader.cluster.clone();
    let (from, to) = (
        c.primary.clone(),
        c.standby().cloned().context("no standby")?,
    );
    let majority = cfg.witnesses.len() / 2 + 1;
    let confirmation = leader.timing.confirmation_ms;
    for dc in [&from, &to] {
        cfg.status(dc)
            .await
            .with_context(|| format!("the agent of {dc} must be reachable for a drill"))?;
    }
    let dns = cfg.status(&to).await?.dns;
    let id = new_id();
    let started = now_ms().max(0) as u64;
    let mut problems: Vec<String> = why.iter().map(|w| format!("forced past: {w}")).collect();
    let in_audit_start = note(
        cfg,
        format!("drill {id}: {} of {from} begins", opts.kind.as_str()),
        format!(
            "drctl drill {}: {} primary at epoch {}, {} standby",
            opts.kind.as_str(),
            from,
            c.epoch,
            to
        ),
    )
    .await;

    // Markers, then the outage (or the request).
    drill_call(cfg, &from, &id, pb::DrillAction::MarkersStart, 0, None).await?;
    // Steady state first: markers reach the standby (the first drill
    // creates their collection, which the standby must create and load).
    let flowing = Instant::now() + opts.timeout.min(Duration::from_secs(120));
    loop {
        let r = drill_call(cfg, &to, &id, pb::DrillAction::MarkersRead, 0, None).await;
        if r.is_ok_and(|r| r.newest_present.is_some()) {
            break;
        }
        if Instant::now() > flowing {
            let _ = drill_call(cfg, &from, &id, pb::DrillAction::End, 0, None).await;
            bail!(
                "the drill's markers written on {from} did not reach {to} within {:?}: replication is not flowing (see `drctl status`)",
                opts.timeout.min(Duration::from_secs(120))
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(opts.warmup).await;
    // And enough markers to measure with, however slowly this Milvus
    // acknowledges them (a loaded machine writes fewer than one per tick).
    while Instant::now() < flowing {
        match drill_call(cfg, &from, &id, pb::DrillAction::MarkersRead, 0, None).await {
            Ok(r) if r.markers_written >= MIN_MARKERS => break,
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let timeout_ms = opts.timeout.as_millis() as u64;
    let (t0, mut acked) = match opts.kind {
        Kind::Failover => {
            let r = drill_call(
                cfg,
                &from,
                &id,
                pb::DrillAction::OutageStart,
                timeout_ms,
                None,
            )
            .await?;
            (r.outage_start_wall_ms, r)
        }
        Kind::Switchover => {
            let t0 = now_ms().max(0) as u64;
            if let Err(e) = cfg
                .witness_command(&OperatorRequest::Switchover {
                    to: to.clone(),
                    by: String::new(),
                })
                .await
            {
                let _ = drill_call(cfg, &from, &id, pb::DrillAction::End, 0, None).await;
                return Err(e.context("the switchover was not accepted"));
            }
            (t0, pb::DrillReply::default())
        }
    };
    tracing::info!(drill = %id, kind = opts.kind.as_str(), %from, %to, "drill under way");

    // Follow it.
    let deadline = Instant::now() + opts.timeout;
    let mut w = Watch::default();
    let mut ev_to: Vec<pb::AgentEvent>;
    let mut ev_from: Vec<pb::AgentEvent>;
    loop {
        let all = cfg.witness_status().await;
        w.observe(&all, &from, c.epoch, &to);
        ev_to = events(cfg, &to, t0).await;
        ev_from = events(cfg, &from, t0).await;
        if let Some((_, epoch, _)) = &w.committed {
            let e = Some(*epoch);
            let acting = first(&ev_to, kind::ACTING_PRIMARY, e).is_some();
            let fenced = first(&ev_from, kind::FENCED, Some(c.epoch)).is_some();
            let dns_done = dns.is_empty()
                || [kind::DNS_VERIFIED, kind::DNS_FAILED]
                    .iter()
                    .any(|k| first(&ev_to, k, e).is_some())
                || (first(&ev_to, kind::DNS_AUTHORITATIVE, e).is_some()
                    && first(&ev_to, kind::DNS_VERIFIED, e).is_none()
                    && Instant::now() + opts.timeout / 2 > deadline);
            if acting && fenced && dns_done {
                break;
            }
        }
        if Instant::now() > deadline {
            problems.push(format!(
                "not complete after {:?}; the leader's last verdict: {}",
                opts.timeout, w.last_verdict
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Markers: what the old primary acknowledged, what the new one has.
    if opts.kind == Kind::Switchover {
        acked = drill_call(cfg, &from, &id, pb::DrillAction::MarkersRead, 0, None).await?;
    }
    let present = if w.committed.is_some() {
        drill_call(cfg, &to, &id, pb::DrillAction::MarkersRead, 0, None)
            .await?
            .newest_present
    } else {
        None
    };
    let discard_after = w
        .committed
        .as_ref()
        .map(|_| present.as_ref().map_or(0, |m| m.seq));
    let ended = drill_call(cfg, &from, &id, pb::DrillAction::End, 0, discard_after).await;
    let lost = match &ended {
        Ok(r) => r.discarded,
        Err(e) => {
            problems.push(format!("ending the drill on {from}: {e:#}"));
            0
        }
    };
    let newest_acked = acked.newest_acked.as_ref().map(|m| (m.seq, m.written_ms));
    let newest_present = present.as_ref().map(|m| (m.seq, m.written_ms));
    let rpo_ms = match (w.committed.is_some(), newest_acked, newest_present) {
        (false, _, _) => None,
        (true, None, _) => {
            problems.push("no marker was acknowledged before the outage".into());
            None
        }
        (true, Some((_, a)), Some((_, p))) => Some(a.saturating_sub(p)),
        // Nothing arrived: everything since the markers began is lost.
        (true, Some((_, a)), None) => Some(a.saturating_sub(started)),
    };
    let markers = Markers {
        written: acked.markers_written,
        failed: acked.markers_failed,
        newest_acked,
        newest_present,
        lost,
    };

    // The steps.
    let to_epoch = w.committed.as_ref().map(|(_, e, _)| *e);
    let step = |name: &str, wall: Option<u64>, by: &str, detail: String| Step {
        name: name.to_string(),
        wall_ms: wall,
        after_ms: wall.map(|x| x.saturating_sub(t0)),
        by: by.to_string(),
        detail,
    };
    let ev_step = |name: &str, evs: &[pb::AgentEvent], k: &str, epoch: Option<u64>, dc: &str| {
        let e = first(evs, k, epoch);
        step(
            name,
            e.as_ref().map(|e| e.wall_ms),
            &format!("agent {dc}"),
            e.map(|e| e.detail).unwrap_or_default(),
        )
    };
    let mut steps = vec![];
    match opts.kind {
        Kind::Failover => {
            steps.push(step(
                "outage start",
                Some(t0),
                &format!("agent {from}"),
                "drilled: the primary's Milvus counts as dead".into(),
            ));
            let mut since: Vec<u64> = w.unhealthy_since.values().copied().collect();
            since.sort();
            steps.push(step(
                "first unhealthy observation",
                since.first().copied(),
                "witnesses",
                format!(
                    "{} of {} witnesses saw it",
                    since.len(),
                    cfg.witnesses.len()
                ),
            ));
            steps.push(step(
                "majority confirmed",
                since.get(majority - 1).map(|s| s + confirmation),
                "witnesses",
                format!("{majority} witnesses past the {confirmation} ms confirmation window"),
            ));
        }
        Kind::Switchover => {
            steps.push(step(
                "switchover requested",
                Some(t0),
                "drctl",
                format!("to {to}"),
            ));
            steps.push(ev_step(
                "old primary drained",
                &ev_from,
                kind::DRAINED,
                Some(c.epoch),
                &from,
            ));
        }
    }
    steps.push(step(
        "epoch committed",
        w.committed.as_ref().map(|(t, _, _)| *t),
        "witness leader",
        w.committed
            .as_ref()
            .map(|(_, _, e)| e.clone())
            .unwrap_or_default(),
    ));
    steps.push(ev_step(
        "old primary fenced",
        &ev_from,
        kind::FENCED,
        Some(c.epoch),
        &from,
    ));
    steps.push(ev_step(
        "new primary acting",
        &ev_to,
        kind::ACTING_PRIMARY,
        to_epoch,
        &to,
    ));
    if !dns.is_empty() {
        steps.push(ev_step(
            "DNS changed",
            &ev_to,
            kind::DNS_CHANGED,
            to_epoch,
            &to,
        ));
        steps.push(ev_step(
            "all authoritative servers answering",
            &ev_to,
            kind::DNS_AUTHORITATIVE,
            to_epoch,
            &to,
        ));
        steps.push(ev_step(
            "service verified through the name",
            &ev_to,
            kind::DNS_VERIFIED,
            to_epoch,
            &to,
        ));
        if let Some(f) = first(&ev_to, kind::DNS_FAILED, to_epoch) {
            problems.push(format!("DNS: {}", f.detail));
        }
    }
    // RTO runs to the last step that moves clients that was reached.
    let rto_at = steps
        .iter()
        .rev()
        .take_while(|s| s.name != "old primary fenced")
        .find(|s| s.wall_ms.is_some())
        .cloned();
    let complete = steps.iter().all(|s| s.wall_ms.is_some());
    let rto_ms = rto_at
        .as_ref()
        .and_then(|s| s.after_ms)
        .filter(|_| w.committed.is_some());
    for s in steps.iter().filter(|s| s.wall_ms.is_none()) {
        problems.push(format!("step not reached: {}", s.name));
    }
    let (rto_target_ms, rpo_target_ms) = (
        opts.rto_target.as_millis() as u64,
        opts.rpo_target.as_millis() as u64,
    );
    if let Some(r) = rto_ms.filter(|r| *r > rto_target_ms) {
        problems.push(format!("RTO {r} ms is over the {rto_target_ms} ms target"));
    }
    if let Some(r) = rpo_ms.filter(|r| *r > rpo_target_ms) {
        problems.push(format!("RPO {r} ms is over the {rpo_target_ms} ms target"));
    }
    let passed = complete
        && rto_ms.is_some_and(|r| r <= rto_target_ms)
        && rpo_ms.is_some_and(|r| r <= rpo_target_ms);
    let mut next = vec![];
    if opts.kind == Kind::Failover && w.committed.is_some() {
        next.push(format!(
            "{from} was demoted and is now replicated from {to}: when `drctl verify` shows the clusters identical, run `drctl witness mark-resynced {from}`"
        ));
        next.push(format!(
            "then `drctl witness switchover --to {from}` (or `drctl drill switchover`) moves the primary back"
        ));
    }
    let mut report = Report {
        id: id.clone(),
        kind: opts.kind,
        started_wall_ms: started,
        from: from.clone(),
        to: to.clone(),
        from_epoch: c.epoch,
        to_epoch,
        steps,
        rto_ms,
        rto_step: rto_at.map(|s| s.name).unwrap_or_default(),
        rpo_ms,
        markers,
        rto_target_ms,
        rpo_target_ms,
        passed,
        problems,
        in_audit: false,
        next,
    };
    let in_audit_end = note(
        cfg,
        format!(
            "drill {id}: {} {from} -> {to}: {}",
            opts.kind.as_str(),
            if passed { "PASS" } else { "FAIL" }
        ),
        summary(&report).chars().take(3_000).collect(),
    )
    .await;
    report.in_audit = in_audit_start && in_audit_end;
    save(dir, &report)?;
    Ok(report)
}

/// One line: RTO, RPO, targets.
pub fn summary(r: &Report) -> String {
    let ms = |v: Option<u64>| v.map_or("unknown".to_string(), |v| format!("{v} ms"));
    format!(
        "RTO {} (to {}; target {} ms), RPO {} (target {} ms), {} markers written, {} lost{}",
        ms(r.rto_ms),
        if r.rto_step.is_empty() {
            "-"
        } else {
            &r.rto_step
        },
        r.rto_target_ms,
        ms(r.rpo_ms),
        r.rpo_target_ms,
        r.markers.written,
        r.markers.lost,
        if r.problems.is_empty() {
            String::new()
        } else {
            format!("; {}", r.problems.join("; "))
        }
    )
}

pub fn save(dir: &Path, r: &Report) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("create the drill directory {}", dir.display()))?;
    let path = dir.join(format!("{}.json", r.id));
    dr_proto::statefile::write_json(&path, r)?;
    Ok(path)
}

/// Every kept report, oldest first.
pub fn list(dir: &Path) -> Result<Vec<Report>> {
    let mut out = vec![];
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("read {}", dir.display())),
    };
    for e in entries {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "json") {
            out.push(show_path(&p)?);
        }
    }
    out.sort_by_key(|r| r.started_wall_ms);
    Ok(out)
}

fn show_path(p: &Path) -> Result<Report> {
    let text = std::fs::read(p).with_context(|| format!("read {}", p.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("{}: not a drill report", p.display()))
}

pub fn show(dir: &Path, id: &str) -> Result<Report> {
    if !super::valid_id(id) {
        bail!("{id:?} is not a drill id (see `drctl drill list`)");
    }
    let p = dir.join(format!("{id}.json"));
    if !p.exists() {
        bail!(
            "no drill {id} in {} (see `drctl drill list`)",
            dir.display()
        );
    }
    show_path(&p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            id: "drill-1".into(),
            kind: Kind::Failover,
            started_wall_ms: 1,
            from: "dc-a".into(),
            to: "dc-b".into(),
            from_epoch: 1,
            to_epoch: Some(2),
            steps: vec![],
            rto_ms: Some(7_100),
            rto_step: "service verified through the name".into(),
            rpo_ms: Some(0),
            markers: Markers::default(),
            rto_target_ms: 10_000,
            rpo_target_ms: 1_000,
            passed: true,
            problems: vec![],
            in_audit: true,
            next: vec![],
        }
    }

    #[test]
    fn reports_are_kept_listed_and_shown() {
        let dir = tempfile::tempdir().unwrap();
        assert!(list(dir.path()).unwrap().is_empty());
        let mut r = report();
        save(dir.path(), &r).unwrap();
        r.id = "drill-2".into();
        r.started_wall_ms = 2;
        save(dir.path(), &r).unwrap();
        let all = list(dir.path()).unwrap();
        assert_eq!(
            all.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["drill-1", "drill-2"]
        );
        assert_eq!(show(dir.path(), "drill-2").unwrap(), r);
        assert!(show(dir.path(), "drill-3").is_err());
        assert!(show(dir.path(), "../etc/passwd").is_err());
    }

    #[test]
    fn the_summary_names_rto_rpo_and_targets() {
        let s = summary(&report());
        assert!(
            s.contains("RTO 7100 ms (to service verified through the name; target 10000 ms)"),
            "{s}"
        );
        assert!(s.contains("RPO 0 ms (target 1000 ms)"), "{s}");
    }
}

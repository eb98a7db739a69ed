//! The agent side of failover: heartbeats to the witnesses, the lease,
//! self-fencing, the failsafe with the peer, and following epochs.
//!
//! The decisions are [`dr_witness::role::AgentRole`]'s (pure); this module
//! only feeds it time, replies and local facts, and executes its actions:
//! starting and stopping the replication source, raising the sink's epoch
//! floor, draining for a switchover, and the promotion hook.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

mod guard;

use guard::{lease_guard, SOURCE_STOP_GRACE};

use crate::milvus::{Health, Milvus};
use crate::replication::sink::{FailsafeResponder, Sink};
use crate::replication::{base::Base, source, Role, SharedState};
use dr_proto::now_ms;
use dr_proto::pb::{self, replication_client::ReplicationClient, witness_client::WitnessClient};
use dr_witness::decide::HeartbeatReply;
use dr_witness::model::Cluster;
use dr_witness::role::{Action, AgentRole, FailsafeAnswer, Input};
use dr_witness::timing::{Millis, Timing};
use dr_witness::wire::HeartbeatRequest;

/// The role logic, shared by the runtime loop and the failsafe RPC.
pub struct Failover {
    started: Instant,
    role: Mutex<AgentRole>,
    actions: mpsc::UnboundedSender<Action>,
    /// While acting as primary: the instant it must stop unless renewed.
    /// Published after every step; the lease guard enforces it.
    acting_until: watch::Sender<Option<Instant>>,
}

impl Failover {
    /// Until when this agent may act as primary (`None`: not acting).
    pub fn acting_until(&self) -> watch::Receiver<Option<Instant>> {
        self.acting_until.subscribe()
    }

    fn now(&self) -> Millis {
        self.started.elapsed().as_millis() as Millis
    }

    /// Steps the role logic and queues its actions for the runtime.
    pub fn step(&self, input: Input) -> Vec<Action> {
        let now = self.now();
        let (actions, until) = {
            let mut role = self.role.lock().unwrap();
            let actions = role.step(now, input);
            (actions, role.acting_until(now))
        };
        let until = until.map(|u| self.started + Duration::from_millis(u));
        self.acting_until.send_if_modified(|cur| {
            let changed = *cur != until;
            *cur = until;
            changed
        });
        let mut inline = vec![];
        for a in actions {
            match a {
                Action::AnswerFailsafe(_) => inline.push(a),
                other => {
                    let _ = self.actions.send(other);
                }
            }
        }
        inline
    }

    pub fn describe(&self) -> (String, Option<Millis>) {
        let now = self.now();
        let r = self.role.lock().unwrap();
        (r.describe(now), r.lease_remaining(now))
    }
}

impl FailsafeResponder for Failover {
    fn failsafe_asked(&self, epoch: u64) -> FailsafeAnswer {
        for a in self.step(Input::FailsafeAsked { epoch }) {
            if let Action::AnswerFailsafe(ans) = a {
                if ans.ok {
                    tracing::debug!(epoch, "failsafe: confirmed to the peer that no newer epoch is known (promise given)");
                }
                return ans;
            }
        }
        FailsafeAnswer {
            ok: false,
            cluster: None,
        }
    }
}

/// Everything the runtime needs to execute actions.
pub struct Runtime {
    pub datacenter: String,
    pub timing: Timing,
    pub witnesses: BTreeMap<u64, String>,
    pub tls: dr_proto::tls::Tls,
    pub liveness: dr_proto::channel::Liveness,
    pub peer_address: String,
    pub peer_identity: String,
    pub state_dir: PathBuf,
    pub source_cfg: source::SourceConfig,
    pub milvus: Milvus,
    pub health: Arc<Mutex<Health>>,
    /// Wall-clock ms of the last successful local Milvus probe (raw, not
    /// thresholded): the data-loss estimate needs it promptly.
    pub milvus_last_ok_ms: Arc<std::sync::atomic::AtomicI64>,
    pub state: SharedState,
    pub sink: Sink,
    pub on_promote: Option<String>,
    pub hook_timeout: Duration,
    /// Moves the service name here when this agent starts acting as
    /// primary at an epoch (stopped with the source).
    pub dns: Option<crate::dns::Switcher>,
    /// Events for drill reports, and a drilled outage of this datacenter.
    pub drills: crate::drill::Drills,
    /// The capture base (shared with the divergent-writes export).
    pub base: Arc<Base>,
    /// Told before this agent acts as primary at an epoch.
    pub divergence: Option<crate::replication::divergent::Divergence>,
}

fn view_path(dir: &std::path::Path) -> PathBuf {
    dir.join("witness-view.json")
}

/// The witness view this agent last persisted in `state_dir` (epoch,
/// primary): `None` if it never had one; an error naming the file and the
/// fix if the file is unreadable or corrupt (the epoch in it is a promise:
/// an agent must not start as if it had never seen it).
pub fn persisted_view(dir: &std::path::Path) -> Result<Option<Cluster>> {
    Ok(dr_proto::statefile::read_json(
        &view_path(dir),
        "the persisted witness view",
        "restore it from a backup of the state directory, or delete it once \
         `drctl witness status` shows the witnesses reachable (the agent then learns the epoch \
         from them and waits a full lease before acting)",
    )?)
}

fn store_view(dir: &std::path::Path, c: &Cluster) -> Result<()> {
    dr_proto::statefile::write_json(&view_path(dir), c)
}

struct SourceRun {
    epoch: u64,
    stop: CancellationToken,
    task: JoinHandle<()>,
    guard: JoinHandle<()>,
}

/// Starts the failover runtime; returns the shared role logic (for the
/// failsafe RPC) and the task.
pub fn start(rt: Runtime, shutdown: CancellationToken) -> Result<(Arc<Failover>, JoinHandle<()>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let persisted = persisted_view(&rt.state_dir)?;
    if let Some(c) = &persisted {
        info!(epoch = c.epoch, primary = %c.primary, "resuming from the persisted witness view");
    }
    let resumed = persisted.clone();
    let seq_base = (now_ms().max(0) as u64) * 1000;
    let fo = Arc::new(Failover {
        started: Instant::now(),
        role: Mutex::new(AgentRole::new(
            rt.timing,
            rt.datacenter.clone(),
            0,
            resumed,
            seq_base,
        )),
        actions: tx,
        acting_until: watch::channel(None).0,
    });
    let witnesses = witness_clients(&rt.tls, &rt.witnesses, &rt.timing)?;
    let peer = {
        let tls = rt.tls.client_config(&rt.peer_identity)?;
        let ch = dr_proto::channel::lazy(&rt.peer_address, &tls, rt.liveness)?;
        ReplicationClient::new(ch)
    };
    let local = Local {
        source: None,
        base: Some(rt.base.clone()),
        persisted: persisted.map_or(0, |c| c.epoch),
        start_refused: None,
    };
    let task = tokio::spawn(run(rt, fo.clone(), rx, witnesses, peer, local, shutdown));
    Ok((fo, task))
}

/// What the runtime loop owns.
struct Local {
    source: Option<SourceRun>,
    base: Option<Arc<Base>>,
    /// The newest epoch durably persisted in the witness view file.
    persisted: u64,
    /// An epoch at which acting was refused because the view could not be
    /// persisted; acting starts once it is.
    start_refused: Option<u64>,
}

async fn run(
    rt: Runtime,
    fo: Arc<Failover>,
    mut rx: mpsc::UnboundedReceiver<Action>,
    witnesses: BTreeMap<u64, WitnessClient<tonic::transport::Channel>>,
    peer: ReplicationClient<tonic::transport::Channel>,
    mut local: Local,
    shutdown: CancellationToken,
) {
    let timing = rt.timing;
    let tick = Duration::from_millis((timing.heartbeat_ms / 5).clamp(20, 200));
    let mut next_beat = Instant::now();
    {
        let mut s = rt.state.lock().unwrap();
        s.role = Role::Sink;
    }
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(a) = rx.recv() => {
                execute(&rt, &fo, a, &mut local, &witnesses, &peer).await;
                continue;
            }
            _ = tokio::time::sleep(tick) => {}
        }
        // Local facts, then the heartbeat when due.
        let h = rt.health.lock().unwrap().clone();
        let wall = now_ms().max(0) as u64;
        let mut last_ok = rt
            .milvus_last_ok_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        // A drilled outage: Milvus counts as dead since the outage began.
        let drilled = rt.drills.outage_started();
        if let Some(start) = drilled {
            last_ok = last_ok.min(start as i64);
        }
        fo.step(Input::MilvusHealth {
            healthy: h.healthy && drilled.is_none(),
            last_ok_wall_ms: (last_ok > 0).then_some(last_ok as u64),
        });
        let (applied, lag) = {
            let s = rt.state.lock().unwrap();
            (s.applied_snapshot_ms, s.lag_ms(now_ms()))
        };
        if local.source.is_none() && applied > 0 {
            fo.step(Input::Applied {
                snapshot_wall_ms: applied as u64,
                lag_ms: lag.map(|l| l as u64),
            });
        }
        if Instant::now() >= next_beat {
            next_beat = Instant::now() + Duration::from_millis(timing.heartbeat_ms);
            fo.step(Input::HeartbeatDue { wall_ms: wall });
        } else {
            fo.step(Input::Tick);
        }
        retry_persist(&rt, &fo, &mut local, &witnesses, &peer).await;
        let (text, lease) = fo.describe();
        let primary = fo.role.lock().unwrap().cluster().map(|c| c.primary.clone());
        let mut s = rt.state.lock().unwrap();
        s.failover = text;
        if let Some(p) = primary {
            s.primary = p;
        }
        s.lease_remaining_ms = lease.map_or(0, |l| l as i64);
    }
    stop_source(&mut local.source).await;
}

/// After a failed persist of the witness view: tries again, and once the
/// view is durable, starts acting if the role still says so.
async fn retry_persist(
    rt: &Runtime,
    fo: &Arc<Failover>,
    local: &mut Local,
    witnesses: &BTreeMap<u64, WitnessClient<tonic::transport::Channel>>,
    peer: &ReplicationClient<tonic::transport::Channel>,
) {
    let Some(refused) = local.start_refused else {
        return;
    };
    let (cluster, acting) = {
        let r = fo.role.lock().unwrap();
        (r.cluster().cloned(), r.acting(fo.now()))
    };
    let Some(c) = cluster else { return };
    if c.epoch != refused || !acting {
        local.start_refused = None;
        return;
    }
    if store_view(&rt.state_dir, &c).is_ok() {
        info!(epoch = c.epoch, "the witness view is persisted now");
        local.persisted = local.persisted.max(c.epoch);
        local.start_refused = None;
        execute(
            rt,
            fo,
            Action::StartSource { epoch: c.epoch },
            local,
            witnesses,
            peer,
        )
        .await;
    }
}

/// A client for every witness.
pub fn witness_clients(
    tls: &dr_proto::tls::Tls,
    addrs: &BTreeMap<u64, String>,
    timing: &Timing,
) -> Result<BTreeMap<u64, WitnessClient<tonic::transport::Channel>>> {
    let mut witnesses = BTreeMap::new();
    for (id, addr) in addrs {
        let ch = dr_witness::api::channel_with_timing(tls, *id, addr, timing)
            .with_context(|| format!("witness {id} at {addr}"))?;
        witnesses.insert(*id, WitnessClient::new(ch));
    }
    Ok(witnesses)
}

/// Sends a report to every witness; whether their leader recorded it.
pub async fn send_report(
    witnesses: &BTreeMap<u64, WitnessClient<tonic::transport::Channel>>,
    req: &pb::AgentReport,
) -> bool {
    let mut recorded = false;
    for (id, c) in witnesses {
        let mut c = c.clone();
        match c.report(req.clone()).await {
            Ok(r) => recorded |= r.into_inner().recorded,
            Err(s) => tracing::debug!(witness = id, error = %s.message(), "report failed"),
        }
    }
    recorded
}

/// Tells every witness what this agent did at `epoch`; the leader records
/// it in the audit. Best effort (logged).
async fn report(
    witnesses: &BTreeMap<u64, WitnessClient<tonic::transport::Channel>>,
    dc: &str,
    epoch: u64,
    what: String,
    evidence: String,
) {
    let req = pb::AgentReport {
        dc: dc.to_string(),
        epoch,
        what,
        evidence,
        divergent: None,
    };
    let recorded = send_report(witnesses, &req).await;
    if recorded {
        info!(epoch, what = %req.what, "reported to the witnesses' audit");
    } else {
        warn!(epoch, what = %req.what, evidence = %req.evidence, "no witness leader recorded the report (it is in this log)");
    }
}

/// Records a DNS switch's steps as events (drill reports use them).
pub fn record_dns(drills: &crate::drill::Drills, epoch: u64, r: &crate::dns::SwitchReport) {
    use crate::drill::kind;
    let at = |wall: u64, kind: &str, detail: &str| {
        drills.record_at(wall, epoch, kind, detail.to_string());
    };
    if let Some(w) = r.changed_wall_ms {
        at(w, kind::DNS_CHANGED, &r.what());
    }
    match &r.proof {
        Some(p) => {
            at(p.authoritative_wall_ms, kind::DNS_AUTHORITATIVE, &p.text);
            if let Some(w) = p.service_wall_ms {
                at(w, kind::DNS_VERIFIED, &p.text);
            }
        }
        None if matches!(
            r.outcome,
            crate::dns::Outcome::Switched | crate::dns::Outcome::AlreadyCurrent
        ) =>
        {
            drills.record(epoch, kind::DNS_FAILED, r.evidence.clone());
        }
        None => {}
    }
}

/// Stops the source: cancels it, and aborts it if it has not finished
/// within a short grace; it never stays running detached.
async fn stop_source(source: &mut Option<SourceRun>) {
    if let Some(s) = source.take() {
        s.stop.cancel();
        s.guard.abort();
        let abort = s.task.abort_handle();
        let mut task = s.task;
        if tokio::time::timeout(SOURCE_STOP_GRACE, &mut task)
            .await
            .is_err()
        {
            warn!("the replication source did not stop within {SOURCE_STOP_GRACE:?}; aborting it");
            abort.abort();
            let _ = task.await;
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn execute(
    rt: &Runtime,
    fo: &Arc<Failover>,
    action: Action,
    local: &mut Local,
    witnesses: &BTreeMap<u64, WitnessClient<tonic::transport::Channel>>,
    peer: &ReplicationClient<tonic::transport::Channel>,
) {
    let Local {
        source,
        base,
        persisted,
        start_refused,
    } = local;
    match action {
        Action::SendHeartbeat(mut hb) => {
            hb.drill_outage_ms = rt
                .drills
                .outage_remaining()
                .map(|d| (d.as_millis() as u64).max(1));
            let beat = pb::AgentHeartbeat::from(HeartbeatRequest {
                heartbeat: hb,
                timing: rt.timing,
            });
            for (id, client) in witnesses {
                let (mut client, beat, fo, id) = (client.clone(), beat.clone(), fo.clone(), *id);
                let ttl = Duration::from_millis(rt.timing.heartbeat_ms);
                tokio::spawn(async move {
                    let mut req = tonic::Request::new(beat);
                    req.set_timeout(ttl);
                    match client.heartbeat(req).await {
                        Ok(r) => match HeartbeatReply::try_from(r.into_inner()) {
                            Ok(reply) => {
                                fo.step(Input::Reply(reply));
                            }
                            Err(e) => {
                                warn!(witness = id, error = %e, "invalid heartbeat reply ignored")
                            }
                        },
                        Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                            error!(witness = id, error = %s.message(), "witness refused the heartbeat")
                        }
                        Err(s) => {
                            tracing::debug!(witness = id, error = %s.message(), "heartbeat failed")
                        }
                    }
                });
            }
        }
        Action::AskFailsafe { epoch } => {
            let (mut peer, fo) = (peer.clone(), fo.clone());
            let sent_at = fo.now();
            let ttl = Duration::from_millis(rt.timing.heartbeat_ms);
            tokio::spawn(async move {
                let mut req = tonic::Request::new(pb::FailsafeRequest { epoch });
                req.set_timeout(ttl);
                match peer.failsafe(req).await {
                    Ok(r) => match FailsafeAnswer::try_from(r.into_inner()) {
                        Ok(answer) => {
                            if !answer.ok {
                                warn!(
                                    epoch,
                                    "the peer refused the failsafe (it knows a newer epoch)"
                                );
                            }
                            fo.step(Input::FailsafeAnswered {
                                sent_at,
                                epoch,
                                answer,
                            });
                        }
                        Err(e) => warn!(error = %e, "invalid failsafe answer ignored"),
                    },
                    Err(s) => tracing::debug!(error = %s.message(), "failsafe request failed"),
                }
            });
        }
        Action::AnswerFailsafe(_) => {}
        Action::StartSource { epoch } => {
            if source.as_ref().is_some_and(|s| s.epoch == epoch) {
                return;
            }
            stop_source(source).await;
            if *persisted < epoch {
                *start_refused = Some(epoch);
                error!(
                    epoch,
                    "not acting as primary at epoch {epoch}: the witness view could not be persisted (see the error above); fenced"
                );
                return;
            }
            rt.sink.set_view(epoch, &rt.datacenter);
            rt.state.lock().unwrap().primary = rt.datacenter.clone();
            if base.is_none() {
                match Base::open(&rt.state_dir.join("capture-base.redb")) {
                    Ok(b) => *base = Some(Arc::new(b)),
                    Err(e) => {
                        error!(error = %format!("{e:#}"), "cannot open the capture base; not acting as source");
                        return;
                    }
                }
            }
            if let Some(d) = &rt.divergence {
                // Persisted first: if it is demoted later, what it accepts
                // from now on and does not replicate is kept.
                if let Err(e) = d.acting(epoch) {
                    error!(error = %format!("{e:#}"), epoch, "not acting as primary: could not record it in the state directory; fenced");
                    return;
                }
            }
            info!(epoch, "acting as primary: starting the replication source");
            rt.drills.record(
                epoch,
                crate::drill::kind::ACTING_PRIMARY,
                "replication source started",
            );
            let stop = CancellationToken::new();
            let mut cfg = rt.source_cfg.clone();
            cfg.epoch = epoch;
            cfg.acting_until = Some(fo.acting_until.subscribe());
            cfg.drill = Some(rt.drills.clone());
            let task = tokio::spawn(source::run(
                cfg,
                rt.milvus.clone(),
                base.clone().expect("opened"),
                rt.state.clone(),
                stop.clone(),
            ));
            let guard = {
                let (until, stop, abort) = (
                    fo.acting_until.subscribe(),
                    stop.clone(),
                    task.abort_handle(),
                );
                let drills = rt.drills.clone();
                tokio::spawn(async move {
                    if lease_guard(epoch, until, stop, abort).await {
                        drills.record(
                            epoch,
                            crate::drill::kind::FENCED,
                            "lease deadline: source stopped",
                        );
                        drills.stop_any_markers().await;
                    }
                })
            };
            if let Some(dns) = rt.dns.clone() {
                // Beside the source, stopped with it: only an agent acting
                // as primary at this epoch (holding the lease) switches.
                let until_stopped = stop.child_token();
                let (witnesses, dc) = (witnesses.clone(), rt.datacenter.clone());
                let drills = rt.drills.clone();
                tokio::spawn(async move {
                    if let Some(r) = dns.run(epoch, until_stopped).await {
                        record_dns(&drills, epoch, &r);
                        report(&witnesses, &dc, epoch, r.what(), r.evidence).await;
                    }
                });
            }
            *source = Some(SourceRun {
                epoch,
                stop,
                task,
                guard,
            });
        }
        Action::StopSource { reason } => {
            warn!(%reason, "fenced: no longer acting as primary; stopping the replication source");
            if let Some(s) = source.as_ref() {
                rt.drills
                    .record(s.epoch, crate::drill::kind::FENCED, reason.to_string());
            }
            stop_source(source).await;
            rt.drills.stop_any_markers().await;
            let named_primary = fo
                .role
                .lock()
                .unwrap()
                .cluster()
                .is_some_and(|c| c.primary == rt.datacenter);
            rt.state.lock().unwrap().role = if named_primary {
                Role::Fenced
            } else {
                Role::Sink
            };
        }
        Action::Drain { epoch } => {
            let (state, fo) = (rt.state.clone(), fo.clone());
            let drills = rt.drills.clone();
            // Writes after this point would not be drained: a drill's
            // marker writer stops here, as clients must.
            drills.stop_any_markers().await;
            let deadline = Duration::from_millis(2 * rt.timing.confirmation_ms);
            // With a front door: no write from here on (the door refuses
            // them until the drain's deadline), and a scan pass now, which
            // also drains the change log: the standby acknowledging it is
            // the drain.
            // On Milvus's clock, as pass snapshots are: a pass that starts
            // after this point has a later snapshot (the agent's own clock
            // may run ahead of Milvus's timestamp oracle).
            let from =
                match tokio::time::timeout(Duration::from_secs(2), rt.milvus.alloc_timestamp())
                    .await
                {
                    Ok(Ok(ts)) => crate::milvus::hybrid_ts_to_ms(ts),
                    _ => now_ms(),
                };
            state.lock().unwrap().draining_until = Some(Instant::now() + deadline);
            if let Some(log) = &rt.source_cfg.log {
                if let Err(e) = log.request_rescan("a switchover drains this primary") {
                    warn!(error = %format!("{e:#}"), "switchover: could not ask for a pass");
                }
            }
            tokio::spawn(async move {
                info!(
                    epoch,
                    "switchover: draining (waiting for a full pass acknowledged by the standby)"
                );
                let started = Instant::now();
                while started.elapsed() < deadline {
                    let applied = state.lock().unwrap().applied_snapshot_ms;
                    if applied >= from {
                        info!(
                            epoch,
                            snapshot_ms = applied,
                            "switchover: drained; releasing the lease"
                        );
                        drills.record(
                            epoch,
                            crate::drill::kind::DRAINED,
                            format!("snapshot {applied}"),
                        );
                        fo.step(Input::Drained {
                            epoch,
                            snapshot_wall_ms: applied as u64,
                        });
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                warn!(epoch, "switchover: the drain did not complete in time");
            });
        }
        Action::BecomeSink { epoch } => {
            let primary = fo
                .role
                .lock()
                .unwrap()
                .cluster()
                .map(|c| c.primary.clone())
                .unwrap_or_default();
            info!(epoch, %primary, "standby at this epoch: accepting replication only from its primary");
            stop_source(source).await;
            rt.sink.set_view(epoch, &primary);
            let mut s = rt.state.lock().unwrap();
            s.draining_until = None;
            if s.role != Role::Sink {
                // What it applied before (as a sink in an older epoch) or
                // what its standby acknowledged (as the source) says
                // nothing about this stream: lag is unknown until the new
                // primary's first pass is applied.
                s.applied_snapshot_ms = 0;
            }
            s.role = Role::Sink;
            s.epoch = s.epoch.max(epoch);
            s.primary = primary;
        }
        Action::SwitchDns { epoch } => {
            info!(epoch, datacenter = %rt.datacenter, "promoted: primary at a new epoch (DNS switch hook)");
            if let Some(cmd) = rt.on_promote.clone() {
                // Beside the loop, never in its way: fencing, heartbeats and
                // epochs go on while the hook runs.
                let (dc, limit) = (rt.datacenter.clone(), rt.hook_timeout);
                tokio::spawn(async move {
                    let child = tokio::process::Command::new("sh")
                        .arg("-c")
                        .arg(&cmd)
                        .env("MILVUS_DR_EPOCH", epoch.to_string())
                        .env("MILVUS_DR_DATACENTER", &dc)
                        .kill_on_drop(true)
                        .status();
                    match tokio::time::timeout(limit, child).await {
                        Ok(Ok(s)) if s.success() => info!(epoch, "hooks.on_promote succeeded"),
                        Ok(Ok(s)) => error!(epoch, status = %s, "hooks.on_promote failed"),
                        Ok(Err(e)) => error!(epoch, error = %e, "hooks.on_promote could not run"),
                        Err(_) => error!(
                            epoch,
                            "hooks.on_promote still running after {limit:?} (hooks.timeout): killed"
                        ),
                    }
                });
            }
        }
        Action::Persist(c) => {
            info!(epoch = c.epoch, primary = %c.primary, phase = ?c.phase, "witness view changed");
            match store_view(&rt.state_dir, &c) {
                Ok(()) => *persisted = (*persisted).max(c.epoch),
                Err(e) => error!(
                    epoch = c.epoch,
                    error = %format!("{e:#}"),
                    "could not persist the witness view: not acting at this epoch until it is"
                ),
            }
        }
    }
}

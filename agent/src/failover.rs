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
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::milvus::{Health, Milvus};
use crate::replication::sink::{FailsafeResponder, Sink};
use crate::replication::{base::Base, now_ms, source, SharedState};
use dr_proto::pb::{replication_client::ReplicationClient, witness_client::WitnessClient, Json};
use dr_witness::decide::HeartbeatReply;
use dr_witness::model::Cluster;
use dr_witness::role::{Action, AgentRole, FailsafeAnswer, Input};
use dr_witness::service::HeartbeatRequest;
use dr_witness::timing::{Millis, Timing};

/// The role logic, shared by the runtime loop and the failsafe RPC.
pub struct Failover {
    started: Instant,
    role: Mutex<AgentRole>,
    actions: mpsc::UnboundedSender<Action>,
}

impl Failover {
    fn now(&self) -> Millis {
        self.started.elapsed().as_millis() as Millis
    }

    /// Steps the role logic and queues its actions for the runtime.
    pub fn step(&self, input: Input) -> Vec<Action> {
        let now = self.now();
        let actions = self.role.lock().unwrap().step(now, input);
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
    pub tls: dr_proto::tls::TlsFiles,
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
}

fn view_path(dir: &std::path::Path) -> PathBuf {
    dir.join("witness-view.json")
}

/// The witness view this agent last persisted in `state_dir` (epoch,
/// primary), if it ever had one: readable by other tools on the host.
pub fn persisted_view(dir: &std::path::Path) -> Option<Cluster> {
    load_view(dir)
}

fn load_view(dir: &std::path::Path) -> Option<Cluster> {
    let b = std::fs::read(view_path(dir)).ok()?;
    serde_json::from_slice(&b).ok()
}

fn store_view(dir: &std::path::Path, c: &Cluster) -> Result<()> {
    use std::io::Write;
    let path = view_path(dir);
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(c)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

struct SourceRun {
    epoch: u64,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// Starts the failover runtime; returns the shared role logic (for the
/// failsafe RPC) and the task.
pub fn start(rt: Runtime, shutdown: CancellationToken) -> Result<(Arc<Failover>, JoinHandle<()>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let persisted = load_view(&rt.state_dir);
    if let Some(c) = &persisted {
        info!(epoch = c.epoch, primary = %c.primary, "resuming from the persisted witness view");
    }
    let seq_base = (now_ms().max(0) as u64) * 1000;
    let fo = Arc::new(Failover {
        started: Instant::now(),
        role: Mutex::new(AgentRole::new(
            rt.timing,
            rt.datacenter.clone(),
            0,
            persisted,
            seq_base,
        )),
        actions: tx,
    });
    let mut witnesses = BTreeMap::new();
    for (id, addr) in &rt.witnesses {
        let ch = dr_witness::network::channel_with_timing(&rt.tls, *id, addr, &rt.timing)
            .with_context(|| format!("witness {id} at {addr}"))?;
        witnesses.insert(*id, WitnessClient::new(ch));
    }
    let peer = {
        let tls = rt.tls.client_config(&rt.peer_identity)?;
        let ch = tonic::transport::Endpoint::from_shared(rt.peer_address.clone())?
            .tls_config(tls)?
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy();
        ReplicationClient::new(ch)
    };
    let task = tokio::spawn(run(rt, fo.clone(), rx, witnesses, peer, shutdown));
    Ok((fo, task))
}

async fn run(
    rt: Runtime,
    fo: Arc<Failover>,
    mut rx: mpsc::UnboundedReceiver<Action>,
    witnesses: BTreeMap<u64, WitnessClient<tonic::transport::Channel>>,
    peer: ReplicationClient<tonic::transport::Channel>,
    shutdown: CancellationToken,
) {
    let timing = rt.timing;
    let tick = Duration::from_millis((timing.heartbeat_ms / 5).clamp(20, 200));
    let mut next_beat = Instant::now();
    let mut source: Option<SourceRun> = None;
    let mut base: Option<Arc<Base>> = None;
    {
        let mut s = rt.state.lock().unwrap();
        s.role = "sink".into();
    }
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(a) = rx.recv() => {
                execute(&rt, &fo, a, &mut source, &mut base, &witnesses, &peer).await;
                continue;
            }
            _ = tokio::time::sleep(tick) => {}
        }
        // Local facts, then the heartbeat when due.
        let h = rt.health.lock().unwrap().clone();
        let wall = now_ms().max(0) as u64;
        let last_ok = rt
            .milvus_last_ok_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        fo.step(Input::MilvusHealth {
            healthy: h.healthy,
            last_ok_wall_ms: (last_ok > 0).then_some(last_ok as u64),
        });
        let (applied, lag) = {
            let s = rt.state.lock().unwrap();
            (s.applied_snapshot_ms, s.lag_ms(now_ms()))
        };
        if source.is_none() && applied > 0 {
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
        let (text, lease) = fo.describe();
        let mut s = rt.state.lock().unwrap();
        s.failover = text;
        s.lease_remaining_ms = lease.map_or(0, |l| l as i64);
    }
    if let Some(s) = source.take() {
        s.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.task).await;
    }
}

async fn stop_source(source: &mut Option<SourceRun>) {
    if let Some(s) = source.take() {
        s.stop.cancel();
        if tokio::time::timeout(Duration::from_secs(10), s.task)
            .await
            .is_err()
        {
            warn!("the replication source did not stop within 10s");
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn execute(
    rt: &Runtime,
    fo: &Arc<Failover>,
    action: Action,
    source: &mut Option<SourceRun>,
    base: &mut Option<Arc<Base>>,
    witnesses: &BTreeMap<u64, WitnessClient<tonic::transport::Channel>>,
    peer: &ReplicationClient<tonic::transport::Channel>,
) {
    match action {
        Action::SendHeartbeat(hb) => {
            let req = HeartbeatRequest {
                heartbeat: hb,
                timing: rt.timing,
            };
            let Ok(body) = serde_json::to_vec(&req) else {
                return;
            };
            for (id, client) in witnesses {
                let (mut client, body, fo, id) = (client.clone(), body.clone(), fo.clone(), *id);
                let ttl = Duration::from_millis(rt.timing.heartbeat_ms);
                tokio::spawn(async move {
                    let mut req = tonic::Request::new(Json { body });
                    req.set_timeout(ttl);
                    match client.heartbeat(req).await {
                        Ok(r) => {
                            match serde_json::from_slice::<HeartbeatReply>(&r.into_inner().body) {
                                Ok(reply) => {
                                    fo.step(Input::Reply(reply));
                                }
                                Err(e) => {
                                    warn!(witness = id, error = %e, "unreadable heartbeat reply")
                                }
                            }
                        }
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
                let body =
                    serde_json::to_vec(&serde_json::json!({ "epoch": epoch })).unwrap_or_default();
                let mut req = tonic::Request::new(Json { body });
                req.set_timeout(ttl);
                match peer.failsafe(req).await {
                    Ok(r) => match serde_json::from_slice::<FailsafeAnswer>(&r.into_inner().body) {
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
                        Err(e) => warn!(error = %e, "unreadable failsafe answer"),
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
            if let Err(e) = rt.sink.set_view(epoch, &rt.datacenter).await {
                error!(error = %format!("{e:#}"), "could not raise the sink's epoch floor");
            }
            if base.is_none() {
                match Base::open(&rt.state_dir.join("capture-base.redb")) {
                    Ok(b) => *base = Some(Arc::new(b)),
                    Err(e) => {
                        error!(error = %format!("{e:#}"), "cannot open the capture base; not acting as source");
                        return;
                    }
                }
            }
            info!(epoch, "acting as primary: starting the replication source");
            let stop = CancellationToken::new();
            let mut cfg = rt.source_cfg.clone();
            cfg.epoch = epoch;
            let task = tokio::spawn(source::run(
                cfg,
                rt.milvus.clone(),
                base.clone().expect("opened"),
                rt.state.clone(),
                stop.clone(),
            ));
            *source = Some(SourceRun { epoch, stop, task });
        }
        Action::StopSource { reason } => {
            warn!(%reason, "fenced: no longer acting as primary; stopping the replication source");
            stop_source(source).await;
            let named_primary = fo
                .role
                .lock()
                .unwrap()
                .cluster()
                .is_some_and(|c| c.primary == rt.datacenter);
            rt.state.lock().unwrap().role = if named_primary { "fenced" } else { "sink" }.into();
        }
        Action::Drain { epoch } => {
            let (state, fo) = (rt.state.clone(), fo.clone());
            let deadline = Duration::from_millis(2 * rt.timing.confirmation_ms);
            tokio::spawn(async move {
                let from = now_ms();
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
            if let Err(e) = rt.sink.set_view(epoch, &primary).await {
                error!(error = %format!("{e:#}"), "could not raise the sink's epoch floor");
            }
            let mut s = rt.state.lock().unwrap();
            s.role = "sink".into();
            s.epoch = s.epoch.max(epoch);
        }
        Action::SwitchDns { epoch } => {
            info!(epoch, datacenter = %rt.datacenter, "promoted: primary at a new epoch (DNS switch hook)");
            if let Some(cmd) = &rt.on_promote {
                let status = tokio::process::Command::new("sh")
                    .arg("-c")
                    .arg(cmd)
                    .env("MILVUS_DR_EPOCH", epoch.to_string())
                    .env("MILVUS_DR_DATACENTER", &rt.datacenter)
                    .status()
                    .await;
                match status {
                    Ok(s) if s.success() => info!(epoch, "hooks.on_promote succeeded"),
                    Ok(s) => error!(epoch, status = %s, "hooks.on_promote failed"),
                    Err(e) => error!(epoch, error = %e, "hooks.on_promote could not run"),
                }
            }
        }
        Action::Persist(c) => {
            info!(epoch = c.epoch, primary = %c.primary, phase = ?c.phase, "witness view changed");
            if let Err(e) = store_view(&rt.state_dir, &c) {
                error!(error = %format!("{e:#}"), "could not persist the witness view");
            }
        }
    }
}

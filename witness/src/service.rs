//! The witness process: the openraft node, its own probes of each
//! datacenter's Milvus, the decision core driving what it commits, and the
//! gRPC API (Raft between witnesses, heartbeats from agents, status and
//! commands from operators).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use openraft::{BasicNode, ServerState};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{error, info, warn};

use crate::api::{channel_with_timing, AgentSeen, WitnessStatus};
use crate::config::{witness_identity, WitnessConfig};
use crate::decide::{
    Action, AgentHeartbeat, Decider, HeartbeatReply, Input, LeaseAnswer, Observation, Observer,
    OperatorRequest, Verdict,
};
use crate::model::{Command, WitnessState};
use crate::network::Network;
use crate::store::{self, LogStore, NodeId, Raft, StateMachine};
use crate::timing::{Millis, Timing};
use crate::wire::HeartbeatRequest;
use dr_proto::alert::{self, Alert, Severity};
use dr_proto::pb::{
    self as pb,
    witness_client::WitnessClient,
    witness_server::{Witness as WitnessApi, WitnessServer},
    Json, RaftRpc,
};
use dr_proto::tls::TlsFiles;

/// The alert key of a held automatic failover.
const FAILOVER_HELD: &str = "failover_held";
/// A failover committed: active until the demoted datacenter is marked
/// resynchronised.
const FAILOVER_COMMITTED: &str = "failover_committed";
/// This witness has known no confirmed leader for more than a lease.
const QUORUM_LOST: &str = "witness_quorum_lost";

/// An observation pushed from one witness to the others.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObservationPush {
    pub from: NodeId,
    pub observation: Observation,
}

/// Addresses the witness actually bound.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bound {
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
    pub pid: u32,
}

struct Core {
    decider: Decider,
    observer: Observer,
    agents: BTreeMap<String, (Millis, AgentHeartbeat)>,
    observation: Observation,
    leader: bool,
    init_proposed: bool,
    /// Since when this witness has known no confirmed leader (itself or a
    /// peer): past a lease, the quorum is alerted as lost.
    no_leader_since: Option<Millis>,
    applied_version: Option<u64>,
}

struct Inner {
    cfg: WitnessConfig,
    timing: Timing,
    raft: Raft,
    state: watch::Receiver<WitnessState>,
    core: Mutex<Core>,
    started: Instant,
    peers: BTreeMap<NodeId, WitnessClient<tonic::transport::Channel>>,
    http: reqwest::Client,
    alerts: alert::Sender,
    metrics: Mutex<Counters>,
    /// The certificates in use (reloaded when their files change).
    tls: dr_proto::tls::Tls,
}

#[derive(Default, Clone)]
struct Counters {
    decisions: u64,
    alerts: u64,
    heartbeats: u64,
}

#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

fn wall_ms() -> u64 {
    dr_proto::now_ms().max(0) as u64
}

fn json<T: Serialize>(v: &T) -> Result<Response<Json>, Status> {
    serde_json::to_vec(v)
        .map(|body| Response::new(Json { body }))
        .map_err(|e| Status::internal(format!("encode reply: {e}")))
}

fn parse<T: for<'de> Deserialize<'de>>(req: &Json, what: &str) -> Result<T, Status> {
    serde_json::from_slice(&req.body)
        .map_err(|e| Status::invalid_argument(format!("malformed {what}: {e}")))
}

impl Inner {
    fn now(&self) -> Millis {
        self.started.elapsed().as_millis() as Millis
    }

    fn witness_names(&self) -> Vec<String> {
        self.cfg
            .witnesses
            .keys()
            .map(|id| witness_identity(*id))
            .collect()
    }

    fn agent_names(&self) -> Vec<String> {
        self.cfg
            .datacenters
            .keys()
            .map(|dc| self.cfg.agent_identity(dc))
            .collect()
    }

    /// Runs decider actions; proposals go through Raft in the background.
    fn run_actions(self: &Arc<Self>, actions: Vec<Action>) -> Option<Result<String, String>> {
        let mut operator = None;
        for a in actions {
            match a {
                Action::Propose(cmd) => {
                    let me = self.clone();
                    tokio::spawn(async move { me.propose(cmd).await });
                    operator.get_or_insert(Ok("proposed".to_string()));
                }
                Action::Alert { reason } => {
                    self.metrics.lock().unwrap().alerts += 1;
                    error!(alert = %reason, "automatic failover held");
                    // The decider alerts once per holding rule: each is news.
                    let cluster = self.state.borrow().cluster.clone();
                    self.alerts.update(Alert {
                        key: FAILOVER_HELD.into(),
                        severity: Severity::Critical,
                        summary: "automatic failover held".into(),
                        detail: serde_json::json!({
                            "reason": reason,
                            "epoch": cluster.epoch,
                            "primary": cluster.primary,
                        }),
                    });
                    let me = self.clone();
                    let cmd = Command::Note {
                        wall_ms: wall_ms(),
                        what: "failover held".into(),
                        evidence: reason,
                    };
                    tokio::spawn(async move { me.propose(cmd).await });
                }
                Action::OperatorReply(r) => operator = Some(r),
                Action::Reply(_) => {}
            }
        }
        operator
    }

    /// Proposes a command; whether it was committed and accepted.
    async fn propose(self: &Arc<Self>, cmd: Command) -> bool {
        let cmd_kind = cmd.clone();
        let what = cmd.describe();
        let evidence = cmd.evidence().to_string();
        let res = tokio::time::timeout(
            Duration::from_millis(self.timing.lease_ms),
            self.raft.client_write(cmd),
        )
        .await;
        let accepted = matches!(&res, Ok(Ok(r)) if r.data.result.is_ok());
        match res {
            Ok(Ok(r)) => {
                self.metrics.lock().unwrap().decisions += 1;
                match &r.data.result {
                    Ok(()) => {
                        info!(decision = %what, %evidence, epoch = r.data.epoch, log_index = r.log_id.index, "committed");
                        if let Command::Failover { to, forced, .. } = &cmd_kind {
                            let demoted: Vec<String> = self
                                .state
                                .borrow()
                                .cluster
                                .needs_resync
                                .iter()
                                .cloned()
                                .collect();
                            self.alerts.update(Alert {
                                key: FAILOVER_COMMITTED.into(),
                                severity: Severity::Critical,
                                summary: format!(
                                    "failover committed: {to} is primary at epoch {}; resynchronise {} and run `drctl witness mark-resynced`",
                                    r.data.epoch,
                                    demoted.join(", ")
                                ),
                                detail: serde_json::json!({
                                    "epoch": r.data.epoch,
                                    "to": to,
                                    "forced": forced,
                                    "needs_resync": demoted,
                                    "evidence": evidence,
                                }),
                            });
                        }
                    }
                    Err(why) => {
                        warn!(decision = %what, %why, "committed but rejected by the state machine")
                    }
                }
            }
            Ok(Err(e)) => {
                warn!(decision = %what, error = %e, "could not commit");
                let now = self.now();
                self.core
                    .lock()
                    .unwrap()
                    .decider
                    .step(now, Input::ProposalFailed);
            }
            Err(_) => {
                warn!(decision = %what, "commit timed out");
                let now = self.now();
                self.core
                    .lock()
                    .unwrap()
                    .decider
                    .step(now, Input::ProposalFailed);
            }
        }
        accepted
    }

    /// One round: leadership, applied state, probes, observations, decisions.
    async fn round(self: &Arc<Self>, probe: bool) {
        let now = self.now();
        let m = self.raft.metrics().borrow().clone();
        let raft_leader = self.raft_leader(&m);
        let cluster = self.state.borrow().cluster.clone();
        let mut actions = vec![];
        let mut init = None;
        let leader;
        {
            let mut core = self.core.lock().unwrap();
            core.decider.step(
                now,
                Input::Raft {
                    leader: raft_leader,
                    quorum_ack_age_ms: m.millis_since_quorum_ack,
                },
            );
            leader = core.decider.is_leader();
            if leader != core.leader {
                core.leader = leader;
                if !leader && raft_leader {
                    warn!(
                        term = m.current_term,
                        quorum_ack_ms = ?m.millis_since_quorum_ack,
                        lease_ms = self.timing.lease_ms,
                        "Raft leader without a quorum acknowledgement within a lease: deciding nothing until a quorum answers"
                    );
                } else {
                    info!(leader, term = m.current_term, "witness leadership changed");
                }
                core.init_proposed = false;
                core.applied_version = None;
            }
            if core.applied_version != Some(cluster.version) {
                core.applied_version = Some(cluster.version);
                core.decider.step(now, Input::Applied(cluster.clone()));
            }
            if leader && cluster.epoch == 0 && !core.init_proposed {
                core.init_proposed = true;
                init = Some(Command::Init {
                    primary: self.cfg.initial_primary.clone(),
                    datacenters: self.cfg.datacenters.keys().cloned().collect(),
                    wall_ms: wall_ms(),
                });
            }
        }
        if let Some(cmd) = init {
            info!(
                "initialising the witness state: epoch 1, primary {}",
                self.cfg.initial_primary
            );
            let me = self.clone();
            tokio::spawn(async move { me.propose(cmd).await });
        }
        if probe {
            let probes = self.cfg.datacenters.iter().map(|(dc, d)| {
                let http = self.http.clone();
                let url = d.health_url.clone();
                let timeout = Duration::from_millis(self.timing.heartbeat_ms.max(200));
                async move {
                    let ok = match http.get(&url).timeout(timeout).send().await {
                        Ok(r) => r.status().is_success(),
                        Err(_) => false,
                    };
                    (dc.clone(), ok)
                }
            });
            let results = futures::future::join_all(probes).await;
            let now = self.now();
            let wall = wall_ms();
            let obs = {
                let mut core = self.core.lock().unwrap();
                for (dc, ok) in &results {
                    let before = core.observation.get(dc).map(|v| v.milvus_ok);
                    if before.is_some() && before != Some(*ok) {
                        info!(datacenter = %dc, milvus_ok = ok, "probe result changed");
                    }
                    core.observer.on_probe(now, wall, dc, *ok);
                }
                let obs = core.observer.observe(now);
                core.observation = obs.clone();
                core.decider.step(
                    now,
                    Input::Observation {
                        from: self.cfg.id,
                        obs: obs.clone(),
                    },
                );
                obs
            };
            let push = ObservationPush {
                from: self.cfg.id,
                observation: obs,
            };
            if let Ok(body) = serde_json::to_vec(&push) {
                for (id, client) in &self.peers {
                    let mut client = client.clone();
                    let body = body.clone();
                    let id = *id;
                    let ttl = Duration::from_millis(self.timing.heartbeat_ms.max(200));
                    tokio::spawn(async move {
                        let mut req = Request::new(Json { body });
                        req.set_timeout(ttl);
                        if let Err(e) = client.observe(req).await {
                            tracing::debug!(witness = id, error = %e.message(), "observation push failed");
                        }
                    });
                }
            }
        }
        {
            let now = self.now();
            let mut core = self.core.lock().unwrap();
            let before = core.decider.verdict().clone();
            actions.extend(core.decider.step(now, Input::Tick { wall_ms: wall_ms() }));
            let after = core.decider.verdict().clone();
            // Logged when its kind changes: a reason's figures change every
            // tick while a failover is held or forming.
            if std::mem::discriminant(&before) != std::mem::discriminant(&after)
                && after != Verdict::NotLeader
            {
                info!(verdict = ?after, "leader decision state");
            }
            if !matches!(after, Verdict::Held(_) | Verdict::NotLeader)
                && self.alerts.resolve(FAILOVER_HELD)
            {
                info!(verdict = ?after, "failover no longer held: alert resolved");
            }
            if self.state.borrow().cluster.needs_resync.is_empty()
                && self.alerts.resolve(FAILOVER_COMMITTED)
            {
                info!("the demoted datacenter is resynchronised: failover alert resolved");
            }
            // A confirmed leader known (this one, or a peer Raft follows)?
            let peer_leader = self
                .raft
                .metrics()
                .borrow()
                .current_leader
                .filter(|l| *l != self.cfg.id);
            if core.leader || peer_leader.is_some() {
                core.no_leader_since = None;
                if self.alerts.resolve(QUORUM_LOST) {
                    info!(leader = ?peer_leader.or(Some(self.cfg.id)), "a confirmed leader again: quorum alert resolved");
                }
            } else {
                let since = *core.no_leader_since.get_or_insert(now);
                if now.saturating_sub(since) > self.timing.lease_ms
                    && self.alerts.raise(Alert {
                        key: QUORUM_LOST.into(),
                        severity: Severity::Critical,
                        summary: format!(
                            "witness {} knows no confirmed leader: it cannot reach a quorum (no failover can be decided through it)",
                            self.cfg.id
                        ),
                        detail: serde_json::json!({
                            "witness": self.cfg.id,
                            "for_ms": now.saturating_sub(since),
                        }),
                    })
                {
                    error!(witness = self.cfg.id, "no confirmed leader for over a lease: quorum lost as seen from here");
                }
            }
        }
        self.run_actions(actions);
    }

    /// Raft's own view: this witness is the leader of its term (confirmed
    /// or not).
    fn raft_leader(&self, m: &openraft::RaftMetrics<NodeId, BasicNode>) -> bool {
        m.state == ServerState::Leader && m.current_leader == Some(self.cfg.id)
    }

    /// The leader to name to others: Raft's view, except that a leader
    /// this witness cannot confirm is not named (it is not deciding).
    fn named_leader(
        &self,
        m: &openraft::RaftMetrics<NodeId, BasicNode>,
        confirmed: bool,
    ) -> Option<NodeId> {
        m.current_leader.filter(|l| *l != self.cfg.id || confirmed)
    }

    fn status(&self) -> WitnessStatus {
        let m = self.raft.metrics().borrow().clone();
        let st = self.state.borrow().clone();
        let now = self.now();
        let core = self.core.lock().unwrap();
        let confirmed = core.leader && self.raft_leader(&m);
        WitnessStatus {
            id: self.cfg.id,
            leader: self.named_leader(&m, confirmed),
            leader_confirmed: confirmed,
            quorum_ack_ms: m.millis_since_quorum_ack,
            term: m.current_term,
            raft_state: format!("{:?}", m.state),
            cluster: st.cluster,
            observation: core.observation.clone(),
            agents: core
                .agents
                .iter()
                .map(|(dc, (at, hb))| {
                    (
                        dc.clone(),
                        AgentSeen {
                            ago_ms: now.saturating_sub(*at),
                            heartbeat: hb.clone(),
                        },
                    )
                })
                .collect(),
            verdict: core.decider.verdict().clone(),
            lease_remaining_ms: core.decider.lease_valid_until(now).map(|u| u - now),
            audit: st.audit.iter().rev().take(50).rev().cloned().collect(),
            timing: self.timing,
        }
    }
}

#[tonic::async_trait]
impl WitnessApi for Service {
    async fn raft(&self, request: Request<RaftRpc>) -> Result<Response<Json>, Status> {
        dr_proto::tls::authorize(&request, &self.inner.witness_names())?;
        let rpc = request.into_inner();
        let raft = &self.inner.raft;
        let bad = |e: serde_json::Error| {
            Status::invalid_argument(format!("malformed {} request: {e}", rpc.kind))
        };
        match rpc.kind.as_str() {
            "append" => json(
                &raft
                    .append_entries(serde_json::from_slice(&rpc.body).map_err(bad)?)
                    .await,
            ),
            "vote" => json(
                &raft
                    .vote(serde_json::from_slice(&rpc.body).map_err(bad)?)
                    .await,
            ),
            "snapshot" => json(
                &raft
                    .install_snapshot(serde_json::from_slice(&rpc.body).map_err(bad)?)
                    .await,
            ),
            other => Err(Status::invalid_argument(format!(
                "unknown Raft RPC kind '{other}' (append, vote or snapshot)"
            ))),
        }
    }

    async fn observe(&self, request: Request<Json>) -> Result<Response<Json>, Status> {
        let who = dr_proto::tls::authorize(&request, &self.inner.witness_names())?;
        let push: ObservationPush = parse(request.get_ref(), "observation")?;
        if who != witness_identity(push.from) {
            return Err(Status::permission_denied(format!(
                "{who} may not push observations of witness {}",
                push.from
            )));
        }
        let now = self.inner.now();
        self.inner.core.lock().unwrap().decider.step(
            now,
            Input::Observation {
                from: push.from,
                obs: push.observation,
            },
        );
        json(&())
    }

    async fn heartbeat(
        &self,
        request: Request<pb::AgentHeartbeat>,
    ) -> Result<Response<pb::HeartbeatReply>, Status> {
        let inner = &self.inner;
        let who = dr_proto::tls::authorize(&request, &inner.agent_names())?;
        let req = HeartbeatRequest::try_from(request.into_inner())?;
        let dc = inner.cfg.dc_of_identity(&who).unwrap_or_default();
        if req.heartbeat.dc != dc {
            return Err(Status::permission_denied(format!(
                "{who} may only heartbeat for datacenter {dc}, not {}",
                req.heartbeat.dc
            )));
        }
        if req.timing != inner.timing {
            return Err(Status::failed_precondition(format!(
                "the agent's failover timing {:?} differs from the witnesses' {:?}; fix: use the same failover section everywhere",
                req.timing, inner.timing
            )));
        }
        let now = inner.now();
        let mut reply: HeartbeatReply = {
            let mut core = inner.core.lock().unwrap();
            core.observer
                .on_agent_heartbeat(now, &dc, req.heartbeat.drill_outage_ms);
            core.agents.insert(dc.clone(), (now, req.heartbeat.clone()));
            let actions = core.decider.step(now, Input::Heartbeat(req.heartbeat));
            actions
                .into_iter()
                .find_map(|a| match a {
                    Action::Reply(r) => Some(r),
                    _ => None,
                })
                .ok_or_else(|| Status::internal("no heartbeat reply"))?
        };
        inner.metrics.lock().unwrap().heartbeats += 1;
        if reply.lease == LeaseAnswer::Granted {
            // Confirm leadership with a quorum before the grant leaves.
            let ok = tokio::time::timeout(
                Duration::from_millis(inner.timing.heartbeat_ms),
                inner.raft.ensure_linearizable(),
            )
            .await;
            if !matches!(ok, Ok(Ok(_))) {
                reply.lease = LeaseAnswer::NotLeader;
            }
        }
        reply.cluster = Some(inner.state.borrow().cluster.clone()).filter(|c| c.epoch > 0);
        let confirmed = inner.core.lock().unwrap().leader;
        reply.leader = inner.named_leader(&inner.raft.metrics().borrow(), confirmed);
        Ok(Response::new(reply.into()))
    }

    async fn report(
        &self,
        request: Request<pb::AgentReport>,
    ) -> Result<Response<pb::ReportReply>, Status> {
        let inner = &self.inner;
        let who = dr_proto::tls::authorize(&request, &inner.agent_names())?;
        let r = request.into_inner();
        let dc = inner.cfg.dc_of_identity(&who).unwrap_or_default();
        if r.dc != dc {
            return Err(Status::permission_denied(format!(
                "{who} may only report for datacenter {dc}, not {}",
                r.dc
            )));
        }
        if r.what.is_empty() || r.what.len() > 200 || r.evidence.len() > 4_000 {
            return Err(Status::invalid_argument(
                "invalid AgentReport: `what` must be 1..=200 bytes and `evidence` at most 4000",
            ));
        }
        if !inner.core.lock().unwrap().leader {
            return Ok(Response::new(pb::ReportReply { recorded: false }));
        }
        info!(%dc, epoch = r.epoch, what = %r.what, "agent report");
        let demoted = inner.state.borrow().cluster.needs_resync.contains(&dc);
        let cmd = match r.divergent {
            // Recorded in the cluster state, where `mark-resynced` looks.
            Some(d) if demoted => Command::DivergentKept {
                dc,
                wall_ms: wall_ms(),
                kept: crate::model::Divergent {
                    primary_epoch: d.primary_epoch,
                    rows: d.rows,
                    deleted_keys: d.deleted_keys,
                    location: d.location,
                },
                evidence: r.evidence,
            },
            _ => Command::Note {
                wall_ms: wall_ms(),
                what: format!("{dc} at epoch {}: {}", r.epoch, r.what),
                evidence: r.evidence,
            },
        };
        let recorded = inner.propose(cmd).await;
        Ok(Response::new(pb::ReportReply { recorded }))
    }

    async fn status(&self, request: Request<Json>) -> Result<Response<Json>, Status> {
        let mut allowed = self.inner.cfg.tls.operator_identities.clone();
        allowed.extend(self.inner.agent_names());
        allowed.extend(self.inner.witness_names());
        dr_proto::tls::authorize(&request, &allowed)?;
        json(&self.inner.status())
    }

    async fn operator(&self, request: Request<Json>) -> Result<Response<Json>, Status> {
        let who = dr_proto::tls::authorize(&request, &self.inner.cfg.tls.operator_identities)?;
        let req: OperatorRequest = parse(request.get_ref(), "operator request")?;
        let req = match req {
            OperatorRequest::ForceFailover { .. } => OperatorRequest::ForceFailover { by: who },
            OperatorRequest::Switchover { to, .. } => OperatorRequest::Switchover { to, by: who },
            OperatorRequest::MarkResynced {
                dc,
                discard_divergent,
                ..
            } => OperatorRequest::MarkResynced {
                dc,
                by: who,
                discard_divergent,
            },
            OperatorRequest::Note { what, evidence, .. } => OperatorRequest::Note {
                what,
                evidence,
                by: who,
            },
        };
        info!(request = ?req, "operator request");
        let now = self.inner.now();
        let actions = {
            let mut core = self.inner.core.lock().unwrap();
            if !core.leader {
                let leader = self.inner.raft.metrics().borrow().current_leader;
                return Err(Status::failed_precondition(format!(
                    "witness {} is not the leader (leader: {})",
                    self.inner.cfg.id,
                    leader.map_or("unknown".into(), |l| format!("witness {l}"))
                )));
            }
            core.decider.step(
                now,
                Input::Operator {
                    req,
                    wall_ms: wall_ms(),
                },
            )
        };
        match self.inner.run_actions(actions) {
            Some(Ok(msg)) => json(&msg),
            Some(Err(why)) => Err(Status::failed_precondition(why)),
            None => json(&"accepted"),
        }
    }
}

/// Runs a witness until `shutdown`. `on_bound` is called once listening;
/// `systemd` hears when the witness is ready, alive (its watchdog) and
/// stopping.
pub async fn run(
    cfg: WitnessConfig,
    shutdown: CancellationToken,
    systemd: dr_proto::systemd::Notifier,
    on_bound: impl FnOnce(&Bound),
) -> Result<()> {
    dr_proto::tls::install_crypto_provider();
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("create the state directory {}", cfg.state_dir.display()))?;
    let timing = cfg.timing();
    // Reloaded when the files change: certificates rotate without a restart.
    let tls = TlsFiles {
        ca: cfg.tls.ca.clone(),
        cert: cfg.tls.cert.clone(),
        key: cfg.tls.key.clone(),
    }
    .load()?;
    let grpc_listener = TcpListener::bind(cfg.listen.grpc)
        .await
        .with_context(|| format!("bind listen.grpc {}", cfg.listen.grpc))?;
    let metrics_listener = TcpListener::bind(cfg.listen.metrics)
        .await
        .with_context(|| format!("bind listen.metrics {}", cfg.listen.metrics))?;
    let bound = Bound {
        grpc: grpc_listener.local_addr()?,
        metrics: metrics_listener.local_addr()?,
        pid: std::process::id(),
    };
    std::fs::write(
        cfg.state_dir.join("bound.json"),
        serde_json::to_vec(&bound)?,
    )?;

    let db = store::open(&cfg.state_dir.join("witness.redb"))
        .with_context(|| format!("open the Raft store in {}", cfg.state_dir.display()))?;
    let (sm, state_rx) = StateMachine::new(db.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let raft_cfg = openraft::Config {
        cluster_name: "milvus-dr-witnesses".into(),
        heartbeat_interval: cfg.raft.heartbeat_ms,
        election_timeout_min: cfg.raft.election_timeout_min_ms,
        election_timeout_max: cfg.raft.election_timeout_max_ms,
        ..Default::default()
    }
    .validate()
    .context("raft timers")?;
    let raft = Raft::new(
        cfg.id,
        Arc::new(raft_cfg),
        Network {
            tls: tls.clone(),
            timing,
            addresses: cfg.witnesses.clone(),
        },
        LogStore::new(db.clone()),
        sm,
    )
    .await
    .map_err(|e| anyhow::anyhow!("start Raft: {e}"))?;
    let members: BTreeMap<NodeId, BasicNode> = cfg
        .witnesses
        .iter()
        .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
        .collect();
    // Safe on every witness: all initialise with the same membership, and
    // an initialised store refuses it.
    match raft.initialize(members).await {
        Ok(()) => info!("initialised a new witness group"),
        Err(e) => info!("witness group already initialised ({e})"),
    }
    let mut peers = BTreeMap::new();
    for (id, addr) in &cfg.witnesses {
        if *id != cfg.id {
            peers.insert(
                *id,
                WitnessClient::new(channel_with_timing(&tls, *id, addr, &timing)?),
            );
        }
    }
    let dcs: Vec<String> = cfg.datacenters.keys().cloned().collect();
    let inner = Arc::new(Inner {
        timing,
        raft: raft.clone(),
        state: state_rx,
        core: Mutex::new(Core {
            decider: Decider::new(timing, cfg.witnesses.len()),
            observer: Observer::new(timing, 0, &dcs),
            agents: BTreeMap::new(),
            observation: Observation::new(),
            leader: false,
            init_proposed: false,
            no_leader_since: None,
            applied_version: None,
        }),
        started: Instant::now(),
        peers,
        http: reqwest::Client::builder()
            .build()
            .context("HTTP client for probes")?,
        alerts: alert::Sender::new(
            &witness_identity(cfg.id),
            &cfg.alerts.webhooks,
            cfg.alerts
                .webhook_url
                .iter()
                .map(alert::Target::slack)
                .collect(),
            alert::Retry::default(),
        ),
        metrics: Mutex::new(Counters::default()),
        tls: tls.clone(),
        cfg,
    });
    let service = Service {
        inner: inner.clone(),
    };
    let server_stop = CancellationToken::new();
    let tls_watch = tls.watch(server_stop.clone());
    let grpc = tokio::spawn(dr_proto::tls::serve(
        grpc_listener,
        tls.clone(),
        move || {
            tonic::transport::Server::builder().add_service(
                WitnessServer::new(service.clone())
                    .max_decoding_message_size(16 << 20)
                    .max_encoding_message_size(16 << 20),
            )
        },
        server_stop.clone(),
    ));
    let metrics_task = tokio::spawn(serve_metrics(
        metrics_listener,
        inner.clone(),
        server_stop.clone(),
    ));
    info!(id = inner.cfg.id, grpc = %bound.grpc, metrics = %bound.metrics, "witness listening");
    on_bound(&bound);
    systemd.ready();
    let mut broken = false;

    let tick = Duration::from_millis((timing.heartbeat_ms / 4).clamp(25, 250));
    let mut last_probe = Instant::now() - Duration::from_secs(3600);
    loop {
        let probe = last_probe.elapsed() >= Duration::from_millis(timing.heartbeat_ms);
        if probe {
            last_probe = Instant::now();
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = inner.round(probe) => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(tick) => {}
        }
        // The systemd watchdog hears from this loop only while it turns
        // and the servers run.
        match [
            ("the gRPC server", &grpc),
            ("the metrics server", &metrics_task),
        ]
        .into_iter()
        .find(|(_, t)| t.is_finished())
        {
            Some((what, _)) if !broken => {
                broken = true;
                tracing::error!("{what} stopped unexpectedly; no longer answering the systemd watchdog (systemd restarts the witness)");
            }
            Some(_) => {}
            None => systemd.alive(),
        }
    }
    systemd.stopping();
    info!("shutting down");
    let _ = raft.shutdown().await;
    server_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), grpc).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), metrics_task).await;
    tls_watch.abort();
    Ok(())
}

fn render_metrics(inner: &Inner) -> String {
    use prometheus_client::encoding::text::encode;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::registry::Registry;
    let st = inner.status();
    let c = inner.metrics.lock().unwrap().clone();
    let mut root = Registry::default();
    // Named like the agents' (no witness prefix): one alert rule for all.
    let expiry = Family::<Vec<(String, String)>, Gauge>::default();
    for e in inner.tls.expiry() {
        expiry
            .get_or_create(&vec![
                ("path".to_string(), e.path.display().to_string()),
                ("role".to_string(), e.role.to_string()),
            ])
            .set(e.not_after);
    }
    root.register(
        "milvus_dr_certificate_expiry_timestamp_seconds",
        "notAfter of the certificate in use (role cert) and the earliest of its CA bundle (role ca), Unix seconds",
        expiry,
    );
    let reg = root.sub_registry_with_prefix("milvus_dr_witness");
    let g = |v: i64| {
        let g = Gauge::<i64>::default();
        g.set(v);
        g
    };
    reg.register("epoch", "Committed epoch", g(st.cluster.epoch as i64));
    reg.register(
        "is_leader",
        "1 on the leader, confirmed by a quorum within the last lease (the one deciding)",
        g(i64::from(st.leader_confirmed)),
    );
    reg.register(
        "leader_unconfirmed",
        "1 on a Raft leader that no quorum acknowledged within the last lease (cut off; deciding nothing)",
        g(i64::from(st.raft_state == "Leader" && !st.leader_confirmed)),
    );
    reg.register("term", "Raft term", g(st.term as i64));
    reg.register(
        "lease_remaining_ms",
        "On the leader: how long the primary's lease may still be valid",
        g(st.lease_remaining_ms.unwrap_or(0) as i64),
    );
    let primary = Family::<Vec<(String, String)>, Gauge>::default();
    let healthy = Family::<Vec<(String, String)>, Gauge>::default();
    let unhealthy_for = Family::<Vec<(String, String)>, Gauge>::default();
    for dc in inner.cfg.datacenters.keys() {
        let l = vec![("datacenter".to_string(), dc.clone())];
        primary
            .get_or_create(&l)
            .set(i64::from(st.cluster.primary == *dc));
        let v = st.observation.get(dc).copied().unwrap_or_default();
        healthy.get_or_create(&l).set(i64::from(v.healthy));
        unhealthy_for
            .get_or_create(&l)
            .set(v.unhealthy_for_ms as i64);
    }
    reg.register("primary", "1 for the committed primary datacenter", primary);
    reg.register(
        "datacenter_healthy",
        "This witness's view: Milvus probe ok and agent heartbeating",
        healthy,
    );
    reg.register(
        "datacenter_unhealthy_ms",
        "How long this witness has seen the datacenter unhealthy",
        unhealthy_for,
    );
    let counter = |v: u64| {
        let c = Counter::<u64>::default();
        c.inc_by(v);
        c
    };
    reg.register(
        "decisions",
        "Decisions this witness committed as leader",
        counter(c.decisions),
    );
    reg.register("alerts", "Held-failover alerts raised", counter(c.alerts));
    reg.register(
        "heartbeats",
        "Agent heartbeats received",
        counter(c.heartbeats),
    );
    let mut out = String::new();
    let _ = encode(&mut out, &root);
    out
}

async fn serve_metrics(
    listener: TcpListener,
    inner: Arc<Inner>,
    stop: CancellationToken,
) -> Result<()> {
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "OK" }))
        .route(
            "/metrics",
            axum::routing::get(move || {
                let inner = inner.clone();
                async move {
                    (
                        [(
                            "content-type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        render_metrics(&inner),
                    )
                }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
        .context("metrics server")
}

//! The witness-side decision core: observations and time in, decisions with
//! their reasons out. No clock, network, RNG or storage inside.
//!
//! Two pieces:
//! - [`Observer`] runs on every witness: it folds probes of each
//!   datacenter's Milvus and the agents' heartbeats into "unhealthy for how
//!   long", which the leader collects.
//! - [`Decider`] runs on the Raft leader: it grants the primary's lease,
//!   and decides failover and switchover steps, which the runtime proposes
//!   through Raft. Its state is volatile: a new leader starts from nothing
//!   and waits out a full lease before acting on leases.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{Cluster, Command, Dc, Epoch, Phase, WitnessId};
use crate::timing::{Millis, Timing};

/// What an agent tells the witnesses every heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentHeartbeat {
    pub dc: Dc,
    /// Increases with every heartbeat of one agent process.
    pub seq: u64,
    /// The epoch the agent knows.
    pub epoch: Epoch,
    /// The agent currently acts as primary (holds a valid lease).
    pub acting_primary: bool,
    /// The agent has given up its lease in `epoch` (drained for a
    /// switchover, or told to by the leader) and ignores any grant for a
    /// heartbeat older than this one.
    pub released: bool,
    pub milvus_healthy: bool,
    /// Agent wall clock.
    pub wall_ms: u64,
    /// Agent wall clock when its Milvus was last seen healthy.
    pub milvus_last_healthy_wall_ms: Option<u64>,
    /// As a standby: the primary-clock time of the newest fully applied
    /// replication pass.
    pub applied_snapshot_wall_ms: Option<u64>,
    /// As a draining primary: the snapshot of its final pass, once acked.
    pub drained_snapshot_wall_ms: Option<u64>,
    /// Replication lag as the agent measures it (status only).
    pub lag_ms: Option<u64>,
    /// During a failover drill: treat this datacenter as down (its Milvus
    /// unreachable) for this many ms more. Said by its own agent only.
    #[serde(default)]
    pub drill_outage_ms: Option<u64>,
}

/// A witness's reply to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    pub seq: u64,
    /// The committed state as this witness has applied it.
    pub cluster: Option<Cluster>,
    pub lease: LeaseAnswer,
    /// The leader as this witness knows it (set by the runtime).
    pub leader: Option<WitnessId>,
}

/// The leader's answer about the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseAnswer {
    /// This witness is not the leader: no answer.
    NotLeader,
    /// Renewed for the heartbeat `seq`, counted from when the agent sent it.
    Granted,
    /// Failover or switchover under way: stop acting as primary now.
    Revoked,
    /// Not granted (not the primary, or released), but not revoked either:
    /// a released primary may ask again.
    Denied,
}

/// One witness's view of one datacenter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DcView {
    pub healthy: bool,
    /// How long it has looked unhealthy (0 when healthy).
    pub unhealthy_for_ms: u64,
    pub milvus_ok: bool,
    /// Witness wall clock at the last successful Milvus probe.
    pub last_ok_wall_ms: Option<u64>,
    /// How long ago the agent's last heartbeat arrived.
    pub agent_silent_ms: Option<u64>,
}

/// A witness's observation of every datacenter.
pub type Observation = BTreeMap<Dc, DcView>;

#[derive(Debug, Clone, Default)]
struct DcTrack {
    probe_ok: Option<bool>,
    last_ok_wall_ms: Option<u64>,
    last_agent_hb: Option<Millis>,
    unhealthy_since: Option<Millis>,
    /// A failover drill's outage of this datacenter lasts until then: its
    /// Milvus counts as unreachable, whatever the probe says.
    drill_until: Option<Millis>,
}

impl DcTrack {
    fn drilled(&self, now: Millis) -> bool {
        self.drill_until.is_some_and(|u| now < u)
    }
}

/// Health as one witness sees it: a datacenter is healthy when its Milvus
/// answers the witness's probe and its agent's heartbeats arrive.
#[derive(Debug, Clone)]
pub struct Observer {
    timing: Timing,
    started_at: Millis,
    dcs: BTreeMap<Dc, DcTrack>,
}

impl Observer {
    pub fn new(timing: Timing, now: Millis, dcs: &[Dc]) -> Observer {
        Observer {
            timing,
            started_at: now,
            dcs: dcs
                .iter()
                .map(|d| (d.clone(), DcTrack::default()))
                .collect(),
        }
    }

    pub fn on_probe(&mut self, now: Millis, wall_ms: u64, dc: &str, ok: bool) {
        if let Some(t) = self.dcs.get_mut(dc) {
            // A drilled outage looks exactly like a dead Milvus.
            let ok = ok && !t.drilled(now);
            t.probe_ok = Some(ok);
            if ok {
                t.last_ok_wall_ms = Some(wall_ms);
            }
        }
        self.refresh(now);
    }

    /// An agent's heartbeat arrived; `drill_outage_ms` is its datacenter's
    /// drilled outage still to run (a heartbeat without one ends it).
    pub fn on_agent_heartbeat(&mut self, now: Millis, dc: &str, drill_outage_ms: Option<u64>) {
        if let Some(t) = self.dcs.get_mut(dc) {
            t.last_agent_hb = Some(now);
            let until = drill_outage_ms.map(|ms| now.saturating_add(ms));
            if until.is_some_and(|u| u > now) && !t.drilled(now) {
                t.probe_ok = Some(false);
            }
            t.drill_until = until;
        }
        self.refresh(now);
    }

    fn healthy(&self, t: &DcTrack, now: Millis) -> bool {
        t.probe_ok == Some(true)
            && !t.drilled(now)
            && t.last_agent_hb
                .is_some_and(|h| now.saturating_sub(h) <= self.timing.lease_ms)
    }

    fn refresh(&mut self, now: Millis) {
        let verdicts: Vec<(Dc, bool)> = self
            .dcs
            .iter()
            .map(|(d, t)| (d.clone(), self.healthy(t, now)))
            .collect();
        for (d, ok) in verdicts {
            let t = self.dcs.get_mut(&d).expect("known dc");
            if ok {
                t.unhealthy_since = None;
            } else if t.unhealthy_since.is_none() {
                t.unhealthy_since = Some(now.max(self.started_at));
            }
        }
    }

    pub fn observe(&mut self, now: Millis) -> Observation {
        self.refresh(now);
        self.dcs
            .iter()
            .map(|(d, t)| {
                (
                    d.clone(),
                    DcView {
                        healthy: t.unhealthy_since.is_none(),
                        unhealthy_for_ms: t.unhealthy_since.map_or(0, |s| now.saturating_sub(s)),
                        milvus_ok: t.probe_ok == Some(true) && !t.drilled(now),
                        last_ok_wall_ms: t.last_ok_wall_ms,
                        agent_silent_ms: t.last_agent_hb.map(|h| now.saturating_sub(h)),
                    },
                )
            })
            .collect()
    }
}

/// An operator request handled by the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OperatorRequest {
    /// Proceed with a failover held by the data-loss budget or the
    /// anti-flap window, acknowledging that writes may be lost.
    ForceFailover {
        by: String,
    },
    Switchover {
        to: Dc,
        by: String,
    },
    MarkResynced {
        dc: Dc,
        by: String,
        /// Go ahead although the datacenter's agent has not recorded that
        /// it kept its divergent writes (they are given up).
        #[serde(default)]
        discard_divergent: bool,
    },
    /// Records an operator's note in the audit (a drill and its result);
    /// changes nothing else.
    Note {
        what: String,
        evidence: String,
        by: String,
    },
}

/// Longest note an operator may add to the audit (`what`, `evidence`).
pub const NOTE_LIMITS: (usize, usize) = (200, 4_000);

#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    BecameLeader,
    LostLeadership,
    /// What Raft says, every round: whether this witness is the Raft
    /// leader and, if so, how long ago a quorum last acknowledged it
    /// (`None`: not yet). Only a leader acknowledged within a lease is
    /// confirmed and decides; a leader cut off from its peers keeps Raft's
    /// leader state long after they elected another, so an unconfirmed one
    /// is treated as having lost the leadership (and, confirmed again,
    /// starts a new tenure).
    Raft {
        leader: bool,
        quorum_ack_age_ms: Option<Millis>,
    },
    /// The committed state after an apply on this witness.
    Applied(Cluster),
    Heartbeat(AgentHeartbeat),
    Observation {
        from: WitnessId,
        obs: Observation,
    },
    Tick {
        wall_ms: u64,
    },
    Operator {
        req: OperatorRequest,
        wall_ms: u64,
    },
    /// The last proposal could not be committed (leadership lost, timeout).
    ProposalFailed,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Reply(HeartbeatReply),
    /// Commit this through Raft.
    Propose(Command),
    /// Automatic failover is held: tell a human why (also audited).
    Alert {
        reason: String,
    },
    OperatorReply(Result<String, String>),
}

/// What the leader is doing, with the reason (status and logs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    NotLeader,
    /// Nothing to do: the primary looks healthy enough.
    Stable(String),
    /// Conditions for failover are forming or a lease must run out first.
    Waiting(String),
    /// Failover is needed but a rule holds it; an operator is alerted.
    Held(String),
    Proposed(String),
}

#[derive(Debug, Clone, Copy)]
struct Force {
    until: Millis,
}

/// The leader's decision state (volatile).
#[derive(Debug, Clone)]
pub struct Decider {
    timing: Timing,
    majority: usize,
    leader_since: Option<Millis>,
    cluster: Option<Cluster>,
    /// When the committed epoch (and so the primary) last changed here.
    epoch_applied_at: Option<Millis>,
    /// Latest lease grant in this leadership: (epoch, local receive time).
    last_grant: Option<(Epoch, Millis)>,
    max_seq_granted: u64,
    /// Grants stopped for this epoch.
    revoked: Option<Epoch>,
    /// The primary released its lease in this epoch with a heartbeat newer
    /// than every grant of this leadership: (epoch, drained snapshot).
    released: Option<(Epoch, Option<u64>)>,
    agents: BTreeMap<Dc, (Millis, AgentHeartbeat)>,
    observations: BTreeMap<WitnessId, (Millis, Observation)>,
    pending: Option<(Millis, Command)>,
    force: Option<Force>,
    last_alert: Option<String>,
    verdict: Verdict,
}

/// Reports older than this many heartbeats are ignored.
const FRESH_HEARTBEATS: u64 = 4;

impl Decider {
    pub fn new(timing: Timing, witnesses: usize) -> Decider {
        Decider {
            timing,
            majority: witnesses / 2 + 1,
            leader_since: None,
            cluster: None,
            epoch_applied_at: None,
            last_grant: None,
            max_seq_granted: 0,
            revoked: None,
            released: None,
            agents: BTreeMap::new(),
            observations: BTreeMap::new(),
            pending: None,
            force: None,
            last_alert: None,
            verdict: Verdict::NotLeader,
        }
    }

    pub fn is_leader(&self) -> bool {
        self.leader_since.is_some()
    }

    pub fn verdict(&self) -> &Verdict {
        &self.verdict
    }

    /// Until when (leader clock) the primary's lease may still be valid,
    /// as far as this leader knows.
    pub fn lease_valid_until(&self, now: Millis) -> Option<Millis> {
        let since = self.leader_since?;
        let from_grant = self
            .last_grant
            .map(|(_, at)| self.timing.witness_lease_until(at));
        let from_tenure = self.timing.leader_may_act_at(since);
        let until = from_grant.unwrap_or(0).max(from_tenure);
        (until > now).then_some(until)
    }

    pub fn step(&mut self, now: Millis, input: Input) -> Vec<Action> {
        match input {
            Input::BecameLeader => {
                *self = Decider {
                    cluster: self.cluster.take(),
                    epoch_applied_at: self.epoch_applied_at,
                    observations: std::mem::take(&mut self.observations),
                    // The agents' latest heartbeats, with when they arrived,
                    // are facts as much as the observations are: a new
                    // leader that forgot them refused a switchover ("no
                    // heartbeat from the standby") until the standby's next
                    // heartbeat, though its status showed the standby.
                    agents: std::mem::take(&mut self.agents),
                    ..Decider::new(self.timing, self.majority * 2 - 1)
                };
                self.leader_since = Some(now);
                vec![]
            }
            Input::LostLeadership => {
                *self = Decider {
                    cluster: self.cluster.take(),
                    epoch_applied_at: self.epoch_applied_at,
                    ..Decider::new(self.timing, self.majority * 2 - 1)
                };
                vec![]
            }
            Input::Raft {
                leader,
                quorum_ack_age_ms,
            } => {
                let confirmed = leader && self.timing.leader_confirmed(quorum_ack_age_ms);
                match (confirmed, self.is_leader()) {
                    (true, false) => self.step(now, Input::BecameLeader),
                    (false, true) => self.step(now, Input::LostLeadership),
                    _ => vec![],
                }
            }
            Input::Applied(c) => {
                let changed_epoch = self.cluster.as_ref().map(|o| o.epoch) != Some(c.epoch);
                if changed_epoch {
                    if self.cluster.is_some() {
                        // Not at start-up: this witness saw the change.
                        self.epoch_applied_at = Some(now);
                    }
                    self.last_grant = None;
                    self.max_seq_granted = 0;
                    self.revoked = None;
                    self.released = None;
                    self.force = None;
                    self.last_alert = None;
                }
                if c.phase == Phase::Stable && self.released.is_some_and(|(e, _)| e == c.epoch) {
                    // An aborted switchover: the released primary may take
                    // a fresh lease with newer heartbeats.
                    self.released = None;
                    self.revoked = None;
                }
                self.cluster = Some(c);
                self.pending = None;
                vec![]
            }
            Input::ProposalFailed => {
                self.pending = None;
                vec![]
            }
            Input::Observation { from, obs } => {
                self.observations.insert(from, (now, obs));
                vec![]
            }
            Input::Heartbeat(hb) => vec![Action::Reply(self.on_heartbeat(now, hb))],
            Input::Operator { req, wall_ms } => vec![self.on_operator(now, wall_ms, req)],
            Input::Tick { wall_ms } => self.tick(now, wall_ms),
        }
    }

    fn on_heartbeat(&mut self, now: Millis, hb: AgentHeartbeat) -> HeartbeatReply {
        let mut reply = HeartbeatReply {
            seq: hb.seq,
            cluster: self.cluster.clone(),
            lease: LeaseAnswer::NotLeader,
            leader: None,
        };
        let (Some(_), Some(c)) = (self.leader_since, self.cluster.as_ref()) else {
            self.agents.insert(hb.dc.clone(), (now, hb));
            return reply;
        };
        reply.lease = LeaseAnswer::Denied;
        if hb.dc == c.primary && hb.epoch == c.epoch {
            if hb.released
                && hb.seq > self.max_seq_granted
                && (self.revoked == Some(c.epoch) || c.phase != Phase::Stable)
            {
                self.revoked = Some(c.epoch);
                self.released = Some((c.epoch, hb.drained_snapshot_wall_ms));
            }
            if self.revoked == Some(c.epoch) {
                reply.lease = LeaseAnswer::Revoked;
            } else if !hb.released {
                // Also while draining for a switchover, until released.
                reply.lease = LeaseAnswer::Granted;
                self.last_grant = Some((c.epoch, now));
                self.max_seq_granted = self.max_seq_granted.max(hb.seq);
            }
        }
        self.agents.insert(hb.dc.clone(), (now, hb));
        reply
    }

    fn on_operator(&mut self, now: Millis, wall_ms: u64, req: OperatorRequest) -> Action {
        let Some(c) = self.cluster.clone().filter(|_| self.is_leader()) else {
            return Action::OperatorReply(Err("not the leader; ask the leader".into()));
        };
        if self.pending.is_some() {
            return Action::OperatorReply(Err("a decision is being committed; retry".into()));
        }
        match req {
            OperatorRequest::ForceFailover { by } => {
                self.force = Some(Force {
                    until: now + 10 * self.timing.confirmation_ms,
                });
                let cmd = Command::Note {
                    wall_ms,
                    what: "forced failover requested".into(),
                    evidence: format!(
                        "{by} acknowledged possible data loss; the data-loss budget and anti-flap window are waived while the primary stays confirmed unhealthy"
                    ),
                };
                self.pending = Some((now, cmd.clone()));
                Action::Propose(cmd)
            }
            OperatorRequest::Switchover { to, by } => {
                if c.phase != Phase::Stable {
                    return Action::OperatorReply(
                        Err("a switchover is already in progress".into()),
                    );
                }
                if c.standby() != Some(&to) {
                    return Action::OperatorReply(Err(format!("{to} is not the standby")));
                }
                if c.needs_resync.contains(&to) {
                    return Action::OperatorReply(Err(format!(
                        "{to} was demoted by a failover; resynchronise it and run `drctl witness mark-resynced {to}` first"
                    )));
                }
                if let Err((_, why)) = self.standby_ready(now, &c, &to) {
                    return Action::OperatorReply(Err(why));
                }
                let cmd = Command::BeginSwitchover {
                    from_epoch: c.epoch,
                    to,
                    wall_ms,
                    evidence: format!("requested by {by}"),
                };
                self.pending = Some((now, cmd.clone()));
                Action::Propose(cmd)
            }
            OperatorRequest::MarkResynced {
                dc,
                by,
                discard_divergent,
            } => {
                if !c.needs_resync.contains(&dc) {
                    return Action::OperatorReply(Err(format!("{dc} is not waiting for a resync")));
                }
                let evidence = match c.divergent.get(&dc) {
                    Some(d) if d.rows == 0 && d.deleted_keys == 0 => {
                        format!("stated by {by}; {dc} held no divergent writes")
                    }
                    Some(d) => format!(
                        "stated by {by}; {dc}'s divergent writes ({} rows, {} deleted keys) are kept at {}",
                        d.rows, d.deleted_keys, d.location
                    ),
                    None if discard_divergent => format!(
                        "stated by {by}, who gave up any writes {dc} accepted and had not replicated (--discard-divergent)"
                    ),
                    None => {
                        return Action::OperatorReply(Err(format!(
                            "{dc}'s agent has not yet recorded that it kept the writes it accepted as primary and had not replicated \
                             (it exports them when it comes back, before it resynchronises; `drctl witness status` shows it). \
                             Wait for it, or give them up with `drctl witness mark-resynced {dc} --discard-divergent`"
                        )))
                    }
                };
                let cmd = Command::MarkResynced {
                    dc,
                    wall_ms,
                    evidence,
                };
                self.pending = Some((now, cmd.clone()));
                Action::Propose(cmd)
            }
            OperatorRequest::Note { what, evidence, by } => {
                if what.trim().is_empty()
                    || what.len() > NOTE_LIMITS.0
                    || evidence.len() > NOTE_LIMITS.1
                {
                    return Action::OperatorReply(Err(format!(
                        "a note needs a one-line `what` of at most {} bytes and evidence of at most {} bytes",
                        NOTE_LIMITS.0, NOTE_LIMITS.1
                    )));
                }
                let cmd = Command::Note {
                    wall_ms,
                    what: what.replace('\n', " "),
                    evidence: format!("{evidence} (noted by {by})"),
                };
                self.pending = Some((now, cmd.clone()));
                Action::Propose(cmd)
            }
        }
    }

    fn fresh(&self, received: Millis, now: Millis) -> bool {
        now.saturating_sub(received) <= FRESH_HEARTBEATS * self.timing.heartbeat_ms
    }

    /// Whether a witness's observation received at `received` may count
    /// towards a decision about the current primary: fresh (no older than
    /// four heartbeats, nor than a lease) and received after the epoch that
    /// made it primary was applied here.
    fn counts(&self, received: Millis, now: Millis) -> bool {
        let age = now.saturating_sub(received);
        age <= FRESH_HEARTBEATS * self.timing.heartbeat_ms
            && age <= self.timing.lease_ms
            && self.epoch_applied_at.is_none_or(|e| received > e)
    }

    /// A view of the primary as it counts: a primary is judged from the
    /// epoch that made it primary on, so it has been unhealthy, as far as
    /// decisions go, for no longer than from then to the view's receipt.
    /// Views formed while it was the standby (a peer that had not heard
    /// its agent yet, a push sent before the commit) never make a new
    /// primary "down": it was just found fit to take over.
    fn as_primary(&self, received: Millis, mut v: DcView) -> DcView {
        if let Some(e) = self.epoch_applied_at {
            v.unhealthy_for_ms = v.unhealthy_for_ms.min(received.saturating_sub(e));
        }
        v
    }

    /// Whether the standby may take over; on refusal, the rule that
    /// failed (for alert de-duplication) and why.
    fn standby_ready(
        &self,
        now: Millis,
        c: &Cluster,
        standby: &Dc,
    ) -> Result<(), (&'static str, String)> {
        match self.agents.get(standby) {
            None => Err((
                "standby-unknown",
                format!("no heartbeat from the standby agent {standby}"),
            )),
            Some((at, _)) if !self.fresh(*at, now) => Err((
                "standby-silent",
                format!(
                    "the standby agent {standby} has been silent for {} ms",
                    now - at
                ),
            )),
            Some((_, hb)) if !hb.milvus_healthy => Err((
                "standby-milvus",
                format!("the standby's Milvus ({standby}) is unhealthy"),
            )),
            Some((_, hb)) if hb.epoch != c.epoch => Err((
                "standby-epoch",
                format!(
                    "the standby agent {standby} is at epoch {} not {}",
                    hb.epoch, c.epoch
                ),
            )),
            Some((_, hb)) if hb.acting_primary => Err((
                "standby-acting",
                format!("the standby agent {standby} claims to act as primary"),
            )),
            Some(_) => Ok(()),
        }
    }

    /// Estimated writes at risk, in ms: from the standby's newest applied
    /// snapshot to the last moment the primary was known to be writable.
    fn loss_estimate(&self, c: &Cluster, standby: &Dc) -> Option<u64> {
        let applied = self.agents.get(standby)?.1.applied_snapshot_wall_ms?;
        let from_agent = self
            .agents
            .get(&c.primary)
            .and_then(|(_, hb)| hb.milvus_last_healthy_wall_ms);
        let from_witnesses = self
            .observations
            .values()
            .filter_map(|(_, o)| o.get(&c.primary).and_then(|v| v.last_ok_wall_ms))
            .max();
        let writable = from_agent.max(from_witnesses)?;
        Some(writable.saturating_sub(applied))
    }

    fn set(&mut self, v: Verdict) -> Vec<Action> {
        self.verdict = v;
        vec![]
    }

    /// Holds the failover. One alert per kind of reason (`rule`), not one
    /// per tick: reasons carry growing figures.
    fn hold(&mut self, rule: &'static str, reason: String) -> Vec<Action> {
        self.verdict = Verdict::Held(reason.clone());
        if self.last_alert.as_deref() == Some(rule) {
            return vec![];
        }
        self.last_alert = Some(rule.to_string());
        vec![Action::Alert { reason }]
    }

    fn propose(&mut self, now: Millis, cmd: Command) -> Vec<Action> {
        self.verdict = Verdict::Proposed(cmd.describe());
        self.pending = Some((now, cmd.clone()));
        vec![Action::Propose(cmd)]
    }

    fn tick(&mut self, now: Millis, wall_ms: u64) -> Vec<Action> {
        let Some(since) = self.leader_since else {
            return self.set(Verdict::NotLeader);
        };
        let Some(c) = self.cluster.clone().filter(|c| c.epoch > 0) else {
            return self.set(Verdict::Waiting("no initialised state yet".into()));
        };
        if let Some((at, _)) = &self.pending {
            if now.saturating_sub(*at) < self.timing.lease_ms {
                return vec![];
            }
            self.pending = None;
        }
        if self.force.is_some_and(|f| now > f.until) {
            self.force = None;
        }
        let may_act = self.timing.leader_may_act_at(since);
        match c.phase.clone() {
            Phase::SwitchingOver {
                to,
                started_wall_ms,
            } => self.tick_switchover(now, wall_ms, may_act, &c, to, started_wall_ms),
            Phase::Stable => self.tick_failover(now, wall_ms, may_act, &c),
        }
    }

    fn tick_switchover(
        &mut self,
        now: Millis,
        wall_ms: u64,
        may_act: Millis,
        c: &Cluster,
        to: Dc,
        started_wall_ms: u64,
    ) -> Vec<Action> {
        let timeout = 2 * self.timing.confirmation_ms;
        if wall_ms.saturating_sub(started_wall_ms) > timeout {
            let cmd = Command::AbortSwitchover {
                from_epoch: c.epoch,
                wall_ms,
                evidence: format!(
                    "the primary did not drain and release its lease within {timeout} ms"
                ),
            };
            return self.propose(now, cmd);
        }
        let Some((_, drained)) = self.released.filter(|(e, _)| *e == c.epoch) else {
            return self.set(Verdict::Waiting(format!(
                "switchover to {to}: waiting for {} to drain and release its lease",
                c.primary
            )));
        };
        if now < may_act {
            return self.set(Verdict::Waiting(format!(
                "switchover to {to}: new leader waits {} ms more",
                may_act - now
            )));
        }
        let applied = self
            .agents
            .get(&to)
            .filter(|(at, _)| self.fresh(*at, now))
            .and_then(|(_, hb)| hb.applied_snapshot_wall_ms);
        match (drained, applied) {
            (Some(d), Some(a)) if a >= d => {
                if let Err((_, why)) = self.standby_ready(now, c, &to) {
                    return self.set(Verdict::Waiting(format!("switchover to {to}: {why}")));
                }
                let cmd = Command::CompleteSwitchover {
                    from_epoch: c.epoch,
                    to,
                    wall_ms,
                    evidence: format!(
                        "primary {} drained at snapshot {d} and released its lease; standby applied up to {a}; nothing lost",
                        c.primary
                    ),
                };
                self.propose(now, cmd)
            }
            _ => self.set(Verdict::Waiting(format!(
                "switchover to {to}: standby has applied {applied:?}, drained snapshot {drained:?}"
            ))),
        }
    }

    fn tick_failover(
        &mut self,
        now: Millis,
        wall_ms: u64,
        may_act: Millis,
        c: &Cluster,
    ) -> Vec<Action> {
        let primary = c.primary.clone();
        let Some(standby) = c.standby().cloned() else {
            return self.set(Verdict::Stable("one datacenter only".into()));
        };
        // 1. A witness majority sees the primary unhealthy for the window.
        let fresh: Vec<(WitnessId, DcView)> = self
            .observations
            .iter()
            .filter(|(_, (at, _))| self.counts(*at, now))
            .filter_map(|(w, (at, o))| o.get(&primary).map(|v| (*w, self.as_primary(*at, *v))))
            .collect();
        if fresh.is_empty() {
            if let Some(e) = self.epoch_applied_at.filter(|e| {
                self.observations
                    .values()
                    .any(|(at, _)| at <= e && self.fresh(*at, now))
            }) {
                return self.set(Verdict::Waiting(format!(
                    "epoch {} made {primary} primary {} ms ago; no observation of it received since",
                    c.epoch,
                    now.saturating_sub(e)
                )));
            }
        }
        let confirmed = fresh
            .iter()
            .filter(|(_, v)| !v.healthy && v.unhealthy_for_ms >= self.timing.confirmation_ms)
            .count();
        if confirmed < self.majority {
            if self.revoked.is_some() {
                // The primary recovered before we acted: renew again (a
                // released primary asks again when told `Denied`).
                self.revoked = None;
                self.released = None;
            }
            self.last_alert = None;
            let unhealthy = fresh.iter().filter(|(_, v)| !v.healthy).count();
            if unhealthy < self.majority {
                // The outage an operator forced is over: the waiver ends
                // with it (a force given while the outage is still being
                // confirmed survives).
                self.force = None;
            }
            return self.set(if unhealthy == 0 {
                Verdict::Stable(format!("primary {primary} healthy"))
            } else {
                Verdict::Waiting(format!(
                    "primary {primary} unhealthy to {unhealthy} witness(es); {confirmed} past the {} ms confirmation window, {} needed",
                    self.timing.confirmation_ms, self.majority
                ))
            });
        }
        // 2. The standby and its Milvus are healthy and eligible.
        if c.needs_resync.contains(&standby) {
            return self.hold("resync", format!(
                "primary {primary} is down but the standby {standby} was demoted earlier and is not resynchronised (no automatic failback)"
            ));
        }
        if let Err((rule, why)) = self.standby_ready(now, c, &standby) {
            return self.hold(rule, format!("primary {primary} is down but {why}"));
        }
        let forced = self.force.is_some();
        // 3. Data-loss budget.
        let loss = self.loss_estimate(c, &standby);
        match loss {
            Some(l) if l <= self.timing.data_loss_budget_ms => {}
            _ if forced => {}
            _ => {
                return self.hold("budget", format!(
                    "failover to {standby} would lose {} of writes, over the {} ms budget; force it with `drctl witness force-failover` to accept the loss",
                    loss.map_or("an unknown amount".into(), |l| format!("about {l} ms")),
                    self.timing.data_loss_budget_ms
                ))
            }
        }
        // 4. Anti-flap.
        if let Some(last) = c.last_failover_wall_ms {
            let age = wall_ms.saturating_sub(last);
            if age < self.timing.anti_flap_ms && !forced {
                return self.hold(
                    "anti-flap",
                    format!(
                        "the last failover was {age} ms ago, within the {} ms anti-flap window",
                        self.timing.anti_flap_ms
                    ),
                );
            }
        }
        // 5. The primary's lease has run out.
        if now < may_act {
            return self.set(Verdict::Waiting(format!(
                "new leader waits out a full lease ({} ms more) before deciding",
                may_act - now
            )));
        }
        self.revoked = Some(c.epoch);
        let released = self.released.is_some_and(|(e, _)| e == c.epoch);
        if !released {
            if let Some(until) = self
                .last_grant
                .filter(|(e, _)| *e == c.epoch)
                .map(|(_, at)| self.timing.witness_lease_until(at))
                .filter(|u| *u > now)
            {
                return self.set(Verdict::Waiting(format!(
                    "renewals stopped; the primary's lease may be valid {} ms more",
                    until - now
                )));
            }
        }
        let evidence = format!(
            "{confirmed} of {} witnesses saw {primary} unhealthy for >= {} ms ({}); lease {}; standby {standby} healthy at epoch {}; estimated loss {}{}",
            fresh.len(),
            self.timing.confirmation_ms,
            fresh
                .iter()
                .map(|(w, v)| format!("w{w}: {} ms, milvus_ok={}", v.unhealthy_for_ms, v.milvus_ok))
                .collect::<Vec<_>>()
                .join(", "),
            if released { "released by the primary" } else { "expired" },
            c.epoch,
            loss.map_or("unknown".into(), |l| format!("{l} ms")),
            if forced { "; forced by an operator" } else { "" },
        );
        self.propose(
            now,
            Command::Failover {
                from_epoch: c.epoch,
                to: standby,
                wall_ms,
                forced,
                evidence,
            },
        )
    }
}

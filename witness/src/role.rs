//! The agent-side role logic, pure: lease, self-fencing, the quorum-loss
//! failsafe, following epochs. The agent runtime feeds it heartbeat
//! replies, health and replication progress, and executes its actions.
//!
//! An agent *acts as primary* (runs the replication source) only when
//! [`AgentRole::acting`] says so:
//! - the newest committed state it knows names it primary and no drain has
//!   released the lease;
//! - it holds a lease: from a leader grant, counted from when the renewed
//!   heartbeat was *sent* and shortened for drift; or, when the witness
//!   quorum is unreachable, from a failsafe confirmation of the peer agent
//!   (which promises not to act on any promotion until that confirmation
//!   has expired on its own, lengthened, clock);
//! - it has waited out every promise it gave the peer, and a full lease
//!   since it started (promises given before a restart are not remembered);
//! - its own Milvus is healthy: an agent does not take, or take back, the
//!   primary role over a dead Milvus.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::decide::{AgentHeartbeat, HeartbeatReply, LeaseAnswer};
use crate::model::{Cluster, Dc, Epoch, Phase};
use crate::timing::{Millis, Timing};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Tick,
    /// Time to heartbeat: produces [`Action::SendHeartbeat`] (and maybe a
    /// failsafe request).
    HeartbeatDue {
        wall_ms: u64,
    },
    Reply(HeartbeatReply),
    /// The local Milvus: the (thresholded) verdict, and when a probe last
    /// succeeded (wall clock), which bounds what a failover may lose.
    MilvusHealth {
        healthy: bool,
        last_ok_wall_ms: Option<u64>,
    },
    /// Replication progress: as a sink, the newest applied pass snapshot.
    Applied {
        snapshot_wall_ms: u64,
        lag_ms: Option<u64>,
    },
    /// The source finished the final pass of a drain.
    Drained {
        epoch: Epoch,
        snapshot_wall_ms: u64,
    },
    /// The peer asks whether we have seen an epoch newer than `epoch`.
    FailsafeAsked {
        epoch: Epoch,
    },
    /// The peer's answer to our request sent at `sent_at` (our clock).
    FailsafeAnswered {
        sent_at: Millis,
        epoch: Epoch,
        answer: FailsafeAnswer,
    },
    /// The witness view learned some other way (the peer's answer).
    Learned(Cluster),
}

/// A peer's answer to a failsafe request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailsafeAnswer {
    /// No newer epoch seen; promise given.
    pub ok: bool,
    pub cluster: Option<Cluster>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    SendHeartbeat(AgentHeartbeat),
    /// Ask the peer agent for a failsafe confirmation of `epoch`.
    AskFailsafe {
        epoch: Epoch,
    },
    AnswerFailsafe(FailsafeAnswer),
    /// Start acting as primary: the replication source at `epoch`.
    StartSource {
        epoch: Epoch,
    },
    /// Stop acting as primary, now.
    StopSource {
        reason: String,
    },
    /// Finish one full replication pass, then report [`Input::Drained`].
    Drain {
        epoch: Epoch,
    },
    /// Accept replication only at `epoch` or newer.
    BecomeSink {
        epoch: Epoch,
    },
    /// First time acting as primary at a new epoch: the DNS hook.
    SwitchDns {
        epoch: Epoch,
    },
    /// Persist the committed view (epochs must not go back after a restart).
    Persist(Cluster),
}

#[derive(Debug, Clone)]
pub struct AgentRole {
    timing: Timing,
    me: Dc,
    booted_at: Millis,
    cluster: Option<Cluster>,
    next_seq: u64,
    sent: VecDeque<(u64, Millis)>,
    lease_until: Option<Millis>,
    last_grant_at: Option<Millis>,
    /// Grants answering heartbeats older than this are ignored.
    min_grant_seq: u64,
    released: bool,
    failsafe_until: Option<Millis>,
    promised_until: Millis,
    milvus_healthy: bool,
    milvus_last_healthy_wall_ms: Option<u64>,
    applied_snapshot_wall_ms: Option<u64>,
    lag_ms: Option<u64>,
    drain_asked: bool,
    drained: Option<u64>,
    acting: bool,
    dns_epoch: Epoch,
    sink_epoch: Epoch,
}

impl AgentRole {
    /// `seq_base` must exceed every heartbeat seq of earlier runs of this
    /// agent (e.g. wall-clock ms × 1000 at start).
    pub fn new(
        timing: Timing,
        me: Dc,
        now: Millis,
        persisted: Option<Cluster>,
        seq_base: u64,
    ) -> AgentRole {
        AgentRole {
            timing,
            me,
            booted_at: now,
            cluster: persisted,
            next_seq: seq_base + 1,
            sent: VecDeque::new(),
            lease_until: None,
            last_grant_at: None,
            min_grant_seq: 0,
            released: false,
            failsafe_until: None,
            promised_until: 0,
            milvus_healthy: false,
            milvus_last_healthy_wall_ms: None,
            applied_snapshot_wall_ms: None,
            lag_ms: None,
            drain_asked: false,
            drained: None,
            acting: false,
            dns_epoch: 0,
            sink_epoch: 0,
        }
    }

    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.as_ref()
    }

    pub fn epoch(&self) -> Epoch {
        self.cluster.as_ref().map_or(0, |c| c.epoch)
    }

    fn is_named_primary(&self) -> bool {
        self.cluster.as_ref().is_some_and(|c| c.primary == self.me)
    }

    /// Whether this agent may act as primary at `now` (its own clock).
    pub fn acting(&self, now: Millis) -> bool {
        self.is_named_primary()
            && !self.released
            && self.milvus_healthy
            && now >= self.timing.leader_may_act_at(self.booted_at)
            && now >= self.promised_until
            && (self.lease_until.is_some_and(|u| now < u)
                || self.failsafe_until.is_some_and(|u| now < u))
    }

    /// While acting: the moment (this agent's clock) it must stop unless a
    /// renewal or a failsafe confirmation extends it. The runtime enforces
    /// it apart from its own loop, so nothing the loop waits for can keep a
    /// primary acting past it.
    pub fn acting_until(&self, now: Millis) -> Option<Millis> {
        if !self.acting(now) {
            return None;
        }
        self.lease_until.max(self.failsafe_until)
    }

    /// The witness lease's end on this agent's clock (not the failsafe).
    pub fn lease_until(&self) -> Option<Millis> {
        self.lease_until
    }

    /// Lease time left (status, metrics).
    pub fn lease_remaining(&self, now: Millis) -> Option<Millis> {
        let until = self.lease_until.max(self.failsafe_until)?;
        (until > now && self.acting(now)).then(|| until - now)
    }

    /// Why the agent is or is not acting (status, logs).
    pub fn describe(&self, now: Millis) -> String {
        let Some(c) = &self.cluster else {
            return "no witness view yet".into();
        };
        if c.primary != self.me {
            return format!("standby at epoch {} (primary {})", c.epoch, c.primary);
        }
        if self.acting(now) {
            let via = if self.lease_until.is_some_and(|u| now < u) {
                "witness lease"
            } else {
                "failsafe confirmation of the peer (witness quorum unreachable)"
            };
            return format!("primary at epoch {} via {via}", c.epoch);
        }
        let why = if self.released {
            "lease released (drained or revoked)"
        } else if !self.milvus_healthy {
            "the local Milvus is unhealthy"
        } else if now < self.timing.leader_may_act_at(self.booted_at) {
            "waiting out a lease after start"
        } else if now < self.promised_until {
            "waiting out a failsafe promise given to the peer"
        } else {
            "no valid lease: fenced"
        };
        format!("primary at epoch {} but not acting: {why}", c.epoch)
    }

    pub fn step(&mut self, now: Millis, input: Input) -> Vec<Action> {
        let mut out = vec![];
        match input {
            Input::Tick => {}
            Input::HeartbeatDue { wall_ms } => self.heartbeat(now, wall_ms, &mut out),
            Input::Reply(r) => self.on_reply(r, &mut out),
            Input::MilvusHealth {
                healthy,
                last_ok_wall_ms,
            } => {
                self.milvus_healthy = healthy;
                self.milvus_last_healthy_wall_ms =
                    self.milvus_last_healthy_wall_ms.max(last_ok_wall_ms);
            }
            Input::Applied {
                snapshot_wall_ms,
                lag_ms,
            } => {
                self.applied_snapshot_wall_ms = Some(snapshot_wall_ms);
                self.lag_ms = lag_ms;
            }
            Input::Drained {
                epoch,
                snapshot_wall_ms,
            } => {
                if epoch == self.epoch() && self.drain_asked {
                    self.drained = Some(snapshot_wall_ms);
                    self.release();
                }
            }
            Input::FailsafeAsked { epoch } => {
                let ok = self.epoch() <= epoch;
                if ok {
                    self.promised_until = self
                        .promised_until
                        .max(self.timing.witness_lease_until(now));
                }
                out.push(Action::AnswerFailsafe(FailsafeAnswer {
                    ok,
                    cluster: self.cluster.clone(),
                }));
            }
            Input::FailsafeAnswered {
                sent_at,
                epoch,
                answer,
            } => {
                if let Some(c) = answer.cluster {
                    self.learn(c, &mut out);
                }
                if answer.ok && epoch == self.epoch() && self.is_named_primary() && !self.released {
                    let until = self.timing.agent_lease_until(sent_at);
                    self.failsafe_until = self.failsafe_until.max(Some(until));
                }
            }
            Input::Learned(c) => self.learn(c, &mut out),
        }
        self.evaluate(now, &mut out);
        out
    }

    fn heartbeat(&mut self, now: Millis, wall_ms: u64, out: &mut Vec<Action>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.sent.push_back((seq, now));
        while self.sent.len() > 256 {
            self.sent.pop_front();
        }
        let acting = self.acting(now);
        out.push(Action::SendHeartbeat(AgentHeartbeat {
            dc: self.me.clone(),
            seq,
            epoch: self.epoch(),
            acting_primary: acting,
            released: self.released,
            milvus_healthy: self.milvus_healthy,
            wall_ms,
            milvus_last_healthy_wall_ms: self.milvus_last_healthy_wall_ms,
            applied_snapshot_wall_ms: self.applied_snapshot_wall_ms,
            drained_snapshot_wall_ms: self.drained,
            lag_ms: self.lag_ms,
            drill_outage_ms: None,
        }));
        // Quorum unreachable for two heartbeats: ask the peer instead.
        let renewed_recently = self
            .last_grant_at
            .is_some_and(|g| now.saturating_sub(g) <= 2 * self.timing.heartbeat_ms);
        let stable = self
            .cluster
            .as_ref()
            .is_some_and(|c| c.phase == Phase::Stable);
        if self.is_named_primary()
            && stable
            && !self.released
            && self.milvus_healthy
            && !renewed_recently
        {
            out.push(Action::AskFailsafe {
                epoch: self.epoch(),
            });
        }
    }

    fn release(&mut self) {
        self.released = true;
        self.lease_until = None;
        self.failsafe_until = None;
        self.min_grant_seq = self.next_seq;
    }

    fn learn(&mut self, c: Cluster, out: &mut Vec<Action>) {
        let newer = match &self.cluster {
            None => true,
            Some(k) => c.epoch > k.epoch || (c.epoch == k.epoch && c.version > k.version),
        };
        if !newer {
            return;
        }
        let epoch_changed = c.epoch != self.epoch();
        if epoch_changed {
            self.lease_until = None;
            self.failsafe_until = None;
            self.released = false;
            self.drain_asked = false;
            self.drained = None;
            self.min_grant_seq = self.next_seq;
        } else if c.phase == Phase::Stable && self.drain_asked {
            // Switchover aborted: take the lease again with new heartbeats.
            self.released = false;
            self.drain_asked = false;
            self.drained = None;
        }
        self.cluster = Some(c.clone());
        out.push(Action::Persist(c));
    }

    fn on_reply(&mut self, r: HeartbeatReply, out: &mut Vec<Action>) {
        if let Some(c) = r.cluster.clone() {
            self.learn(c, out);
        }
        let same_epoch = r.cluster.as_ref().map(|c| c.epoch) == Some(self.epoch());
        match r.lease {
            LeaseAnswer::NotLeader => {}
            LeaseAnswer::Granted => {
                let sent_at = self.sent.iter().find(|(s, _)| *s == r.seq).map(|(_, t)| *t);
                if let Some(sent_at) = sent_at {
                    if same_epoch
                        && r.seq >= self.min_grant_seq
                        && self.is_named_primary()
                        && !self.released
                    {
                        let until = self.timing.agent_lease_until(sent_at);
                        self.lease_until = self.lease_until.max(Some(until));
                        self.last_grant_at = self.last_grant_at.max(Some(sent_at));
                    }
                }
            }
            LeaseAnswer::Revoked => {
                if same_epoch && self.is_named_primary() && !self.released {
                    self.release();
                }
            }
            LeaseAnswer::Denied => {
                let stable = self
                    .cluster
                    .as_ref()
                    .is_some_and(|c| c.phase == Phase::Stable);
                if same_epoch && self.released && stable && r.seq >= self.min_grant_seq {
                    self.released = false;
                }
            }
        }
    }

    fn evaluate(&mut self, now: Millis, out: &mut Vec<Action>) {
        let epoch = self.epoch();
        if let Some(c) = &self.cluster {
            if c.primary != self.me && self.sink_epoch < epoch {
                self.sink_epoch = epoch;
                out.push(Action::BecomeSink { epoch });
            }
            let switching_away =
                matches!(&c.phase, Phase::SwitchingOver { to, .. } if *to != self.me);
            if switching_away && c.primary == self.me && !self.drain_asked && self.acting(now) {
                self.drain_asked = true;
                out.push(Action::Drain { epoch });
            }
        }
        let acting = self.acting(now);
        if acting && !self.acting {
            out.push(Action::StartSource { epoch });
            if self.dns_epoch < epoch {
                self.dns_epoch = epoch;
                out.push(Action::SwitchDns { epoch });
            }
        } else if !acting && self.acting {
            out.push(Action::StopSource {
                reason: self.describe(now),
            });
        }
        self.acting = acting;
    }
}

//! The failover core's messages on the wire: heartbeats (agent → witness)
//! and failsafe requests (agent → agent) are protobuf types of `dr_proto`,
//! converted into the core's types with `TryFrom`, which is where they are
//! validated. A message that does not convert is refused with
//! `INVALID_ARGUMENT` naming the field; nothing half-valid reaches a
//! decision.

use dr_proto::pb;
use dr_proto::ProtocolError;

use crate::decide::{AgentHeartbeat, HeartbeatReply, LeaseAnswer};
use crate::model::{Cluster, Phase};
use crate::role::FailsafeAnswer;
use crate::timing::Timing;

/// What an agent sends: its heartbeat and the timing it runs with (which
/// must equal the witnesses').
#[derive(Debug, Clone, PartialEq)]
pub struct HeartbeatRequest {
    pub heartbeat: AgentHeartbeat,
    pub timing: Timing,
}

fn bad(message: &'static str, problem: impl Into<String>) -> ProtocolError {
    ProtocolError::new(message, problem)
}

impl From<Timing> for pb::FailoverTiming {
    fn from(t: Timing) -> Self {
        pb::FailoverTiming {
            heartbeat_ms: t.heartbeat_ms,
            lease_ms: t.lease_ms,
            confirmation_ms: t.confirmation_ms,
            anti_flap_ms: t.anti_flap_ms,
            data_loss_budget_ms: t.data_loss_budget_ms,
            max_drift: t.max_drift,
        }
    }
}

impl TryFrom<pb::FailoverTiming> for Timing {
    type Error = ProtocolError;
    fn try_from(t: pb::FailoverTiming) -> Result<Self, ProtocolError> {
        let timing = Timing {
            heartbeat_ms: t.heartbeat_ms,
            lease_ms: t.lease_ms,
            confirmation_ms: t.confirmation_ms,
            anti_flap_ms: t.anti_flap_ms,
            data_loss_budget_ms: t.data_loss_budget_ms,
            max_drift: t.max_drift,
        };
        timing
            .validate()
            .map_err(|e| bad("FailoverTiming", e.to_string()))?;
        Ok(timing)
    }
}

impl From<HeartbeatRequest> for pb::AgentHeartbeat {
    fn from(r: HeartbeatRequest) -> Self {
        let h = r.heartbeat;
        pb::AgentHeartbeat {
            dc: h.dc,
            seq: h.seq,
            epoch: h.epoch,
            acting_primary: h.acting_primary,
            released: h.released,
            milvus_healthy: h.milvus_healthy,
            wall_ms: h.wall_ms,
            milvus_last_healthy_wall_ms: h.milvus_last_healthy_wall_ms,
            applied_snapshot_wall_ms: h.applied_snapshot_wall_ms,
            drained_snapshot_wall_ms: h.drained_snapshot_wall_ms,
            lag_ms: h.lag_ms,
            drill_outage_ms: h.drill_outage_ms,
            timing: Some(r.timing.into()),
        }
    }
}

impl TryFrom<pb::AgentHeartbeat> for HeartbeatRequest {
    type Error = ProtocolError;
    fn try_from(h: pb::AgentHeartbeat) -> Result<Self, ProtocolError> {
        if h.dc.is_empty() {
            return Err(bad("Heartbeat", "dc is empty"));
        }
        if h.seq == 0 {
            return Err(bad("Heartbeat", "seq is 0 (the first heartbeat is 1)"));
        }
        if h.acting_primary && h.epoch == 0 {
            return Err(bad("Heartbeat", "acting_primary at epoch 0"));
        }
        let timing = h
            .timing
            .ok_or_else(|| bad("Heartbeat", "timing is missing"))?
            .try_into()?;
        Ok(HeartbeatRequest {
            heartbeat: AgentHeartbeat {
                dc: h.dc,
                seq: h.seq,
                epoch: h.epoch,
                acting_primary: h.acting_primary,
                released: h.released,
                milvus_healthy: h.milvus_healthy,
                wall_ms: h.wall_ms,
                milvus_last_healthy_wall_ms: h.milvus_last_healthy_wall_ms,
                applied_snapshot_wall_ms: h.applied_snapshot_wall_ms,
                drained_snapshot_wall_ms: h.drained_snapshot_wall_ms,
                lag_ms: h.lag_ms,
                drill_outage_ms: h.drill_outage_ms,
            },
            timing,
        })
    }
}

impl From<Cluster> for pb::ClusterView {
    fn from(c: Cluster) -> Self {
        let (switching_to, switching_started_wall_ms) = match c.phase {
            Phase::Stable => (String::new(), 0),
            Phase::SwitchingOver {
                to,
                started_wall_ms,
            } => (to, started_wall_ms),
        };
        pb::ClusterView {
            epoch: c.epoch,
            primary: c.primary,
            datacenters: c.datacenters,
            switching_to,
            switching_started_wall_ms,
            last_failover_wall_ms: c.last_failover_wall_ms,
            needs_resync: c.needs_resync.into_iter().collect(),
            version: c.version,
        }
    }
}

impl TryFrom<pb::ClusterView> for Cluster {
    type Error = ProtocolError;
    fn try_from(c: pb::ClusterView) -> Result<Self, ProtocolError> {
        let known = |dc: &str| c.datacenters.iter().any(|d| d == dc);
        if c.epoch == 0 {
            return Err(bad(
                "ClusterView",
                "epoch is 0 (an uninitialised view is sent as absent)",
            ));
        }
        if c.datacenters.len() != 2 {
            return Err(bad(
                "ClusterView",
                format!("{} datacenters, expected 2", c.datacenters.len()),
            ));
        }
        if !known(&c.primary) {
            return Err(bad(
                "ClusterView",
                format!("primary {:?} is not one of {:?}", c.primary, c.datacenters),
            ));
        }
        if let Some(dc) = c.needs_resync.iter().find(|d| !known(d)) {
            return Err(bad(
                "ClusterView",
                format!("needs_resync names {dc:?}, not one of {:?}", c.datacenters),
            ));
        }
        let phase = if c.switching_to.is_empty() {
            Phase::Stable
        } else if known(&c.switching_to) {
            Phase::SwitchingOver {
                to: c.switching_to,
                started_wall_ms: c.switching_started_wall_ms,
            }
        } else {
            return Err(bad(
                "ClusterView",
                format!(
                    "switching_to {:?} is not one of {:?}",
                    c.switching_to, c.datacenters
                ),
            ));
        };
        Ok(Cluster {
            epoch: c.epoch,
            primary: c.primary,
            datacenters: c.datacenters,
            phase,
            last_failover_wall_ms: c.last_failover_wall_ms,
            needs_resync: c.needs_resync.into_iter().collect(),
            // Agents do not need it (operators see it in the status).
            divergent: Default::default(),
            version: c.version,
        })
    }
}

/// An optional view: absent stays absent, a present one must be valid.
fn view(c: Option<pb::ClusterView>) -> Result<Option<Cluster>, ProtocolError> {
    c.map(Cluster::try_from).transpose()
}

impl From<LeaseAnswer> for pb::LeaseAnswer {
    fn from(a: LeaseAnswer) -> Self {
        match a {
            LeaseAnswer::NotLeader => pb::LeaseAnswer::NotLeader,
            LeaseAnswer::Granted => pb::LeaseAnswer::Granted,
            LeaseAnswer::Revoked => pb::LeaseAnswer::Revoked,
            LeaseAnswer::Denied => pb::LeaseAnswer::Denied,
        }
    }
}

impl From<HeartbeatReply> for pb::HeartbeatReply {
    fn from(r: HeartbeatReply) -> Self {
        pb::HeartbeatReply {
            seq: r.seq,
            cluster: r.cluster.map(Into::into),
            lease: pb::LeaseAnswer::from(r.lease).into(),
            leader: r.leader,
        }
    }
}

impl TryFrom<pb::HeartbeatReply> for HeartbeatReply {
    type Error = ProtocolError;
    fn try_from(r: pb::HeartbeatReply) -> Result<Self, ProtocolError> {
        let lease = match pb::LeaseAnswer::try_from(r.lease) {
            Ok(pb::LeaseAnswer::NotLeader) => LeaseAnswer::NotLeader,
            Ok(pb::LeaseAnswer::Granted) => LeaseAnswer::Granted,
            Ok(pb::LeaseAnswer::Revoked) => LeaseAnswer::Revoked,
            Ok(pb::LeaseAnswer::Denied) => LeaseAnswer::Denied,
            Ok(pb::LeaseAnswer::Unspecified) | Err(_) => {
                return Err(bad(
                    "HeartbeatReply",
                    format!("lease answer {} is unknown", r.lease),
                ))
            }
        };
        Ok(HeartbeatReply {
            seq: r.seq,
            cluster: view(r.cluster)?,
            lease,
            leader: r.leader,
        })
    }
}

impl From<FailsafeAnswer> for pb::FailsafeReply {
    fn from(a: FailsafeAnswer) -> Self {
        pb::FailsafeReply {
            ok: a.ok,
            cluster: a.cluster.map(Into::into),
        }
    }
}

impl TryFrom<pb::FailsafeReply> for FailsafeAnswer {
    type Error = ProtocolError;
    fn try_from(r: pb::FailsafeReply) -> Result<Self, ProtocolError> {
        Ok(FailsafeAnswer {
            ok: r.ok,
            cluster: view(r.cluster)?,
        })
    }
}

/// The epoch a failsafe request asks about (never 0: a primary acts in an
/// initialised epoch).
pub fn failsafe_epoch(r: &pb::FailsafeRequest) -> Result<u64, ProtocolError> {
    match r.epoch {
        0 => Err(bad("FailsafeRequest", "epoch is 0")),
        e => Ok(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> Cluster {
        Cluster {
            epoch: 7,
            primary: "dc-a".into(),
            datacenters: vec!["dc-a".into(), "dc-b".into()],
            phase: Phase::SwitchingOver {
                to: "dc-b".into(),
                started_wall_ms: 1_700_000_000_000,
            },
            last_failover_wall_ms: Some(1_600_000_000_000),
            needs_resync: ["dc-b".to_string()].into(),
            divergent: Default::default(),
            version: 42,
        }
    }

    fn request() -> HeartbeatRequest {
        HeartbeatRequest {
            heartbeat: AgentHeartbeat {
                dc: "dc-a".into(),
                seq: 3,
                epoch: 7,
                acting_primary: true,
                released: false,
                milvus_healthy: true,
                wall_ms: 1_700_000_000_123,
                milvus_last_healthy_wall_ms: Some(1_700_000_000_100),
                applied_snapshot_wall_ms: None,
                drained_snapshot_wall_ms: Some(5),
                lag_ms: Some(250),
                drill_outage_ms: Some(30_000),
            },
            timing: Timing::fast(),
        }
    }

    #[test]
    fn every_message_survives_the_wire_unchanged() {
        let r = request();
        assert_eq!(
            HeartbeatRequest::try_from(pb::AgentHeartbeat::from(r.clone())),
            Ok(r)
        );
        let c = cluster();
        assert_eq!(
            Cluster::try_from(pb::ClusterView::from(c.clone())),
            Ok(c.clone())
        );
        let stable = Cluster {
            phase: Phase::Stable,
            ..c.clone()
        };
        assert_eq!(
            Cluster::try_from(pb::ClusterView::from(stable.clone())),
            Ok(stable)
        );
        for lease in [
            LeaseAnswer::NotLeader,
            LeaseAnswer::Granted,
            LeaseAnswer::Revoked,
            LeaseAnswer::Denied,
        ] {
            let reply = HeartbeatReply {
                seq: 9,
                cluster: Some(c.clone()),
                lease,
                leader: Some(2),
            };
            assert_eq!(
                HeartbeatReply::try_from(pb::HeartbeatReply::from(reply.clone())),
                Ok(reply)
            );
        }
        let answer = FailsafeAnswer {
            ok: true,
            cluster: None,
        };
        assert_eq!(
            FailsafeAnswer::try_from(pb::FailsafeReply::from(answer.clone())),
            Ok(answer)
        );
    }

    fn refused<T: std::fmt::Debug>(r: Result<T, ProtocolError>, says: &str) {
        let e = r.expect_err("must be refused");
        assert!(e.to_string().contains(says), "{e} should say {says:?}");
        assert_eq!(tonic::Status::from(e).code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn malformed_heartbeats_are_refused_naming_the_field() {
        let ok = pb::AgentHeartbeat::from(request());
        refused(
            HeartbeatRequest::try_from(pb::AgentHeartbeat {
                dc: String::new(),
                ..ok.clone()
            }),
            "dc is empty",
        );
        refused(
            HeartbeatRequest::try_from(pb::AgentHeartbeat {
                seq: 0,
                ..ok.clone()
            }),
            "seq is 0",
        );
        refused(
            HeartbeatRequest::try_from(pb::AgentHeartbeat {
                epoch: 0,
                ..ok.clone()
            }),
            "acting_primary at epoch 0",
        );
        refused(
            HeartbeatRequest::try_from(pb::AgentHeartbeat {
                timing: None,
                ..ok.clone()
            }),
            "timing is missing",
        );
        let mut t = ok.timing.unwrap();
        t.lease_ms = 0;
        refused(
            HeartbeatRequest::try_from(pb::AgentHeartbeat {
                timing: Some(t),
                ..ok
            }),
            "FailoverTiming",
        );
    }

    #[test]
    fn malformed_views_and_replies_are_refused() {
        let ok = pb::ClusterView::from(cluster());
        refused(
            Cluster::try_from(pb::ClusterView {
                epoch: 0,
                ..ok.clone()
            }),
            "epoch is 0",
        );
        refused(
            Cluster::try_from(pb::ClusterView {
                primary: "dc-z".into(),
                ..ok.clone()
            }),
            "primary \"dc-z\"",
        );
        refused(
            Cluster::try_from(pb::ClusterView {
                datacenters: vec!["dc-a".into()],
                ..ok.clone()
            }),
            "1 datacenters",
        );
        refused(
            Cluster::try_from(pb::ClusterView {
                switching_to: "dc-z".into(),
                ..ok.clone()
            }),
            "switching_to",
        );
        refused(
            Cluster::try_from(pb::ClusterView {
                needs_resync: vec!["dc-z".into()],
                ..ok.clone()
            }),
            "needs_resync",
        );
        for lease in [0, 99] {
            refused(
                HeartbeatReply::try_from(pb::HeartbeatReply {
                    seq: 1,
                    cluster: None,
                    lease,
                    leader: None,
                }),
                "lease answer",
            );
        }
        refused(
            FailsafeAnswer::try_from(pb::FailsafeReply {
                ok: true,
                cluster: Some(pb::ClusterView { epoch: 0, ..ok }),
            }),
            "epoch is 0",
        );
        refused(
            failsafe_epoch(&pb::FailsafeRequest { epoch: 0 }),
            "epoch is 0",
        );
        assert_eq!(failsafe_epoch(&pb::FailsafeRequest { epoch: 4 }), Ok(4));
    }
}

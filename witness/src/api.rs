//! What the witnesses' clients use (agents, drctl, tests): the status
//! document a witness serves, and a channel to a witness. Pure: no Raft,
//! no storage.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tonic::transport::Channel;

use crate::config::witness_identity;
use crate::decide::{AgentHeartbeat, Observation, Verdict};
use crate::model::{AuditEntry, Cluster, WitnessId};
use crate::timing::Timing;

/// The last heartbeat a witness received from an agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentSeen {
    pub ago_ms: u64,
    pub heartbeat: AgentHeartbeat,
}

/// `drctl witness status`: one witness's view.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WitnessStatus {
    pub id: WitnessId,
    /// The leader as this witness knows it. A witness that Raft still
    /// calls leader but that no quorum acknowledged within a lease does
    /// not name itself (see `leader_confirmed`).
    pub leader: Option<WitnessId>,
    /// This witness is the leader and a quorum acknowledged it within the
    /// last lease: it is the one deciding. `raft_state` "Leader" without
    /// this is an unconfirmed leader (cut off from its peers, deciding
    /// nothing). Absent from older witnesses' status: false.
    #[serde(default)]
    pub leader_confirmed: bool,
    /// On a Raft leader: how long ago a quorum last acknowledged it.
    #[serde(default)]
    pub quorum_ack_ms: Option<u64>,
    pub term: u64,
    pub raft_state: String,
    pub cluster: Cluster,
    /// This witness's latest observation of each datacenter.
    pub observation: Observation,
    pub agents: BTreeMap<String, AgentSeen>,
    /// On the leader: what it is deciding and why.
    pub verdict: Verdict,
    /// On the leader: how long the primary's lease may still be valid.
    pub lease_remaining_ms: Option<u64>,
    pub audit: Vec<AuditEntry>,
    pub timing: Timing,
}

/// A lazily connected channel to witness `id` at `addr`, for short-lived
/// clients (`drctl`): [`channel_with_timing`] with the default timing.
pub fn channel(tls: &dr_proto::tls::Tls, id: u64, addr: &str) -> anyhow::Result<Channel> {
    channel_with_timing(tls, id, addr, &Timing::default())
}

/// A lazily connected channel to witness `id` at `addr` that notices a
/// path gone silent (packets dropped, nothing closed) within about a lease
/// and reconnects promptly once it heals (see [`dr_proto::channel`]).
pub fn channel_with_timing(
    tls: &dr_proto::tls::Tls,
    id: u64,
    addr: &str,
    timing: &Timing,
) -> anyhow::Result<Channel> {
    let tls = tls.client_config(&witness_identity(id))?;
    dr_proto::channel::lazy(addr, &tls, timing.liveness())
}

#[cfg(test)]
mod tests {
    use super::*;

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
            verdict: crate::decide::Verdict::NotLeader,
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
}

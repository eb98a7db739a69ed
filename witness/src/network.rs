//! openraft's network between witnesses: each RPC is one unary gRPC call
//! over mutual TLS, its openraft payload serde-encoded as JSON.

use std::collections::BTreeMap;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;

use crate::api::channel_with_timing;
use crate::store::{NodeId, TypeConfig};
use crate::timing::Timing;
use dr_proto::pb::{witness_client::WitnessClient, RaftRpc};

/// Opens mTLS channels to the other witnesses.
#[derive(Clone)]
pub struct Network {
    pub tls: dr_proto::tls::Tls,
    pub timing: Timing,
    /// Where this witness dials each peer: its own config's `witnesses`.
    /// Preferred over the address recorded in the Raft membership, which is
    /// whatever the group was initialised with.
    pub addresses: BTreeMap<NodeId, String>,
}

pub struct Client {
    target: NodeId,
    client: Option<WitnessClient<Channel>>,
    error: Option<String>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Client;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Client {
        let addr = self.addresses.get(&target).unwrap_or(&node.addr);
        match channel_with_timing(&self.tls, target, addr, &self.timing) {
            Ok(ch) => Client {
                target,
                client: Some(WitnessClient::new(ch)),
                error: None,
            },
            Err(e) => Client {
                target,
                client: None,
                error: Some(format!("{e:#}")),
            },
        }
    }
}

fn unreachable<E: std::error::Error>(msg: String) -> RPCError<NodeId, BasicNode, E> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(msg)))
}

/// Whether a call failed because its connection went away under it (not
/// because the peer answered it with an error).
fn connection_closed_under(s: &tonic::Status) -> bool {
    match s.code() {
        tonic::Code::Cancelled | tonic::Code::Unavailable => true,
        tonic::Code::Internal => s.message().starts_with("h2 protocol error"),
        _ => false,
    }
}

impl Client {
    async fn call<Req: Serialize, Resp: DeserializeOwned, E>(
        &mut self,
        kind: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        E: std::error::Error + DeserializeOwned,
    {
        let Some(client) = self.client.as_mut() else {
            return Err(unreachable(self.error.clone().unwrap_or_default()));
        };
        let body = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let rpc = || {
            let mut request = tonic::Request::new(RaftRpc {
                kind: kind.into(),
                body: body.clone(),
            });
            request.set_timeout(option.hard_ttl());
            request
        };
        // A connection the peer closed (it rotated its certificate and
        // sent GOAWAY) fails a call in transit with CANCELLED,
        // UNAVAILABLE or, for a GOAWAY with NO_ERROR that crosses the
        // call, INTERNAL "h2 protocol error": once more, on the
        // reconnected channel, before calling the peer unreachable (Raft
        // RPCs may be repeated).
        let reply = match client.raft(rpc()).await {
            Err(s) if connection_closed_under(&s) => client.raft(rpc()).await,
            r => r,
        }
        .map_err(|s| unreachable(format!("witness {}: {}", self.target, s.message())))?;
        let result: Result<Resp, RaftError<NodeId, E>> =
            serde_json::from_slice(&reply.into_inner().body)
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Client {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call::<_, _, openraft::error::Infallible>("append", &rpc, &option)
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call("snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call::<_, _, openraft::error::Infallible>("vote", &rpc, &option)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::connection_closed_under;
    use tonic::{Code, Status};

    #[test]
    fn only_a_connection_closed_under_a_call_is_retried() {
        assert!(connection_closed_under(&Status::unavailable("x")));
        assert!(connection_closed_under(&Status::cancelled("x")));
        assert!(connection_closed_under(&Status::new(
            Code::Internal,
            "h2 protocol error: http2 error"
        )));
        assert!(!connection_closed_under(&Status::internal("store failed")));
        assert!(!connection_closed_under(&Status::permission_denied("x")));
        assert!(!connection_closed_under(&Status::deadline_exceeded("x")));
    }
}

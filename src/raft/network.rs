//! The client side of Raft RPCs: openraft's messages, postcard-encoded, over tonic.
use super::{codec, Node, NodeId, RaftError, TypeConfig};
use crate::proto::raft_v1::{raft_client::RaftClient, RaftMessage};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// A cache of one lazily connected channel per peer address, shared by Raft replication,
/// forwarding and the admin fan-out.
#[derive(Clone, Default)]
pub struct Channels {
    inner: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Channels {
    pub fn get(&self, addr: &str) -> Channel {
        let mut m = self.inner.lock().expect("lock");
        m.entry(addr.to_string())
            .or_insert_with(|| {
                let uri = if addr.contains("://") {
                    addr.to_string()
                } else {
                    format!("http://{addr}")
                };
                Endpoint::from_shared(uri)
                    .expect("peer addresses are validated at start-up")
                    .connect_timeout(Duration::from_millis(500))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(10))
                    .keep_alive_timeout(Duration::from_secs(5))
                    .connect_lazy()
            })
            .clone()
    }
}

/// Snapshot chunks and large append batches stay well below this.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// The node-to-node calls: Raft's own RPCs and a follower's forwarding to the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerCall {
    Append,
    Vote,
    Snapshot,
    Propose,
    ReadIndex,
}

/// Why a node-to-node call has no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    /// Never delivered (connection refused, peer down): safe to send again.
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    /// Sent, but no answer came back in time or the connection broke: the outcome is unknown.
    #[error("no answer from peer: {0}")]
    Failed(String),
}

/// Carries encoded node-to-node calls to the node at an address and brings back its encoded
/// answer.
///
/// To ensure correctness, an implementation must:
/// - answer [`PeerError::Unreachable`] only when the call certainly did not reach the peer
///   (callers send it again, possibly elsewhere);
/// - give up after `timeout` with [`PeerError::Failed`];
/// - deliver the peer's answer bytes unchanged.
pub trait Transport: Send + Sync + 'static {
    fn call(
        &self,
        addr: &str,
        kind: PeerCall,
        body: Vec<u8>,
        timeout: Duration,
    ) -> futures::future::BoxFuture<'static, Result<Vec<u8>, PeerError>>;
}

/// The production transport: the internal `Raft` gRPC service over [`Channels`].
#[derive(Clone, Default)]
pub struct GrpcTransport {
    pub channels: Channels,
}

impl Transport for GrpcTransport {
    fn call(
        &self,
        addr: &str,
        kind: PeerCall,
        body: Vec<u8>,
        timeout: Duration,
    ) -> futures::future::BoxFuture<'static, Result<Vec<u8>, PeerError>> {
        let mut client = RaftClient::new(self.channels.get(addr))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let addr = addr.to_string();
        Box::pin(async move {
            let msg = RaftMessage { data: body.into() };
            let fut = async {
                match kind {
                    PeerCall::Append => client.append_entries(msg).await,
                    PeerCall::Vote => client.vote(msg).await,
                    PeerCall::Snapshot => client.install_snapshot(msg).await,
                    PeerCall::Propose => client.propose(msg).await,
                    PeerCall::ReadIndex => client.read_index(msg).await,
                }
            };
            match tokio::time::timeout(timeout, fut).await {
                Err(_) => Err(PeerError::Failed(format!(
                    "{kind:?} to {addr} timed out after {} ms",
                    timeout.as_millis()
                ))),
                Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
                    Err(PeerError::Unreachable(status.message().to_string()))
                }
                Ok(Err(status)) => Err(PeerError::Failed(status.to_string())),
                // Takes the buffer over without a copy when nothing else holds it.
                Ok(Ok(r)) => Ok(Vec::from(r.into_inner().data)),
            }
        })
    }
}

/// openraft's network factory: one [`Connection`] per peer, over a [`Transport`].
#[derive(Clone)]
pub struct Network {
    pub transport: Arc<dyn Transport>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Connection {
        Connection {
            target,
            addr: node.addr.clone(),
            transport: self.transport.clone(),
        }
    }
}

pub struct Connection {
    target: NodeId,
    addr: String,
    transport: Arc<dyn Transport>,
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, Node, RaftError<E>>;

impl Connection {
    async fn call<Req, Resp, E>(
        &mut self,
        kind: PeerCall,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, RpcErr<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let data = match self
            .transport
            .call(&self.addr, kind, codec::encode(req), ttl)
            .await
        {
            Ok(d) => d,
            Err(e @ PeerError::Unreachable(_)) => {
                return Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Err(e @ PeerError::Failed(_)) => {
                return Err(RPCError::Network(NetworkError::new(&e)));
            }
        };
        let res: Result<Resp, RaftError<E>> =
            codec::decode(&data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        self.call(PeerCall::Append, &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        self.call(PeerCall::Snapshot, &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        self.call(PeerCall::Vote, &rpc, option.hard_ttl()).await
    }
}

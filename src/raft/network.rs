//! The client side of Raft RPCs: openraft's messages, postcard-encoded, over tonic.
use super::peer_auth::PeerKey;
use super::{codec, Node, NodeId, RaftError, TypeConfig};
use crate::proto::raft_v1::{raft_client::RaftClient, RaftMessage};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use parking_lot::Mutex;
use serde::{de::DeserializeOwned, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// A cache of one lazily connected channel per peer address, shared by Raft replication,
/// forwarding and the admin fan-out.
#[derive(Clone, Default)]
pub struct Channels {
    inner: Arc<Mutex<ChannelCache>>,
    /// With peer TLS: how members are dialled (reloaded when the files change).
    tls: Option<Arc<crate::tls::ClientTls>>,
}

#[derive(Default)]
struct ChannelCache {
    channels: HashMap<String, Channel>,
    /// The TLS generation the cached channels were made with.
    tls_generation: u64,
}

/// Peer addresses whose channels are cached at most; past it the cache starts again (a
/// membership holds a handful, so this only bounds what a churn of members could leave).
const MAX_CHANNELS: usize = 256;

impl Channels {
    /// The channel to `addr`, or why `addr` cannot be dialled. Never panics: a membership
    /// entry written by an older version, or by a bug, must not take the node down.
    pub fn get(&self, addr: &str) -> Result<Channel, String> {
        let tls = self.tls.as_ref().map(|t| t.current());
        let generation = tls.as_ref().map_or(0, |(_, g)| *g);
        {
            let mut m = self.inner.lock();
            if m.tls_generation != generation {
                // Renewed certificate files: new connections use them.
                m.channels.clear();
                m.tls_generation = generation;
            }
            if let Some(c) = m.channels.get(addr) {
                return Ok(c.clone());
            }
        }
        crate::node::check_addr(addr)?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| format!("cannot dial {}: {e}", crate::api::validate::clip(addr)))?;
        if let Some((config, _)) = tls {
            endpoint = endpoint.tls_config(config).map_err(|e| {
                format!(
                    "cannot dial {} with TLS: {e}",
                    crate::api::validate::clip(addr)
                )
            })?;
        }
        let endpoint = endpoint
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        let channel = endpoint.connect_lazy();
        let mut m = self.inner.lock();
        if m.channels.len() >= MAX_CHANNELS {
            m.channels.clear();
        }
        Ok(m.channels
            .entry(addr.to_string())
            .or_insert(channel)
            .clone())
    }

    /// Channels that dial members with TLS as `tls` says.
    pub fn with_tls(tls: Arc<crate::tls::ClientTls>) -> Self {
        Self {
            inner: Arc::default(),
            tls: Some(tls),
        }
    }
}

/// The largest peer message. An AppendEntries carries at most [`MAX_APPEND_ENTRIES`] entries of
/// at most about 3.1 MiB each (`node::commit` closes an entry at 2 MiB; one command is at most
/// about 1.1 MiB): 62 MiB. A snapshot chunk is 1 MiB.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Entries one AppendEntries carries at most (openraft's `max_payload_entries`).
pub const MAX_APPEND_ENTRIES: u64 = 20;

/// The node-to-node calls: Raft's own RPCs, a follower's forwarding to the leader, and the
/// admin fan-out (status, membership changes run on the leader).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerCall {
    Append,
    Vote,
    Snapshot,
    Propose,
    ReadIndex,
    Status,
    Membership,
    /// A clock probe: answered with the callee's monotonic reading.
    Clock,
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

/// The production transport: the internal `Raft` gRPC service over [`Channels`], every call
/// signed as member `from` with the cluster's [`PeerKey`].
#[derive(Clone)]
pub struct GrpcTransport {
    pub channels: Channels,
    pub from: NodeId,
    pub key: PeerKey,
}

impl Transport for GrpcTransport {
    fn call(
        &self,
        addr: &str,
        kind: PeerCall,
        body: Vec<u8>,
        timeout: Duration,
    ) -> futures::future::BoxFuture<'static, Result<Vec<u8>, PeerError>> {
        let channel = self.channels.get(addr);
        let addr = addr.to_string();
        let (from, key) = (self.from, self.key.clone());
        // A forwarded proposal carries its trace (taken now: the call runs in the caller's span).
        let traceparent = match kind {
            PeerCall::Propose => crate::trace::current_traceparent(),
            _ => None,
        };
        Box::pin(async move {
            let mut client = RaftClient::new(channel.map_err(PeerError::Unreachable)?)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
            let mut msg = tonic::Request::new(RaftMessage { data: body.into() });
            key.sign(from, msg.metadata_mut());
            if let Some(tp) = &traceparent {
                if let Ok(v) = tp.parse() {
                    msg.metadata_mut().insert(crate::trace::TRACEPARENT, v);
                }
            }
            let fut = async {
                match kind {
                    PeerCall::Append => client.append_entries(msg).await,
                    PeerCall::Vote => client.vote(msg).await,
                    PeerCall::Snapshot => client.install_snapshot(msg).await,
                    PeerCall::Propose => client.propose(msg).await,
                    PeerCall::ReadIndex => client.read_index(msg).await,
                    PeerCall::Status => client.status(msg).await,
                    PeerCall::Membership => client.change_membership(msg).await,
                    PeerCall::Clock => client.clock(msg).await,
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

//! openraft wiring: the type configuration, the binary codec of Raft messages, and the network
//! client that carries them over gRPC.
pub mod network;
pub mod peer_auth;
pub mod runtime;

use crate::state::{Request, Response};

pub type NodeId = u64;
pub type Node = openraft::BasicNode;

openraft::declare_raft_types!(
    /// leasekeeper's Raft types: log entries carry a stamped [`Request`], applying one yields a
    /// [`Response`].
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = Node,
        SnapshotData = crate::store::SnapshotData,
        AsyncRuntime = runtime::Runtime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type RaftError<E = openraft::error::Infallible> = openraft::error::RaftError<NodeId, E>;
pub type ClientWriteError = openraft::error::ClientWriteError<NodeId, Node>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, Node>;

/// Binary encoding of everything that goes into the log, snapshots and Raft RPCs.
pub mod codec {
    use serde::{de::DeserializeOwned, Serialize};

    pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
        postcard::to_stdvec(v).expect("in-memory values always encode")
    }

    pub fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, postcard::Error> {
        postcard::from_bytes(b)
    }
}

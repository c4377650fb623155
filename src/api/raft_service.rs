//! The server side of Raft RPCs and of follower→leader forwarding.
use crate::node::Node;
use crate::proto::raft_v1::{raft_server::Raft as RaftRpc, RaftMessage};
use crate::raft::codec;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct RaftSvc {
    pub node: Arc<Node>,
}

fn decode<T: serde::de::DeserializeOwned>(m: &RaftMessage) -> Result<T, Status> {
    codec::decode(&m.data).map_err(|e| {
        Status::invalid_argument(format!(
            "undecodable raft message ({e}): are all nodes the same version?"
        ))
    })
}

fn reply<T: serde::Serialize>(v: &T) -> Result<Response<RaftMessage>, Status> {
    Ok(Response::new(RaftMessage {
        data: codec::encode(v).into(),
    }))
}

#[tonic::async_trait]
impl RaftRpc for RaftSvc {
    async fn append_entries(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let rpc = decode(req.get_ref())?;
        reply(&self.node.raft.append_entries(rpc).await)
    }

    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc = decode(req.get_ref())?;
        reply(&self.node.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let rpc = decode(req.get_ref())?;
        reply(&self.node.raft.install_snapshot(rpc).await)
    }

    async fn propose(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let r = decode(req.get_ref())?;
        reply(&self.node.propose_local(r).await)
    }

    async fn read_index(
        &self,
        _req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        reply(&self.node.read_index_local().await)
    }
}

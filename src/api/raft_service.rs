//! The server side of Raft RPCs and of follower→leader forwarding: the gRPC face of
//! [`Node::handle_peer`].
use crate::node::Node;
use crate::proto::raft_v1::{raft_server::Raft as RaftRpc, RaftMessage};
use crate::raft::network::PeerCall;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct RaftSvc {
    pub node: Arc<Node>,
}

impl RaftSvc {
    async fn handle(
        &self,
        kind: PeerCall,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        match self.node.handle_peer(kind, &req.get_ref().data).await {
            Ok(data) => Ok(Response::new(RaftMessage { data: data.into() })),
            Err(e) => Err(Status::invalid_argument(e)),
        }
    }
}

#[tonic::async_trait]
impl RaftRpc for RaftSvc {
    async fn append_entries(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.handle(PeerCall::Append, req).await
    }

    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.handle(PeerCall::Vote, req).await
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.handle(PeerCall::Snapshot, req).await
    }

    async fn propose(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.handle(PeerCall::Propose, req).await
    }

    async fn read_index(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.handle(PeerCall::ReadIndex, req).await
    }
}

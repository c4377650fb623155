//! The peer port's service: Raft RPCs, follower→leader forwarding and the admin fan-out, for
//! members only. Every call proves its sender ([`crate::raft::peer_auth`]) before anything in
//! it is decoded.
use crate::node::Node;
use crate::proto::raft_v1::{raft_server::Raft as RaftRpc, RaftMessage};
use crate::raft::network::PeerCall;
use crate::raft::peer_auth::PeerRefusal;
use crate::raft::NodeId;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct RaftSvc {
    pub node: Arc<Node>,
}

impl RaftSvc {
    /// The member a call comes from, or UNAUTHENTICATED (counted, and logged once per source).
    fn authenticate(&self, req: &Request<RaftMessage>) -> Result<NodeId, Status> {
        let checked = self
            .node
            .peer_key
            .verify(req.metadata())
            .and_then(|from| self.node.check_peer(from).map(|()| from))
            .and_then(|from| self.check_certificate(req, from).map(|()| from));
        checked.map_err(|why| {
            let source = req
                .remote_addr()
                .map(|a| a.ip().to_string())
                .unwrap_or_else(|| "unknown".into());
            self.node.refusals.note(&source, &why);
            self.node.shared.metrics.peer_calls_refused.inc();
            Status::unauthenticated(format!("peer call refused: {why}"))
        })
    }

    /// With peer mTLS: the sender's certificate must name the member it claims to be. (The TLS
    /// handshake already checked that it chains to the peer CA.)
    fn check_certificate(
        &self,
        req: &Request<RaftMessage>,
        from: NodeId,
    ) -> Result<(), PeerRefusal> {
        let c = &self.node.config;
        if c.peer_cert_file.is_none() || !c.peer_client_cert_auth {
            return Ok(());
        }
        let certs = req.peer_certs().unwrap_or_default();
        crate::tls::names_member(&certs, from, &c.cluster_name).map_err(PeerRefusal::Certificate)
    }

    async fn handle(
        &self,
        kind: PeerCall,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let from = self.authenticate(&req)?;
        let body = &req.get_ref().data;
        let answer = match kind {
            PeerCall::Status => Ok(super::admin::encoded_status(&self.node)),
            PeerCall::Membership => {
                super::admin::change_membership_for_peer(&self.node, body).await
            }
            _ => {
                use tracing::Instrument;
                // A forwarded proposal continues its writer's trace.
                let span = match kind {
                    PeerCall::Propose if crate::trace::enabled() => {
                        let span = tracing::info_span!(
                            "raft.propose",
                            otel.kind = "server",
                            from,
                            trace_id = tracing::field::Empty
                        );
                        crate::trace::adopt(&span, crate::trace::extract(req.metadata()));
                        span
                    }
                    _ => tracing::Span::none(),
                };
                self.node
                    .handle_peer(from, kind, body)
                    .instrument(span)
                    .await
            }
        };
        match answer {
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

    async fn status(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.handle(PeerCall::Status, req).await
    }

    async fn clock(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.handle(PeerCall::Clock, req).await
    }

    async fn change_membership(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.handle(PeerCall::Membership, req).await
    }
}

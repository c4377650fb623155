//! The Admin service: cluster status and membership changes.
use crate::node::Node;
use crate::proto::v1::{self as pb, admin_client::AdminClient, admin_server::Admin};
use crate::raft::Node as RaftNode;
use openraft::{ChangeMembers, ServerState};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

pub struct AdminSvc {
    pub node: Arc<Node>,
}

const FORWARDED: &str = "x-leasekeeper-forwarded";

pub fn node_status(node: &Node) -> pb::NodeStatusResponse {
    let m = node.metrics();
    let voter = m
        .membership_config
        .membership()
        .get_joint_config()
        .iter()
        .any(|c| c.contains(&node.id));
    let role = match m.state {
        ServerState::Leader => "leader",
        ServerState::Candidate => "candidate",
        ServerState::Shutdown => "shutdown",
        ServerState::Learner => "learner",
        ServerState::Follower if voter => "follower",
        ServerState::Follower => "learner",
    };
    let (live_leases, tasks) = {
        let a = node.shared.read();
        (a.state.lease_count() as u64, a.state.task_count() as u64)
    };
    pb::NodeStatusResponse {
        node_id: node.id,
        addr: node.config.advertise(),
        role: role.into(),
        term: m.current_term,
        leader_id: m.current_leader.unwrap_or(0),
        last_log_index: m.last_log_index.unwrap_or(0),
        applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
        snapshot_index: m.snapshot.map(|l| l.index).unwrap_or(0),
        purged_index: m.purged.map(|l| l.index).unwrap_or(0),
        live_leases,
        tasks,
        unix_ms: node.clock.unix_ms(),
        monotonic_ms: node.clock.monotonic_ms(),
    }
}

impl AdminSvc {
    async fn cluster_status(&self) -> pb::ClusterStatusResponse {
        let m = self.node.metrics();
        let membership = m.membership_config.membership().clone();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let mut members = Vec::new();
        for (id, n) in membership.nodes() {
            let status = if *id == self.node.id {
                Some(node_status(&self.node))
            } else {
                let mut c = AdminClient::new(self.node.channels.get(&n.addr));
                match tokio::time::timeout(
                    Duration::from_secs(1),
                    c.node_status(pb::NodeStatusRequest {}),
                )
                .await
                {
                    Ok(Ok(r)) => Some(r.into_inner()),
                    _ => None,
                }
            };
            members.push(pb::Member {
                node_id: *id,
                addr: n.addr.clone(),
                voter: voters.contains(id),
                reachable: status.is_some(),
                status,
            });
        }
        let leader_id = m.current_leader.unwrap_or(0);
        let leader_addr = membership
            .get_node(&leader_id)
            .map(|n| n.addr.clone())
            .unwrap_or_default();
        pb::ClusterStatusResponse {
            leader_id,
            leader_addr,
            term: m.current_term,
            members,
        }
    }

    /// Membership changes run on the leader: a follower passes the call on once.
    async fn leader_client(
        &self,
        forwarded: bool,
    ) -> Result<Option<AdminClient<tonic::transport::Channel>>, Status> {
        match self.node.leader() {
            Some((id, _)) if id == self.node.id => Ok(None),
            Some((id, addr)) if !forwarded => {
                let _ = id;
                Ok(Some(AdminClient::new(self.node.channels.get(&addr))))
            }
            Some((id, addr)) => Err(Status::unavailable(format!(
                "leadership moved during the call; the leader is node {id} at {addr}: retry"
            ))),
            None => Err(Status::unavailable(
                "no leader is elected: retry once the cluster has a majority",
            )),
        }
    }
}

fn forwarded_request<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert(FORWARDED, "1".parse().expect("ascii"));
    r
}

fn raft_err<E: std::fmt::Display>(e: E) -> Status {
    Status::failed_precondition(format!("membership change refused: {e}"))
}

#[tonic::async_trait]
impl Admin for AdminSvc {
    async fn cluster_status(
        &self,
        _req: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        Ok(Response::new(AdminSvc::cluster_status(self).await))
    }

    async fn node_status(
        &self,
        _req: Request<pb::NodeStatusRequest>,
    ) -> Result<Response<pb::NodeStatusResponse>, Status> {
        Ok(Response::new(node_status(&self.node)))
    }

    async fn add_node(
        &self,
        req: Request<pb::AddNodeRequest>,
    ) -> Result<Response<pb::AddNodeResponse>, Status> {
        let forwarded = req.metadata().contains_key(FORWARDED);
        let r = req.into_inner();
        if r.node_id == 0 {
            return Err(Status::invalid_argument(
                "node_id 0 is reserved: pick a positive id",
            ));
        }
        if r.addr.is_empty()
            || r.addr.parse::<std::net::SocketAddr>().is_err() && !r.addr.contains(':')
        {
            return Err(Status::invalid_argument(format!(
                "addr {:?} is not host:port: give the new node's advertised address",
                r.addr
            )));
        }
        if let Some(mut c) = self.leader_client(forwarded).await? {
            return c.add_node(forwarded_request(r)).await;
        }
        let raft = &self.node.raft;
        raft.add_learner(r.node_id, RaftNode::new(r.addr.clone()), true)
            .await
            .map_err(raft_err)?;
        if !r.learner_only {
            raft.change_membership(
                ChangeMembers::AddVoterIds(BTreeSet::from([r.node_id])),
                false,
            )
            .await
            .map_err(raft_err)?;
        }
        Ok(Response::new(pb::AddNodeResponse {
            status: Some(AdminSvc::cluster_status(self).await),
        }))
    }

    async fn remove_node(
        &self,
        req: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        let forwarded = req.metadata().contains_key(FORWARDED);
        let r = req.into_inner();
        if let Some(mut c) = self.leader_client(forwarded).await? {
            return c.remove_node(forwarded_request(r)).await;
        }
        let m = self.node.metrics();
        let membership = m.membership_config.membership();
        if membership.get_node(&r.node_id).is_none() {
            return Err(Status::not_found(format!(
                "node {} is not a member",
                r.node_id
            )));
        }
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let change = if voters.contains(&r.node_id) {
            if voters.len() == 1 {
                return Err(Status::failed_precondition(
                    "that is the last voter: add another node first",
                ));
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([r.node_id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([r.node_id]))
        };
        self.node
            .raft
            .change_membership(change, false)
            .await
            .map_err(raft_err)?;
        Ok(Response::new(pb::RemoveNodeResponse {
            status: Some(AdminSvc::cluster_status(self).await),
        }))
    }
}

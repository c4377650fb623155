//! The Admin service: cluster status and membership changes.
use crate::auth::{authorize, Need};
use crate::node::Node;
use crate::proto::v1::{self as pb, admin_server::Admin};
use crate::raft::network::PeerCall;
use crate::raft::{codec, Node as RaftNode, NodeId};
use openraft::{ChangeMembers, ServerState};
use prost::Message;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// How long a member's status is awaited by `ClusterStatus`.
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);

pub struct AdminSvc {
    pub node: Arc<Node>,
    pub auth: Option<Arc<crate::auth::Auth>>,
}

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
        peer_addr: node.config.peer_advertise(),
        refused_peer_calls: node.refusals.total(),
        clock_off: node.clocks.is_off(),
        peer_clocks: node
            .clocks
            .peers()
            .into_iter()
            .map(|p| pb::PeerClock {
                node_id: p.node_id,
                rate: p.rate.unwrap_or(0.0),
                round_trip_us: p.round_trip_us.unwrap_or(0),
            })
            .collect(),
        http_addr: node.history.http_addr.get().cloned().unwrap_or_default(),
        commit_index: commit_index(&m, node.id),
        report_latency: node
            .shared
            .metrics
            .queues()
            .iter()
            .map(|q| pb::QueueHistogram {
                queue: q.label.clone(),
                counts: q.report_chart.counts(),
            })
            .filter(|h| h.counts.iter().any(|c| *c > 0))
            .collect(),
    }
}

/// On the leader, the highest index a majority of voters hold (its own last log counts for
/// itself); 0 elsewhere.
fn commit_index(m: &crate::raft::RaftMetrics, me: NodeId) -> u64 {
    let Some(rep) = &m.replication else {
        return 0;
    };
    let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
    let mut held: Vec<u64> = voters
        .iter()
        .map(|v| match *v == me {
            true => m.last_log_index.unwrap_or(0),
            false => rep.get(v).copied().flatten().map_or(0, |l| l.index),
        })
        .collect();
    held.sort_unstable_by(|a, b| b.cmp(a));
    held.get(voters.len() / 2).copied().unwrap_or(0)
}

/// A membership change a follower passes to the leader over the peer port.
#[derive(Serialize, Deserialize)]
enum MembershipChange {
    Add {
        node_id: NodeId,
        addr: String,
        learner_only: bool,
    },
    Remove {
        node_id: NodeId,
    },
}

/// The leader's answer to a forwarded [`MembershipChange`]: a gRPC code and message on refusal.
#[derive(Serialize, Deserialize)]
enum MembershipReply {
    /// The leader's view of the cluster after the change (an encoded ClusterStatusResponse):
    /// the asking node may have just been removed, and its own view is then stale.
    Done(Vec<u8>),
    Refused {
        code: i32,
        message: String,
    },
}

/// This node's status, encoded for the peer fan-out.
pub(crate) fn encoded_status(node: &Node) -> Vec<u8> {
    node_status(node).encode_to_vec()
}

/// The leader side of a forwarded membership change.
pub(crate) async fn change_membership_for_peer(
    node: &Node,
    body: &[u8],
) -> Result<Vec<u8>, String> {
    let change: MembershipChange =
        codec::decode(body).map_err(|e| format!("undecodable membership change: {e}"))?;
    let reply = match change_here(node, change).await {
        Ok(()) => MembershipReply::Done(cluster_status(node, STATUS_TIMEOUT).await.encode_to_vec()),
        Err(s) => MembershipReply::Refused {
            code: s.code() as i32,
            message: s.message().to_string(),
        },
    };
    Ok(codec::encode(&reply))
}

/// Runs a membership change on this node, which must be the leader.
async fn change_here(node: &Node, change: MembershipChange) -> Result<(), Status> {
    if !node.is_leader() {
        return Err(Status::unavailable(
            "leadership moved during the call: retry",
        ));
    }
    let raft = &node.raft;
    match change {
        MembershipChange::Add {
            node_id,
            addr,
            learner_only,
        } => {
            check_new_member(node_id, &addr)?;
            raft.add_learner(node_id, RaftNode::new(addr), true)
                .await
                .map_err(raft_err)?;
            if !learner_only {
                raft.change_membership(
                    ChangeMembers::AddVoterIds(BTreeSet::from([node_id])),
                    false,
                )
                .await
                .map_err(raft_err)?;
            }
        }
        MembershipChange::Remove { node_id } => {
            let m = node.metrics();
            let membership = m.membership_config.membership();
            if membership.get_node(&node_id).is_none() {
                return Err(Status::not_found(format!("node {node_id} is not a member")));
            }
            let voters: BTreeSet<u64> = membership.voter_ids().collect();
            let change = if voters.contains(&node_id) {
                if voters.len() == 1 {
                    return Err(Status::failed_precondition(
                        "that is the last voter: add another node first",
                    ));
                }
                ChangeMembers::RemoveVoters(BTreeSet::from([node_id]))
            } else {
                ChangeMembers::RemoveNodes(BTreeSet::from([node_id]))
            };
            raft.change_membership(change, false)
                .await
                .map_err(raft_err)?;
        }
    }
    Ok(())
}

/// A new member's id and peer address, checked before anything enters the membership: every
/// later leader dials what is there.
fn check_new_member(node_id: NodeId, addr: &str) -> Result<(), Status> {
    if node_id == 0 {
        return Err(Status::invalid_argument(
            "node_id 0 is reserved: pick a positive id",
        ));
    }
    crate::node::check_addr(addr)
        .map_err(|e| Status::invalid_argument(format!("{e}; give the new node's peer address")))
}

/// Every member's status, as this node can reach them over the peer port.
/// The cluster as this node sees it, with each member's own status (asked of all members at
/// once, each answer awaited at most `timeout`).
pub(crate) async fn cluster_status(node: &Node, timeout: Duration) -> pb::ClusterStatusResponse {
    let m = node.metrics();
    let membership = m.membership_config.membership().clone();
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let voters = &voters;
    let asks = membership.nodes().map(|(id, n)| async move {
        let status = if *id == node.id {
            Some(node_status(node))
        } else {
            node.peer_call(&n.addr, PeerCall::Status, Vec::new(), timeout)
                .await
                .ok()
                .and_then(|b| pb::NodeStatusResponse::decode(b.as_slice()).ok())
        };
        pb::Member {
            node_id: *id,
            addr: status.as_ref().map(|s| s.addr.clone()).unwrap_or_default(),
            peer_addr: n.addr.clone(),
            voter: voters.contains(id),
            reachable: status.is_some(),
            status,
        }
    });
    let members = futures::future::join_all(asks).await;
    let leader_id = m.current_leader.unwrap_or(0);
    let leader_addr = members
        .iter()
        .find(|m| m.node_id == leader_id)
        .map(|m| m.addr.clone())
        .unwrap_or_default();
    pb::ClusterStatusResponse {
        leader_id,
        leader_addr,
        term: m.current_term,
        members,
    }
}

impl AdminSvc {
    /// Membership changes run on the leader: a follower passes the call on, over the peer port.
    /// The answer is the cluster's status as the leader sees it afterwards.
    async fn change(&self, change: MembershipChange) -> Result<pb::ClusterStatusResponse, Status> {
        match self.node.leader() {
            Some((id, _)) if id == self.node.id => {
                change_here(&self.node, change).await?;
                Ok(cluster_status(&self.node, STATUS_TIMEOUT).await)
            }
            Some((id, addr)) => {
                let answer = self
                    .node
                    .peer_call(
                        &addr,
                        PeerCall::Membership,
                        codec::encode(&change),
                        // Adding a node waits until it has caught up, as the client does.
                        crate::client::MEMBERSHIP_WAIT,
                    )
                    .await
                    .map_err(|e| {
                        Status::unavailable(format!(
                            "the leader (node {id}) did not answer the membership change: {e}; check `leasekeeper status` before retrying"
                        ))
                    })?;
                match codec::decode::<MembershipReply>(&answer) {
                    Ok(MembershipReply::Done(status)) => {
                        pb::ClusterStatusResponse::decode(status.as_slice()).map_err(|e| {
                            Status::internal(format!("undecodable status from the leader: {e}"))
                        })
                    }
                    Ok(MembershipReply::Refused { code, message }) => {
                        Err(Status::new(tonic::Code::from(code), message))
                    }
                    Err(e) => Err(Status::internal(format!(
                        "undecodable answer from the leader: {e}"
                    ))),
                }
            }
            None => Err(Status::unavailable(
                "no leader is elected: retry once the cluster has a majority",
            )),
        }
    }
}

fn raft_err<E: std::fmt::Display>(e: E) -> Status {
    Status::failed_precondition(format!("membership change refused: {e}"))
}

#[tonic::async_trait]
impl Admin for AdminSvc {
    async fn cluster_status(
        &self,
        req: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        authorize(self.auth.as_deref(), &req, Need::Status)?;
        Ok(Response::new(
            cluster_status(&self.node, STATUS_TIMEOUT).await,
        ))
    }

    async fn node_status(
        &self,
        req: Request<pb::NodeStatusRequest>,
    ) -> Result<Response<pb::NodeStatusResponse>, Status> {
        authorize(self.auth.as_deref(), &req, Need::Status)?;
        Ok(Response::new(node_status(&self.node)))
    }

    async fn add_node(
        &self,
        req: Request<pb::AddNodeRequest>,
    ) -> Result<Response<pb::AddNodeResponse>, Status> {
        authorize(self.auth.as_deref(), &req, Need::Admin)?;
        let r = req.into_inner();
        check_new_member(r.node_id, &r.addr)?;
        let (node_id, addr, learner_only) = (r.node_id, r.addr, r.learner_only);
        let change = MembershipChange::Add {
            node_id,
            addr,
            learner_only,
        };
        let status = Some(self.change(change).await?);
        Ok(Response::new(pb::AddNodeResponse { status }))
    }

    async fn remove_node(
        &self,
        req: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        authorize(self.auth.as_deref(), &req, Need::Admin)?;
        let node_id = req.into_inner().node_id;
        let status = Some(self.change(MembershipChange::Remove { node_id }).await?);
        Ok(Response::new(pb::RemoveNodeResponse { status }))
    }
}

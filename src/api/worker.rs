//! The Worker service: claim, renew (unary and streamed), progress, complete, release.
use super::{convert, error, validate};
use crate::auth::{authorize, Need};
use crate::node::Node;
use crate::proto::v1::{self as pb, worker_server::Worker};
use crate::state::{
    Command, LeaseSecret, RenewOutcome, Response as SmResponse, Token, WorkerReport,
};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::{wrappers::ReceiverStream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

pub struct WorkerSvc {
    pub node: Arc<Node>,
    pub auth: Option<Arc<crate::auth::Auth>>,
    pub heartbeats: Arc<validate::StreamSlots>,
}

/// The renew interval a worker is told: about a third of the TTL, jittered by ±10% so that
/// workers started together do not renew in lockstep.
pub fn advised_interval_ms(ttl_ms: u64) -> u64 {
    let base = ttl_ms / 3;
    let jitter = base / 10;
    if jitter == 0 {
        return base.max(1);
    }
    base - jitter + rand::random::<u64>() % (2 * jitter + 1)
}

fn lease_of(node: &Node, token: Token, renewals: u64) -> Option<pb::Lease> {
    let a = node.shared.read();
    a.state.lease(token).map(|l| pb::Lease {
        renewals: renewals.max(l.renewals),
        ..convert::lease_to_pb(l)
    })
}

/// A lease secret as the API carries it: 16 bytes, big endian.
pub fn secret_to_pb(s: LeaseSecret) -> Vec<u8> {
    s.to_be_bytes().to_vec()
}

/// A presented secret: empty (none presented) or the 16 bytes ClaimTask returned.
fn secret_from_pb(b: &[u8]) -> Result<Option<LeaseSecret>, Status> {
    if b.is_empty() {
        return Ok(None);
    }
    let arr: [u8; 16] = b.try_into().map_err(|_| {
        Status::invalid_argument(format!(
            "lease_secret is {} bytes: pass the 16 bytes ClaimTask returned with the lease",
            b.len()
        ))
    })?;
    Ok(Some(LeaseSecret::from_be_bytes(arr)))
}

/// Whether a caller holds the lease a token names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proof {
    /// The secret matches (or the lease predates secrets).
    Holds,
    /// No secret, or another one.
    Denied { presented: bool },
    /// No attempt with this token is known (the state machine answers why).
    Unknown,
}

fn proof_in(state: &crate::state::State, token: Token, presented: Option<LeaseSecret>) -> Proof {
    match state.secret_of(token) {
        None => Proof::Unknown,
        Some(0) => Proof::Holds,
        Some(s) => match presented {
            // Compared in full width, whatever the first differing bit.
            Some(p) if (p ^ s) == 0 => Proof::Holds,
            p => Proof::Denied {
                presented: p.is_some(),
            },
        },
    }
}

/// Checks each token's presented secret against the secrets this node has applied. Tokens it
/// does not know (a claim the leader committed that this follower has not applied yet) are
/// looked up again after a read barrier; still unknown, they go on to the state machine, which
/// answers why no such lease exists.
async fn prove(node: &Node, leases: &[(Token, Option<LeaseSecret>)]) -> Result<Vec<Proof>, Status> {
    let look = |out: &mut Vec<Proof>| {
        let a = node.shared.read();
        for (i, (token, secret)) in leases.iter().enumerate() {
            if out.len() <= i {
                out.push(proof_in(&a.state, *token, *secret));
            } else if out[i] == Proof::Unknown {
                out[i] = proof_in(&a.state, *token, *secret);
            }
        }
    };
    let mut out = Vec::with_capacity(leases.len());
    look(&mut out);
    if out.contains(&Proof::Unknown) {
        node.read_barrier().await.map_err(error::node)?;
        look(&mut out);
    }
    Ok(out)
}

fn denied_message(token: Token, presented: bool) -> String {
    if presented {
        format!("lease {token}: the lease_secret presented is not this lease's; only the worker that claimed it may act on it")
    } else {
        format!("lease {token}: no lease_secret presented; pass the secret ClaimTask returned with the lease (workers older than lease secrets must be upgraded)")
    }
}

/// One lease's proof, as a gRPC error when it fails.
async fn prove_one(node: &Node, token: Token, secret: &[u8]) -> Result<(), Status> {
    let secret = secret_from_pb(secret)?;
    match prove(node, &[(token, secret)]).await?[0] {
        Proof::Denied { presented } => {
            Err(Status::permission_denied(denied_message(token, presented)))
        }
        Proof::Holds | Proof::Unknown => Ok(()),
    }
}

/// The longest a Heartbeat message waits for its renewals to commit before answering RETRY.
pub const HEARTBEAT_ANSWER_MS: u64 = 1000;

type HeartbeatStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::HeartbeatResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Worker for WorkerSvc {
    async fn claim_task(
        &self,
        req: Request<pb::ClaimTaskRequest>,
    ) -> Result<Response<pb::ClaimTaskResponse>, Status> {
        authorize(
            self.auth.as_deref(),
            &req,
            Need::Claim(&req.get_ref().queue),
        )?;
        let r = req.into_inner();
        let l = &self.node.config.limits;
        validate::queue(&r.queue)?;
        validate::worker_id(&r.worker_id)?;
        let ttl = if r.lease_ttl_ms == 0 {
            None
        } else {
            Some(validate::ttl(l, r.lease_ttl_ms, 0)?)
        };
        if !r.task_id.is_empty() {
            validate::task_id(&r.task_id)?;
        }
        if r.claim_id.len() > validate::MAX_NAME_LEN {
            return Err(Status::invalid_argument(format!(
                "claim_id is {} bytes, the limit is {}: use a shorter idempotency key",
                r.claim_id.len(),
                validate::MAX_NAME_LEN
            )));
        }
        if r.wait_ms > l.max_wait_ms {
            return Err(Status::invalid_argument(format!(
                "wait_ms {} is above {}: lower it and call again",
                r.wait_ms, l.max_wait_ms
            )));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(r.wait_ms);
        let mut applied = self.node.shared.applied_index.subscribe();
        let answer = |task: &crate::state::Task, lease: &crate::state::Lease, secret| {
            // Not applied here yet (a follower relays the leader's answer): just heard.
            let age = self
                .node
                .shared
                .timers
                .lock()
                .silence_ms(lease.token, self.node.clock.monotonic_ms())
                .unwrap_or(0);
            Response::new(pb::ClaimTaskResponse {
                task: Some(convert::task_to_pb(task, Some(lease))),
                lease: Some(convert::lease_to_pb(lease)),
                renew_interval_ms: advised_interval_ms(lease.ttl_ms),
                lease_age_ms: age,
                lease_secret: secret_to_pb(secret),
            })
        };
        let mut first = true;
        loop {
            let now = self.node.clock.unix_ms();
            let look = || {
                let a = self.node.shared.read();
                (
                    a.state.has_claimable(&r.queue, now),
                    a.state.next_ready_at(&r.queue),
                )
            };
            let (mut claimable, mut next_ready) = look();
            if !claimable && first {
                // Nothing to claim on this node's state — which may lag behind writes the
                // caller has already seen acknowledged: a submit answered through this follower,
                // or a claim applied before its answer was lost. Catch up to the leader's commit
                // (read barrier), then look again.
                self.node.read_barrier().await.map_err(error::node)?;
                if !r.claim_id.is_empty() {
                    // A retry of a claim that was applied: its lease is the answer.
                    let a = self.node.shared.read();
                    if let Some(l) = a.state.lease_of_claim(&r.worker_id, &r.claim_id) {
                        let t = a
                            .state
                            .task(&l.task_id)
                            .expect("a live lease's task exists");
                        let secret = a.state.secret_of(l.token).unwrap_or(0);
                        return Ok(answer(t, l, secret));
                    }
                }
                (claimable, next_ready) = look();
            }
            first = false;
            if claimable || !r.task_id.is_empty() {
                let cmd = Command::Claim {
                    queue: r.queue.clone(),
                    worker_id: r.worker_id.clone(),
                    lease_ttl_ms: ttl,
                    task_id: (!r.task_id.is_empty()).then(|| r.task_id.clone()),
                    claim_id: r.claim_id.clone(),
                    // Drawn fresh by the proposing node; a retry of an applied claim is
                    // answered with the secret its lease was made with.
                    secret: rand::random::<LeaseSecret>().max(1),
                };
                match self.node.propose(cmd).await.map_err(error::node)? {
                    SmResponse::Claimed {
                        task,
                        lease,
                        secret,
                    } => {
                        super::observe::claimed_span(&task, &lease);
                        return Ok(answer(&task, &lease, secret));
                    }
                    SmResponse::NoTask => {}
                    SmResponse::Rejected(rej) => return Err(error::rejection(&rej)),
                    other => return Err(error::unexpected("claim", &other)),
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(Response::new(pb::ClaimTaskResponse::default()));
            }
            // Wait for a change, for a retry's back-off to pass, or for the deadline.
            let wake = next_ready
                .map(|nb| Duration::from_millis(nb.saturating_sub(now).max(1)))
                .unwrap_or(Duration::MAX);
            let until =
                deadline.min(tokio::time::Instant::now() + wake.min(Duration::from_secs(60)));
            tokio::select! {
                _ = applied.changed() => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    async fn renew_lease(
        &self,
        req: Request<pb::RenewLeaseRequest>,
    ) -> Result<Response<pb::RenewLeaseResponse>, Status> {
        authorize(self.auth.as_deref(), &req, Need::Lease)?;
        let r = req.into_inner();
        let received = std::time::Instant::now();
        let token = r.lease_token;
        validate::token(token)?;
        prove_one(&self.node, token, &r.lease_secret).await?;
        let out = self.node.renew(vec![token]).await.map_err(error::node)?;
        let status = match &out[0].1 {
            RenewOutcome::Alive { .. } => pb::LeaseStatus::Alive,
            RenewOutcome::Lost(reason) => convert::lost_to_status(reason),
        };
        super::observe::count_renewals(
            &self.node.shared.metrics,
            received,
            &[pb::LeaseRenewal {
                lease_token: token,
                status: status as i32,
                message: String::new(),
                renewals: 0,
            }],
        );
        match &out[0].1 {
            RenewOutcome::Alive { renewals } => {
                let lease = lease_of(&self.node, token, *renewals);
                let ttl = lease
                    .as_ref()
                    .map(|l| l.ttl_ms)
                    .unwrap_or(self.node.config.limits.min_ttl_ms);
                Ok(Response::new(pb::RenewLeaseResponse {
                    lease,
                    renew_interval_ms: advised_interval_ms(ttl),
                }))
            }
            RenewOutcome::Lost(reason) => Err(Status::failed_precondition(format!(
                "lease {token} is no longer valid: {reason}; stop the work"
            ))),
        }
    }

    type HeartbeatStream = HeartbeatStream;

    async fn heartbeat(
        &self,
        req: Request<Streaming<pb::HeartbeatRequest>>,
    ) -> Result<Response<HeartbeatStream>, Status> {
        authorize(self.auth.as_deref(), &req, Need::Lease)?;
        let slot = self.heartbeats.take()?;
        let stall = Duration::from_millis(self.node.config.limits.stream_stall_ms);
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let node = self.node.clone();
        tokio::spawn(async move {
            let _slot = slot;
            while let Some(msg) = inbound.next().await {
                let Ok(msg) = msg else { return };
                let received = std::time::Instant::now();
                if msg.lease_tokens.len() > validate::MAX_TOKENS_PER_HEARTBEAT {
                    let _ = tx
                        .send(Err(Status::invalid_argument(format!(
                            "{} lease tokens in one heartbeat, the limit is {}: split them",
                            msg.lease_tokens.len(),
                            validate::MAX_TOKENS_PER_HEARTBEAT
                        ))))
                        .await;
                    return;
                }
                if !msg.lease_secrets.is_empty()
                    && msg.lease_secrets.len() != msg.lease_tokens.len()
                {
                    let _ = tx
                        .send(Err(Status::invalid_argument(format!(
                            "{} lease tokens but {} lease secrets: send one secret per token, in the same order",
                            msg.lease_tokens.len(),
                            msg.lease_secrets.len()
                        ))))
                        .await;
                    return;
                }
                let presented: Result<Vec<(Token, Option<LeaseSecret>)>, Status> = msg
                    .lease_tokens
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        let s = msg
                            .lease_secrets
                            .get(i)
                            .map(|s| secret_from_pb(s))
                            .transpose()?;
                        Ok((*t, s.flatten()))
                    })
                    .collect();
                let proofs = match presented {
                    Ok(p) => prove(&node, &p).await,
                    Err(e) => Err(e),
                };
                let proofs = match proofs {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                let mut denied = Vec::new();
                let mut proven = Vec::with_capacity(msg.lease_tokens.len());
                for (t, p) in msg.lease_tokens.iter().zip(&proofs) {
                    match p {
                        Proof::Denied { presented } => denied.push(pb::LeaseRenewal {
                            lease_token: *t,
                            status: pb::LeaseStatus::Denied as i32,
                            message: denied_message(*t, *presented),
                            renewals: 0,
                        }),
                        _ => proven.push(*t),
                    }
                }
                // A heartbeat is answered within HEARTBEAT_ANSWER_MS: RETRY when there is no
                // leader or the renewal did not commit in time, so that the worker can tell "the
                // cluster is electing" from "I am cut off".
                let renewed = if proven.is_empty() {
                    Ok(Vec::new())
                } else if node.leader().is_none() {
                    Err(crate::node::NodeError::NoLeader(0))
                } else {
                    match tokio::time::timeout(
                        Duration::from_millis(HEARTBEAT_ANSWER_MS),
                        node.renew(proven.clone()),
                    )
                    .await
                    {
                        Ok(r) => r,
                        Err(_) => Err(crate::node::NodeError::NoLeader(HEARTBEAT_ANSWER_MS)),
                    }
                };
                let resp = match renewed {
                    Ok(out) => {
                        let a = node.shared.read();
                        let mut min_ttl = u64::MAX;
                        let leases = denied
                            .into_iter()
                            .chain(out.into_iter().map(|(token, o)| match o {
                                RenewOutcome::Alive { renewals } => {
                                    if let Some(l) = a.state.lease(token) {
                                        min_ttl = min_ttl.min(l.ttl_ms);
                                    }
                                    pb::LeaseRenewal {
                                        lease_token: token,
                                        status: pb::LeaseStatus::Alive as i32,
                                        message: String::new(),
                                        renewals,
                                    }
                                }
                                RenewOutcome::Lost(reason) => pb::LeaseRenewal {
                                    lease_token: token,
                                    status: convert::lost_to_status(&reason) as i32,
                                    message: format!("{reason}; stop the work"),
                                    renewals: 0,
                                },
                            }))
                            .collect();
                        let ttl = if min_ttl == u64::MAX {
                            node.config.limits.min_ttl_ms
                        } else {
                            min_ttl
                        };
                        pb::HeartbeatResponse {
                            seq: msg.seq,
                            leases,
                            renew_interval_ms: advised_interval_ms(ttl),
                        }
                    }
                    Err(e) => pb::HeartbeatResponse {
                        seq: msg.seq,
                        leases: denied
                            .into_iter()
                            .chain(proven.iter().map(|t| pb::LeaseRenewal {
                                lease_token: *t,
                                status: pb::LeaseStatus::Retry as i32,
                                message: e.to_string(),
                                renewals: 0,
                            }))
                            .collect(),
                        renew_interval_ms: 0,
                    },
                };
                super::observe::count_renewals(&node.shared.metrics, received, &resp.leases);
                // A client that stopped reading answers holds the stream's slot and memory.
                match tokio::time::timeout(stall, tx.send(Ok(resp))).await {
                    Ok(Ok(())) => {}
                    _ => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn report_progress(
        &self,
        req: Request<pb::ReportProgressRequest>,
    ) -> Result<Response<pb::ReportProgressResponse>, Status> {
        authorize(self.auth.as_deref(), &req, Need::Lease)?;
        let r = req.into_inner();
        validate::token(r.lease_token)?;
        prove_one(&self.node, r.lease_token, &r.lease_secret).await?;
        validate::bytes(
            "progress",
            r.progress.len(),
            self.node.config.limits.max_payload_bytes,
        )?;
        match self
            .node
            .propose(Command::Progress {
                token: r.lease_token,
                progress: r.progress,
            })
            .await
            .map_err(error::node)?
        {
            SmResponse::Progressed { lease } => Ok(Response::new(pb::ReportProgressResponse {
                lease: Some(convert::lease_to_pb(&lease)),
            })),
            SmResponse::Rejected(rej) => Err(error::rejection(&rej)),
            other => Err(error::unexpected("progress", &other)),
        }
    }

    async fn complete_task(
        &self,
        req: Request<pb::CompleteTaskRequest>,
    ) -> Result<Response<pb::CompleteTaskResponse>, Status> {
        authorize(self.auth.as_deref(), &req, Need::Lease)?;
        let received = std::time::Instant::now();
        let r = req.into_inner();
        validate::task_id(&r.task_id)?;
        validate::token(r.lease_token)?;
        validate::bytes(
            "result",
            r.result.len(),
            self.node.config.limits.max_result_bytes,
        )?;
        validate::bytes("error", r.error.len(), validate::MAX_ERROR_LEN)?;
        prove_one(&self.node, r.lease_token, &r.lease_secret).await?;
        let report = WorkerReport {
            success: r.success,
            exit_code: r.exit_code,
            result: r.result,
            error: r.error,
        };
        let cmd = Command::Complete {
            task_id: r.task_id,
            token: r.lease_token,
            report,
        };
        match self.node.propose(cmd).await.map_err(error::node)? {
            SmResponse::Completed { task, late } => {
                let q = self.node.shared.metrics.queue(task.queue());
                q.reports.inc();
                if r.report_try > 1 {
                    q.reports_retried.inc();
                }
                if r.exit_to_send_us > 0 {
                    let sent = Duration::from_micros(r.exit_to_send_us.min(u32::MAX as u64));
                    q.observe_report((sent + received.elapsed()).as_secs_f64());
                }
                Ok(Response::new(pb::CompleteTaskResponse {
                    task: Some(convert::task_to_pb(&task, None)),
                    late,
                }))
            }
            SmResponse::Rejected(rej) => Err(error::rejection(&rej)),
            other => Err(error::unexpected("complete", &other)),
        }
    }

    async fn release_task(
        &self,
        req: Request<pb::ReleaseTaskRequest>,
    ) -> Result<Response<pb::ReleaseTaskResponse>, Status> {
        authorize(self.auth.as_deref(), &req, Need::Lease)?;
        let r = req.into_inner();
        validate::token(r.lease_token)?;
        validate::bytes("reason", r.reason.len(), validate::MAX_ERROR_LEN)?;
        prove_one(&self.node, r.lease_token, &r.lease_secret).await?;
        match self
            .node
            .propose(Command::Release {
                token: r.lease_token,
                reason: r.reason,
            })
            .await
            .map_err(error::node)?
        {
            SmResponse::Released { task } => Ok(Response::new(pb::ReleaseTaskResponse {
                task: Some(convert::task_to_pb(&task, None)),
            })),
            SmResponse::Rejected(rej) => Err(error::rejection(&rej)),
            other => Err(error::unexpected("release", &other)),
        }
    }
}

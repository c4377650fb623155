//! The clients of a simulated run: a scheduler submitting, reading and cancelling tasks,
//! workers claiming by id and from a queue (some of which die holding a lease), and the record
//! of what each was told, for the checks.
use super::lincheck::{Call, Phase, TaskOp, TaskRet};
use super::net::{Party, SimNet};
use crate::node::{Node, NodeError};
use crate::raft::network::PeerError;
use crate::raft::NodeId;
use crate::state::{Command, Rejection, RenewOutcome, Response, TaskSpec, TaskState, WorkerReport};
use rand::rngs::StdRng;
use rand::Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

pub(super) struct LeaseRec {
    pub(super) task: String,
    pub(super) ttl_ms: u64,
    /// When the last acknowledged claim or renewal was sent (its first attempt).
    pub(super) heard_sent_ms: u64,
    /// The holder never renews (a worker that died).
    pub(super) dead: bool,
    pub(super) closed: bool,
}

#[derive(Default)]
pub(super) struct Record {
    pub(super) histories: BTreeMap<String, Vec<Call<TaskOp, TaskRet>>>,
    pub(super) submitted: BTreeSet<String>,
    pub(super) acked_success: BTreeSet<String>,
    pub(super) acked_cancel: BTreeSet<String>,
    pub(super) leases: BTreeMap<u64, LeaseRec>,
    pub(super) trace: std::collections::hash_map::DefaultHasher,
    pub(super) violations: Vec<String>,
    pub(super) expirations: usize,
    pub(super) dead_expired: usize,
    pub(super) renewals_acked: usize,
    pub(super) claims: usize,
}

pub(super) struct World {
    pub(super) origin: Instant,
    pub(super) net: Arc<SimNet>,
    pub(super) ids: Vec<NodeId>,
    /// The nodes clients call.
    pub(super) client_nodes: Vec<NodeId>,
    pub(super) rec: Mutex<Record>,
    pub(super) stop: AtomicBool,
    pub(super) ttl_ms: u64,
}

impl World {
    pub(super) fn now_ms(&self) -> u64 {
        Instant::now().duration_since(self.origin).as_millis() as u64
    }

    pub(super) fn log(&self, task: &str, op: TaskOp, ret: Option<TaskRet>, invoked_at: u64) {
        let answered_at = ret.as_ref().map(|_| self.now_ms());
        let mut r = self.rec.lock().expect("lock");
        if task.starts_with(QUEUE_TASK) {
            (task, &op, &ret, invoked_at, answered_at).hash_debug(&mut r.trace);
            return;
        }
        (task, &op, &ret, invoked_at, answered_at).hash_debug(&mut r.trace);
        r.histories.entry(task.to_string()).or_default().push(Call {
            op,
            ret,
            invoked_at,
            answered_at,
        });
    }

    pub(super) fn violation(&self, v: String) {
        self.rec.lock().expect("lock").violations.push(v);
    }

    /// One logical call on `task`: sent to one node after another (starting at `first`) until
    /// one answers, for at most `patience_ms`. Every attempt goes into the task's history on its
    /// own — an attempt without an answer as a call of unknown outcome — since a retried call may
    /// have taken effect in an attempt whose answer was lost. `None`: no attempt was answered.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn call<F, Fut, M>(
        &self,
        client: u64,
        first: usize,
        patience_ms: u64,
        task: &str,
        op: TaskOp,
        f: F,
        read: M,
    ) -> Option<TaskRet>
    where
        F: Fn(Arc<Node>) -> Fut,
        Fut: std::future::Future<Output = Result<Response, NodeError>>,
        M: Fn(Response) -> TaskRet,
    {
        let deadline = Instant::now() + Duration::from_millis(patience_ms);
        let mut i = first;
        loop {
            let to = self.client_nodes[i % self.client_nodes.len()];
            let left = deadline.saturating_duration_since(Instant::now());
            let t0 = self.now_ms();
            let r = self
                .net
                .deliver(
                    Party::Client(client),
                    to,
                    left.min(Duration::from_millis(1_500)),
                    &f,
                )
                .await;
            match r {
                Ok(Ok(resp)) => {
                    let ret = read(single(resp));
                    self.log(task, op, Some(ret.clone()), t0);
                    return Some(ret);
                }
                // Refused at the door: never reached a node.
                Err(PeerError::Unreachable(_)) => {}
                _ => self.log(task, op.clone(), None, t0),
            }
            i += 1;
            if Instant::now() + Duration::from_millis(20) >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl World {
    /// [`World::call`] for a write: `cmd` committed through whichever node answers.
    pub(super) async fn propose<M>(
        &self,
        client: u64,
        first: usize,
        task: &str,
        op: TaskOp,
        cmd: Command,
        read: M,
    ) -> Option<TaskRet>
    where
        M: Fn(Response) -> TaskRet,
    {
        let propose = |n: Arc<Node>| {
            let c = cmd.clone();
            async move { n.propose(c).await }
        };
        self.call(client, first, 3_000, task, op, propose, read)
            .await
    }
}

/// Hashes a value by its debug text (the simulation's types need not implement Hash).
pub(super) trait HashDebug {
    fn hash_debug(&self, h: &mut std::collections::hash_map::DefaultHasher);
}
impl<T: std::fmt::Debug> HashDebug for T {
    fn hash_debug(&self, h: &mut std::collections::hash_map::DefaultHasher) {
        format!("{self:?}").hash(h);
    }
}

/// Ids of the tasks taken by queue claims start with this.
pub(super) const QUEUE_TASK: &str = "q-";

fn queue_of(id: &str) -> &'static str {
    if id.starts_with(QUEUE_TASK) {
        "simq"
    } else {
        "sim"
    }
}

fn spec(id: &str, ttl_ms: u64) -> TaskSpec {
    TaskSpec {
        id: id.into(),
        queue: queue_of(id).into(),
        payload: id.as_bytes().to_vec(),
        // Unlimited in practice: every task must end SUCCEEDED, however often leases expire.
        max_attempts: 1_000,
        lease_ttl_ms: ttl_ms,
        initial_backoff_ms: 200,
        max_backoff_ms: 1_000,
    }
}

pub(super) fn single(r: Response) -> Response {
    match r {
        Response::Batch(mut v) if v.len() == 1 => v.remove(0),
        r => r,
    }
}

/// Whether the submit was acknowledged.
pub(super) async fn submit(w: &World, client: u64, first: usize, id: &str) -> bool {
    let ret = w
        .propose(
            client,
            first,
            id,
            TaskOp::Submit,
            Command::Submit(spec(id, w.ttl_ms)),
            |r| match r {
                Response::Submitted { created, .. } => TaskRet::Submitted { created },
                other => TaskRet::Seen(phase_of_unexpected(w, id, other)),
            },
        )
        .await;
    let acked = ret.is_some();
    if acked {
        w.rec.lock().expect("lock").submitted.insert(id.to_string());
    }
    acked
}

fn phase_of_unexpected(w: &World, id: &str, r: Response) -> Phase {
    w.violation(format!("task {id}: unexpected answer {r:?}"));
    Phase::Absent
}

pub(super) async fn claim(w: &World, client: u64, first: usize, id: &str, key: u64) -> Option<u64> {
    let cmd = Command::Claim {
        queue: "sim".into(),
        worker_id: format!("w{client}"),
        lease_ttl_ms: None,
        task_id: Some(id.to_string()),
        claim_id: key.to_string(),
        // Derived from the key, not drawn: a seed replays the same draws as before.
        secret: u128::from(key) + 1,
    };
    let ret = w
        .propose(
            client,
            first,
            id,
            TaskOp::Claim { claim: key },
            cmd.clone(),
            |r| match r {
                Response::Claimed { lease, .. } => TaskRet::Claimed { token: lease.token },
                Response::NoTask
                | Response::Rejected(Rejection::NotClaimable { .. })
                | Response::Rejected(Rejection::Terminal { .. })
                // A repeat whose lease ended meanwhile (expired: its answer was lost).
                | Response::Rejected(Rejection::ClaimKeyUsed { .. }) => TaskRet::NotClaimable,
                Response::Rejected(Rejection::TaskNotFound { .. }) => TaskRet::Refused,
                other => TaskRet::Seen(phase_of_unexpected(w, id, other)),
            },
        )
        .await;
    match ret {
        Some(TaskRet::Claimed { token }) => Some(token),
        _ => None,
    }
}

async fn renew(w: &World, client: u64, first: usize, id: &str, token: u64) -> Option<bool> {
    let t0 = w.now_ms();
    let ret = w
        .call(
            client,
            first,
            w.ttl_ms / 3,
            id,
            TaskOp::Renew { token },
            |n| async move { n.renew(vec![token]).await.map(Response::Renewed) },
            |r| match r {
                Response::Renewed(v)
                    if matches!(v.first(), Some((_, RenewOutcome::Alive { .. }))) =>
                {
                    TaskRet::Alive
                }
                _ => TaskRet::Lost,
            },
        )
        .await;
    let alive = ret.map(|r| r == TaskRet::Alive);
    if alive == Some(true) {
        let mut rec = w.rec.lock().expect("lock");
        rec.renewals_acked += 1;
        if let Some(l) = rec.leases.get_mut(&token) {
            l.heard_sent_ms = l.heard_sent_ms.max(t0);
        }
    }
    alive
}

async fn complete(w: &World, client: u64, first: usize, id: &str, token: u64) -> Option<bool> {
    let cmd = Command::Complete {
        task_id: id.to_string(),
        token,
        report: WorkerReport {
            success: true,
            exit_code: 0,
            result: b"ok".to_vec(),
            error: String::new(),
        },
    };
    let ret = w
        .propose(
            client,
            first,
            id,
            TaskOp::Complete { token },
            cmd.clone(),
            |r| match r {
                Response::Completed { task, .. } if task.state == TaskState::Succeeded => {
                    TaskRet::Completed
                }
                Response::Rejected(_) => TaskRet::Refused,
                other => TaskRet::Seen(phase_of_unexpected(w, id, other)),
            },
        )
        .await;
    let done = ret.map(|r| r == TaskRet::Completed);
    if done == Some(true) {
        w.rec
            .lock()
            .expect("lock")
            .acked_success
            .insert(id.to_string());
    }
    done
}

pub(super) async fn cancel(w: &World, client: u64, first: usize, id: &str) {
    let cmd = Command::Cancel {
        task_id: id.to_string(),
        reason: "simulated operator".into(),
    };
    let ret = w
        .propose(
            client,
            first,
            id,
            TaskOp::Cancel,
            cmd.clone(),
            |r| match r {
                Response::Cancelled { .. } => TaskRet::Cancelled,
                Response::Rejected(_) => TaskRet::Refused,
                other => TaskRet::Seen(phase_of_unexpected(w, id, other)),
            },
        )
        .await;
    if ret == Some(TaskRet::Cancelled) {
        w.rec
            .lock()
            .expect("lock")
            .acked_cancel
            .insert(id.to_string());
    }
}

fn phase(t: Option<&crate::state::Task>) -> Phase {
    match t.map(|t| t.state) {
        None => Phase::Absent,
        Some(TaskState::Pending) => Phase::Pending,
        Some(TaskState::Running) => Phase::Running { token: 0, claim: 0 },
        Some(TaskState::Succeeded) => Phase::Succeeded,
        Some(TaskState::Cancelled) => Phase::Cancelled,
        // Attempts are unlimited here, so FAILED is never right.
        Some(TaskState::Failed) => Phase::Absent,
    }
}

pub(super) async fn get(w: &World, client: u64, first: usize, id: &str) {
    let key = id.to_string();
    // The read's answer travels as a Response so that it shares the call path; `Submitted`
    // carries the task found (or `NoTask` for none).
    w.call(
        client,
        first,
        3_000,
        id,
        TaskOp::Get,
        |n| {
            let key = key.clone();
            async move {
                n.read_barrier().await?;
                let a = n.shared.read();
                Ok(match a.state.task(&key) {
                    Some(t) => Response::Submitted {
                        task: t.clone(),
                        created: false,
                    },
                    None => Response::NoTask,
                })
            }
        },
        |r| match r {
            Response::Submitted { task, .. } => TaskRet::Seen(phase(Some(&task))),
            _ => TaskRet::Seen(Phase::Absent),
        },
    )
    .await;
}

/// A worker: takes tasks by id, renews at TTL/3 while the work lasts, reports success until the
/// report is acknowledged (as a worker with a durable journal does).
pub(super) async fn worker(
    w: Arc<World>,
    client: u64,
    mut rng: StdRng,
    tasks: Vec<String>,
    dies: bool,
) {
    let mut n = 0u64;
    while !w.stop.load(Ordering::Relaxed) {
        let id = tasks[rng.gen_range(0..tasks.len())].clone();
        let first = rng.gen_range(0..w.ids.len());
        n += 1;
        let key = client * 1_000_000 + n;
        let t0 = w.now_ms();
        let Some(token) = claim(&w, client, first, &id, key).await else {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(20..200))).await;
            continue;
        };
        hold(&w, client, first, &mut rng, &id, token, t0, dies).await;
        if dies {
            return;
        }
    }
}

/// A worker on the queue: claims whatever task is ready, retrying a claim under its key until
/// some node answers (the answer names the task a lost attempt may already have taken).
pub(super) async fn queue_worker(w: Arc<World>, client: u64, mut rng: StdRng, dies: bool) {
    let mut n = 0u64;
    while !w.stop.load(Ordering::Relaxed) {
        let first = rng.gen_range(0..w.ids.len());
        n += 1;
        let key = client * 1_000_000 + n;
        let t0 = w.now_ms();
        let cmd = Command::Claim {
            queue: queue_of(QUEUE_TASK).into(),
            worker_id: format!("w{client}"),
            lease_ttl_ms: None,
            task_id: None,
            claim_id: key.to_string(),
            secret: u128::from(key) + 1,
        };
        let taken: Mutex<Option<String>> = Mutex::new(None);
        let mut answer = None;
        let mut k = 0;
        while answer.is_none() && !w.stop.load(Ordering::Relaxed) {
            answer = w
                .propose(
                    client,
                    first + k,
                    QUEUE_TASK,
                    TaskOp::Claim { claim: key },
                    cmd.clone(),
                    |r| match r {
                        Response::Claimed { lease, .. } => {
                            *taken.lock().expect("lock") = Some(lease.task_id.to_string());
                            TaskRet::Claimed { token: lease.token }
                        }
                        _ => TaskRet::NotClaimable,
                    },
                )
                .await;
            k += 1;
        }
        let id = taken.lock().expect("lock").take();
        match (answer, id) {
            (Some(TaskRet::Claimed { token }), Some(id)) => {
                hold(&w, client, first, &mut rng, &id, token, t0, dies).await;
                if dies {
                    return;
                }
            }
            _ => tokio::time::sleep(Duration::from_millis(rng.gen_range(50..300))).await,
        }
    }
}

/// Holds a claimed lease: notes it, then (unless the worker dies right away) works, renewing at
/// TTL/3, and reports success until the report is acknowledged or refused.
#[allow(clippy::too_many_arguments)]
pub(super) async fn hold(
    w: &World,
    client: u64,
    first: usize,
    rng: &mut StdRng,
    id: &str,
    token: u64,
    claimed_at_ms: u64,
    dies: bool,
) {
    {
        let mut rec = w.rec.lock().expect("lock");
        rec.claims += 1;
        rec.leases.insert(
            token,
            LeaseRec {
                task: id.to_string(),
                ttl_ms: w.ttl_ms,
                heard_sent_ms: claimed_at_ms,
                dead: dies,
                closed: false,
            },
        );
    }
    if dies {
        // Gone for good: its lease must expire.
        return;
    }
    let work_ms = rng.gen_range(100..3 * w.ttl_ms);
    let end = Instant::now() + Duration::from_millis(work_ms);
    let mut lost = false;
    while Instant::now() < end {
        let step = Duration::from_millis(w.ttl_ms / 3).min(end - Instant::now());
        tokio::time::sleep(step).await;
        if Instant::now() >= end {
            break;
        }
        if renew(w, client, first, id, token).await == Some(false) {
            lost = true;
            break;
        }
    }
    if lost && rng.gen_bool(0.5) {
        // Stopped when told the lease was gone; no report.
        return;
    }
    // The work finished (perhaps after the lease was lost: a late success). Report until
    // acknowledged or refused.
    let mut k = 0;
    while !w.stop.load(Ordering::Relaxed) {
        match complete(w, client, first + k, id, token).await {
            Some(_) => break,
            None => k += 1,
        }
    }
}

/// The scheduler: submits every task (some twice), cancels a few, reads some back.
pub(super) async fn scheduler(
    w: Arc<World>,
    client: u64,
    mut rng: StdRng,
    tasks: Vec<String>,
    queue_tasks: Vec<String>,
) {
    let mut all: Vec<&String> = tasks.iter().chain(queue_tasks.iter()).collect();
    // Interleaved, in an order of the seed's choosing.
    for i in (1..all.len()).rev() {
        all.swap(i, rng.gen_range(0..=i));
    }
    for id in all {
        if w.stop.load(Ordering::Relaxed) {
            return;
        }
        let first = rng.gen_range(0..w.ids.len());
        // Until acknowledged, as a scheduler does with an idempotent submit.
        let mut k = 0;
        while !submit(&w, client, first + k, id).await && !w.stop.load(Ordering::Relaxed) {
            k += 1;
        }
        if rng.gen_bool(0.1) {
            submit(&w, client, first + 1, id).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(50..400))).await;
    }
    while !w.stop.load(Ordering::Relaxed) {
        let id = &tasks[rng.gen_range(0..tasks.len())];
        let first = rng.gen_range(0..w.ids.len());
        if rng.gen_bool(0.03) {
            cancel(&w, client, first, id).await;
        } else {
            get(&w, client, first, id).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(100..500))).await;
    }
}

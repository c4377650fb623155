//! One simulated run: a 3- or 5-node cluster, workers and a scheduler, and a fault schedule, all
//! drawn from one seed and run on one thread in simulated time; then the invariants.
use super::disk::SimDisk;
use super::lincheck::{self, Call, Phase, TaskModel, TaskOp, TaskRet, Verdict};
use super::net::{addr, ClockFault, Conditions, Party, SimClock, SimNet};
use crate::node::{Node, NodeConfig, NodeError, Parts};
use crate::raft::network::PeerError;
use crate::raft::NodeId;
use crate::state::{
    AttemptOutcome, Command, Rejection, RenewOutcome, Response, TaskSpec, TaskState, WorkerReport,
};
use crate::store::StateMachineStore;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// What one run does.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    /// 3 or 5.
    pub nodes: usize,
    /// Simulated time with faults, before the cluster is healed and drained.
    pub fault_ms: u64,
    pub tasks: usize,
    pub workers: usize,
    pub lease_ttl_ms: u64,
    /// Run on disks that acknowledge appends before flushing them (a planted bug).
    pub broken_disks: bool,
    /// Tasks taken by queue claims (a second queue; their histories are not checked for
    /// linearizability, since a queue claim may take any of them).
    pub queue_tasks: usize,
    /// Workers that claim one task (by id or from the queue) and die.
    pub dead_workers: usize,
    /// Whether faults are injected (off for a scenario of its own).
    pub fault_schedule: bool,
    /// A node whose clock is off by this many ms from the start; clients never call it.
    pub skewed_node: Option<(NodeId, i64)>,
}

impl SimConfig {
    /// The run a seed stands for: its size is drawn from the seed too.
    pub fn from_seed(seed: u64) -> Self {
        let mut r = StdRng::seed_from_u64(seed ^ 0x5eed);
        Self {
            seed,
            nodes: if r.gen_bool(0.3) { 5 } else { 3 },
            fault_ms: 20_000,
            tasks: 30,
            workers: 3,
            lease_ttl_ms: 1_000,
            broken_disks: false,
            queue_tasks: 10,
            dead_workers: 3,
            fault_schedule: true,
            skewed_node: None,
        }
    }
}

/// What a run saw.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    pub seed: u64,
    pub nodes: usize,
    pub simulated_ms: u64,
    pub faults: Vec<String>,
    pub tasks_succeeded: usize,
    pub tasks_cancelled: usize,
    pub claims: usize,
    pub renewals_acked: usize,
    pub expirations: usize,
    pub dead_leases_expired: usize,
    pub late_successes: usize,
    pub histories_checked: usize,
    pub histories_inconclusive: usize,
    pub messages: (u64, u64),
    /// A digest of everything the clients saw, in order: equal digests for equal seeds is what
    /// "replays exactly" means.
    pub trace: u64,
    /// Invariant violations (empty when the run passed).
    pub violations: Vec<String>,
}

/// Runs the seed's scenario on a fresh single-threaded runtime in simulated time.
pub fn run(cfg: SimConfig) -> SimReport {
    crate::raft::runtime::seed_thread_rng(cfg.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all().start_paused(true);
    // tokio's own RNG picks among ready `select!` branches; without `--cfg tokio_unstable`
    // (set in .cargo/config.toml) it cannot be seeded and runs may differ in detail.
    #[cfg(tokio_unstable)]
    builder.rng_seed(tokio::runtime::RngSeed::from_bytes(&cfg.seed.to_le_bytes()));
    let rt = builder.build().expect("a current-thread runtime");
    let report = rt.block_on(run_inner(cfg));
    drop(rt);
    crate::raft::runtime::unseed_thread_rng();
    report
}

struct LeaseRec {
    task: String,
    ttl_ms: u64,
    /// When the last acknowledged claim or renewal was sent (its first attempt).
    heard_sent_ms: u64,
    /// The holder never renews (a worker that died).
    dead: bool,
    closed: bool,
}

#[derive(Default)]
struct Record {
    histories: BTreeMap<String, Vec<Call<TaskOp, TaskRet>>>,
    submitted: BTreeSet<String>,
    acked_success: BTreeSet<String>,
    acked_cancel: BTreeSet<String>,
    leases: BTreeMap<u64, LeaseRec>,
    trace: std::collections::hash_map::DefaultHasher,
    violations: Vec<String>,
    expirations: usize,
    dead_expired: usize,
    renewals_acked: usize,
    claims: usize,
}

struct World {
    origin: Instant,
    net: Arc<SimNet>,
    ids: Vec<NodeId>,
    /// The nodes clients call.
    client_nodes: Vec<NodeId>,
    rec: Mutex<Record>,
    stop: AtomicBool,
    ttl_ms: u64,
}

impl World {
    fn now_ms(&self) -> u64 {
        Instant::now().duration_since(self.origin).as_millis() as u64
    }

    fn log(&self, task: &str, op: TaskOp, ret: Option<TaskRet>, invoked_at: u64) {
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

    fn violation(&self, v: String) {
        self.rec.lock().expect("lock").violations.push(v);
    }

    /// One logical call on `task`: sent to one node after another (starting at `first`) until
    /// one answers, for at most `patience_ms`. Every attempt goes into the task's history on its
    /// own — an attempt without an answer as a call of unknown outcome — since a retried call may
    /// have taken effect in an attempt whose answer was lost. `None`: no attempt was answered.
    #[allow(clippy::too_many_arguments)]
    async fn call<F, Fut, M>(
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
    async fn propose<M>(
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
trait HashDebug {
    fn hash_debug(&self, h: &mut std::collections::hash_map::DefaultHasher);
}
impl<T: std::fmt::Debug> HashDebug for T {
    fn hash_debug(&self, h: &mut std::collections::hash_map::DefaultHasher) {
        format!("{self:?}").hash(h);
    }
}

/// Ids of the tasks taken by queue claims start with this.
const QUEUE_TASK: &str = "q-";

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

fn single(r: Response) -> Response {
    match r {
        Response::Batch(mut v) if v.len() == 1 => v.remove(0),
        r => r,
    }
}

/// Whether the submit was acknowledged.
async fn submit(w: &World, client: u64, first: usize, id: &str) -> bool {
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

async fn claim(w: &World, client: u64, first: usize, id: &str, key: u64) -> Option<u64> {
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

async fn cancel(w: &World, client: u64, first: usize, id: &str) {
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

async fn get(w: &World, client: u64, first: usize, id: &str) {
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
async fn worker(w: Arc<World>, client: u64, mut rng: StdRng, tasks: Vec<String>, dies: bool) {
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
async fn queue_worker(w: Arc<World>, client: u64, mut rng: StdRng, dies: bool) {
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
async fn hold(
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
async fn scheduler(
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

struct Cluster {
    world: Arc<World>,
    dir: PathBuf,
    clocks: BTreeMap<NodeId, Arc<SimClock>>,
    disks: BTreeMap<NodeId, SimDisk>,
    nodes: BTreeMap<NodeId, Arc<Node>>,
}

impl Cluster {
    fn config(&self, id: NodeId) -> NodeConfig {
        let mut c = NodeConfig {
            id,
            data_dir: self.dir.join(format!("n{id}")),
            initial_cluster: self.world.ids.iter().map(|i| (*i, addr(*i))).collect(),
            request_timeout_ms: 2_000,
            terminal_retention_ms: 0,
            peer_listen: addr(id),
            listen: format!("sim-client-{id}:1"),
            cluster_secret: Some(crate::node::ClusterSecret::new(
                crate::node::TEST_CLUSTER_SECRET,
            )),
            ..Default::default()
        };
        c.raft.heartbeat_ms = 50;
        c.raft.election_min_ms = 150;
        c.raft.election_max_ms = 300;
        c.raft.snapshot_every_entries = 200;
        c.raft.keep_after_snapshot = 20;
        c.limits.min_ttl_ms = 1_000;
        c.limits.default_ttl_ms = 1_000;
        c
    }

    async fn start(&mut self, id: NodeId) {
        let config = self.config(id);
        std::fs::create_dir_all(&config.data_dir).expect("simulation data dir");
        let clock = self.clocks[&id].clone();
        let shared = Node::new_shared(&config, clock.clone());
        let sm = StateMachineStore::open(config.data_dir.join("snapshot"), shared.clone())
            .expect("snapshot file readable")
            .inline_snapshots();
        let parts = Parts {
            clock,
            transport: self.world.net.transport(id),
        };
        let node = Node::start_with_parts(config, parts, shared, self.disks[&id].open(), sm)
            .await
            .expect("a simulated node starts");
        self.world.net.set_node(id, Some(node.clone()));
        self.nodes.insert(id, node);
    }

    /// Kills the node: what it had not flushed is gone.
    async fn crash(&mut self, id: NodeId) {
        self.world.net.set_node(id, None);
        self.disks[&id].crash();
        if let Some(n) = self.nodes.remove(&id) {
            n.shutdown().await;
        }
    }

    fn leader(&self) -> Option<NodeId> {
        self.nodes.values().find_map(|n| {
            let m = n.metrics();
            (m.current_leader == Some(n.id)).then_some(n.id)
        })
    }
}

/// Watches every node's applied state: checks the state machine's invariants and notes when a
/// lease a worker holds disappears — an expiry must come a full TTL after the holder was last
/// acknowledged (only a majority of clocks can decide it, and a majority is sane here).
async fn observer(w: Arc<World>, nodes: Arc<Mutex<Vec<Arc<Node>>>>) {
    while !w.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = w.now_ms();
        let nodes = nodes.lock().expect("lock").clone();
        let mut rec = w.rec.lock().expect("lock");
        let Record {
            leases,
            violations,
            expirations,
            dead_expired,
            ..
        } = &mut *rec;
        for n in &nodes {
            let a = n.shared.read();
            a.state.check_invariants();
            for (token, l) in leases.iter_mut().filter(|(_, l)| !l.closed) {
                if a.state.lease(*token).is_some() {
                    continue;
                }
                let Some(task) = a.state.task(&l.task) else {
                    continue;
                };
                let Some(h) = task.history.iter().find(|h| h.lease_token == *token) else {
                    continue;
                };
                l.closed = true;
                if h.outcome != AttemptOutcome::Expired {
                    continue;
                }
                *expirations += 1;
                if l.dead {
                    *dead_expired += 1;
                } else if now < l.heard_sent_ms + l.ttl_ms {
                    violations.push(format!(
                        "false expiration: lease {token} of task {} expired by {:?} at {now} ms, \
                         its holder was acknowledged for a renewal sent at {} ms (TTL {} ms)",
                        l.task, h.expiry_voters, l.heard_sent_ms, l.ttl_ms
                    ));
                }
            }
        }
    }
}

async fn run_inner(cfg: SimConfig) -> SimReport {
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let origin = Instant::now();
    let ids: Vec<NodeId> = (1..=cfg.nodes as u64).collect();
    let world = Arc::new(World {
        origin,
        net: SimNet::new(StdRng::seed_from_u64(rng.gen())),
        ids: ids.clone(),
        client_nodes: ids
            .iter()
            .copied()
            .filter(|i| cfg.skewed_node.map(|s| s.0) != Some(*i))
            .collect(),
        rec: Mutex::new(Record::default()),
        stop: AtomicBool::new(false),
        ttl_ms: cfg.lease_ttl_ms,
    });
    // One directory per run: runs of the same seed may go on in parallel (tests of one file).
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "leasekeeper-sim-{}-{}-{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed),
        cfg.seed
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let mut c = Cluster {
        world: world.clone(),
        dir: dir.clone(),
        clocks: ids
            .iter()
            .map(|i| {
                let start_ms = 10_000_000 + rng.gen_range(0..1_000_000);
                (
                    *i,
                    SimClock::new(origin, 1_700_000_000_000 - start_ms, start_ms),
                )
            })
            .collect(),
        disks: ids
            .iter()
            .map(|i| {
                let d = SimDisk::new(Duration::from_micros(rng.gen_range(50..500)));
                (
                    *i,
                    if cfg.broken_disks {
                        d.broken_acks_before_flush()
                    } else {
                        d
                    },
                )
            })
            .collect(),
        nodes: BTreeMap::new(),
    };
    for id in &ids {
        c.start(*id).await;
    }
    let live: Arc<Mutex<Vec<Arc<Node>>>> =
        Arc::new(Mutex::new(c.nodes.values().cloned().collect()));
    let mut report = SimReport {
        seed: cfg.seed,
        nodes: cfg.nodes,
        ..Default::default()
    };

    let tasks: Vec<String> = (0..cfg.tasks).map(|i| format!("task-{i}")).collect();
    let queue_tasks: Vec<String> = (0..cfg.queue_tasks)
        .map(|i| format!("{QUEUE_TASK}{i}"))
        .collect();
    let mut clients = Vec::new();
    clients.push(tokio::spawn(scheduler(
        world.clone(),
        100,
        StdRng::seed_from_u64(rng.gen()),
        tasks.clone(),
        queue_tasks.clone(),
    )));
    if !queue_tasks.is_empty() {
        for k in 0..2u64 {
            clients.push(tokio::spawn(queue_worker(
                world.clone(),
                250 + k,
                StdRng::seed_from_u64(rng.gen()),
                false,
            )));
        }
    }
    for k in 0..cfg.workers as u64 {
        clients.push(tokio::spawn(worker(
            world.clone(),
            200 + k,
            StdRng::seed_from_u64(rng.gen()),
            tasks.clone(),
            false,
        )));
    }
    // Workers that claim one task each and die: by id and from the queue, alternately.
    for k in 0..cfg.dead_workers as u64 {
        let (w, r, t) = (
            world.clone(),
            StdRng::seed_from_u64(rng.gen()),
            tasks.clone(),
        );
        let delay = rng.gen_range(500..cfg.fault_ms / 2);
        let from_queue = k % 2 == 1 && !queue_tasks.is_empty();
        clients.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            if from_queue {
                queue_worker(w, 300 + k, r, true).await
            } else {
                worker(w, 300 + k, r, t, true).await
            }
        }));
    }
    let obs = tokio::spawn(observer(world.clone(), live.clone()));

    // The fault schedule. One node's clock (the same node all run) may misbehave: a minority.
    let clock_victim = ids[rng.gen_range(0..ids.len())];
    if let Some((n, ms)) = cfg.skewed_node {
        report
            .faults
            .push(format!("0 ms: node {n} clock off by {ms:+} ms, no clients"));
        c.clocks[&n].jump(ms);
    }
    let end = Instant::now() + Duration::from_millis(cfg.fault_ms);
    if !cfg.fault_schedule {
        tokio::time::sleep_until(end).await;
    }
    while cfg.fault_schedule && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..1_500))).await;
        let at = world.now_ms();
        let target = if rng.gen_bool(0.5) {
            c.leader().unwrap_or(ids[0])
        } else {
            ids[rng.gen_range(0..ids.len())]
        };
        let hold = Duration::from_millis(rng.gen_range(200..3_000));
        match rng.gen_range(0..7) {
            0 => {
                // In a 5-node cluster, sometimes a second node too (a 1+1+3 split).
                let mut cut = vec![target];
                if ids.len() == 5 && rng.gen_bool(0.5) {
                    cut.push(ids[rng.gen_range(0..ids.len())]);
                    cut.dedup();
                }
                report
                    .faults
                    .push(format!("{at} ms: nodes {cut:?} isolated for {hold:?}"));
                for n in &cut {
                    world.net.isolate(Party::Node(*n), true);
                }
                tokio::time::sleep(hold).await;
                for n in &cut {
                    world.net.isolate(Party::Node(*n), false);
                }
            }
            1 => {
                report
                    .faults
                    .push(format!("{at} ms: node {target} crashed, down {hold:?}"));
                c.crash(target).await;
                *live.lock().expect("lock") = c.nodes.values().cloned().collect();
                tokio::time::sleep(hold).await;
                c.start(target).await;
                *live.lock().expect("lock") = c.nodes.values().cloned().collect();
            }
            2 => {
                // 2x is the field report; 4x and 10x make the node vote well before a TTL has
                // passed, so only the majority rule stands between it and a false expiry.
                let fault = match rng.gen_range(0..5) {
                    0 => ClockFault::Rate(2_000),
                    1 => ClockFault::Rate(4_000),
                    2 => ClockFault::Rate(10_000),
                    3 => ClockFault::Rate(500),
                    _ => ClockFault::Frozen,
                };
                report.faults.push(format!(
                    "{at} ms: node {clock_victim} clock {fault:?} for {hold:?}"
                ));
                c.clocks[&clock_victim].set(Some(fault));
                tokio::time::sleep(hold).await;
                c.clocks[&clock_victim].set(None);
            }
            3 => {
                let ms: i64 = if rng.gen_bool(0.5) {
                    3_600_000
                } else {
                    -3_600_000
                };
                report.faults.push(format!(
                    "{at} ms: node {clock_victim} clock jumps {ms:+} ms"
                ));
                c.clocks[&clock_victim].jump(ms);
            }
            4 => {
                report
                    .faults
                    .push(format!("{at} ms: lossy, reordering network for {hold:?}"));
                world.net.set_conditions(Conditions {
                    delay_us: (100, 5_000),
                    loss_per_mille: 50,
                    spike_per_mille: 50,
                    spike_ms: 40,
                });
                tokio::time::sleep(hold).await;
                world.net.set_conditions(Conditions::default());
            }
            5 => {
                // Power loss of a majority or of the whole cluster at one instant: only what
                // each node had flushed survives.
                let n = if rng.gen_bool(0.5) {
                    ids.len()
                } else {
                    ids.len() / 2 + 1
                };
                let mut down = ids.clone();
                while down.len() > n {
                    down.remove(rng.gen_range(0..down.len()));
                }
                report
                    .faults
                    .push(format!("{at} ms: nodes {down:?} lose power, down {hold:?}"));
                for id in &down {
                    c.crash(*id).await;
                }
                *live.lock().expect("lock") = c.nodes.values().cloned().collect();
                tokio::time::sleep(hold).await;
                for id in &down {
                    c.start(*id).await;
                }
                *live.lock().expect("lock") = c.nodes.values().cloned().collect();
            }
            _ => {
                let who = 200 + rng.gen_range(0..cfg.workers as u64);
                report
                    .faults
                    .push(format!("{at} ms: worker client {who} cut off for {hold:?}"));
                world.net.isolate(Party::Client(who), true);
                tokio::time::sleep(hold).await;
                world.net.isolate(Party::Client(who), false);
            }
        }
    }

    // Heal: every node up and reachable; clock faults other than a frozen victim end (a
    // jumped clock stays jumped). Then every task must finish.
    world.net.heal();
    for id in &ids {
        if !c.nodes.contains_key(id) {
            c.start(*id).await;
        }
    }
    *live.lock().expect("lock") = c.nodes.values().cloned().collect();
    let drain_deadline = Instant::now() + Duration::from_secs(60);
    let finished = |n: &Node| {
        let a = n.shared.read();
        tasks.iter().chain(queue_tasks.iter()).all(|t| {
            a.state
                .task(t)
                .is_some_and(|t| matches!(t.state, TaskState::Succeeded | TaskState::Cancelled))
        })
    };
    loop {
        let leader = c.leader().and_then(|l| c.nodes.get(&l).cloned());
        if leader.as_deref().is_some_and(finished) {
            break;
        }
        if Instant::now() > drain_deadline {
            let a = match &leader {
                Some(l) => {
                    let a = l.shared.read();
                    tasks
                        .iter()
                        .chain(queue_tasks.iter())
                        .filter_map(|t| {
                            let s = a.state.task(t).map(|t| (t.state, t.not_before_unix_ms));
                            (!matches!(s, Some((TaskState::Succeeded | TaskState::Cancelled, _))))
                                .then(|| format!("{t}: {s:?}"))
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                }
                None => "no leader".into(),
            };
            world.violation(format!(
                "liveness: 60 s after healing, tasks still unfinished: {a}"
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    world.stop.store(true, Ordering::Relaxed);
    for h in clients {
        let _ = tokio::time::timeout(Duration::from_secs(30), h).await;
    }
    let _ = obs.await;

    // Every node converges on the same state.
    let converge_deadline = Instant::now() + Duration::from_secs(20);
    let states = loop {
        let states: Vec<(NodeId, u64, Vec<u8>)> = c
            .nodes
            .values()
            .map(|n| {
                let a = n.shared.read();
                a.state.check_invariants();
                (
                    n.id,
                    a.last_applied.map(|l| l.index).unwrap_or(0),
                    a.state.to_bytes(),
                )
            })
            .collect();
        let same = states
            .windows(2)
            .all(|p| p[0].1 == p[1].1 && p[0].2 == p[1].2);
        if same || Instant::now() > converge_deadline {
            break states;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    if states.windows(2).any(|p| p[0].2 != p[1].2) {
        let at: Vec<_> = states.iter().map(|s| (s.0, s.1)).collect();
        world.violation(format!(
            "nodes did not converge on one state: (node, applied) {at:?}"
        ));
    }

    // The final state against what clients were told.
    let final_state = c.nodes.values().next().cloned().expect("a node");
    {
        let a = final_state.shared.read();
        let rec = world.rec.lock().expect("lock");
        for id in &rec.submitted {
            match a.state.task(id) {
                None => report
                    .violations
                    .push(format!("acknowledged submit of {id} lost")),
                Some(t) => {
                    let tokens: Vec<u64> = t.history.iter().map(|h| h.lease_token).collect();
                    if tokens.windows(2).any(|p| p[0] >= p[1]) {
                        report
                            .violations
                            .push(format!("task {id}: tokens not increasing {tokens:?}"));
                    }
                    report.late_successes += t.history.iter().filter(|h| h.late).count();
                    match t.state {
                        TaskState::Succeeded => report.tasks_succeeded += 1,
                        TaskState::Cancelled => report.tasks_cancelled += 1,
                        s => report.violations.push(format!("task {id} ended {s:?}")),
                    }
                }
            }
        }
        for id in &rec.acked_success {
            if a.state.task(id).map(|t| t.state) != Some(TaskState::Succeeded) {
                report.violations.push(format!(
                    "acknowledged success of {id} not SUCCEEDED at the end"
                ));
            }
        }
        for id in &rec.acked_cancel {
            if a.state.task(id).map(|t| t.state) != Some(TaskState::Cancelled) {
                report.violations.push(format!(
                    "acknowledged cancel of {id} not CANCELLED at the end"
                ));
            }
        }
        for (token, l) in rec.leases.iter().filter(|(_, l)| l.dead) {
            let t = a.state.task(&l.task);
            let ended = t.and_then(|t| t.history.iter().find(|h| h.lease_token == *token));
            if a.state.lease(*token).is_some()
                || ended.map_or(true, |h| h.outcome == AttemptOutcome::Running)
            {
                report
                    .violations
                    .push(format!("the dead worker's lease {token} never ended"));
            }
        }
    }
    for n in c.nodes.values() {
        n.shutdown().await;
    }

    let mut rec = world.rec.lock().expect("lock");
    for (task, h) in &rec.histories {
        match lincheck::check(&TaskModel::default(), h, 2_000_000) {
            Verdict::Linearizable => report.histories_checked += 1,
            Verdict::Inconclusive => report.histories_inconclusive += 1,
            Verdict::Violation => {
                let calls: Vec<String> = h
                    .iter()
                    .map(|c| {
                        format!(
                            "  {}..{:?} {:?} -> {:?}",
                            c.invoked_at, c.answered_at, c.op, c.ret
                        )
                    })
                    .collect();
                report.violations.push(format!(
                    "task {task}: history not linearizable:\n{}",
                    calls.join("\n")
                ));
            }
        }
    }
    report.violations.append(&mut rec.violations);
    report.claims = rec.claims;
    report.renewals_acked = rec.renewals_acked;
    report.expirations = rec.expirations;
    report.dead_leases_expired = rec.dead_expired;
    report.trace = rec.trace.finish();
    report.messages = world.net.stats();
    report.simulated_ms = world.now_ms();
    drop(rec);
    let _ = std::fs::remove_dir_all(&dir);
    report
}

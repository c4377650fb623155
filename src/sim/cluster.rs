//! One simulated run: a 3- or 5-node cluster, workers and a scheduler, and a fault schedule, all
//! drawn from one seed and run on one thread in simulated time; then the invariants.
use super::checks::{self, observer};
use super::clients::{queue_worker, scheduler, worker, Record, World, QUEUE_TASK};
use super::disk::SimDisk;
use super::faults::Fault;
use super::net::{addr, SimClock, SimNet};
use crate::node::{Node, NodeConfig, Parts};
use crate::raft::NodeId;
use crate::store::StateMachineStore;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::hash::Hasher;
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

pub(super) struct Cluster {
    pub(super) world: Arc<World>,
    pub(super) dir: PathBuf,
    pub(super) clocks: BTreeMap<NodeId, Arc<SimClock>>,
    pub(super) disks: BTreeMap<NodeId, SimDisk>,
    pub(super) nodes: BTreeMap<NodeId, Arc<Node>>,
    /// Odd seeds keep the state in the sled checkpoint store, even seeds in snapshot files.
    pub(super) checkpointed: bool,
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

    pub(super) async fn start(&mut self, id: NodeId) {
        let config = self.config(id);
        std::fs::create_dir_all(&config.data_dir).expect("simulation data dir");
        let clock = self.clocks[&id].clone();
        let shared = Node::new_shared(&config, clock.clone());
        let sm = if self.checkpointed {
            StateMachineStore::open_checkpointed(&config.data_dir, shared.clone())
                .expect("checkpoint readable")
        } else {
            StateMachineStore::open(config.data_dir.join("snapshot"), shared.clone())
                .expect("snapshot file readable")
        }
        .inline_snapshots();
        let parts = Parts {
            clock,
            transport: self.world.net.transport(id),
        };
        let log = self.disks[&id]
            .open()
            .purge_after_snapshot(sm.snapshot_durable());
        let node = Node::start_with_parts(config, parts, shared, log, sm)
            .await
            .expect("a simulated node starts");
        self.world.net.set_node(id, Some(node.clone()));
        self.nodes.insert(id, node);
    }

    /// Kills the node: what it had not flushed is gone.
    pub(super) async fn crash(&mut self, id: NodeId) {
        self.world.net.set_node(id, None);
        self.disks[&id].crash();
        if let Some(n) = self.nodes.remove(&id) {
            n.shutdown().await;
        }
    }

    pub(super) fn leader(&self) -> Option<NodeId> {
        self.nodes.values().find_map(|n| {
            let m = n.metrics();
            (m.current_leader == Some(n.id)).then_some(n.id)
        })
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
        checkpointed: cfg.seed % 2 == 1,
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
        let fault = Fault::draw(&mut rng, &ids, target, cfg.workers as u64);
        report.faults.push(fault.describe(at, hold, clock_victim));
        fault.inflict(&mut c, &live, clock_victim, hold).await;
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
    let all_tasks: Vec<String> = tasks.iter().chain(queue_tasks.iter()).cloned().collect();
    checks::every_task_finishes(&c, &world, &all_tasks).await;
    world.stop.store(true, Ordering::Relaxed);
    for h in clients {
        let _ = tokio::time::timeout(Duration::from_secs(30), h).await;
    }
    let _ = obs.await;

    checks::nodes_converge(&c, &world).await;
    checks::final_state_matches_the_clients(&c, &world, &mut report);
    for n in c.nodes.values() {
        n.shutdown().await;
    }

    let mut rec = world.rec.lock().expect("lock");
    checks::histories_are_linearizable(&rec, &mut report);
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

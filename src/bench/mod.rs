//! `leasekeeper bench`: drives a running cluster over real gRPC with many concurrent simulated
//! workers and reports throughput, latency percentiles and errors.
//!
//! Shapes:
//! - `submit`: every client submits new tasks back to back.
//! - `renew`: `leases` live leases shared out over the clients, each client on its own
//!   Heartbeat stream waiting for each answer; `per_message` of its leases go in one message
//!   (1 = like etcd's lease keep-alive benchmark; more = a worker renewing the leases of all the
//!   tasks it runs at once). ops = renewals committed.
//! - `lifecycle`: submit → claim → 3 renewals → complete per task; ops = tasks finished.
//! - `watch`: lifecycles as above (optionally rate-limited) with `watchers` watch streams spread
//!   over the nodes, each asking for SUCCEEDED events (or every event, `watch_every_kind`); the
//!   latency is from sending the final report to each watcher seeing it.
pub mod etcd;

use crate::client::Client;
use crate::proto::v1 as pb;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    Submit,
    Renew,
    Lifecycle,
    Watch,
}

#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub endpoints: Vec<String>,
    // TLS towards the nodes (etcd too; None = plaintext), and the token every leasekeeper
    // call carries (clusters with an auth file).
    pub tls: Option<crate::tls::ClientTlsFiles>,
    pub token: Option<String>,
    pub shape: Shape,
    /// Concurrent simulated clients (workers or schedulers).
    pub clients: usize,
    /// gRPC connections the clients share (round robin).
    pub conns: usize,
    pub duration: Duration,
    /// Live leases for `renew`.
    pub leases: usize,
    /// `renew`: leases renewed per message (etcd: keep-alives sent back to back on the stream
    /// before their answers are awaited, since one etcd message carries one lease).
    pub per_message: usize,
    /// Watch streams for `watch`.
    pub watchers: usize,
    /// `watch`: watchers receive every event of the queue instead of asking for the SUCCEEDED
    /// ones they time.
    pub watch_every_kind: bool,
    /// Cap on started tasks per second for `lifecycle`/`watch` (0 = as fast as possible).
    pub rate: u64,
    /// Send everything to the leader (true) or spread over all nodes (followers forward).
    pub leader_only: bool,
}

impl BenchConfig {
    /// A client of `endpoints` with this run's TLS and token.
    fn client<I: IntoIterator<Item = String>>(
        &self,
        endpoints: I,
    ) -> Result<Client, crate::client::ClientError> {
        Client::connect_with(endpoints, self.tls.as_ref(), self.token.as_deref())
    }

    /// `per_message`, at least one.
    fn leases_per_message(&self) -> usize {
        self.per_message.max(1)
    }
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub samples: usize,
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub shape: Shape,
    pub clients: usize,
    /// `renew`: leases per message (per round of keep-alives on etcd).
    pub per_message: usize,
    pub seconds: f64,
    pub ops: u64,
    pub ops_per_s: f64,
    pub errors: u64,
    /// Per operation (per renewal, per submit, per whole lifecycle).
    pub latency: Latency,
    /// `watch` only: final report sent → seen by a watcher.
    pub visible: Option<Latency>,
}

fn latency(mut v: Vec<u32>) -> Latency {
    v.sort_unstable();
    let at = |q: f64| -> f64 {
        if v.is_empty() {
            return 0.0;
        }
        let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        v[i] as f64 / 1000.0
    };
    Latency {
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        p999_ms: at(0.999),
        max_ms: v.last().map(|m| *m as f64 / 1000.0).unwrap_or(0.0),
        samples: v.len(),
    }
}

/// Client `i`'s share of `all` when each gets `per` (at least one).
fn share<T: Copy>(all: &[T], i: usize, per: usize) -> Vec<T> {
    all.iter().skip(i * per).take(per.max(1)).copied().collect()
}

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}

struct Shared {
    ops: AtomicU64,
    errors: AtomicU64,
    stop: AtomicBool,
}

impl Shared {
    fn new() -> Arc<Self> {
        Arc::new(Shared {
            ops: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        })
    }

    /// Lets `loops` run for `duration`, stops them and gathers their latencies; returns them
    /// with the seconds the run took.
    async fn run_for(
        &self,
        duration: Duration,
        started: Instant,
        loops: Vec<tokio::task::JoinHandle<Vec<u32>>>,
    ) -> Result<(Vec<u32>, f64), tokio::task::JoinError> {
        tokio::time::sleep(duration).await;
        self.stop.store(true, Ordering::Relaxed);
        let mut lat = Vec::new();
        for l in loops {
            lat.extend(l.await?);
        }
        Ok((lat, started.elapsed().as_secs_f64()))
    }

    /// The report once the run is over.
    fn report(
        &self,
        cfg: &BenchConfig,
        seconds: f64,
        lat: Vec<u32>,
        visible: Option<Latency>,
    ) -> BenchReport {
        let ops = self.ops.load(Ordering::Relaxed);
        BenchReport {
            shape: cfg.shape,
            clients: cfg.clients,
            per_message: cfg.leases_per_message(),
            seconds,
            ops,
            ops_per_s: ops as f64 / seconds,
            errors: self.errors.load(Ordering::Relaxed),
            latency: latency(lat),
            visible,
        }
    }
}

/// Paces task starts at `rate`/s across all clients (0 = unpaced).
struct Pacer {
    rate: u64,
    started: Instant,
    next: AtomicU64,
}

impl Pacer {
    async fn wait(&self) {
        if self.rate == 0 {
            return;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let at = self.started + Duration::from_secs_f64(n as f64 / self.rate as f64);
        tokio::time::sleep_until(at.into()).await;
    }
}

async fn clients_for(
    cfg: &BenchConfig,
) -> Result<Vec<Client>, Box<dyn std::error::Error + Send + Sync>> {
    let probe = cfg.client(cfg.endpoints.clone())?;
    let endpoints = if cfg.leader_only {
        let mut leader = String::new();
        for _ in 0..100 {
            leader = probe.cluster_status().await?.leader_addr;
            if !leader.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if leader.is_empty() {
            return Err("the cluster has no leader (waited 10 s)".into());
        }
        vec![leader]
    } else {
        cfg.endpoints.clone()
    };
    (0..cfg.conns.max(1))
        .map(|_| cfg.client(endpoints.clone()).map_err(Into::into))
        .collect()
}

pub async fn run(
    cfg: BenchConfig,
) -> Result<BenchReport, Box<dyn std::error::Error + Send + Sync>> {
    let conns = clients_for(&cfg).await?;
    let tag = format!("{:08x}", rand::random::<u32>());
    let shared = Shared::new();
    // Prepared state for `renew`: leases claimed up front.
    // Leases as (token, secret).
    let mut tokens: Vec<(u64, u128)> = Vec::new();
    if cfg.shape == Shape::Renew {
        tokens = prepare_leases(&conns, &tag, cfg.leases.max(cfg.clients)).await?;
    }
    let sent_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let visible: Arc<Mutex<Vec<u32>>> = Arc::default();
    let mut watchers = Vec::new();
    if cfg.shape == Shape::Watch {
        for i in 0..cfg.watchers.max(1) {
            let ep = cfg.endpoints[i % cfg.endpoints.len()].clone();
            let c = cfg.client([ep])?;
            let mut stream = c
                .watch(pb::WatchTasksRequest {
                    from_revision: 0,
                    queue: format!("bench-{tag}"),
                    task_id: String::new(),
                    kinds: if cfg.watch_every_kind {
                        Vec::new()
                    } else {
                        vec![pb::EventKind::Succeeded as i32]
                    },
                })
                .await?;
            let (sent_at, visible) = (sent_at.clone(), visible.clone());
            watchers.push(tokio::spawn(async move {
                // Every delivery is recorded as it happens: the watcher is aborted at the end.
                while let Some(Ok(ev)) = stream.next().await {
                    if ev.kind != pb::EventKind::Succeeded as i32 {
                        continue;
                    }
                    let id = ev.task.map(|t| t.id).unwrap_or_default();
                    let sent = sent_at.lock().expect("lock").get(&id).copied();
                    if let Some(t) = sent {
                        visible.lock().expect("lock").push(micros(t.elapsed()));
                    }
                }
            }));
        }
    }
    let pacer = Arc::new(Pacer {
        rate: cfg.rate,
        started: Instant::now(),
        next: AtomicU64::new(0),
    });
    let started = Instant::now();
    let mut loops = Vec::new();
    let per = tokens.len() / cfg.clients.max(1);
    for i in 0..cfg.clients.max(1) {
        let c = conns[i % conns.len()].clone();
        let shared = shared.clone();
        let tag = tag.clone();
        let mine = share(&tokens, i, per);
        let sent_at = sent_at.clone();
        let pacer = pacer.clone();
        let shape = cfg.shape;
        let per_message = cfg.leases_per_message();
        loops.push(tokio::spawn(async move {
            match shape {
                Shape::Submit => submit_loop(c, i, &tag, &shared).await,
                Shape::Renew => renew_loop(c, mine, per_message, &shared).await,
                Shape::Lifecycle | Shape::Watch => {
                    lifecycle_loop(
                        c,
                        i,
                        &tag,
                        &shared,
                        &pacer,
                        (shape == Shape::Watch).then_some(&sent_at),
                    )
                    .await
                }
            }
        }));
    }
    let (lat, seconds) = shared.run_for(cfg.duration, started, loops).await?;
    // The last reports reach the watchers within this grace; then the watchers are stopped.
    if !watchers.is_empty() {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for w in watchers {
        w.abort();
    }
    let visible = if cfg.shape == Shape::Watch {
        Some(latency(std::mem::take(&mut *visible.lock().expect("lock"))))
    } else {
        None
    };
    Ok(shared.report(&cfg, seconds, lat, visible))
}

async fn prepare_leases(
    conns: &[Client],
    tag: &str,
    n: usize,
) -> Result<Vec<(u64, u128)>, Box<dyn std::error::Error + Send + Sync>> {
    let queue = format!("bench-{tag}");
    let mut set = tokio::task::JoinSet::new();
    let par = 64.min(n.max(1));
    for w in 0..par {
        let c = conns[w % conns.len()].clone();
        let queue = queue.clone();
        set.spawn(async move {
            let mut out = Vec::new();
            let mut i = w;
            while i < n {
                let id = format!("lease-{queue}-{i}");
                c.submit(pb::SubmitTaskRequest {
                    id: id.clone(),
                    queue: queue.clone(),
                    lease_ttl_ms: 600_000,
                    ..Default::default()
                })
                .await?;
                let r = c
                    .claim(pb::ClaimTaskRequest {
                        queue: queue.clone(),
                        worker_id: format!("bench-{w}"),
                        task_id: id,
                        ..Default::default()
                    })
                    .await?;
                let secret = r
                    .lease_secret
                    .as_slice()
                    .try_into()
                    .map_or(0, u128::from_be_bytes);
                out.push((r.lease.map(|l| l.token).unwrap_or_default(), secret));
                i += par;
            }
            Ok::<_, tonic::Status>(out)
        });
    }
    let mut tokens = Vec::new();
    while let Some(r) = set.join_next().await {
        tokens.extend(r??);
    }
    Ok(tokens)
}

async fn submit_loop(c: Client, i: usize, tag: &str, shared: &Shared) -> Vec<u32> {
    let mut lat = Vec::new();
    let mut n = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        n += 1;
        let t = Instant::now();
        let r = c
            .submit(pb::SubmitTaskRequest {
                id: format!("s-{tag}-{i}-{n}"),
                queue: format!("bench-{tag}"),
                payload: vec![b'x'; 64],
                ..Default::default()
            })
            .await;
        match r {
            Ok(_) => {
                lat.push(micros(t.elapsed()));
                shared.ops.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    lat
}

/// The next `n` of `all`, cycling from `*next`.
fn next_round<T: Copy>(all: &[T], next: &mut usize, n: usize) -> Vec<T> {
    let round = (0..n.min(all.len()))
        .map(|k| all[(*next + k) % all.len()])
        .collect();
    *next = (*next + n) % all.len().max(1);
    round
}

/// One Heartbeat stream; `per_message` leases per message, each answer awaited. One latency
/// sample per message.
async fn renew_loop(
    c: Client,
    tokens: Vec<(u64, u128)>,
    per_message: usize,
    shared: &Shared,
) -> Vec<u32> {
    let mut lat = Vec::new();
    if tokens.is_empty() {
        return lat;
    }
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let Ok(resp) = c
        .worker()
        .heartbeat(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
    else {
        shared.errors.fetch_add(1, Ordering::Relaxed);
        return lat;
    };
    let mut answers = resp.into_inner();
    let (mut seq, mut next) = (0u64, 0usize);
    while !shared.stop.load(Ordering::Relaxed) {
        let (lease_tokens, lease_secrets): (Vec<u64>, Vec<Vec<u8>>) =
            next_round(&tokens, &mut next, per_message)
                .into_iter()
                .map(|(t, s)| (t, s.to_be_bytes().to_vec()))
                .unzip();
        let sent = lease_tokens.len() as u64;
        seq += 1;
        let t = Instant::now();
        if tx
            .send(pb::HeartbeatRequest {
                seq,
                lease_tokens,
                lease_secrets,
            })
            .await
            .is_err()
        {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            break;
        }
        match answers.next().await {
            Some(Ok(a)) => {
                let alive = a
                    .leases
                    .iter()
                    .filter(|l| l.status == pb::LeaseStatus::Alive as i32)
                    .count() as u64;
                if alive > 0 {
                    lat.push(micros(t.elapsed()));
                }
                shared.ops.fetch_add(alive, Ordering::Relaxed);
                shared
                    .errors
                    .fetch_add(sent.saturating_sub(alive), Ordering::Relaxed);
            }
            _ => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    }
    lat
}

async fn lifecycle_loop(
    c: Client,
    i: usize,
    tag: &str,
    shared: &Shared,
    pacer: &Pacer,
    sent_at: Option<&Arc<Mutex<HashMap<String, Instant>>>>,
) -> Vec<u32> {
    let mut lat = Vec::new();
    let queue = format!("bench-{tag}");
    let mut n = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        pacer.wait().await;
        n += 1;
        let id = format!("l-{tag}-{i}-{n}");
        let t = Instant::now();
        let r: Result<(), tonic::Status> = async {
            c.submit(pb::SubmitTaskRequest {
                id: id.clone(),
                queue: queue.clone(),
                payload: vec![b'x'; 64],
                lease_ttl_ms: 30_000,
                ..Default::default()
            })
            .await?;
            let claim = c
                .claim(pb::ClaimTaskRequest {
                    queue: queue.clone(),
                    worker_id: format!("bench-{i}"),
                    task_id: id.clone(),
                    ..Default::default()
                })
                .await?;
            let token = claim.lease.map(|l| l.token).unwrap_or_default();
            for _ in 0..3 {
                c.renew(token, &claim.lease_secret).await?;
            }
            if let Some(m) = sent_at {
                m.lock().expect("lock").insert(id.clone(), Instant::now());
            }
            c.complete(pb::CompleteTaskRequest {
                task_id: id.clone(),
                lease_token: token,
                success: true,
                exit_code: 0,
                result: b"ok".to_vec(),
                error: String::new(),
                lease_secret: claim.lease_secret.clone(),
                exit_to_send_us: 1,
                report_try: 1,
            })
            .await?;
            Ok(())
        }
        .await;
        match r {
            Ok(()) => {
                lat.push(micros(t.elapsed()));
                shared.ops.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    lat
}

impl BenchReport {
    pub fn print(&self) {
        if self.shape == Shape::Renew && self.per_message > 1 {
            println!(
                "           {} leases per message; latency is per message",
                self.per_message
            );
        }
        println!(
            "{:<10} clients={:<4} {:>10.0} ops/s  ops={:<9} errors={:<5} p50={:.2}ms p99={:.2}ms p999={:.2}ms max={:.2}ms ({:.1}s)",
            format!("{:?}", self.shape).to_lowercase(),
            self.clients,
            self.ops_per_s,
            self.ops,
            self.errors,
            self.latency.p50_ms,
            self.latency.p99_ms,
            self.latency.p999_ms,
            self.latency.max_ms,
            self.seconds
        );
        if let Some(v) = &self.visible {
            println!(
                "           report → visible to a watcher: p50={:.2}ms p99={:.2}ms p999={:.2}ms max={:.2}ms ({} deliveries)",
                v.p50_ms, v.p99_ms, v.p999_ms, v.max_ms, v.samples
            );
        }
    }
}

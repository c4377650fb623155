//! The `leasekeeper` command: run nodes (`dev`, `server`) and talk to a cluster (`task`,
//! `status`, `node`).
mod output;
mod work;

use crate::client::Client;
use crate::node::{Limits, NodeConfig};
use crate::proto::v1 as pb;
use crate::server::{BoxError, Server};
use clap::{Args, Parser, Subcommand};
use std::collections::BTreeMap;
use std::path::PathBuf;
use tokio_stream::StreamExt;

#[derive(Parser)]
#[command(
    name = "leasekeeper",
    version,
    about = "Replicated task and lease state for schedulers"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Args, Clone)]
struct Conn {
    /// Node addresses (host:port), comma separated; any node will do.
    #[arg(
        long,
        env = "LEASEKEEPER_ENDPOINTS",
        default_value = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003",
        value_delimiter = ',',
        global = true
    )]
    endpoints: Vec<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a local cluster in this process (three nodes on 127.0.0.1:7001-7003 by default).
    Dev(DevArgs),
    /// Run one production node.
    Server(ServerArgs),
    /// Submit, read, list, cancel and watch tasks.
    Task {
        #[command(subcommand)]
        cmd: TaskCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// Members, leader, term and each node's log positions.
    Status {
        #[command(flatten)]
        conn: Conn,
    },
    /// Run a command for each task claimed from a queue, with renewals and durable reports.
    Worker(work::WorkerArgs),
    /// Wrap one externally scheduled job (cron, Airflow, XXL-JOB) as a task: submit, claim, run,
    /// report; exits with the command's own code.
    Run(work::RunArgs),
    /// Load generator: drive a running cluster and report ops/s and latency percentiles.
    Bench(BenchArgs),
    /// Add or remove cluster members.
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Args)]
struct BenchArgs {
    /// submit | renew | lifecycle | watch
    #[arg(long, value_enum, default_value = "renew")]
    shape: crate::bench::Shape,
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// gRPC connections shared by the clients.
    #[arg(long, default_value_t = 8)]
    conns: usize,
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// Live leases for `renew` (at least one per client).
    #[arg(long, default_value_t = 1000)]
    leases: usize,
    /// `renew`: leases renewed per message, from each client's share (a worker renewing all
    /// its tasks at once), 1 to 10 000 (the server's limit per Heartbeat message). With --etcd,
    /// that many keep-alives are sent back to back per round.
    #[arg(long, default_value_t = 1,
          value_parser = clap::value_parser!(u64)
              .range(1..=crate::api::validate::MAX_TOKENS_PER_HEARTBEAT as u64))]
    per_message: u64,
    /// Watch streams for `watch`.
    #[arg(long, default_value_t = 16)]
    watchers: usize,
    /// `watch`: watchers receive every event of the bench queue, not only the SUCCEEDED ones
    /// they time.
    #[arg(long)]
    watch_every_kind: bool,
    /// Tasks started per second for `lifecycle`/`watch` (0 = as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Spread calls over every node instead of sending them to the leader.
    #[arg(long)]
    any_node: bool,
    /// Run the same shape against etcd (its v3 gRPC API) at --endpoints instead; list the
    /// etcd leader first.
    #[arg(long)]
    etcd: bool,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args)]
struct DevArgs {
    /// Data directory (one sub-directory per node).
    #[arg(long, default_value = ".leasekeeper/dev")]
    dir: PathBuf,
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Node i serves clients on base-port + i - 1.
    #[arg(long, default_value_t = 7001)]
    base_port: u16,
    /// Node i serves its peers (Raft, members only) on peer-base-port + i - 1.
    #[arg(long, default_value_t = 7101)]
    peer_base_port: u16,
    /// The address every node binds.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
}

#[derive(Args)]
struct ServerArgs {
    /// TOML file with any of the settings below (flags override it).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    id: Option<u64>,
    /// Client port to bind, host:port: the public API, health and reflection (default
    /// 127.0.0.1:7001).
    #[arg(long)]
    listen: Option<String>,
    /// Address clients use, if not the listen address.
    #[arg(long)]
    advertise: Option<String>,
    /// Peer port to bind, host:port: Raft and forwarding, members only (default
    /// 127.0.0.1:7101). Never the client port.
    #[arg(long)]
    peer_listen: Option<String>,
    /// Address other members dial, if not the peer listen address: the one the membership
    /// and --initial-cluster name.
    #[arg(long)]
    peer_advertise: Option<String>,
    /// A file holding the cluster secret every member shares (16 bytes or more; surrounding
    /// whitespace ignored). LEASEKEEPER_CLUSTER_SECRET may hold the secret itself instead.
    #[arg(long)]
    cluster_secret_file: Option<PathBuf>,
    /// The cluster's name (default "leasekeeper"): peers of another cluster are refused.
    #[arg(long)]
    cluster_name: Option<String>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Founding members by peer address: 1=host:7101,2=host:7101,3=host:7101. Omit to join
    /// with `node add`.
    #[arg(long, value_delimiter = ',')]
    initial_cluster: Vec<String>,
    #[arg(long)]
    min_ttl_ms: Option<u64>,
    #[arg(long)]
    max_ttl_ms: Option<u64>,
    #[arg(long)]
    default_ttl_ms: Option<u64>,
    #[arg(long)]
    heartbeat_ms: Option<u64>,
    #[arg(long)]
    election_min_ms: Option<u64>,
    #[arg(long)]
    election_max_ms: Option<u64>,
    #[arg(long)]
    snapshot_every_entries: Option<u64>,
    /// Log entries kept behind a snapshot for followers that lag a little.
    #[arg(long)]
    keep_after_snapshot: Option<u64>,
    /// Forget finished tasks this long after they finished (0 = keep forever; default 7 days).
    #[arg(long)]
    terminal_retention_ms: Option<u64>,
    /// Threads running the node's event loop (gRPC, Raft, the state machine). 1, the default,
    /// runs it on one thread; fsyncs, sled and snapshot builds have threads of their own.
    /// 0 = one per core. See docs/PERFORMANCE.md ("One thread per node").
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

#[derive(Subcommand)]
enum TaskCmd {
    Submit {
        #[arg(long)]
        queue: String,
        /// Idempotency key; generated if omitted.
        #[arg(long, default_value = "")]
        id: String,
        #[arg(long, default_value = "")]
        payload: String,
        #[arg(long, default_value_t = 0)]
        max_attempts: u32,
        #[arg(long, default_value_t = 0)]
        ttl_ms: u64,
    },
    Get {
        id: String,
        /// Read this node's copy without asking the leader.
        #[arg(long)]
        stale: bool,
    },
    List {
        #[arg(long, default_value = "")]
        queue: String,
        /// pending, running, succeeded, failed or cancelled.
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    Cancel {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    Watch {
        /// First revision to show (0 = only new changes).
        #[arg(long, default_value_t = 0)]
        from: u64,
        #[arg(long, default_value = "")]
        queue: String,
        #[arg(long, default_value = "")]
        task_id: String,
        /// Only these kinds of event, comma separated (e.g. succeeded,failed,cancelled); every
        /// kind when not given.
        #[arg(long = "kind", value_delimiter = ',', value_parser = parse_event_kind)]
        kinds: Vec<pb::EventKind>,
    },
}

/// `succeeded` / `SUCCEEDED` / `EVENT_KIND_SUCCEEDED` → the event kind.
fn parse_event_kind(s: &str) -> Result<pb::EventKind, String> {
    let upper = s.trim().to_ascii_uppercase().replace('-', "_");
    let name = if upper.starts_with("EVENT_KIND_") {
        upper
    } else {
        format!("EVENT_KIND_{upper}")
    };
    match pb::EventKind::from_str_name(&name) {
        Some(k) if k != pb::EventKind::Unspecified => Ok(k),
        _ => Err(format!(
            "{s:?} is not an event kind: use submitted, claimed, progress, succeeded, failed, \
             retry_scheduled, cancelled or late_report"
        )),
    }
}

#[derive(Subcommand)]
enum NodeCmd {
    Add {
        id: u64,
        /// The new node's peer address (its --peer-advertise, else --peer-listen).
        addr: String,
        /// Keep it a non-voting learner.
        #[arg(long)]
        learner: bool,
    },
    Remove {
        id: u64,
    },
}

pub fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LEASEKEEPER_LOG")
        .unwrap_or_else(|_| default.into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

impl Cli {
    /// Builds the runtime this command runs on: `server --threads N` as asked, every other
    /// command on one thread (`dev` starts a runtime thread per node of its own).
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let threads = match &self.command {
            Cmd::Server(a) => a.threads,
            _ => 1,
        };
        let mut b = if threads == 1 {
            tokio::runtime::Builder::new_current_thread()
        } else {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if threads > 1 {
                b.worker_threads(threads);
            }
            b
        };
        b.enable_all().build()
    }
}

pub async fn run(cli: Cli) -> Result<(), BoxError> {
    match cli.command {
        Cmd::Dev(a) => dev(a).await,
        Cmd::Server(a) => server(a).await,
        Cmd::Task { cmd, conn } => task(cmd, conn).await,
        Cmd::Worker(a) => work::worker(a).await,
        Cmd::Bench(a) => {
            let cfg = crate::bench::BenchConfig {
                endpoints: a.conn.endpoints.clone(),
                shape: a.shape,
                clients: a.clients,
                conns: a.conns,
                duration: std::time::Duration::from_secs(a.duration_s),
                leases: a.leases,
                per_message: a.per_message as usize,
                watchers: a.watchers,
                watch_every_kind: a.watch_every_kind,
                rate: a.rate,
                leader_only: !a.any_node,
            };
            let report = if a.etcd {
                crate::bench::etcd::run(cfg).await?
            } else {
                crate::bench::run(cfg).await?
            };
            if a.conn.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                report.print();
            }
            Ok(())
        }
        Cmd::Run(a) => work::run(a).await,
        Cmd::Status { conn } => {
            let c = Client::new(conn.endpoints.clone())?;
            let s = c.cluster_status().await?;
            output::status(&s, conn.json);
            Ok(())
        }
        Cmd::Node { cmd, conn } => {
            let c = Client::new(conn.endpoints.clone())?;
            let s = match cmd {
                NodeCmd::Add { id, addr, learner } => c.add_node(id, &addr, learner).await?.status,
                NodeCmd::Remove { id } => c.remove_node(id).await?.status,
            };
            output::status(&s.unwrap_or_default(), conn.json);
            Ok(())
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("signal handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn dev(a: DevArgs) -> Result<(), BoxError> {
    init_logging("info,openraft=warn,sled=warn");
    let port = |base: u16, i: u64| format!("{}:{}", a.host, base as u64 + i - 1);
    let clients: BTreeMap<u64, String> = (1..=a.nodes).map(|i| (i, port(a.base_port, i))).collect();
    let members: BTreeMap<u64, String> = (1..=a.nodes)
        .map(|i| (i, port(a.peer_base_port, i)))
        .collect();
    // Bind every port first, so that no node campaigns towards a peer that is not listening yet.
    let bind = |addr: &str| -> Result<std::net::TcpListener, BoxError> {
        let l = std::net::TcpListener::bind(addr)
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        l.set_nonblocking(true)?;
        Ok(l)
    };
    let mut listeners = Vec::new();
    for id in members.keys() {
        listeners.push((bind(&clients[id])?, bind(&members[id])?));
    }
    // One throwaway secret for the members of this cluster, which all live in this process.
    let secret = crate::node::ClusterSecret::new(format!("{:032x}", rand::random::<u128>()));
    let mut nodes = Vec::new();
    for (id, listeners) in members.keys().zip(listeners) {
        let config = NodeConfig {
            id: *id,
            listen: clients[id].clone(),
            peer_listen: members[id].clone(),
            cluster_secret: Some(secret.clone()),
            data_dir: a.dir.join(format!("node-{id}")),
            initial_cluster: members.clone(),
            ..NodeConfig::default()
        };
        nodes.push(NodeThread::start(config, listeners).await?);
    }
    let endpoints: Vec<&str> = clients.values().map(String::as_str).collect();
    println!(
        "leasekeeper dev cluster: {} nodes, data in {}",
        a.nodes,
        a.dir.display()
    );
    for id in members.keys() {
        println!(
            "  node {id}: clients {}, peers {}",
            clients[id], members[id]
        );
    }
    println!("endpoints: {}", endpoints.join(","));
    println!("try: leasekeeper task submit --queue demo --payload hello; leasekeeper status");
    wait_for_signal().await;
    for n in nodes {
        n.stop().await;
    }
    Ok(())
}

/// A `dev` node on a thread and runtime of its own, as if it were its own `server` process
/// (one event-loop thread each; see `ServerArgs::threads`).
struct NodeThread {
    stop: tokio::sync::oneshot::Sender<()>,
    stopped: tokio::sync::oneshot::Receiver<()>,
}

impl NodeThread {
    async fn start(
        config: NodeConfig,
        (client, peer): (std::net::TcpListener, std::net::TcpListener),
    ) -> Result<Self, BoxError> {
        use tokio::sync::oneshot;
        let (started_tx, started) = oneshot::channel::<Result<(), String>>();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let (stopped_tx, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(format!("node-{}", config.id))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = started_tx.send(Err(format!("cannot start a runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(async move {
                    let listeners = tokio::net::TcpListener::from_std(client)
                        .and_then(|c| Ok((c, tokio::net::TcpListener::from_std(peer)?)));
                    let (client, peer) = match listeners {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = started_tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    match Server::start_on(config, client, peer).await {
                        Ok(s) => {
                            let _ = started_tx.send(Ok(()));
                            let _ = stop_rx.await;
                            s.shutdown().await;
                        }
                        Err(e) => {
                            let _ = started_tx.send(Err(e.to_string()));
                        }
                    }
                });
                let _ = stopped_tx.send(());
            })?;
        started
            .await
            .map_err(|_| "the node's thread ended before it started")??;
        Ok(Self { stop, stopped })
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.stopped.await;
    }
}

fn parse_members(v: &[String]) -> Result<BTreeMap<u64, String>, BoxError> {
    let mut m = BTreeMap::new();
    for item in v.iter().filter(|s| !s.is_empty()) {
        let shown = crate::api::validate::clip(item);
        let (id, addr) = item
            .split_once('=')
            .ok_or_else(|| format!("initial-cluster entry {shown:?} is not id=host:port"))?;
        let id: u64 = id
            .parse()
            .map_err(|_| format!("initial-cluster entry {shown:?}: the id is not a number"))?;
        crate::node::check_addr(addr)
            .map_err(|e| format!("initial-cluster entry {shown:?}: {e}"))?;
        if m.insert(id, addr.to_string()).is_some() {
            return Err(format!("initial-cluster names node {id} twice").into());
        }
    }
    Ok(m)
}

async fn server(a: ServerArgs) -> Result<(), BoxError> {
    init_logging("info,openraft=warn,sled=warn");
    let mut c: NodeConfig = match &a.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            toml::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?
        }
        None => NodeConfig::default(),
    };
    if let Some(v) = a.id {
        c.id = v;
        if a.data_dir.is_none() && a.config.is_none() {
            c.data_dir = PathBuf::from(format!(".leasekeeper/node-{v}"));
        }
    }
    if let Some(v) = a.listen {
        c.listen = v;
    }
    if a.advertise.is_some() {
        c.advertise = a.advertise;
    }
    if let Some(v) = a.peer_listen {
        c.peer_listen = v;
    }
    if a.peer_advertise.is_some() {
        c.peer_advertise = a.peer_advertise;
    }
    if let Some(v) = a.cluster_name {
        c.cluster_name = v;
    }
    if a.cluster_secret_file.is_some() {
        c.cluster_secret_file = a.cluster_secret_file;
    }
    if let Ok(v) = std::env::var("LEASEKEEPER_CLUSTER_SECRET") {
        c.cluster_secret = Some(crate::node::ClusterSecret::new(v.trim()));
    }
    if let Some(v) = a.data_dir {
        c.data_dir = v;
    }
    if !a.initial_cluster.is_empty() {
        c.initial_cluster = parse_members(&a.initial_cluster)?;
    }
    let l: &mut Limits = &mut c.limits;
    if let Some(v) = a.min_ttl_ms {
        l.min_ttl_ms = v;
    }
    if let Some(v) = a.max_ttl_ms {
        l.max_ttl_ms = v;
    }
    if let Some(v) = a.default_ttl_ms {
        l.default_ttl_ms = v;
    }
    if let Some(v) = a.heartbeat_ms {
        c.raft.heartbeat_ms = v;
    }
    if let Some(v) = a.election_min_ms {
        c.raft.election_min_ms = v;
    }
    if let Some(v) = a.election_max_ms {
        c.raft.election_max_ms = v;
    }
    if let Some(v) = a.snapshot_every_entries {
        c.raft.snapshot_every_entries = v;
    }
    if let Some(v) = a.terminal_retention_ms {
        c.terminal_retention_ms = v;
    }
    if let Some(v) = a.keep_after_snapshot {
        c.raft.keep_after_snapshot = v;
    }
    let s = Server::start(c).await?;
    println!(
        "node {} serving clients on {}, peers on {}",
        s.node().id,
        s.addr(),
        s.peer_addr()
    );
    wait_for_signal().await;
    s.shutdown().await;
    Ok(())
}

fn parse_state(s: &str) -> Result<pb::TaskState, BoxError> {
    pb::TaskState::from_str_name(&format!("TASK_STATE_{}", s.to_ascii_uppercase())).ok_or_else(
        || {
            format!("state {s:?} is not one of pending, running, succeeded, failed, cancelled")
                .into()
        },
    )
}

async fn task(cmd: TaskCmd, conn: Conn) -> Result<(), BoxError> {
    let c = Client::new(conn.endpoints.clone())?;
    match cmd {
        TaskCmd::Submit {
            queue,
            id,
            payload,
            max_attempts,
            ttl_ms,
        } => {
            let r = c
                .submit(pb::SubmitTaskRequest {
                    id,
                    queue,
                    payload: payload.into_bytes(),
                    max_attempts,
                    lease_ttl_ms: ttl_ms,
                    retry: None,
                })
                .await?;
            output::task(r.task.as_ref().expect("task"), conn.json);
        }
        TaskCmd::Get { id, stale } => {
            let consistency = if stale {
                pb::ReadConsistency::Stale
            } else {
                pb::ReadConsistency::Linearizable
            };
            output::task(&c.get_with(&id, consistency).await?, conn.json);
        }
        TaskCmd::List {
            queue,
            state,
            limit,
        } => {
            let state = match state {
                Some(s) => parse_state(&s)? as i32,
                None => 0,
            };
            let mut page_token = String::new();
            let mut left = limit as usize;
            let mut all = Vec::new();
            loop {
                let size = left.min(1000) as u32;
                let r = c
                    .list(pb::ListTasksRequest {
                        queue: queue.clone(),
                        state,
                        page_size: size,
                        page_token,
                        consistency: 0,
                    })
                    .await?;
                left -= r.tasks.len();
                all.extend(r.tasks);
                if r.next_page_token.is_empty() || left == 0 {
                    break;
                }
                page_token = r.next_page_token;
            }
            output::tasks(&all, conn.json);
        }
        TaskCmd::Cancel { id, reason } => output::task(&c.cancel(&id, &reason).await?, conn.json),
        TaskCmd::Watch {
            from,
            queue,
            task_id,
            kinds,
        } => {
            let mut s = c
                .watch(pb::WatchTasksRequest {
                    from_revision: from,
                    queue,
                    task_id,
                    kinds: kinds.into_iter().map(|k| k as i32).collect(),
                })
                .await?;
            while let Some(e) = s.next().await {
                output::event(&e?, conn.json);
            }
        }
    }
    Ok(())
}

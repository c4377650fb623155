//! `leasekeeper dev` and `leasekeeper server`: run nodes, in this process or as one production
//! node.
use super::init_logging;
use crate::node::{Limits, NodeConfig};
use crate::server::{BoxError, Server};
use clap::Args;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Args)]
pub struct DevArgs {
    /// Data directory (one sub-directory per node).
    #[arg(long, default_value = ".leasekeeper/dev")]
    dir: PathBuf,
    /// Nodes in the cluster.
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
    /// Try the secure path: a throwaway CA and certificates (TLS on both ports, members
    /// verifying each other), an auth file, and an admin token printed ready to use.
    #[arg(long)]
    secure: bool,
    /// Node i serves the dashboard, /metrics and /health over HTTP on metrics-base-port + i - 1
    /// (0: none).
    #[arg(long, default_value_t = 7201)]
    metrics_base_port: u16,
    /// Where the Raft log lives (see `server --log-store`).
    #[arg(long, value_enum, default_value = "segments")]
    log_store: crate::node::LogStoreKind,
    /// Where the state machine's durable copy lives (see `server --state-store`).
    #[arg(long, value_enum, default_value = "file")]
    state_store: crate::node::StateStoreKind,
}

#[derive(Args)]
pub struct ServerArgs {
    /// TOML file with any of the settings below (flags override it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// This node's id, a positive number unique in the cluster (default 1).
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
    /// TLS on the client port: its certificate chain (PEM), with --key-file.
    #[arg(long)]
    cert_file: Option<PathBuf>,
    /// The client port's private key (PEM).
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// The CA (PEM) that client certificates must chain to (for --client-cert-auth).
    #[arg(long)]
    trusted_ca_file: Option<PathBuf>,
    /// Require clients to present a certificate signed by --trusted-ca-file (default off).
    #[arg(long)]
    client_cert_auth: bool,
    /// TLS on the peer port: this member's certificate (PEM), naming it as
    /// node-<id>.<cluster-name> and by the host the others dial. Also its client certificate
    /// towards the other members.
    #[arg(long)]
    peer_cert_file: Option<PathBuf>,
    /// The peer certificate's private key (PEM).
    #[arg(long)]
    peer_key_file: Option<PathBuf>,
    /// The CA (PEM) every member's certificate chains to (required with peer TLS).
    #[arg(long)]
    peer_trusted_ca_file: Option<PathBuf>,
    /// Require members to present their certificate on the peer port (default true with peer
    /// TLS).
    #[arg(long)]
    peer_client_cert_auth: Option<bool>,
    /// Principals, hashed tokens and grants (`leasekeeper auth` writes it): every call but
    /// health must then name a principal allowed to make it. Reloaded when it changes.
    #[arg(long)]
    auth_file: Option<PathBuf>,
    /// Serve plaintext on addresses other than loopback (refused otherwise): only on a network
    /// nothing else shares.
    #[arg(long)]
    insecure: bool,
    /// HTTP listener for the web dashboard, /metrics (Prometheus, OpenMetrics text) and
    /// /health, host:port (default none). Plain HTTP, apart from the gRPC ports: bind it where
    /// only your operators and Prometheus reach (with --auth-file, pages need a token).
    #[arg(long, visible_alias = "http-listen")]
    metrics_listen: Option<String>,
    /// Serve no dashboard on the HTTP listener (only /metrics and /health).
    #[arg(long)]
    no_dashboard: bool,
    /// Link each task's trace in this trace UI: an address holding {trace_id}, e.g.
    /// http://jaeger:16686/trace/{trace_id}.
    #[arg(long)]
    trace_url: Option<String>,
    /// Queues that get their own metric series (default 64); the rest share queue="(other)".
    #[arg(long)]
    metrics_max_queues: Option<usize>,
    /// A fraction (default 0.1 = 10 %): a node whose clock rate is off by more than this
    /// against most other voters' casts no expiry votes until it is back. 0 turns it off.
    #[arg(long)]
    clock_rate_bound: Option<f64>,
    /// Where the Raft log lives: segments (default; a sled log of the previous layout is
    /// converted on start) or sled (the previous layout, kept to measure against; refuses a
    /// directory already converted).
    #[arg(long, value_enum)]
    log_store: Option<crate::node::LogStoreKind>,
    /// Where the state machine's durable copy lives: file (default; a whole snapshot file,
    /// written atomically at every build) or sled (checkpoints written incrementally under
    /// state/; a snapshot file is converted on start, and nothing converts back).
    #[arg(long, value_enum)]
    state_store: Option<crate::node::StateStoreKind>,
    /// Close a Raft log segment and start a new one at this size, in bytes (default 64 MiB).
    #[arg(long)]
    log_segment_bytes: Option<u64>,
    /// Where the log and snapshots live (default .leasekeeper/node-<id>).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Founding members by peer address: 1=host:7101,2=host:7101,3=host:7101. Omit to join
    /// with `node add`.
    #[arg(long, value_delimiter = ',')]
    initial_cluster: Vec<String>,
    /// Shortest lease TTL a task may ask for, in ms (default 2000; must exceed 3 × election-max-ms).
    #[arg(long)]
    min_ttl_ms: Option<u64>,
    /// Longest lease TTL a task may ask for, in ms (default 86 400 000, a day).
    #[arg(long)]
    max_ttl_ms: Option<u64>,
    /// Lease TTL of a task that names none, in ms (default 30 000).
    #[arg(long)]
    default_ttl_ms: Option<u64>,
    /// Raft heartbeat interval, in ms (default 100).
    #[arg(long)]
    heartbeat_ms: Option<u64>,
    /// Shortest Raft election timeout, in ms (default 400).
    #[arg(long)]
    election_min_ms: Option<u64>,
    /// Longest Raft election timeout, in ms (default 600).
    #[arg(long)]
    election_max_ms: Option<u64>,
    /// Build a snapshot after this many log entries (default 20 000).
    #[arg(long)]
    snapshot_every_entries: Option<u64>,
    /// Log entries kept behind a snapshot for followers that lag a little.
    #[arg(long)]
    keep_after_snapshot: Option<u64>,
    /// Forget finished tasks this long after they finished (0 = keep forever; default 7 days).
    #[arg(long)]
    terminal_retention_ms: Option<u64>,
    /// Threads running the node's event loop (gRPC, Raft, the state machine). 1, the default,
    /// runs it on one thread; log fsyncs and snapshot builds have threads of their own.
    /// 0 = one per core. See docs/PERFORMANCE.md ("One thread per node").
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("signal handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

pub async fn dev(a: DevArgs) -> Result<(), BoxError> {
    init_logging("info,openraft=error,sled=warn", "leasekeeper-dev");
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
    let metrics: BTreeMap<u64, String> = if a.metrics_base_port == 0 {
        BTreeMap::new()
    } else {
        (1..=a.nodes)
            .map(|i| (i, port(a.metrics_base_port, i)))
            .collect()
    };
    let mut listeners = Vec::new();
    for id in members.keys() {
        let m = metrics.get(id).map(|a| bind(a)).transpose()?;
        listeners.push((bind(&clients[id])?, bind(&members[id])?, m));
    }
    // One throwaway secret for the members of this cluster, which all live in this process.
    let secret = crate::node::ClusterSecret::new(format!("{:032x}", rand::random::<u128>()));
    let ids: Vec<u64> = members.keys().copied().collect();
    let secure = if a.secure {
        Some(super::secure::make(
            &a.dir.join("secure"),
            &ids,
            &a.host,
            "leasekeeper",
        )?)
    } else {
        None
    };
    let mut nodes = Vec::new();
    for (id, listeners) in members.keys().zip(listeners) {
        let mut config = NodeConfig {
            id: *id,
            listen: clients[id].clone(),
            peer_listen: members[id].clone(),
            cluster_secret: Some(secret.clone()),
            data_dir: a.dir.join(format!("node-{id}")),
            initial_cluster: members.clone(),
            log_store: a.log_store,
            state_store: a.state_store,
            ..NodeConfig::default()
        };
        if let Some(s) = &secure {
            let (_, cert, key) = s
                .nodes
                .iter()
                .find(|(n, _, _)| n == id)
                .expect("a certificate per node");
            config.cert_file = Some(cert.clone());
            config.key_file = Some(key.clone());
            config.peer_cert_file = Some(cert.clone());
            config.peer_key_file = Some(key.clone());
            config.peer_trusted_ca_file = Some(s.ca.clone());
            config.auth_file = Some(s.auth_file.clone());
        }
        nodes.push(NodeThread::start(config, listeners).await?);
    }
    let endpoints: Vec<&str> = clients.values().map(String::as_str).collect();
    println!(
        "leasekeeper dev cluster: {} nodes, data in {}",
        a.nodes,
        a.dir.display()
    );
    for id in members.keys() {
        match metrics.get(id) {
            Some(m) => println!(
                "  node {id}: clients {}, peers {}, dashboard http://{m}/, metrics http://{m}/metrics",
                clients[id], members[id]
            ),
            None => println!(
                "  node {id}: clients {}, peers {}",
                clients[id], members[id]
            ),
        }
    }
    println!("endpoints: {}", endpoints.join(","));
    if let Some(s) = &secure {
        println!(
            "secure: TLS on both ports (CA {}), auth file {}; as admin, in another shell:",
            s.ca.display(),
            s.auth_file.display()
        );
        println!(
            "  export LEASEKEEPER_CACERT={} LEASEKEEPER_TOKEN={}",
            s.ca.display(),
            s.admin_token
        );
        println!(
            "  leasekeeper auth add --file {} --name etl-workers --grant worker:etl/   # a worker's token",
            s.auth_file.display()
        );
    }
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
        (client, peer, metrics): (
            std::net::TcpListener,
            std::net::TcpListener,
            Option<std::net::TcpListener>,
        ),
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
                    let listeners = tokio::net::TcpListener::from_std(client).and_then(|c| {
                        let m = metrics.map(tokio::net::TcpListener::from_std).transpose()?;
                        Ok((c, tokio::net::TcpListener::from_std(peer)?, m))
                    });
                    let (client, peer, metrics) = match listeners {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = started_tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    match Server::start_with(config, client, peer, metrics).await {
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

pub async fn server(a: ServerArgs) -> Result<(), BoxError> {
    let mut c: NodeConfig = match &a.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            toml::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?
        }
        None => NodeConfig::default(),
    };
    init_logging(
        "info,openraft=error,sled=warn",
        &format!("leasekeeper-node-{}", a.id.unwrap_or(c.id)),
    );
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
    for (flag, field) in [
        (a.cert_file, &mut c.cert_file),
        (a.key_file, &mut c.key_file),
        (a.trusted_ca_file, &mut c.trusted_ca_file),
        (a.peer_cert_file, &mut c.peer_cert_file),
        (a.peer_key_file, &mut c.peer_key_file),
        (a.peer_trusted_ca_file, &mut c.peer_trusted_ca_file),
    ] {
        if flag.is_some() {
            *field = flag;
        }
    }
    if a.client_cert_auth {
        c.client_cert_auth = true;
    }
    if a.auth_file.is_some() {
        c.auth_file = a.auth_file;
    }
    if let Some(v) = a.peer_client_cert_auth {
        c.peer_client_cert_auth = v;
    }
    c.metrics_listen = a.metrics_listen.or(c.metrics_listen);
    c.dashboard = c.dashboard && !a.no_dashboard;
    c.trace_url = a.trace_url.or(c.trace_url);
    c.metrics_max_queues = a.metrics_max_queues.unwrap_or(c.metrics_max_queues);
    c.clock_rate_bound = a.clock_rate_bound.unwrap_or(c.clock_rate_bound);
    c.log_store = a.log_store.unwrap_or(c.log_store);
    c.state_store = a.state_store.unwrap_or(c.state_store);
    c.log_segment_bytes = a.log_segment_bytes.unwrap_or(c.log_segment_bytes);
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
    if !a.insecure {
        secure_off_loopback(&c)?;
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

/// Whether `addr` (host:port) binds loopback only.
fn loopback(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Refuses plaintext, or calls without credentials, on a port reachable from other machines
/// (without `--insecure`).
fn secure_off_loopback(c: &NodeConfig) -> Result<(), BoxError> {
    let mut missing = Vec::new();
    if !loopback(&c.listen) && c.cert_file.is_none() {
        missing.push(format!(
            "the client port {} is not loopback: add --cert-file and --key-file (and \
             --trusted-ca-file with --client-cert-auth to require client certificates)",
            c.listen
        ));
    }
    if !loopback(&c.listen) && c.auth_file.is_none() {
        missing.push(format!(
            "the client port {} is not loopback: add --auth-file (create it with `leasekeeper \
             auth add --file auth.toml --name admin --grant admin`)",
            c.listen
        ));
    }
    if !loopback(&c.peer_listen) && c.peer_cert_file.is_none() {
        missing.push(format!(
            "the peer port {} is not loopback: add --peer-cert-file, --peer-key-file and \
             --peer-trusted-ca-file",
            c.peer_listen
        ));
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "refusing to serve beyond this machine without TLS and auth: {}. See docs/SECURITY.md; \
         pass --insecure only on a network nothing else shares",
        missing.join("; ")
    )
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_is_refused_off_loopback_and_names_what_to_add() {
        let mut c = NodeConfig::default();
        assert!(secure_off_loopback(&c).is_ok(), "127.0.0.1 is loopback");
        c.listen = "[::1]:7001".into();
        c.peer_listen = "localhost:7101".into();
        assert!(secure_off_loopback(&c).is_ok());
        c.listen = "0.0.0.0:7001".into();
        let e = secure_off_loopback(&c).unwrap_err().to_string();
        assert!(
            e.contains("--cert-file") && !e.contains("--peer-cert-file"),
            "{e}"
        );
        c.peer_listen = "10.0.0.1:7101".into();
        let e = secure_off_loopback(&c).unwrap_err().to_string();
        assert!(
            e.contains("--peer-cert-file") && e.contains("--insecure"),
            "{e}"
        );
        c.cert_file = Some("c.pem".into());
        c.peer_cert_file = Some("p.pem".into());
        let e = secure_off_loopback(&c).unwrap_err().to_string();
        assert!(
            e.contains("--auth-file") && !e.contains("--cert-file"),
            "TLS alone is not enough: {e}"
        );
        c.auth_file = Some("auth.toml".into());
        assert!(secure_off_loopback(&c).is_ok());
    }
}

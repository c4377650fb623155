//! The `leasekeeper` command: run nodes (`dev`, `server`) and talk to a cluster (`task`,
//! `status`, `node`).
mod auth;
mod node;
mod output;
mod secure;
mod task;
mod work;

use crate::client::Client;
use crate::server::BoxError;
use clap::{Args, Parser, Subcommand};
use node::{DevArgs, ServerArgs};
use task::TaskCmd;

#[derive(Parser)]
#[command(
    name = "leasekeeper",
    version,
    about = "Replicated task and lease state for schedulers"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Cmd,
    /// Log lines as text, or as one JSON object per line (for log shippers). Lines inside a
    /// traced call carry its span and fields.
    #[arg(
        long,
        value_enum,
        env = "LEASEKEEPER_LOG_FORMAT",
        default_value = "text",
        global = true
    )]
    log_format: LogFormat,
    /// Export spans over OTLP (gRPC) to this collector, e.g. http://127.0.0.1:4317. Calls then
    /// carry their W3C trace context, and a task's run continues its submit's trace.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", global = true)]
    otlp_endpoint: Option<String>,
    /// The share of traces this process starts that are exported (0 to 1; default 1, all).
    /// A call that arrives in a trace follows its caller's decision.
    #[arg(long, default_value_t = 1.0, global = true)]
    otlp_sample_ratio: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Set once from `--log-format` before anything logs.
static LOG_JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// Set once from `--otlp-endpoint` (and `--otlp-sample-ratio`) before anything logs.
static OTLP_ENDPOINT: std::sync::OnceLock<(String, f64)> = std::sync::OnceLock::new();

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
    /// Talk TLS, trusting this CA (PEM) for the nodes' certificates (like etcdctl --cacert).
    #[arg(long, env = "LEASEKEEPER_CACERT", global = true)]
    cacert: Option<std::path::PathBuf>,
    /// A client certificate (PEM) for nodes that require one; with --key.
    #[arg(long, env = "LEASEKEEPER_CERT", global = true, requires = "key")]
    cert: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM); with --cert.
    #[arg(long, env = "LEASEKEEPER_KEY", global = true, requires = "cert")]
    key: Option<std::path::PathBuf>,
    /// The token calls carry, for clusters with an auth file (`leasekeeper auth add` prints it).
    #[arg(long, env = "LEASEKEEPER_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
}

impl Conn {
    /// TLS settings if any TLS flag is given (plaintext otherwise).
    fn tls(&self) -> Option<crate::tls::ClientTlsFiles> {
        (self.cacert.is_some() || self.cert.is_some()).then(|| crate::tls::ClientTlsFiles {
            ca_file: self.cacert.clone(),
            cert_file: self.cert.clone(),
            key_file: self.key.clone(),
        })
    }

    /// A client for these endpoints, with TLS if asked.
    fn client(&self) -> Result<Client, crate::client::ClientError> {
        Client::connect_with(
            self.endpoints.clone(),
            self.tls().as_ref(),
            self.token.as_deref(),
        )
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a local cluster in this process (three nodes on 127.0.0.1:7001-7003 by default).
    Dev(DevArgs),
    /// Run one production node.
    Server(Box<ServerArgs>),
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
    /// Principals, tokens and grants in an auth file (`--auth-file` of the nodes).
    Auth {
        #[command(subcommand)]
        cmd: auth::AuthCmd,
    },
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
    /// Concurrent simulated clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// gRPC connections shared by the clients.
    #[arg(long, default_value_t = 8)]
    conns: usize,
    /// Seconds to run the load for.
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

/// Logs to stderr (text or JSON, filtered by `LEASEKEEPER_LOG`, else `default`), and exports
/// spans as `service` when an OTLP endpoint was given.
pub fn init_logging(default: &str, service: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    type Boxed = Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>;
    let filter = tracing_subscriber::EnvFilter::try_from_env("LEASEKEEPER_LOG")
        .unwrap_or_else(|_| default.into());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let mut layers: Vec<Boxed> = vec![if LOG_JSON.load(std::sync::atomic::Ordering::Relaxed) {
        fmt.json()
            .with_current_span(true)
            .with_filter(filter)
            .boxed()
    } else {
        fmt.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(filter)
            .boxed()
    }];
    if let Some((endpoint, ratio)) = OTLP_ENDPOINT.get() {
        // Spans of this program only (not its libraries'), whatever the log filter says.
        let ours = tracing_subscriber::filter::Targets::new()
            .with_target("leasekeeper", tracing::Level::DEBUG);
        match crate::trace::otlp_layer(endpoint, service, *ratio) {
            Ok(l) => layers.push(l.with_filter(ours).boxed()),
            Err(e) => eprintln!("warning: not exporting spans: {e}"),
        }
    }
    let _ = tracing_subscriber::registry().with(layers).try_init();
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
    LOG_JSON.store(
        cli.log_format == LogFormat::Json,
        std::sync::atomic::Ordering::Relaxed,
    );
    if !(0.0..=1.0).contains(&cli.otlp_sample_ratio) {
        return Err(format!(
            "--otlp-sample-ratio {} is not a share: give 0 to 1 (0.1 exports one trace in ten)",
            cli.otlp_sample_ratio
        )
        .into());
    }
    if let Some(e) = cli.otlp_endpoint.filter(|e| !e.is_empty()) {
        let _ = OTLP_ENDPOINT.set((e, cli.otlp_sample_ratio));
    }
    if matches!(
        cli.command,
        Cmd::Task { .. } | Cmd::Status { .. } | Cmd::Node { .. }
    ) {
        init_logging("warn", "leasekeeper-cli");
    }
    let res = run_command(cli.command).await;
    crate::trace::shutdown().await;
    res
}

async fn run_command(command: Cmd) -> Result<(), BoxError> {
    match command {
        Cmd::Dev(a) => node::dev(a).await,
        Cmd::Server(a) => node::server(*a).await,
        Cmd::Task { cmd, conn } => {
            use tracing::Instrument;
            // The root of the trace a submit starts (when spans are exported).
            let span = tracing::info_span!("cli.task", otel.name = cmd.name());
            task::task(cmd, conn).instrument(span).await
        }
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
                tls: a.conn.tls(),
                token: a.conn.token.clone(),
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
            let c = conn.client()?;
            let s = c.cluster_status().await?;
            output::status(&s, conn.json);
            Ok(())
        }
        Cmd::Auth { cmd } => auth::auth(cmd),
        Cmd::Node { cmd, conn } => {
            let c = conn.client()?;
            let s = match cmd {
                NodeCmd::Add { id, addr, learner } => c.add_node(id, &addr, learner).await?.status,
                NodeCmd::Remove { id } => c.remove_node(id).await?.status,
            };
            output::status(&s.unwrap_or_default(), conn.json);
            Ok(())
        }
    }
}

//! `leasekeeper worker` (a claim loop running a command per task) and `leasekeeper run` (one
//! externally scheduled job wrapped as a task).
use super::{init_logging, Conn};
use crate::proto::v1 as pb;
use crate::server::BoxError;
use crate::worker::exec::{self, ExecConfig};
use crate::worker::{Outcome, Worker, WorkerConfig};
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

/// The flags `worker` and `run` share: who runs, where its journal is, how its command is
/// stopped and how long its reports are delivered for.
#[derive(Args)]
pub struct JobArgs {
    /// The queue to take tasks from.
    #[arg(long)]
    queue: String,
    /// Names this worker; keep it stable across restarts (default: worker <hostname>-<queue>;
    /// run <hostname>-run-<pid>).
    #[arg(long)]
    worker_id: Option<String>,
    /// Journal of final reports (default: $LEASEKEEPER_JOURNAL_DIR or .leasekeeper/journal, then
    /// the worker id; for run, run-<task id>).
    #[arg(long)]
    journal_dir: Option<PathBuf>,
    /// Milliseconds between SIGTERM and SIGKILL when the command is stopped.
    #[arg(long, default_value_t = 10_000)]
    kill_grace_ms: u64,
    /// After a stop, milliseconds to keep delivering reports before exiting with 75 (they stay
    /// in the journal for the next start).
    #[arg(long, default_value_t = 300_000)]
    drain_timeout_ms: u64,
    /// HTTP listener for this worker's /metrics (round trips to nodes, journal depth, reports
    /// retried, leases held and lost) and /health, host:port (default none).
    #[arg(long)]
    metrics_listen: Option<String>,
    /// The command (after `--`): run for each task, its payload on stdin.
    #[arg(last = true, required = true)]
    command: Vec<String>,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args)]
pub struct WorkerArgs {
    /// Tasks run at the same time.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Lease TTL to ask for, in milliseconds (default 0: each task's own).
    #[arg(long, default_value_t = 0)]
    lease_ttl_ms: u64,
    /// After SIGTERM/SIGINT, milliseconds running tasks may go on before they are stopped.
    #[arg(long, default_value_t = 30_000)]
    grace_ms: u64,
    #[command(flatten)]
    job: JobArgs,
}

#[derive(Args)]
pub struct RunArgs {
    /// The task's id: the same id is the same job (a repeat after success does not run it
    /// again). Default: a new id each time.
    #[arg(long)]
    task_id: Option<String>,
    /// Lease TTL in milliseconds; renewals go out at about a third of it.
    #[arg(long, default_value_t = 30_000)]
    ttl_ms: u64,
    /// Attempts before the task is FAILED for good (retries are the outer scheduler's call).
    #[arg(long, default_value_t = 1)]
    max_attempts: u32,
    /// Payload recorded with the task and passed on the command's stdin.
    #[arg(long, default_value = "")]
    payload: String,
    #[command(flatten)]
    job: JobArgs,
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into our buffer.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Takes SIGTERM and SIGINT away from their default (exit at once) for the whole process: from
/// here on only `signalled` decides what they do.
fn hold_signals() {
    use tokio::signal::unix::{signal, SignalKind};
    let _ = signal(SignalKind::terminate()).expect("signal handler");
    let _ = signal(SignalKind::interrupt()).expect("signal handler");
}

async fn signalled() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("signal handler");
    let mut int = signal(SignalKind::interrupt()).expect("signal handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
}

/// Serves `metrics` on `addr` for as long as the process runs.
async fn serve_metrics(
    addr: Option<&str>,
    metrics: &std::sync::Arc<crate::metrics::WorkerMetrics>,
) -> Result<(), BoxError> {
    let Some(addr) = addr else { return Ok(()) };
    let listener = crate::http::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics and /health");
    let routes = crate::http::worker_routes(metrics.clone());
    tokio::spawn(async move {
        let (_keep, never) = tokio::sync::watch::channel(false);
        if let Err(e) = crate::http::serve(listener, routes, never).await {
            tracing::error!(error = %e, "the metrics listener stopped");
        }
        drop(_keep);
    });
    Ok(())
}

/// `leasekeeper worker`: never returns; exits 0 when every report is delivered, 75 otherwise.
pub async fn worker(a: WorkerArgs) -> Result<(), BoxError> {
    hold_signals();
    init_logging("info,openraft=error", "leasekeeper-worker");
    let j = a.job;
    let worker_id = j
        .worker_id
        .unwrap_or_else(|| format!("{}-{}", hostname(), j.queue));
    let mut config = WorkerConfig::new(j.conn.endpoints.clone(), &j.queue, &worker_id);
    config.tls = j.conn.tls();
    config.token = j.conn.token.clone();
    config.concurrency = a.concurrency;
    config.lease_ttl_ms = a.lease_ttl_ms;
    if let Some(d) = j.journal_dir {
        config.journal_dir = d;
    }
    config.shutdown_grace = Duration::from_millis(a.grace_ms);
    config.drain_timeout = Duration::from_millis(j.drain_timeout_ms);
    serve_metrics(j.metrics_listen.as_deref(), &config.metrics).await?;
    let exec_cfg = ExecConfig {
        argv: j.command,
        kill_grace: Duration::from_millis(j.kill_grace_ms),
    };
    let w = Worker::start(config)?;
    tracing::info!(worker = %worker_id, queue = %j.queue, concurrency = a.concurrency, "worker started");
    let drained = w
        .run(
            move |ctx| {
                let exec_cfg = exec_cfg.clone();
                async move { exec::run(&ctx, &exec_cfg).await }
            },
            signalled(),
        )
        .await;
    drop(w);
    crate::trace::shutdown().await;
    std::process::exit(if drained.undelivered == 0 { 0 } else { 75 });
}

/// `leasekeeper run`: exits with the command's own exit code.
pub async fn run(a: RunArgs) -> Result<(), BoxError> {
    hold_signals();
    init_logging("info,openraft=error", "leasekeeper-worker");
    let task_id = a
        .task_id
        .unwrap_or_else(|| format!("run-{:016x}", rand::random::<u64>()));
    let j = a.job;
    let worker_id = j
        .worker_id
        .unwrap_or_else(|| format!("{}-run-{}", hostname(), std::process::id()));
    let mut config = WorkerConfig::new(j.conn.endpoints.clone(), &j.queue, &worker_id);
    config.tls = j.conn.tls();
    config.token = j.conn.token.clone();
    config.journal_dir = j
        .journal_dir
        .unwrap_or_else(|| crate::worker::default_journal_dir(&format!("run-{task_id}")));
    config.lease_ttl_ms = a.ttl_ms;
    serve_metrics(j.metrics_listen.as_deref(), &config.metrics).await?;
    let drain_timeout = Duration::from_millis(j.drain_timeout_ms);
    let w = Worker::start(config)?;
    // A report an earlier run of this job left behind goes out first: it may finish the job.
    if w.drain(drain_timeout).await > 0 {
        return Err("an earlier report of this job is still undelivered: the cluster is unreachable; try again later".into());
    }
    let c = w.client().clone();
    // The root of this job's trace (when spans are exported): the task keeps the submit's
    // context, and its run continues it.
    let root = tracing::info_span!("cli.run", task = %task_id);
    let submitted = tracing::Instrument::instrument(
        c.submit(pb::SubmitTaskRequest {
            id: task_id.clone(),
            queue: j.queue.clone(),
            payload: a.payload.clone().into_bytes(),
            max_attempts: a.max_attempts,
            lease_ttl_ms: a.ttl_ms,
            ..Default::default()
        }),
        root.clone(),
    )
    .await;
    let task = match submitted {
        Ok(r) => r.task.unwrap_or_default(),
        // Same id, different spec (e.g. another payload): the job exists; go by its state.
        Err(s) if s.code() == tonic::Code::AlreadyExists => c.get(&task_id).await?,
        Err(s) => return Err(s.into()),
    };
    match pb::TaskState::try_from(task.state).unwrap_or(pb::TaskState::Unspecified) {
        pb::TaskState::Succeeded => {
            eprintln!("task {task_id} already SUCCEEDED: not running it again");
            std::process::exit(0);
        }
        pb::TaskState::Failed | pb::TaskState::Cancelled => {
            return Err(format!(
                "task {task_id} is already {:?}: use another --task-id to run it again",
                pb::TaskState::try_from(task.state).unwrap_or(pb::TaskState::Unspecified)
            )
            .into());
        }
        _ => {}
    }
    let ctx = match w.claim(Some(&task_id)).await {
        Ok(Some(ctx)) => ctx,
        Ok(None) => return Err(format!("task {task_id} could not be claimed").into()),
        Err(s) if s.code() == tonic::Code::FailedPrecondition => {
            eprintln!(
                "task {task_id} is being run by another worker: {}",
                s.message()
            );
            std::process::exit(75);
        }
        Err(s) => return Err(s.into()),
    };
    let exec_cfg = ExecConfig {
        argv: j.command,
        kill_grace: Duration::from_millis(j.kill_grace_ms),
    };
    // SIGTERM/SIGINT to the wrapper stops the command (the job is then given back, not failed).
    let stop = ctx.stopping().clone();
    let on_signal = tokio::spawn(async move {
        signalled().await;
        stop.cancel();
    });
    let outcome = exec::run(&ctx, &exec_cfg).await;
    // From here on a signal changes nothing: the outcome is reported whatever happens.
    let keep_signals_away = tokio::spawn(async move {
        loop {
            signalled().await;
            tracing::info!("the command has ended; delivering its report first");
        }
    });
    on_signal.abort();
    let code = exec::exit_code_of(&outcome);
    w.report(&ctx, outcome.clone()).await?;
    let left = w.drain(drain_timeout).await;
    keep_signals_away.abort();
    // The attempt's and the job's spans end here, and are exported before the exit.
    drop(ctx);
    drop(w);
    drop(root);
    crate::trace::shutdown().await;
    if left > 0 {
        eprintln!("the outcome of {task_id} is journaled but not yet acknowledged: the next `leasekeeper run --task-id {task_id}` delivers it");
    } else if !matches!(outcome, Outcome::Success { .. }) {
        tracing::info!(task = %task_id, code, "reported");
    }
    std::process::exit(code);
}

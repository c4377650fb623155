//! The worker SDK: claim tasks, keep their leases alive, and never lose a final report.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use leasekeeper::worker::{Outcome, Worker, WorkerConfig};
//! let config = WorkerConfig::new(vec!["127.0.0.1:7001".into()], "etl", "worker-a");
//! let worker = Worker::start(config)?;
//! let drained = worker
//!     .run(|ctx| async move {
//!         // ... do the work; stop early when ctx.lost() or ctx.stopping() fires ...
//!         Outcome::Success { result: ctx.task.payload.clone() }
//!     }, tokio::signal::ctrl_c())
//!     .await;
//! assert_eq!(drained.undelivered, 0);
//! # Ok(()) }
//! ```
//!
//! What it does for the handler:
//! - **Claims** up to `concurrency` tasks at a time, long-polling the queue, with an idempotent
//!   claim key so a claim whose answer was lost does not orphan a lease.
//! - **Renews** every lease it holds over one Heartbeat stream per worker, at the interval the
//!   cluster advises (about a third of the TTL), moving to another node when a stream breaks.
//!   A lease the cluster reports lost (expired, cancelled, finished), or that no renewal has
//!   confirmed for a whole TTL, fires the handler's `lost` token.
//! - **Reports** the handler's outcome durably: appended and fsynced to the journal first, then
//!   sent to any node and retried with back-off until the cluster acknowledges it. The lease is
//!   renewed until then, so the task is not handed to anyone else meanwhile. Unacknowledged
//!   reports from an earlier run are sent first thing at start.
//! - **Stops** on request: no more claims, running handlers get `shutdown_grace`, then their
//!   `stopping` token fires; every outcome is reported before `run` returns.
pub mod exec;
mod heartbeat;
pub mod journal;
mod leases;
mod outbox;
pub mod protocol;
mod report;

pub use journal::{Journal, JournalError};
pub use leases::Leases;
pub use report::{Outcome, Report};

use outbox::Outbox;

use crate::client::Client;
use crate::proto::v1 as pb;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::Instrument;

#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Every node's address (host:port); any will do.
    pub endpoints: Vec<String>,
    pub queue: String,
    /// Names this worker in leases and history. Keep it stable across restarts.
    pub worker_id: String,
    /// Tasks run at the same time.
    pub concurrency: usize,
    /// Lease TTL asked for on claims (0 = the task's own).
    pub lease_ttl_ms: u64,
    /// Where final reports are journaled before they are sent. One worker process per journal.
    pub journal_dir: PathBuf,
    /// After a stop request, how long running tasks may go on before `stopping` fires.
    pub shutdown_grace: Duration,
    /// After a stop request, how long to keep trying to deliver reports before giving up (they
    /// stay in the journal for the next start).
    pub drain_timeout: Duration,
    /// Long-poll of one claim call.
    pub claim_wait: Duration,
    /// TLS towards the nodes (None = plaintext).
    pub tls: Option<crate::tls::ClientTlsFiles>,
    /// The token every call carries, for clusters with an auth file (a `worker` grant).
    pub token: Option<String>,
    /// Where this worker counts what it does (`leasekeeper worker --metrics-listen` serves
    /// them); share one between workers to export them together.
    pub metrics: Arc<crate::metrics::WorkerMetrics>,
}

impl WorkerConfig {
    pub fn new(endpoints: Vec<String>, queue: &str, worker_id: &str) -> Self {
        Self {
            endpoints,
            queue: queue.to_string(),
            worker_id: worker_id.to_string(),
            concurrency: 1,
            lease_ttl_ms: 0,
            journal_dir: default_journal_dir(worker_id),
            shutdown_grace: protocol::SHUTDOWN_GRACE,
            drain_timeout: protocol::DRAIN_TIMEOUT,
            claim_wait: protocol::CLAIM_WAIT,
            tls: None,
            token: None,
            metrics: Default::default(),
        }
    }
}

/// `$LEASEKEEPER_JOURNAL_DIR`, else `.leasekeeper/journal`, then one directory per worker id.
pub fn default_journal_dir(worker_id: &str) -> PathBuf {
    let base = std::env::var_os("LEASEKEEPER_JOURNAL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".leasekeeper/journal"));
    let safe: String = worker_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    base.join(safe)
}

/// What a handler gets for one claimed task.
#[derive(Clone)]
pub struct TaskContext {
    pub task: pb::Task,
    pub lease: pb::Lease,
    /// The lease's secret: what proves this worker holds it.
    lease_secret: Vec<u8>,
    lost: CancellationToken,
    stopping: CancellationToken,
    leases: Arc<Leases>,
    client: Client,
    /// This attempt's span: a child of the task's submit when it carried a trace (spans are
    /// exported with `--otlp-endpoint`). The handler runs, and its report is sent, inside it.
    span: tracing::Span,
}

impl TaskContext {
    /// This attempt's span (calls made inside it carry its trace).
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }
    pub fn token(&self) -> u64 {
        self.lease.token
    }
    /// The lease's secret (from the claim's answer), for calls made outside this SDK.
    pub fn lease_secret(&self) -> &[u8] {
        &self.lease_secret
    }
    /// Fires when the lease is lost (expired, cancelled, finished elsewhere, or unconfirmed for a
    /// whole TTL): stop the work, nobody will accept its effects as this attempt's any more.
    pub fn lost(&self) -> &CancellationToken {
        &self.lost
    }
    /// Why the lease was lost, once `lost` fired.
    pub fn lost_reason(&self) -> Option<String> {
        self.leases.reason(self.lease.token)
    }
    /// Fires when the worker is stopping and the grace period is over: wrap up now.
    pub fn stopping(&self) -> &CancellationToken {
        &self.stopping
    }
    /// Records a checkpoint with the task (also renews the lease).
    pub async fn progress(&self, checkpoint: Vec<u8>) -> Result<(), Status> {
        self.client
            .progress(self.lease.token, &self.lease_secret, checkpoint)
            .await
            .map(|_| ())
    }
    pub fn client(&self) -> &Client {
        &self.client
    }
}

/// What is left when `run` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Reports still in the journal (not acknowledged before `drain_timeout`). 0 = all done.
    pub undelivered: usize,
}

pub struct Worker {
    config: WorkerConfig,
    client: Client,
    /// For claims: an attempt unanswered a second past its long-poll wait moves on to another
    /// node (with the same claim id), so that a claim committed while its answer was cut off is
    /// found, and renewed, well within its TTL.
    claims: Client,
    leases: Arc<Leases>,
    outbox: Arc<Outbox>,
    stop_heartbeats: CancellationToken,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Client(#[from] crate::client::ClientError),
    #[error("concurrency must be at least 1")]
    Concurrency,
}

impl Worker {
    /// Opens the journal, starts heartbeats, and starts delivering any reports an earlier run
    /// left unacknowledged (their leases are renewed meanwhile).
    pub fn start(config: WorkerConfig) -> Result<Worker, WorkerError> {
        if config.concurrency == 0 {
            return Err(WorkerError::Concurrency);
        }
        let client = Client::connect_with(
            config.endpoints.clone(),
            config.tls.as_ref(),
            config.token.as_deref(),
        )?;
        let journal = Journal::open(&config.journal_dir)?;
        let leases = Arc::new(Leases::with_metrics(config.metrics.clone()));
        let w = Worker {
            config,
            claims: client
                .clone()
                .with_attempt_timeout(protocol::CLAIM_ATTEMPT_TIMEOUT)
                .with_retry_for(protocol::CLAIM_RETRY_FOR),
            outbox: Outbox::new(client.clone(), journal, leases.clone()),
            client,
            leases,
            stop_heartbeats: CancellationToken::new(),
        };
        tokio::spawn(heartbeat::heartbeats(
            w.client.clone(),
            w.leases.clone(),
            w.stop_heartbeats.clone(),
        ));
        w.outbox.replay();
        Ok(w)
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn leases(&self) -> &Arc<Leases> {
        &self.leases
    }

    /// Reports not yet acknowledged.
    pub fn undelivered(&self) -> usize {
        self.outbox.undelivered()
    }

    /// Journals `outcome` for `lease` (fsync), then delivers it in the background.
    pub async fn report(&self, ctx: &TaskContext, outcome: Outcome) -> Result<(), JournalError> {
        let report = Report {
            task_id: ctx.task.id.clone(),
            lease_token: ctx.lease.token,
            lease_secret: ctx.lease_secret.clone(),
            outcome,
        };
        self.outbox
            .report(report)
            .instrument(ctx.span.clone())
            .await
    }

    /// Waits until every journaled report is acknowledged, or `timeout` passes; returns how many
    /// are left.
    pub async fn drain(&self, timeout: Duration) -> usize {
        self.outbox.drain(timeout).await
    }

    /// Claims one task (long-polling up to `claim_wait`) and starts renewing its lease.
    pub async fn claim(&self, task_id: Option<&str>) -> Result<Option<TaskContext>, Status> {
        let wait = if task_id.is_some() {
            Duration::ZERO
        } else {
            self.config.claim_wait
        };
        self.claim_with(task_id, CancellationToken::new(), &new_claim_id(), wait)
            .await
    }

    async fn claim_with(
        &self,
        task_id: Option<&str>,
        stopping: CancellationToken,
        claim_id: &str,
        wait: Duration,
    ) -> Result<Option<TaskContext>, Status> {
        let sent_at = Instant::now();
        let r = self
            .claims
            .claim(pb::ClaimTaskRequest {
                queue: self.config.queue.clone(),
                worker_id: self.config.worker_id.clone(),
                lease_ttl_ms: self.config.lease_ttl_ms,
                wait_ms: wait.as_millis() as u64,
                task_id: task_id.unwrap_or_default().to_string(),
                claim_id: claim_id.to_string(),
            })
            .await?;
        let (Some(task), Some(lease)) = (r.task, r.lease) else {
            return Ok(None);
        };
        // The lease's TTL runs from when the nodes heard it, `lease_age_ms` before this answer
        // (a long poll may have waited far longer than the TTL; a retry's answer may name a
        // lease an earlier attempt created).
        let now = Instant::now();
        let started_at = now
            .checked_sub(Duration::from_millis(r.lease_age_ms))
            .unwrap_or(sent_at)
            .max(sent_at);
        self.leases.contact(now);
        let span = task_span(&task, &lease);
        let lost = self.leases.track(
            lease.token,
            r.lease_secret.clone(),
            lease.ttl_ms,
            r.renew_interval_ms,
            started_at,
        );
        self.leases.trace(lease.token, span.clone());
        span.in_scope(|| {
            tracing::info!(task = %task.id, token = lease.token, attempt = lease.attempt, "claimed")
        });
        Ok(Some(TaskContext {
            task,
            lease,
            lease_secret: r.lease_secret,
            lost,
            stopping,
            leases: self.leases.clone(),
            client: self.client.clone(),
            span,
        }))
    }

    /// Runs `handler` on claimed tasks until `stop` resolves, then shuts down as described in
    /// the module docs. Returns once every outcome is reported (or `drain_timeout` passed).
    pub async fn run<H, Fut, S>(&self, handler: H, stop: S) -> Drained
    where
        H: Fn(TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Outcome> + Send + 'static,
        S: Future + Send,
    {
        let stop_token = CancellationToken::new();
        let trip = stop_token.clone();
        let on_stop = async move {
            stop.await;
            trip.cancel();
            std::future::pending::<()>().await;
        };
        tokio::select! {
            _ = on_stop => unreachable!("pending forever"),
            d = self.run_until(Arc::new(handler), stop_token) => d,
        }
    }

    async fn run_until<H, Fut>(&self, handler: Arc<H>, stop: CancellationToken) -> Drained
    where
        H: Fn(TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        let slots = Arc::new(Semaphore::new(self.config.concurrency));
        let stopping = CancellationToken::new();
        let mut running = tokio::task::JoinSet::new();
        // Reports an earlier run left behind go out before any claim: one of them may finish
        // the very task this worker would otherwise claim and run again.
        if self.undelivered() > 0 {
            tokio::select! {
                left = self.drain(self.config.drain_timeout) => if left > 0 {
                    tracing::warn!(left, "earlier reports still undelivered; claiming anyway");
                },
                _ = stop.cancelled() => {}
            }
        }
        let mut backoff = protocol::CLAIM_BACKOFF_INITIAL;
        // A claim key is kept until a claim under it returns a lease (or is refused for good):
        // a claim that failed in transit (or answered "none" while an earlier attempt of it was
        // still committing) may have made a lease all the same, and asking again under the same
        // key is answered that lease instead of leaving it to expire as a failed attempt.
        let mut claim_id = new_claim_id();
        while !stop.is_cancelled() {
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => p.expect("semaphore open"),
                _ = stop.cancelled() => break,
            };
            // A long-poll claim is cut short by a stop. It may have been committed already: an
            // orphaned lease would expire as a failed attempt. So the same claim key is asked
            // again without waiting, and whatever lease it names is released.
            let claimed = tokio::select! {
                r = self.claim_with(None, stopping.clone(), &claim_id, self.config.claim_wait) => r,
                _ = stop.cancelled() => {
                    // Bounded: with the cluster unreachable a stop must not wait on it.
                    let quick = tokio::time::timeout(
                        Duration::from_secs(3),
                        self.claim_with(None, stopping.clone(), &claim_id, Duration::ZERO),
                    );
                    quick.await.unwrap_or_else(|_| {
                        Err(Status::unavailable("cluster unreachable while stopping"))
                    })
                }
            };
            match &claimed {
                // Kept: the claim may have made a lease (or one may still be committing).
                Ok(None) => {}
                Err(e) if crate::client::retryable(e) => {}
                // Spent, or refused for good (e.g. its lease ended before a retry got there).
                Ok(Some(_)) | Err(_) => claim_id = new_claim_id(),
            }
            match claimed {
                Ok(Some(ctx)) if stop.is_cancelled() => {
                    let release = Outcome::Release {
                        reason: "worker stopping before the task started".into(),
                    };
                    if let Err(e) = self.report(&ctx, release).await {
                        tracing::error!(error = %e, "cannot journal the release");
                    }
                }
                Ok(Some(ctx)) => {
                    backoff = protocol::CLAIM_BACKOFF_INITIAL;
                    running.spawn(self.handle(handler.clone(), ctx, permit));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "claim failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(protocol::CLAIM_BACKOFF_MAX);
                }
            }
        }
        tracing::info!(running = running.len(), grace = ?self.config.shutdown_grace, "stopping: no more claims");
        let grace_end = Instant::now() + self.config.shutdown_grace;
        while !running.is_empty() {
            tokio::select! {
                _ = running.join_next() => {}
                _ = tokio::time::sleep_until(grace_end), if !stopping.is_cancelled() => {
                    tracing::warn!(running = running.len(), "grace period over: stopping running tasks");
                    stopping.cancel();
                }
            }
        }
        let undelivered = self.drain(self.config.drain_timeout).await;
        if undelivered > 0 {
            tracing::error!(undelivered, journal = %self.config.journal_dir.display(), "reports not acknowledged yet; they are sent at the next start");
        }
        Drained { undelivered }
    }

    /// Runs one handler, then journals and delivers its outcome.
    fn handle<H, Fut>(
        &self,
        handler: Arc<H>,
        ctx: TaskContext,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        H: Fn(TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        let outbox = self.outbox.clone();
        let span = ctx.span.clone();
        async move {
            let (task_id, token) = (ctx.task.id.clone(), ctx.lease.token);
            let lease_secret = ctx.lease_secret.clone();
            let run = handler(ctx).instrument(tracing::Span::current());
            let outcome = match tokio::spawn(run).await {
                Ok(o) => o,
                Err(e) => Outcome::Failure {
                    exit_code: protocol::CRASH_EXIT_CODE,
                    error: format!("handler panicked: {e}"),
                    result: Vec::new(),
                },
            };
            let report = Report {
                task_id,
                lease_token: token,
                lease_secret,
                outcome,
            };
            // Without the journal a crash could lose the report; it is still sent once.
            let _ = outbox.report(report).await;
            drop(permit);
        }
        .instrument(span)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop_heartbeats.cancel();
    }
}

fn new_claim_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The span of one attempt: `task.run`, a child of the task's submit when that carried a trace.
fn task_span(task: &pb::Task, lease: &pb::Lease) -> tracing::Span {
    if !crate::trace::enabled() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "task.run",
        task = %task.id,
        queue = %task.queue,
        attempt = lease.attempt,
        token = lease.token,
        trace_id = tracing::field::Empty,
    );
    crate::trace::adopt(&span, crate::trace::from_traceparent(&task.trace_parent));
    span
}

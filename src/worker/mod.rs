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
pub mod journal;

pub use journal::{Journal, JournalError, Outcome, Report};

use crate::client::Client;
use crate::proto::v1 as pb;
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

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
            shutdown_grace: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(300),
            claim_wait: Duration::from_secs(10),
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
}

impl TaskContext {
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

struct Tracked {
    secret: Vec<u8>,
    ttl_ms: u64,
    interval_ms: u64,
    /// When the request behind the last confirmation was sent (conservative).
    confirmed_at: Instant,
    lost: CancellationToken,
    reason: Option<String>,
    /// The work ended and its report is journaled: renew until it is acknowledged, but the
    /// lease can no longer be "lost" for the handler.
    reported: bool,
}

/// The leases this worker holds, shared by the claim loop, handlers, heartbeats and reports.
pub struct Leases {
    map: Mutex<HashMap<u64, Tracked>>,
    /// When a node last answered a heartbeat at all (ALIVE or RETRY).
    contact_at: Mutex<Instant>,
    /// Wakes the heartbeat loop for a lease that must be renewed without waiting its turn.
    renew_now: tokio::sync::Notify,
}

impl Default for Leases {
    fn default() -> Self {
        Self {
            map: Mutex::default(),
            contact_at: Mutex::new(Instant::now()),
            renew_now: tokio::sync::Notify::new(),
        }
    }
}

impl Leases {
    /// Starts renewing a lease whose TTL started at `started_at` (on this worker's clock: the
    /// claim's answer, less the lease's age on the answering node). A lease already half an
    /// interval old is renewed at once.
    fn track(
        &self,
        token: u64,
        secret: Vec<u8>,
        ttl_ms: u64,
        interval_ms: u64,
        started_at: Instant,
    ) -> CancellationToken {
        let lost = CancellationToken::new();
        let interval_ms = interval_ms.max(1);
        self.map.lock().expect("lock").insert(
            token,
            Tracked {
                secret,
                ttl_ms,
                interval_ms,
                confirmed_at: started_at,
                lost: lost.clone(),
                reason: None,
                reported: false,
            },
        );
        if started_at.elapsed() > Duration::from_millis(interval_ms / 2) {
            self.renew_now.notify_one();
        }
        lost
    }
    fn untrack(&self, token: u64) {
        self.map.lock().expect("lock").remove(&token);
    }
    fn mark_reported(&self, token: u64) {
        if let Some(t) = self.map.lock().expect("lock").get_mut(&token) {
            t.reported = true;
        }
    }
    fn lose(&self, token: u64, why: String) {
        let mut m = self.map.lock().expect("lock");
        if let Some(t) = m.get_mut(&token) {
            if t.reason.is_none() {
                tracing::warn!(token, reason = %why, "lease lost");
                t.reason = Some(why);
            }
            t.lost.cancel();
            if t.reported {
                // Nothing left to protect: the report stands on its own (late successes count).
                m.remove(&token);
            }
        }
    }
    fn reason(&self, token: u64) -> Option<String> {
        self.map
            .lock()
            .expect("lock")
            .get(&token)
            .and_then(|t| t.reason.clone())
    }
    /// Tokens to renew now with their secrets, and the interval until the next heartbeat.
    fn due(&self) -> (Vec<u64>, Vec<Vec<u8>>, Duration) {
        let m = self.map.lock().expect("lock");
        let (tokens, secrets) = m
            .iter()
            .filter(|(_, t)| !t.lost.is_cancelled())
            .map(|(k, t)| (*k, t.secret.clone()))
            .unzip();
        let interval = m.values().map(|t| t.interval_ms).min().unwrap_or(500);
        (tokens, secrets, Duration::from_millis(interval))
    }
    /// Leases presumed lost although the cluster could not say so:
    /// - no renewal confirmed for a TTL and no node answered at all meanwhile (this worker is cut
    ///   off; the cluster may have expired the lease and cannot tell it);
    /// - no renewal confirmed for two TTLs although nodes answered "no leader, retry" (an
    ///   election does not take that long; this worker may only reach a minority).
    ///
    /// A leader election alone never costs a lease: nodes answer RETRY meanwhile, and a new
    /// leader hears every lease anew.
    fn lose_unconfirmed(&self, now: Instant) {
        let contact = *self.contact_at.lock().expect("lock");
        let stale: Vec<(u64, String)> = {
            let m = self.map.lock().expect("lock");
            m.iter()
                .filter(|(_, t)| !t.reported && !t.lost.is_cancelled())
                .filter_map(|(k, t)| {
                    let ttl = Duration::from_millis(t.ttl_ms);
                    let unconfirmed = now.saturating_duration_since(t.confirmed_at);
                    let silent = now.saturating_duration_since(contact.max(t.confirmed_at));
                    if unconfirmed > 2 * ttl {
                        Some((*k, format!("no renewal committed within two lease TTLs ({} ms each) although nodes answered", t.ttl_ms)))
                    } else if unconfirmed > ttl && silent > ttl {
                        Some((*k, format!("no node reachable within the lease TTL ({} ms); the cluster may have expired it", t.ttl_ms)))
                    } else {
                        None
                    }
                })
                .collect()
        };
        for (token, why) in stale {
            self.lose(token, why);
        }
    }
    fn contact(&self, at: Instant) {
        let mut c = self.contact_at.lock().expect("lock");
        if at > *c {
            *c = at;
        }
    }
    fn confirm(&self, token: u64, sent_at: Instant, interval_ms: u64) {
        if let Some(t) = self.map.lock().expect("lock").get_mut(&token) {
            if sent_at > t.confirmed_at {
                t.confirmed_at = sent_at;
            }
            if interval_ms > 0 {
                t.interval_ms = interval_ms;
            }
        }
    }
    pub fn len(&self) -> usize {
        self.map.lock().expect("lock").len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
    journal: Arc<Mutex<Journal>>,
    /// Wakes whoever waits for the journal to drain.
    acked: Arc<Notify>,
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
        let client = Client::new(config.endpoints.clone())?;
        let journal = Journal::open(&config.journal_dir)?;
        let pending = journal.pending();
        let w = Worker {
            config,
            claims: client.clone().with_attempt_timeout(CLAIM_ATTEMPT_TIMEOUT),
            client,
            leases: Arc::new(Leases::default()),
            journal: Arc::new(Mutex::new(journal)),
            acked: Arc::new(Notify::new()),
            stop_heartbeats: CancellationToken::new(),
        };
        tokio::spawn(heartbeats(
            w.client.clone(),
            w.leases.clone(),
            w.stop_heartbeats.clone(),
        ));
        for r in pending {
            tracing::info!(task = %r.task_id, token = r.lease_token, "replaying an unacknowledged report");
            // Keep the lease alive while the report goes out (a restart within the TTL).
            w.leases.track(
                r.lease_token,
                r.lease_secret.clone(),
                u64::MAX / 4,
                300,
                Instant::now(),
            );
            w.leases.mark_reported(r.lease_token);
            w.deliver(r);
        }
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
        self.journal.lock().expect("lock").pending_count()
    }

    /// Journals `outcome` for `lease` (fsync), then delivers it in the background.
    pub async fn report(&self, ctx: &TaskContext, outcome: Outcome) -> Result<(), JournalError> {
        let report = Report {
            task_id: ctx.task.id.clone(),
            lease_token: ctx.lease.token,
            lease_secret: ctx.lease_secret.clone(),
            outcome,
        };
        journal_then_deliver(
            self.client.clone(),
            self.journal.clone(),
            self.leases.clone(),
            self.acked.clone(),
            report,
        )
        .await
    }

    fn deliver(&self, report: Report) {
        tokio::spawn(deliver(
            self.client.clone(),
            self.journal.clone(),
            self.leases.clone(),
            self.acked.clone(),
            report,
        ));
    }

    /// Waits until every journaled report is acknowledged, or `timeout` passes; returns how many
    /// are left.
    pub async fn drain(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.acked.notified();
            let left = self.undelivered();
            if left == 0 || Instant::now() >= deadline {
                return left;
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
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
        let lost = self.leases.track(
            lease.token,
            r.lease_secret.clone(),
            lease.ttl_ms,
            r.renew_interval_ms,
            started_at,
        );
        tracing::info!(task = %task.id, token = lease.token, attempt = lease.attempt, "claimed");
        Ok(Some(TaskContext {
            task,
            lease,
            lease_secret: r.lease_secret,
            lost,
            stopping,
            leases: self.leases.clone(),
            client: self.client.clone(),
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
        let mut backoff = Duration::from_millis(50);
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
                    backoff = Duration::from_millis(50);
                    running.spawn(self.handle(handler.clone(), ctx, permit));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "claim failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
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
        let journal = self.journal.clone();
        let leases = self.leases.clone();
        let client = self.client.clone();
        let acked = self.acked.clone();
        async move {
            let (task_id, token) = (ctx.task.id.clone(), ctx.lease.token);
            let lease_secret = ctx.lease_secret.clone();
            let outcome = match tokio::spawn(handler(ctx)).await {
                Ok(o) => o,
                Err(e) => Outcome::Failure {
                    exit_code: -1,
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
            let (c, l) = (client.clone(), leases.clone());
            if let Err(e) = journal_then_deliver(c, journal, l, acked, report.clone()).await {
                // Without the journal a crash could lose the report; still deliver it.
                tracing::error!(error = %e, "cannot journal the report; sending it anyway");
                let _ = deliver_once(&client, &report).await;
                leases.untrack(token);
            }
            drop(permit);
        }
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

/// Whether a failed report may succeed if sent again.
fn report_retryable(s: &Status) -> bool {
    crate::client::retryable(s)
        || matches!(
            s.code(),
            Code::DeadlineExceeded
                | Code::Cancelled
                | Code::ResourceExhausted
                | Code::Aborted
                | Code::Internal
        )
}

async fn deliver_once(client: &Client, r: &Report) -> Result<(), Status> {
    match &r.outcome {
        Outcome::Success { result } => client
            .complete(pb::CompleteTaskRequest {
                task_id: r.task_id.clone(),
                lease_token: r.lease_token,
                success: true,
                exit_code: 0,
                result: result.clone(),
                error: String::new(),
                lease_secret: r.lease_secret.clone(),
            })
            .await
            .map(|_| ()),
        Outcome::Failure {
            exit_code,
            error,
            result,
        } => client
            .complete(pb::CompleteTaskRequest {
                task_id: r.task_id.clone(),
                lease_token: r.lease_token,
                success: false,
                exit_code: *exit_code,
                result: result.clone(),
                error: error.clone(),
                lease_secret: r.lease_secret.clone(),
            })
            .await
            .map(|_| ()),
        Outcome::Release { reason } => client
            .release(r.lease_token, &r.lease_secret, reason)
            .await
            .map(|_| ()),
    }
}

/// Appends `report` to the journal (fsync), then delivers it in the background; the lease is
/// renewed until the cluster acknowledges the report.
async fn journal_then_deliver(
    client: Client,
    journal: Arc<Mutex<Journal>>,
    leases: Arc<Leases>,
    acked: Arc<Notify>,
    report: Report,
) -> Result<(), JournalError> {
    let (j, r) = (journal.clone(), report.clone());
    tokio::task::spawn_blocking(move || j.lock().expect("lock").append(&r))
        .await
        .expect("journal append does not panic")?;
    leases.mark_reported(report.lease_token);
    tokio::spawn(deliver(client, journal, leases, acked, report));
    Ok(())
}

/// Sends `r` until the cluster acknowledges it (or refuses it for good), then acks the journal.
async fn deliver(
    client: Client,
    journal: Arc<Mutex<Journal>>,
    leases: Arc<Leases>,
    acked: Arc<Notify>,
    r: Report,
) {
    let mut backoff = Duration::from_millis(50);
    let mut tries = 0u32;
    loop {
        tries += 1;
        match deliver_once(&client, &r).await {
            Ok(()) => {
                tracing::info!(task = %r.task_id, token = r.lease_token, tries, "report committed");
                break;
            }
            Err(s) if report_retryable(&s) => {
                tracing::warn!(task = %r.task_id, token = r.lease_token, code = ?s.code(), error = s.message(), "report not delivered yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(s) => {
                // Refused for good (the task was forgotten, or a release of a lease that had
                // ended): sending it again cannot change the answer.
                tracing::error!(task = %r.task_id, token = r.lease_token, code = ?s.code(), error = s.message(), "report refused; dropping it from the journal");
                break;
            }
        }
    }
    let token = r.lease_token;
    let res = tokio::task::spawn_blocking(move || journal.lock().expect("lock").ack(token)).await;
    if let Ok(Err(e)) = res {
        tracing::error!(error = %e, "cannot record the acknowledgement; the report is sent again at the next start (harmless)");
    }
    leases.untrack(token);
    acked.notify_waiters();
}

/// How long a claim attempt may go unanswered beyond its long-poll wait.
const CLAIM_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);

/// Bounds on how long a heartbeat waits for its answer before trying another node.
const SILENCE_MIN: Duration = Duration::from_millis(200);
const SILENCE_MAX: Duration = Duration::from_millis(1500);

/// One Heartbeat stream per worker: renews every tracked lease at the advised interval, moves to
/// another node when the stream breaks, and reports lost leases to their handlers.
async fn heartbeats(client: Client, leases: Arc<Leases>, stop: CancellationToken) {
    let mut seq = 0u64;
    let mut stream: Option<(
        mpsc::Sender<pb::HeartbeatRequest>,
        tonic::Streaming<pb::HeartbeatResponse>,
    )> = None;
    let mut backoff = Duration::from_millis(50);
    // The node the stream is (or was last) open on.
    let mut hb_node = client.node();
    loop {
        let (tokens, secrets, interval) = leases.due();
        let jitter = interval.as_millis() as u64 / 10;
        let pause = interval + Duration::from_millis(rand::random::<u64>() % (2 * jitter + 1))
            - Duration::from_millis(jitter);
        leases.lose_unconfirmed(Instant::now());
        if tokens.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                _ = stop.cancelled() => return,
            }
        }
        // Nodes answer within about a second (RETRY when they cannot commit in time), so
        // silence beyond that means this node is unreachable. With a short TTL the wait is
        // shorter still — one renew interval (a third of the TTL): a renewal that finds its node
        // cut off must still have the time to go through another node before the lease's TTL
        // runs out on the nodes' clocks.
        let wait = interval.clamp(SILENCE_MIN, SILENCE_MAX);
        if stream.is_none() {
            let (tx, rx) = mpsc::channel(4);
            hb_node = client.node();
            let mut w = client.worker_on(hb_node);
            match tokio::time::timeout(
                wait,
                w.heartbeat(tokio_stream::wrappers::ReceiverStream::new(rx)),
            )
            .await
            {
                Ok(Ok(resp)) => stream = Some((tx, resp.into_inner())),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "heartbeat stream refused; trying another node");
                    client.move_from(hb_node);
                }
                Err(_) => {
                    tracing::debug!("heartbeat stream not opened in time; trying another node");
                    client.move_from(hb_node);
                }
            }
        }
        if let Some((tx, rx)) = stream.as_mut() {
            seq += 1;
            let sent_at = Instant::now();
            let ok = tx
                .send(pb::HeartbeatRequest {
                    seq,
                    lease_tokens: tokens.clone(),
                    lease_secrets: secrets.clone(),
                })
                .await
                .is_ok();
            let answer = if ok {
                loop {
                    match tokio::time::timeout(wait, rx.message()).await {
                        Ok(Ok(Some(r))) if r.seq == seq => break Some(r),
                        Ok(Ok(Some(_))) => continue,
                        _ => break None,
                    }
                }
            } else {
                None
            };
            match answer {
                Some(r) => {
                    backoff = Duration::from_millis(50);
                    leases.contact(sent_at);
                    let mut retry = false;
                    for l in r.leases {
                        match pb::LeaseStatus::try_from(l.status)
                            .unwrap_or(pb::LeaseStatus::Unspecified)
                        {
                            pb::LeaseStatus::Alive => {
                                leases.confirm(l.lease_token, sent_at, r.renew_interval_ms)
                            }
                            pb::LeaseStatus::Retry | pb::LeaseStatus::Unspecified => retry = true,
                            _ => leases.lose(l.lease_token, l.message),
                        }
                    }
                    if retry {
                        // This node has no leader to commit through: ask another one next.
                        stream = None;
                        client.move_from(hb_node);
                    }
                }
                None => {
                    tracing::debug!(
                        "heartbeat stream broke or went quiet; reconnecting to another node"
                    );
                    stream = None;
                    client.move_from(hb_node);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                    continue;
                }
            }
        }
        let wait = if stream.is_some() { pause } else { backoff };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = leases.renew_now.notified() => {}
            _ = stop.cancelled() => return,
        }
    }
}

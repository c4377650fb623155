//! Final reports, journal first: a report is appended and fsynced to the journal before it is
//! sent, sent to any node until the cluster acknowledges it (or refuses it for good), renewed
//! meanwhile so the task is not handed to anyone else, and replayed at the next start if the
//! worker stops first.
use super::journal::{Journal, JournalError};
use super::leases::Leases;
use super::report::{Outcome, Report};
use crate::client::Client;
use crate::proto::v1 as pb;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tonic::{Code, Status};

/// The journal and the deliveries of one worker.
pub(super) struct Outbox {
    client: Client,
    journal: Mutex<Journal>,
    leases: Arc<Leases>,
    /// Wakes whoever waits for the journal to drain.
    acked: Notify,
}

impl Outbox {
    pub(super) fn new(client: Client, journal: Journal, leases: Arc<Leases>) -> Arc<Self> {
        Arc::new(Self {
            client,
            journal: Mutex::new(journal),
            leases,
            acked: Notify::new(),
        })
    }

    /// Sends again every report an earlier run left unacknowledged, renewing its lease until
    /// the cluster acknowledges it (a restart within the TTL keeps the lease).
    pub(super) fn replay(self: &Arc<Self>) {
        let pending = self.journal.lock().expect("lock").pending();
        for r in pending {
            tracing::info!(task = %r.task_id, token = r.lease_token, "replaying an unacknowledged report");
            self.leases.track(
                r.lease_token,
                r.lease_secret.clone(),
                u64::MAX / 4,
                300,
                Instant::now(),
            );
            self.leases.mark_reported(r.lease_token);
            // When its process exited is not known to this run: its latency is not measured.
            tokio::spawn(self.clone().deliver(r, None));
        }
        self.journal_depth();
    }

    fn journal_depth(&self) {
        self.leases
            .metrics
            .journal_depth
            .set(self.undelivered() as i64);
    }

    /// Appends `report` to the journal (fsync), then delivers it in the background; the lease
    /// is renewed until the cluster acknowledges the report. Without the journal (it cannot be
    /// written) the report is still sent once, and the error returned.
    pub(super) async fn report(self: &Arc<Self>, report: Report) -> Result<(), JournalError> {
        // The handler returned (the process exited) now: the report latency starts here.
        let exited = Instant::now();
        let outcome = match &report.outcome {
            Outcome::Success { .. } => "succeeded",
            Outcome::Failure { .. } => "failed",
            Outcome::Release { .. } => "released",
        };
        self.leases
            .metrics
            .tasks_run
            .get_or_create(&crate::metrics::StatusLabel { status: outcome })
            .inc();
        let (this, r) = (self.clone(), report.clone());
        let appended =
            tokio::task::spawn_blocking(move || this.journal.lock().expect("lock").append(&r))
                .await
                .expect("journal append does not panic");
        if let Err(e) = appended {
            tracing::error!(error = %e, "cannot journal the report; sending it anyway");
            let _ = deliver_once(&self.client, &report, Some(exited), &Default::default()).await;
            self.leases.untrack(report.lease_token);
            return Err(e);
        }
        self.leases.mark_reported(report.lease_token);
        self.journal_depth();
        // Delivered inside the caller's span: the report continues the task's trace.
        let deliver = self.clone().deliver(report, Some(exited));
        tokio::spawn(tracing::Instrument::instrument(
            deliver,
            tracing::Span::current(),
        ));
        Ok(())
    }

    /// Reports not yet acknowledged.
    pub(super) fn undelivered(&self) -> usize {
        self.journal.lock().expect("lock").pending_count()
    }

    /// Waits until every journaled report is acknowledged, or `timeout` passes; returns how
    /// many are left.
    pub(super) async fn drain(&self, timeout: Duration) -> usize {
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

    /// Sends `r` until the cluster acknowledges it (or refuses it for good), then acks the
    /// journal.
    async fn deliver(self: Arc<Self>, r: Report, exited: Option<Instant>) {
        let mut backoff = super::protocol::REPORT_BACKOFF_INITIAL;
        let mut tries = 0u32;
        let sent = std::sync::atomic::AtomicU32::new(0);
        loop {
            tries += 1;
            match deliver_once(&self.client, &r, exited, &sent).await {
                Ok(()) => {
                    tracing::info!(task = %r.task_id, token = r.lease_token, tries, "report committed");
                    break;
                }
                Err(s) if report_retryable(&s) => {
                    tracing::warn!(task = %r.task_id, token = r.lease_token, code = ?s.code(), error = s.message(), "report not delivered yet; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(super::protocol::REPORT_BACKOFF_MAX);
                }
                Err(s) => {
                    // Refused for good (the task was forgotten, or a release of a lease that
                    // had ended): sending it again cannot change the answer.
                    tracing::error!(task = %r.task_id, token = r.lease_token, code = ?s.code(), error = s.message(), "report refused; dropping it from the journal");
                    break;
                }
            }
        }
        let m = &self.leases.metrics;
        let sends = u64::from(sent.into_inner().max(1));
        m.reports_sent.inc_by(sends);
        m.reports_retried.inc_by(sends - 1);
        let token = r.lease_token;
        let this = self.clone();
        let res =
            tokio::task::spawn_blocking(move || this.journal.lock().expect("lock").ack(token))
                .await;
        if let Ok(Err(e)) = res {
            tracing::error!(error = %e, "cannot record the acknowledgement; the report is sent again at the next start (harmless)");
        }
        self.leases.untrack(token);
        self.journal_depth();
        self.acked.notify_waiters();
    }
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

/// Sends `r` (the client tries other nodes for a while); `exited` is when its process exited
/// (on this worker's clock), `sent` counts the sends of this report. Both travel with the
/// report, for the cluster's metrics.
async fn deliver_once(
    client: &Client,
    r: &Report,
    exited: Option<Instant>,
    sent: &std::sync::atomic::AtomicU32,
) -> Result<(), Status> {
    let (success, exit_code, result, error) = match &r.outcome {
        Outcome::Success { result } => (true, 0, result, String::new()),
        Outcome::Failure {
            exit_code,
            error,
            result,
        } => (false, *exit_code, result, error.clone()),
        Outcome::Release { reason } => {
            sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return client
                .release(r.lease_token, &r.lease_secret, reason)
                .await
                .map(|_| ());
        }
    };
    let req = pb::CompleteTaskRequest {
        task_id: r.task_id.clone(),
        lease_token: r.lease_token,
        success,
        exit_code,
        result: result.clone(),
        error,
        lease_secret: r.lease_secret.clone(),
        ..Default::default()
    };
    client
        .complete_counting(req, sent, exited)
        .await
        .map(|_| ())
}

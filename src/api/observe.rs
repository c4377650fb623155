//! What the worker service tells the node's metrics and traces about the calls it answers.
use crate::proto::v1 as pb;

/// Counts a heartbeat's (or a renewal's) answers by status, and how long it took to answer.
pub(super) fn count_renewals(
    m: &crate::metrics::NodeMetrics,
    received: std::time::Instant,
    leases: &[pb::LeaseRenewal],
) {
    m.renew_duration.observe(received.elapsed().as_secs_f64());
    let mut counts = [0u64; 8];
    for l in leases {
        counts[(l.status.clamp(0, 7)) as usize] += 1;
    }
    for (status, n) in counts.iter().enumerate() {
        if *n == 0 {
            continue;
        }
        let status = match pb::LeaseStatus::try_from(status as i32) {
            Ok(pb::LeaseStatus::Alive) => "alive",
            Ok(pb::LeaseStatus::Expired) => "expired",
            Ok(pb::LeaseStatus::Cancelled) => "cancelled",
            Ok(pb::LeaseStatus::Finished) => "finished",
            Ok(pb::LeaseStatus::Unknown) => "unknown",
            Ok(pb::LeaseStatus::Retry) => "retry",
            Ok(pb::LeaseStatus::Denied) => "denied",
            _ => "unspecified",
        };
        m.renewal_answers
            .get_or_create(&crate::metrics::StatusLabel { status })
            .inc_by(*n);
    }
}

/// A span in the trace of the task's submit, for the claim that starts an attempt of it (the
/// claim call itself cannot carry that trace: the worker learns the task from its answer).
pub(super) fn claimed_span(task: &crate::state::Task, lease: &crate::state::Lease) {
    if !crate::trace::enabled() || task.trace_parent.is_empty() {
        return;
    }
    let span = tracing::info_span!(
        "task.claimed",
        task = %task.id(),
        queue = %task.queue(),
        attempt = lease.attempt,
        worker = %lease.worker_id,
        trace_id = tracing::field::Empty,
    );
    crate::trace::adopt(&span, crate::trace::from_traceparent(&task.trace_parent));
    span.in_scope(|| tracing::debug!(token = lease.token, "claimed"));
}

//! Conversions between the state machine's types and the public proto messages.
use crate::proto::v1 as pb;
use crate::state::{
    self, AttemptOutcome, AttemptRecord, Event, EventKind, Lease, LostReason, Task, TaskState,
};

pub fn state_to_pb(s: TaskState) -> pb::TaskState {
    match s {
        TaskState::Pending => pb::TaskState::Pending,
        TaskState::Running => pb::TaskState::Running,
        TaskState::Succeeded => pb::TaskState::Succeeded,
        TaskState::Failed => pb::TaskState::Failed,
        TaskState::Cancelled => pb::TaskState::Cancelled,
    }
}

pub fn state_from_pb(s: pb::TaskState) -> Option<TaskState> {
    match s {
        pb::TaskState::Unspecified => None,
        pb::TaskState::Pending => Some(TaskState::Pending),
        pb::TaskState::Running => Some(TaskState::Running),
        pb::TaskState::Succeeded => Some(TaskState::Succeeded),
        pb::TaskState::Failed => Some(TaskState::Failed),
        pb::TaskState::Cancelled => Some(TaskState::Cancelled),
    }
}

fn outcome_to_pb(o: AttemptOutcome) -> pb::AttemptOutcome {
    match o {
        AttemptOutcome::Running => pb::AttemptOutcome::Running,
        AttemptOutcome::Succeeded => pb::AttemptOutcome::Succeeded,
        AttemptOutcome::Failed => pb::AttemptOutcome::Failed,
        AttemptOutcome::Expired => pb::AttemptOutcome::Expired,
        AttemptOutcome::Released => pb::AttemptOutcome::Released,
        AttemptOutcome::Cancelled => pb::AttemptOutcome::Cancelled,
    }
}

fn record_to_pb(r: &AttemptRecord) -> pb::AttemptRecord {
    pb::AttemptRecord {
        attempt: r.attempt,
        worker_id: r.worker_id.clone(),
        lease_token: r.lease_token,
        outcome: outcome_to_pb(r.outcome) as i32,
        exit_code: r.exit_code.unwrap_or(0),
        error: r.error.clone(),
        started_rev: r.started_rev,
        ended_rev: r.ended_rev,
        late: r.late,
        expiry_voters: r.expiry_voters.clone(),
        expiry_evidence: r
            .expiry_silence_ms
            .iter()
            .map(|&(node_id, silence_ms)| pb::VoterSilence {
                node_id,
                silence_ms,
            })
            .collect(),
        renewals: r.renewals,
    }
}

pub fn lease_to_pb(l: &Lease) -> pb::Lease {
    pb::Lease {
        token: l.token,
        task_id: l.task_id.to_string(),
        attempt: l.attempt,
        worker_id: l.worker_id.clone(),
        ttl_ms: l.ttl_ms,
        renewals: l.renewals,
    }
}

/// `lease` is the task's live lease, when the caller has it at hand.
pub fn task_to_pb(t: &Task, lease: Option<&Lease>) -> pb::Task {
    pb::Task {
        id: t.spec.id.to_string(),
        queue: t.spec.queue.to_string(),
        payload: t.spec.payload.clone(),
        state: state_to_pb(t.state) as i32,
        attempt: t.attempt,
        max_attempts: t.spec.max_attempts,
        lease_ttl_ms: t.spec.lease_ttl_ms,
        retry: Some(pb::RetryPolicy {
            initial_backoff_ms: t.spec.initial_backoff_ms,
            max_backoff_ms: t.spec.max_backoff_ms,
        }),
        progress: t.progress.clone(),
        result: t.result.clone(),
        exit_code: t.exit_code.unwrap_or(0),
        error: t.error.clone(),
        history: t.history.iter().map(record_to_pb).collect(),
        created_rev: t.created_rev,
        updated_rev: t.updated_rev,
        created_at_unix_ms: t.created_at_unix_ms,
        updated_at_unix_ms: t.updated_at_unix_ms,
        not_before_unix_ms: t.not_before_unix_ms,
        lease: lease.filter(|l| Some(l.token) == t.lease).map(lease_to_pb),
        trace_parent: t.trace_parent.clone(),
    }
}

/// A task with its live lease looked up in `s`.
pub fn task_in(s: &state::State, t: &Task) -> pb::Task {
    task_to_pb(t, t.lease.and_then(|tok| s.lease(tok)))
}

pub fn event_to_pb(e: &Event) -> pb::TaskEvent {
    pb::TaskEvent {
        revision: e.revision,
        kind: kind_to_pb(e.kind) as i32,
        task: Some(task_to_pb(&e.task, None)),
    }
}

pub fn kind_to_pb(k: EventKind) -> pb::EventKind {
    match k {
        EventKind::Submitted => pb::EventKind::Submitted,
        EventKind::Claimed => pb::EventKind::Claimed,
        EventKind::Progress => pb::EventKind::Progress,
        EventKind::Succeeded => pb::EventKind::Succeeded,
        EventKind::Failed => pb::EventKind::Failed,
        EventKind::RetryScheduled => pb::EventKind::RetryScheduled,
        EventKind::Cancelled => pb::EventKind::Cancelled,
        EventKind::LateReport => pb::EventKind::LateReport,
    }
}

pub fn lost_to_status(r: &LostReason) -> pb::LeaseStatus {
    match r {
        LostReason::Expired { .. } => pb::LeaseStatus::Expired,
        LostReason::Cancelled => pb::LeaseStatus::Cancelled,
        LostReason::Finished { .. } | LostReason::Released | LostReason::Failed => {
            pb::LeaseStatus::Finished
        }
        LostReason::Unknown => pb::LeaseStatus::Unknown,
    }
}

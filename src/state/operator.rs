//! What an operator does to a task: cancel it, or retry one that ended without success.
use super::machine::{Effects, State};
use super::types::*;
use std::sync::Arc;

impl State {
    pub(super) fn cancel(
        &mut self,
        rev: Revision,
        now: u64,
        id: &str,
        reason: &str,
        fx: &mut Effects,
    ) -> Response {
        let Some(task) = self.tasks.get(id) else {
            return Response::Rejected(Rejection::TaskNotFound { id: id.to_string() });
        };
        match task.state {
            TaskState::Cancelled => {
                return Response::Cancelled {
                    task: (**task).clone(),
                }
            }
            s if s.is_terminal() => {
                return Response::Rejected(Rejection::Terminal {
                    id: id.to_string(),
                    state: s,
                })
            }
            _ => {}
        }
        let mut t = self.take(id).expect("present");
        if let Some(token) = t.lease {
            self.end_lease(rev, &mut t, token, AttemptOutcome::Cancelled, fx);
        }
        t.state = TaskState::Cancelled;
        t.error = if reason.is_empty() {
            "cancelled".to_string()
        } else {
            reason.to_string()
        };
        let task = self.put(rev, now, t, Some(EventKind::Cancelled), fx);
        Response::Cancelled { task }
    }

    /// Sends a FAILED or CANCELLED task back to PENDING with a new budget of attempts (its
    /// history stays). A task not finished is answered as it is (a repeated retry is a no-op);
    /// a SUCCEEDED task is refused: its work is done.
    pub(super) fn retry(
        &mut self,
        rev: Revision,
        now: u64,
        id: &str,
        reason: &str,
        fx: &mut Effects,
    ) -> Response {
        let Some(task) = self.tasks.get(id) else {
            return Response::Rejected(Rejection::TaskNotFound { id: id.to_string() });
        };
        match task.state {
            TaskState::Pending | TaskState::Running => {
                return Response::Retried {
                    task: (**task).clone(),
                }
            }
            TaskState::Succeeded => {
                return Response::Rejected(Rejection::Terminal {
                    id: id.to_string(),
                    state: TaskState::Succeeded,
                })
            }
            TaskState::Failed | TaskState::Cancelled => {}
        }
        let Some(t) = self.tasks.remove(id) else {
            return Response::Rejected(Rejection::TaskNotFound { id: id.to_string() });
        };
        let mut t = Arc::unwrap_or_clone(t);
        self.unindex(&t);
        t.state = TaskState::Pending;
        t.failures = 0;
        t.exit_code = None;
        t.result.clear();
        t.error = if reason.is_empty() {
            "retried by an operator".to_string()
        } else {
            format!("retried by an operator: {reason}")
        };
        t.not_before_unix_ms = now;
        let task = self.put(rev, now, t, Some(EventKind::RetryScheduled), fx);
        Response::Retried { task }
    }
}

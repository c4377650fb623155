//! The latest verdicts a node applied that another scheduler would have written down as a
//! failure: leases expired by the voters' clocks, and successes reported after their lease
//! ended. The dashboard shows them with their evidence, read from the task's history.
use crate::state::{AttemptOutcome, Effects, Name, Token};
use std::collections::VecDeque;

/// Verdicts kept (the oldest are dropped).
pub const VERDICTS_KEPT: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictKind {
    /// A lease expired: a majority of voters did not hear it within its TTL.
    Expired,
    /// An attempt whose lease had ended reported success, and the task took it.
    LateSuccess,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Verdict {
    pub kind: VerdictKind,
    pub task_id: Name,
    pub queue: Name,
    /// The lease of the attempt it is about.
    pub token: Token,
    /// For a late success: the newer attempt's lease it stopped, if one was running.
    pub superseded: Option<Token>,
    /// The proposer's wall clock when it was committed (the task's update stamp).
    pub at_unix_ms: u64,
}

/// A bounded ring of [`Verdict`]s, newest last. Filled at apply, so every node holds the same
/// ones (from when it started: replayed entries count, entries folded into a snapshot do not).
#[derive(Debug, Default)]
pub struct Verdicts {
    ring: VecDeque<Verdict>,
}

impl Verdicts {
    /// Records the verdicts of one apply step.
    pub fn record(&mut self, fx: &Effects) {
        let at = |id: &Name| {
            fx.events
                .iter()
                .rev()
                .find(|e| e.task.spec.id == *id)
                .map_or(0, |e| e.task.updated_at_unix_ms)
        };
        for e in fx
            .ended
            .iter()
            .filter(|e| e.outcome == AttemptOutcome::Expired)
        {
            self.push(Verdict {
                kind: VerdictKind::Expired,
                task_id: e.task_id.clone(),
                queue: e.queue.clone(),
                token: e.token,
                superseded: None,
                at_unix_ms: at(&e.task_id),
            });
        }
        for l in &fx.late_successes {
            self.push(Verdict {
                kind: VerdictKind::LateSuccess,
                task_id: l.task_id.clone(),
                queue: l.queue.clone(),
                token: l.token,
                superseded: l.superseded,
                at_unix_ms: at(&l.task_id),
            });
        }
    }

    fn push(&mut self, v: Verdict) {
        if self.ring.len() == VERDICTS_KEPT {
            self.ring.pop_front();
        }
        self.ring.push_back(v);
    }

    /// The newest `n`, newest first.
    pub fn latest(&self, n: usize) -> Vec<Verdict> {
        self.ring.iter().rev().take(n).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{EndedLease, LateSuccess};

    #[test]
    fn keeps_expiries_and_late_successes_newest_first_and_bounded() {
        let mut v = Verdicts::default();
        let mut fx = Effects::default();
        fx.ended.push(EndedLease {
            token: 7,
            task_id: "a".into(),
            queue: "q".into(),
            outcome: AttemptOutcome::Expired,
            ttl_ms: 1000,
        });
        fx.ended.push(EndedLease {
            token: 8,
            task_id: "b".into(),
            queue: "q".into(),
            outcome: AttemptOutcome::Succeeded,
            ttl_ms: 1000,
        });
        fx.late_successes.push(LateSuccess {
            task_id: "a".into(),
            queue: "q".into(),
            token: 7,
            superseded: Some(9),
        });
        v.record(&fx);
        let got = v.latest(10);
        assert_eq!(got.len(), 2, "a success in time is no verdict: {got:?}");
        assert_eq!(got[0].kind, VerdictKind::LateSuccess);
        assert_eq!(got[0].superseded, Some(9));
        assert_eq!(got[1].kind, VerdictKind::Expired);
        for _ in 0..VERDICTS_KEPT {
            v.record(&fx);
        }
        assert_eq!(v.latest(usize::MAX).len(), VERDICTS_KEPT);
    }
}

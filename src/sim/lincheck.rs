//! A linearizability checker (Wing & Gong's search with memoization, as in Knossos and
//! Porcupine) for histories of calls on one object, and the model of one task that the
//! simulation checks its clients' histories against.
//!
//! A history is a list of calls, each with the time it was invoked and, if an answer came, the
//! time of the answer and the answer. A call without an answer (its outcome is unknown) may have
//! taken effect at any point after its invocation, or never. The history is linearizable when
//! some order of the calls that respects real time (a call that was answered before another was
//! invoked comes first) explains every answer from the model's initial state.
//!
//! The model may be nondeterministic: `step` returns every state the object may be in after the
//! call — here, a running task's lease may expire between any two calls.
use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;

pub trait Model: Clone + Eq + Hash + Debug {
    type Op: Debug;
    type Ret: Debug;
    /// The states the object may be in after `op` answered `ret` (`None`: the answer is unknown,
    /// any answer goes). Empty when the answer is impossible from this state.
    fn step(&self, op: &Self::Op, ret: Option<&Self::Ret>) -> Vec<Self>;
}

#[derive(Clone, Debug)]
pub struct Call<O, R> {
    pub op: O,
    /// `None`: no answer came (the outcome is unknown).
    pub ret: Option<R>,
    pub invoked_at: u64,
    /// `None` with `ret == None`: never answered.
    pub answered_at: Option<u64>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order explains the answers.
    Violation,
    /// The search gave up (too many calls or states); says nothing either way.
    Inconclusive,
}

/// Searches for a linearization of `history` from `init`, visiting at most `budget` states.
pub fn check<M: Model>(init: &M, history: &[Call<M::Op, M::Ret>], budget: usize) -> Verdict {
    if history.len() > 128 {
        return Verdict::Inconclusive;
    }
    let n = history.len();
    let answered = |i: usize| history[i].ret.is_some();
    let required: u128 = (0..n).filter(|&i| answered(i)).fold(0, |m, i| m | (1 << i));
    let mut seen: HashSet<(u128, M)> = HashSet::new();
    let mut stack: Vec<(u128, M)> = vec![(0, init.clone())];
    while let Some((done, state)) = stack.pop() {
        if done & required == required {
            return Verdict::Linearizable;
        }
        if !seen.insert((done, state.clone())) {
            continue;
        }
        if seen.len() > budget {
            return Verdict::Inconclusive;
        }
        // A call can come next only if no pending call was answered before it was invoked.
        let horizon = (0..n)
            .filter(|&i| done & (1 << i) == 0)
            .filter_map(|i| history[i].answered_at)
            .min()
            .unwrap_or(u64::MAX);
        for (i, call) in history.iter().enumerate() {
            if done & (1 << i) != 0 || call.invoked_at > horizon {
                continue;
            }
            for next in state.step(&call.op, call.ret.as_ref()) {
                stack.push((done | (1 << i), next));
            }
        }
    }
    Verdict::Violation
}

/// What a task is, as its clients can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    Absent,
    Pending,
    /// `token` 0: claimed by a call whose answer was lost (nobody knows the token yet);
    /// `claim` is the claim's idempotency key.
    Running {
        token: u64,
        claim: u64,
    },
    Succeeded,
    Cancelled,
}

/// One task, as the simulation's clients drive it. Attempts are unlimited in the simulation, so
/// a lease that expires always sends the task back to PENDING.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TaskModel {
    pub phase: Phase,
    /// The highest fencing token any claim of this task answered.
    pub max_token: u64,
}

impl Default for TaskModel {
    fn default() -> Self {
        Self {
            phase: Phase::Absent,
            max_token: 0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskOp {
    Submit,
    /// A claim of this task under an idempotency key: a repeat with the same key answers the
    /// live lease it created.
    Claim {
        claim: u64,
    },
    Renew {
        token: u64,
    },
    /// A success report with the token of one of the task's attempts.
    Complete {
        token: u64,
    },
    Cancel,
    /// A linearizable read.
    Get,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskRet {
    Submitted {
        created: bool,
    },
    Claimed {
        token: u64,
    },
    /// The task is not claimable now (running, finished, or in its retry back-off).
    NotClaimable,
    Alive,
    Lost,
    /// A success report was accepted: the task is SUCCEEDED.
    Completed,
    Cancelled,
    /// The call was refused because of the task's state (finished, cancelled, not found).
    Refused,
    Seen(Phase),
}

impl TaskModel {
    fn with(self, phase: Phase) -> Self {
        Self { phase, ..self }
    }

    /// Every state reachable by the internal step (a lease expiring).
    fn settle(self) -> Vec<Self> {
        match self.phase {
            Phase::Running { .. } => vec![self, self.with(Phase::Pending)],
            _ => vec![self],
        }
    }

    /// The answers `op` may give from exactly this state, with the state after each.
    fn answers(self, op: &TaskOp) -> Vec<(TaskRet, Self)> {
        use Phase::*;
        let live = matches!(self.phase, Pending | Running { .. });
        match op {
            TaskOp::Submit => match self.phase {
                Absent => vec![(TaskRet::Submitted { created: true }, self.with(Pending))],
                _ => vec![(TaskRet::Submitted { created: false }, self)],
            },
            // Claims that take the task are handled in `step` (the answer names the token).
            TaskOp::Claim { claim } => match self.phase {
                Pending => vec![(TaskRet::NotClaimable, self)],
                Absent => vec![(TaskRet::Refused, self)],
                Running { token, claim: c } if c == *claim && token != 0 => {
                    vec![(TaskRet::Claimed { token }, self)]
                }
                _ => vec![(TaskRet::NotClaimable, self)],
            },
            TaskOp::Renew { token } => match self.phase {
                Running { token: t, .. } if t == *token => vec![(TaskRet::Alive, self)],
                _ => vec![(TaskRet::Lost, self)],
            },
            TaskOp::Complete { .. } => match self.phase {
                _ if live => vec![(TaskRet::Completed, self.with(Succeeded))],
                // A repeated report answers as the first did; another attempt's is refused.
                Succeeded => vec![(TaskRet::Completed, self), (TaskRet::Refused, self)],
                _ => vec![(TaskRet::Refused, self)],
            },
            TaskOp::Cancel => match self.phase {
                _ if live => vec![(TaskRet::Cancelled, self.with(Cancelled))],
                Cancelled => vec![(TaskRet::Cancelled, self), (TaskRet::Refused, self)],
                _ => vec![(TaskRet::Refused, self)],
            },
            TaskOp::Get => {
                let seen = match self.phase {
                    Running { .. } => Running { token: 0, claim: 0 },
                    p => p,
                };
                vec![(TaskRet::Seen(seen), self)]
            }
        }
    }
}

impl Model for TaskModel {
    type Op = TaskOp;
    type Ret = TaskRet;

    fn step(&self, op: &TaskOp, ret: Option<&TaskRet>) -> Vec<Self> {
        let mut out = Vec::new();
        for s in self.settle() {
            // A claim that takes the task may answer any token above every earlier one; one
            // whose answer was lost takes it under a token nobody knows yet.
            if let TaskOp::Claim { claim } = op {
                let takes = match s.phase {
                    Phase::Pending => true,
                    Phase::Running { token: 0, claim: c } => c == *claim,
                    _ => false,
                };
                if takes {
                    match ret {
                        Some(TaskRet::Claimed { token }) if *token > s.max_token => {
                            out.push(Self {
                                phase: Phase::Running {
                                    token: *token,
                                    claim: *claim,
                                },
                                max_token: *token,
                            })
                        }
                        None if s.phase == Phase::Pending => out.push(s.with(Phase::Running {
                            token: 0,
                            claim: *claim,
                        })),
                        _ => {}
                    }
                }
            }
            for (r, next) in s.answers(op) {
                if ret.map_or(true, |want| *want == r) {
                    out.push(next);
                }
            }
        }
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read/write register, the textbook object.
    #[derive(Clone, Debug, PartialEq, Eq, Hash)]
    struct Register(u64);

    #[derive(Debug)]
    enum RegOp {
        Write(u64),
        Read,
    }

    impl Model for Register {
        type Op = RegOp;
        type Ret = u64;
        fn step(&self, op: &RegOp, ret: Option<&u64>) -> Vec<Self> {
            match op {
                RegOp::Write(v) => vec![Register(*v)],
                RegOp::Read if ret.map_or(true, |r| *r == self.0) => vec![self.clone()],
                RegOp::Read => vec![],
            }
        }
    }

    fn call<O, R>(op: O, ret: Option<R>, from: u64, to: Option<u64>) -> Call<O, R> {
        Call {
            op,
            ret,
            invoked_at: from,
            answered_at: to,
        }
    }

    #[test]
    fn register_histories_known_good_and_known_bad() {
        use RegOp::*;
        let w = |v, a, b| call(Write(v), Some(0), a, Some(b));
        let r = |v, a, b| call(Read, Some(v), a, Some(b));
        type Case = (&'static str, Vec<Call<RegOp, u64>>, Verdict);
        let cases: Vec<Case> = vec![
            (
                "sequential",
                vec![w(1, 0, 1), r(1, 2, 3)],
                Verdict::Linearizable,
            ),
            (
                "stale read after the write answered",
                vec![w(1, 0, 1), r(0, 2, 3)],
                Verdict::Violation,
            ),
            (
                "concurrent read may see either",
                vec![w(1, 0, 10), r(0, 1, 2), r(1, 3, 4)],
                Verdict::Linearizable,
            ),
            (
                "reads go back in time",
                vec![w(1, 0, 10), r(1, 1, 2), r(0, 3, 4)],
                Verdict::Violation,
            ),
            (
                "a value never written",
                vec![w(1, 0, 1), r(2, 2, 3)],
                Verdict::Violation,
            ),
            (
                "an unanswered write may take effect late",
                vec![call(Write(5), None, 0, None), r(0, 1, 2), r(5, 3, 4)],
                Verdict::Linearizable,
            ),
            (
                "an unanswered write cannot act before it was sent",
                vec![r(5, 0, 1), call(Write(5), None, 2, None)],
                Verdict::Violation,
            ),
            (
                "two writers, reads must agree on one order",
                vec![w(1, 0, 5), w(2, 0, 5), r(1, 6, 7), r(2, 8, 9), r(1, 10, 11)],
                Verdict::Violation,
            ),
        ];
        for (name, h, want) in cases {
            assert_eq!(check(&Register(0), &h, 100_000), want, "{name}");
        }
    }

    #[test]
    fn task_histories_known_good_and_known_bad() {
        use TaskOp as O;
        use TaskRet as R;
        let c = |op, ret, a, b| call(op, Some(ret), a, Some(b));
        type Case = (&'static str, Vec<Call<TaskOp, TaskRet>>, Verdict);
        let cases: Vec<Case> = vec![
            (
                "a whole life",
                vec![
                    c(O::Submit, R::Submitted { created: true }, 0, 1),
                    c(O::Claim { claim: 1 }, R::Claimed { token: 7 }, 2, 3),
                    c(O::Renew { token: 7 }, R::Alive, 4, 5),
                    c(O::Complete { token: 7 }, R::Completed, 6, 7),
                    c(O::Get, R::Seen(Phase::Succeeded), 8, 9),
                ],
                Verdict::Linearizable,
            ),
            (
                "an expiry explains a second claim",
                vec![
                    c(O::Submit, R::Submitted { created: true }, 0, 1),
                    c(O::Claim { claim: 1 }, R::Claimed { token: 7 }, 2, 3),
                    c(O::Claim { claim: 2 }, R::Claimed { token: 9 }, 4, 5),
                    c(O::Renew { token: 7 }, R::Lost, 6, 7),
                    c(O::Complete { token: 7 }, R::Completed, 8, 9),
                ],
                Verdict::Linearizable,
            ),
            (
                "a fencing token that goes backwards",
                vec![
                    c(O::Submit, R::Submitted { created: true }, 0, 1),
                    c(O::Claim { claim: 1 }, R::Claimed { token: 9 }, 2, 3),
                    c(O::Claim { claim: 2 }, R::Claimed { token: 7 }, 4, 5),
                ],
                Verdict::Violation,
            ),
            (
                "a success lost after it was acknowledged",
                vec![
                    c(O::Submit, R::Submitted { created: true }, 0, 1),
                    c(O::Claim { claim: 1 }, R::Claimed { token: 7 }, 2, 3),
                    c(O::Complete { token: 7 }, R::Completed, 4, 5),
                    c(O::Get, R::Seen(Phase::Pending), 6, 7),
                ],
                Verdict::Violation,
            ),
            (
                "two live leases at once",
                vec![
                    c(O::Submit, R::Submitted { created: true }, 0, 1),
                    c(O::Claim { claim: 1 }, R::Claimed { token: 7 }, 2, 3),
                    c(O::Claim { claim: 2 }, R::Claimed { token: 9 }, 4, 5),
                    c(O::Renew { token: 7 }, R::Alive, 6, 7),
                ],
                Verdict::Violation,
            ),
            (
                "an acknowledged submit not found by a later read",
                vec![
                    c(O::Submit, R::Submitted { created: true }, 0, 1),
                    c(O::Get, R::Seen(Phase::Absent), 2, 3),
                ],
                Verdict::Violation,
            ),
            (
                "a submit whose answer was lost, then retried",
                vec![
                    call(O::Submit, None, 0, None),
                    c(O::Submit, R::Submitted { created: false }, 1, 2),
                ],
                Verdict::Linearizable,
            ),
            (
                "a claim retried under its key after its answer was lost",
                vec![
                    c(O::Submit, R::Submitted { created: true }, 0, 1),
                    call(O::Claim { claim: 1 }, None, 2, None),
                    c(O::Get, R::Seen(Phase::Running { token: 0, claim: 0 }), 3, 4),
                    c(O::Claim { claim: 1 }, R::Claimed { token: 7 }, 5, 6),
                    c(O::Claim { claim: 1 }, R::Claimed { token: 7 }, 7, 8),
                ],
                Verdict::Linearizable,
            ),
            (
                "a claim under another key while the task runs",
                vec![
                    c(O::Submit, R::Submitted { created: true }, 0, 1),
                    c(O::Claim { claim: 1 }, R::Claimed { token: 7 }, 2, 3),
                    c(O::Renew { token: 7 }, R::Alive, 4, 5),
                    c(O::Claim { claim: 2 }, R::Claimed { token: 7 }, 6, 7),
                ],
                Verdict::Violation,
            ),
            (
                "a renewal after cancellation",
                vec![
                    c(O::Submit, R::Submitted { created: true }, 0, 1),
                    c(O::Claim { claim: 1 }, R::Claimed { token: 7 }, 2, 3),
                    c(O::Cancel, R::Cancelled, 4, 5),
                    c(O::Renew { token: 7 }, R::Alive, 6, 7),
                ],
                Verdict::Violation,
            ),
        ];
        for (name, h, want) in cases {
            assert_eq!(check(&TaskModel::default(), &h, 100_000), want, "{name}");
        }
    }
}

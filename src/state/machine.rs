//! The state machine: applies commands to tasks and leases, deterministically.
//!
//! No I/O, no clocks, no randomness: the same commands in the same order give the same state
//! and the same answers on every node. Time-like inputs travel inside the commands.
use super::types::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Attempt records kept per task; older ones are dropped (their tokens then read as unknown).
pub const HISTORY_LIMIT: usize = 64;

/// Revisions one log entry spans: a batch entry's commands get consecutive revisions from
/// `entry_revision(index)`, so revisions and fencing tokens stay unique and only grow.
pub const REVISIONS_PER_ENTRY: u64 = 1 << 16;
/// The most commands one batch entry may carry.
pub const MAX_BATCH_COMMANDS: usize = (REVISIONS_PER_ENTRY - 1) as usize;

/// The revision of the first (or only) command of log entry `index`.
pub fn entry_revision(index: u64) -> Revision {
    index * REVISIONS_PER_ENTRY
}

/// The highest revision log entry `index` can hold.
pub fn last_revision_of_entry(index: u64) -> Revision {
    entry_revision(index + 1) - 1
}

/// A lease claimed or renewed in an apply step, as of its renewal count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeardLease {
    pub token: Token,
    pub renewals: u64,
    pub ttl_ms: u64,
    /// The task's queue, on the claim that made the lease (renewals leave it out: the node
    /// keeps it from the claim).
    pub queue: Option<Name>,
}

/// A lease that ended in an apply step, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndedLease {
    pub token: Token,
    pub task_id: Name,
    pub queue: Name,
    pub outcome: AttemptOutcome,
    pub ttl_ms: u64,
}

/// A late success accepted in an apply step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LateSuccess {
    pub task_id: Name,
    pub queue: Name,
    /// The lease of the attempt whose report it was (ended before the report).
    pub token: Token,
    /// The newer attempt's lease it superseded, if one was running.
    pub superseded: Option<Token>,
}

/// What the node around the state machine must know about one apply step.
#[derive(Debug, Default)]
pub struct Effects {
    pub events: Vec<Event>,
    /// Leases claimed or renewed: the node notes its own monotonic time for them.
    pub heard: Vec<HeardLease>,
    /// Leases that ended.
    pub gone: Vec<Token>,
    /// The same leases, with their queue and outcome (for the node's metrics).
    pub ended: Vec<EndedLease>,
    /// Each late success accepted (a report of an earlier attempt that finished the task:
    /// what another scheduler would have recorded as a failure).
    pub late_successes: Vec<LateSuccess>,
    /// The voter of each expiry vote counted.
    pub votes: Vec<NodeId>,
}

impl Effects {
    pub fn clear(&mut self) {
        self.events.clear();
        self.heard.clear();
        self.gone.clear();
        self.ended.clear();
        self.late_successes.clear();
        self.votes.clear();
    }
}

/// The voter configurations in force when an entry applies (two during joint consensus).
/// Expiry needs a majority in each.
pub type VoterConfigs = [BTreeSet<NodeId>];

/// What a claim asks for (from `Command::Claim` or the older `Command::ClaimV0`).
pub(super) struct ClaimArgs<'a> {
    pub(super) queue: &'a str,
    pub(super) worker_id: &'a str,
    pub(super) claim_id: &'a str,
    pub(super) ttl_override: Option<u64>,
    pub(super) task_id: Option<&'a str>,
    pub(super) secret: LeaseSecret,
}

/// Claim keys remembered after their lease ended (the most recent ones).
pub const USED_CLAIMS_KEPT: usize = 65_536;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct State {
    /// Persistent maps (`imbl`): a snapshot copies them in O(1) under the state's lock and
    /// serializes the copy while applies go on (a change then copies only the tree nodes on its
    /// path). Tasks behind an `Arc`: a B-tree node keeps its entries inline and is on average a
    /// third empty, so a 300-byte task inline would waste about 100 bytes a task (measured:
    /// docs/PERFORMANCE.md), and a node copied for a change copies pointers, not tasks.
    pub(super) tasks: imbl::OrdMap<Name, Arc<Task>>,
    pub(super) leases: imbl::OrdMap<Token, Lease>,
    /// Every token still in some task's history → that task, and the lease's secret.
    pub(super) tokens: imbl::OrdMap<Token, Owner>,
    /// (finished_at_unix_ms, id) of terminal tasks, oldest first, for retention.
    pub(super) finished: BTreeSet<(u64, Name)>,
    /// (worker_id, claim_id) → token of the live lease that claim created.
    pub(super) claims: BTreeMap<(String, String), Token>,
    /// The same for the last `USED_CLAIMS_KEPT` claims whose lease ended, oldest first in
    /// `used_order`: a claim key makes one lease, ever. A duplicate of a claim that arrives late
    /// (a forwarded proposal re-sent, an attempt the worker gave up on) must not make a second
    /// lease, on another task, that nobody knows of and that expires as a failed attempt.
    pub(super) used_claims: imbl::OrdMap<(String, String), Token>,
    pub(super) used_order: imbl::Vector<(String, String)>,
    /// Queue → (state, id), for listing (the queue name kept once per queue, not per task).
    pub(super) by_queue_state: BTreeMap<Name, BTreeSet<(TaskState, Name)>>,
    /// Queue → tasks per state (in [`TaskState::ALL`]'s order), kept with `by_queue_state`.
    pub(super) counts: BTreeMap<Name, [u64; 5]>,
    /// Claimable order per queue: (not_before_unix_ms, updated_rev, id) of PENDING tasks.
    pub(super) ready: BTreeMap<Name, BTreeSet<(u64, Revision, Name)>>,
    pub(super) last_token: Token,
    pub(super) last_revision: Revision,
}

/// The task a token was a lease of, and that lease's secret (kept as long as the attempt is in
/// the task's history, so that a late report can still prove itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Owner {
    pub(super) task: Name,
    pub(super) secret: LeaseSecret,
}

/// Retry delay before the attempt after `failures` failures.
pub fn backoff_ms(spec: &TaskSpec, failures: u32) -> u64 {
    let shift = failures.saturating_sub(1).min(32);
    spec.initial_backoff_ms
        .saturating_mul(1u64 << shift)
        .min(spec.max_backoff_ms.max(spec.initial_backoff_ms))
}

impl State {
    pub fn new() -> Self {
        Self::default()
    }

    // ------------------------------------------------------------------ apply

    /// Applies log entry `index`: its command, or each command of a batch, at revisions
    /// `entry_revision(index) + position`. `configs` are the voter sets in force.
    pub fn apply_entry(
        &mut self,
        index: u64,
        req: &Request,
        configs: &VoterConfigs,
        fx: &mut Effects,
    ) -> Response {
        let base = entry_revision(index);
        match &req.cmd {
            // Revisions of the commands must stay inside the entry's range, or they would
            // collide with the next entry's.
            Command::Batch(cmds) if cmds.len() > MAX_BATCH_COMMANDS => {
                self.note_revision(base);
                Response::Rejected(Rejection::Malformed {
                    why: format!(
                        "a batch of {} commands, the most one entry holds is {MAX_BATCH_COMMANDS}",
                        cmds.len()
                    ),
                })
            }
            Command::Batch(cmds) => Response::Batch(
                cmds.iter()
                    .enumerate()
                    .map(|(j, c)| self.apply_cmd(base + j as u64, req.now_unix_ms, c, configs, fx))
                    .collect(),
            ),
            c => self.apply_cmd(base, req.now_unix_ms, c, configs, fx),
        }
    }

    /// Records that log entry `index` carried no command (blank, membership).
    pub fn note_entry(&mut self, index: u64) {
        self.note_revision(entry_revision(index));
    }

    /// Applies one command at revision `rev` (tests drive single commands this way; the node
    /// applies whole entries with [`State::apply_entry`]).
    #[cfg(test)]
    pub fn apply(
        &mut self,
        rev: Revision,
        req: &Request,
        configs: &VoterConfigs,
        fx: &mut Effects,
    ) -> Response {
        self.apply_cmd(rev, req.now_unix_ms, &req.cmd, configs, fx)
    }

    fn apply_cmd(
        &mut self,
        rev: Revision,
        now: u64,
        cmd: &Command,
        configs: &VoterConfigs,
        fx: &mut Effects,
    ) -> Response {
        debug_assert!(
            rev > self.last_revision,
            "revisions only grow: {rev} after {}",
            self.last_revision
        );
        self.last_revision = rev;
        let resp = match cmd {
            Command::Submit(spec) => self.submit(rev, now, spec, "", fx),
            Command::SubmitTraced { trace_parent, .. }
                if trace_parent.len() > MAX_TRACE_PARENT_LEN =>
            {
                Response::Rejected(Rejection::Malformed {
                    why: format!(
                        "a trace context of {} bytes, the most a task keeps is {MAX_TRACE_PARENT_LEN}",
                        trace_parent.len()
                    ),
                })
            }
            Command::SubmitTraced { spec, trace_parent } => {
                self.submit(rev, now, spec, trace_parent, fx)
            }
            Command::ClaimV0 {
                queue,
                worker_id,
                lease_ttl_ms,
                task_id,
                claim_id,
            } => self.claim(
                rev,
                now,
                ClaimArgs {
                    queue,
                    worker_id,
                    claim_id,
                    ttl_override: *lease_ttl_ms,
                    task_id: task_id.as_deref(),
                    secret: 0,
                },
                fx,
            ),
            Command::Claim {
                queue,
                worker_id,
                lease_ttl_ms,
                task_id,
                claim_id,
                secret,
            } => self.claim(
                rev,
                now,
                ClaimArgs {
                    queue,
                    worker_id,
                    claim_id,
                    ttl_override: *lease_ttl_ms,
                    task_id: task_id.as_deref(),
                    secret: *secret,
                },
                fx,
            ),
            Command::RenewBatch { tokens } => {
                Response::Renewed(tokens.iter().map(|t| (*t, self.renew(*t, fx))).collect())
            }
            Command::Progress { token, progress } => self.progress(rev, now, *token, progress, fx),
            Command::Complete {
                task_id,
                token,
                report,
            } => self.complete(rev, now, task_id, *token, report, fx),
            Command::Release { token, reason } => self.release(rev, now, *token, reason, fx),
            Command::Cancel { task_id, reason } => self.cancel(rev, now, task_id, reason, fx),
            Command::Retry { task_id, reason } => self.retry(rev, now, task_id, reason, fx),
            Command::ExpiryVote { voter, votes } => {
                let votes: Vec<_> = votes.iter().map(|&(t, r)| (t, r, None)).collect();
                self.vote(rev, now, *voter, &votes, configs, fx)
            }
            Command::ExpiryVoteSilence { voter, votes } => {
                let votes: Vec<_> = votes.iter().map(|&(t, r, s)| (t, r, Some(s))).collect();
                self.vote(rev, now, *voter, &votes, configs, fx)
            }
            Command::Purge {
                finished_before_unix_ms,
                max,
            } => self.purge(*finished_before_unix_ms, *max),
            // No API call nests batches: refused, identically on every node.
            Command::Batch(_) => Response::Rejected(Rejection::Malformed {
                why: "a batch inside a batch".into(),
            }),
        };
        #[cfg(debug_assertions)]
        self.check_invariants();
        resp
    }

    /// Records that a non-command entry (blank, membership) was applied.
    pub fn note_revision(&mut self, rev: Revision) {
        if rev > self.last_revision {
            self.last_revision = rev;
        }
    }

    /// Takes a task out of the indexes for a change; `put` puts it back.
    pub(super) fn take(&mut self, id: &str) -> Option<Task> {
        let t = Arc::unwrap_or_clone(self.tasks.remove(id)?);
        debug_assert!(
            !t.state.is_terminal(),
            "terminal task {id} taken for a change"
        );
        self.unindex(&t);
        Some(t)
    }

    pub(super) fn put(
        &mut self,
        rev: Revision,
        now: u64,
        mut t: Task,
        kind: Option<EventKind>,
        fx: &mut Effects,
    ) -> Task {
        t.updated_rev = rev;
        t.updated_at_unix_ms = now;
        while t.history.len() > HISTORY_LIMIT {
            let old = t.history.remove(0);
            self.tokens.remove(&old.lease_token);
        }
        self.index(&t);
        if let Some(kind) = kind {
            fx.events.push(Event {
                revision: rev,
                kind,
                task: t.clone(),
            });
        }
        self.tasks.insert(t.spec.id.clone(), Arc::new(t.clone()));
        t
    }

    fn submit(
        &mut self,
        rev: Revision,
        now: u64,
        spec: &TaskSpec,
        trace_parent: &str,
        fx: &mut Effects,
    ) -> Response {
        if let Some(existing) = self.tasks.get(&spec.id) {
            return if existing.spec == *spec {
                Response::Submitted {
                    task: (**existing).clone(),
                    created: false,
                }
            } else {
                Response::Rejected(Rejection::AlreadyExists {
                    id: spec.id.to_string(),
                })
            };
        }
        debug_assert!(spec.max_attempts >= 1);
        let mut spec = spec.clone();
        if let Some((queue, _)) = self.by_queue_state.get_key_value(&*spec.queue) {
            // One allocation for a queue's name, whatever the number of its tasks.
            spec.queue = queue.clone();
        }
        let t = Task {
            spec,
            state: TaskState::Pending,
            attempt: 0,
            failures: 0,
            progress: Vec::new(),
            result: Vec::new(),
            exit_code: None,
            error: String::new(),
            history: Vec::new(),
            created_rev: rev,
            updated_rev: rev,
            created_at_unix_ms: now,
            updated_at_unix_ms: now,
            not_before_unix_ms: 0,
            lease: None,
            trace_parent: trace_parent.to_string(),
        };
        let task = self.put(rev, now, t, Some(EventKind::Submitted), fx);
        Response::Submitted {
            task,
            created: true,
        }
    }

    /// The oldest terminal task's finish time, for the retention sweeper.
    pub fn oldest_finished_unix_ms(&self) -> Option<u64> {
        self.finished.first().map(|(at, _)| *at)
    }

    fn purge(&mut self, before: u64, max: u32) -> Response {
        let mut count = 0;
        while count < max {
            match self.finished.first() {
                Some((at, _)) if *at < before => {}
                _ => break,
            }
            let (_, id) = self.finished.pop_first().expect("checked");
            let t = self.tasks.remove(&id).expect("finished task exists");
            self.unlist(&t.spec.queue, t.state, &id);
            for r in &t.history {
                self.tokens.remove(&r.lease_token);
            }
            count += 1;
        }
        Response::Purged { count }
    }

    /// After a failed or expired attempt: retry later, or fail for good.
    pub(super) fn after_failure(
        &mut self,
        now: u64,
        t: &mut Task,
        exit_code: Option<i32>,
        error: String,
    ) -> EventKind {
        t.failures += 1;
        if t.failures >= t.spec.max_attempts {
            t.state = TaskState::Failed;
            t.exit_code = exit_code;
            t.error = error;
            EventKind::Failed
        } else {
            t.state = TaskState::Pending;
            t.error = error;
            t.not_before_unix_ms = now.saturating_add(backoff_ms(&t.spec, t.failures));
            EventKind::RetryScheduled
        }
    }

    fn complete(
        &mut self,
        rev: Revision,
        now: u64,
        task_id: &str,
        token: Token,
        report: &WorkerReport,
        fx: &mut Effects,
    ) -> Response {
        let Some(task) = self.tasks.get(task_id) else {
            return Response::Rejected(Rejection::TaskNotFound {
                id: task_id.to_string(),
            });
        };
        let Some(record) = task.record(token) else {
            return Response::Rejected(Rejection::TokenNotOfTask {
                token,
                task_id: task_id.to_string(),
            });
        };
        if let Some(prev) = &record.reported {
            // Idempotent: the same report gets the same answer; a different one is refused.
            return if prev == report {
                Response::Completed {
                    task: (**task).clone(),
                    late: record.late,
                }
            } else {
                Response::Rejected(Rejection::LeaseLost {
                    token,
                    reason: self.lost_reason(token),
                })
            };
        }
        if task.state.is_terminal() {
            return Response::Rejected(Rejection::Terminal {
                id: task_id.to_string(),
                state: task.state,
            });
        }
        let live = task.lease == Some(token);
        let mut t = self.take(task_id).expect("present");
        let kind;
        if live {
            if report.success {
                self.end_lease(rev, &mut t, token, AttemptOutcome::Succeeded, fx);
                t.state = TaskState::Succeeded;
                t.result = report.result.clone();
                t.exit_code = Some(report.exit_code);
                t.error.clear();
                kind = EventKind::Succeeded;
            } else {
                self.end_lease(rev, &mut t, token, AttemptOutcome::Failed, fx);
                kind =
                    self.after_failure(now, &mut t, Some(report.exit_code), report.error.clone());
            }
        } else if report.success {
            // The work did finish: accept it, and stop any newer attempt.
            let superseded = t.lease;
            if let Some(current) = t.lease {
                self.end_lease(rev, &mut t, current, AttemptOutcome::Cancelled, fx);
                if let Some(r) = t.record_mut(current) {
                    r.error =
                        format!("superseded: the attempt holding lease {token} reported success");
                }
            }
            t.state = TaskState::Succeeded;
            t.result = report.result.clone();
            t.exit_code = Some(report.exit_code);
            t.error.clear();
            if let Some(r) = t.record_mut(token) {
                r.outcome = AttemptOutcome::Succeeded;
                r.late = true;
            }
            fx.late_successes.push(LateSuccess {
                task_id: t.spec.id.clone(),
                queue: t.spec.queue.clone(),
                token,
                superseded,
            });
            kind = EventKind::Succeeded;
        } else {
            kind = EventKind::LateReport;
            if let Some(r) = t.record_mut(token) {
                r.late = true;
            }
        }
        if let Some(r) = t.record_mut(token) {
            r.reported = Some(report.clone());
            if !report.success || r.exit_code.is_none() {
                r.exit_code = Some(report.exit_code);
            }
            if !report.success {
                r.error = report.error.clone();
            }
        }
        let task = self.put(rev, now, t, Some(kind), fx);
        Response::Completed { task, late: !live }
    }

    fn release(
        &mut self,
        rev: Revision,
        now: u64,
        token: Token,
        reason: &str,
        fx: &mut Effects,
    ) -> Response {
        let Some(lease) = self.leases.get(&token) else {
            return Response::Rejected(Rejection::LeaseLost {
                token,
                reason: self.lost_reason(token),
            });
        };
        let id = lease.task_id.clone();
        let mut t = self.take(&id).expect("a live lease's task exists");
        self.end_lease(rev, &mut t, token, AttemptOutcome::Released, fx);
        if let Some(r) = t.record_mut(token) {
            r.error = reason.to_string();
        }
        t.state = TaskState::Pending;
        t.not_before_unix_ms = now;
        let task = self.put(rev, now, t, Some(EventKind::RetryScheduled), fx);
        Response::Released { task }
    }
}

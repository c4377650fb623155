//! What must hold of the state after every apply, and of every snapshot that is loaded. Debug
//! builds check it after each command; loading a snapshot checks it always.
use super::index::ready_key;
use super::machine::{State, USED_CLAIMS_KEPT};
use super::types::*;
use std::collections::BTreeSet;

/// `assert!` that returns the failure instead of panicking (invariants are also checked on
/// snapshots loaded from disk or a peer, which must be refused, not crash the node).
macro_rules! ensure {
    ($c:expr) => {
        if !$c {
            return Err(format!("invariant broken: {}", stringify!($c)));
        }
    };
    ($c:expr, $($m:tt)+) => {
        if !$c {
            return Err(format!($($m)+));
        }
    };
}

macro_rules! ensure_eq {
    ($a:expr, $b:expr) => {
        if $a != $b {
            return Err(format!("invariant broken: {} != {}", stringify!($a), stringify!($b)));
        }
    };
    ($a:expr, $b:expr, $($m:tt)+) => {
        if $a != $b {
            return Err(format!($($m)+));
        }
    };
}

impl State {
    /// Panics if an invariant does not hold. Cheap enough for debug builds and tests only.
    pub fn check_invariants(&self) {
        if let Err(e) = self.validate() {
            panic!("{e}");
        }
    }

    /// Whether every invariant holds; the first that does not, if any. Loaded snapshots are
    /// checked with it, so a damaged one is refused instead of half-loaded.
    pub fn validate(&self) -> Result<(), String> {
        self.validate_indexes()?;
        self.validate_tasks()
    }

    /// [`State::validate`] with its two halves on two threads (a snapshot load, where the node
    /// waits for nothing else).
    pub fn validate_in_parallel(&self) -> Result<(), String> {
        std::thread::scope(|scope| {
            // A thread that cannot be started (the process is out of them) only costs time.
            let Ok(tasks) =
                std::thread::Builder::new().spawn_scoped(scope, || self.validate_tasks())
            else {
                return self.validate();
            };
            let indexes = self.validate_indexes();
            let tasks = tasks
                .join()
                .unwrap_or_else(|_| Err("the task check stopped early".into()));
            indexes.and(tasks)
        })
    }

    /// Every task against the indexes and its own history.
    fn validate_tasks(&self) -> Result<(), String> {
        let mut pending = 0;
        for (id, t) in &self.tasks {
            ensure_eq!(id, &t.spec.id);
            ensure!(self
                .by_queue_state
                .get(&t.spec.queue)
                .is_some_and(|e| e.contains(&(t.state, id.clone()))));
            match t.state {
                TaskState::Running => {
                    let tok = t
                        .lease
                        .ok_or_else(|| format!("running task {id} without lease"))?;
                    ensure!(self.leases.contains_key(&tok));
                }
                s => ensure!(t.lease.is_none(), "{s:?} task {id} holds a lease"),
            }
            if t.state == TaskState::Pending {
                pending += 1;
                ensure!(self
                    .ready
                    .get(&t.spec.queue)
                    .is_some_and(|r| r.contains(&ready_key(t))));
            }
            let running = t
                .history
                .iter()
                .filter(|r| r.outcome == AttemptOutcome::Running)
                .count();
            ensure!(
                running <= 1 && (running == 1) == (t.state == TaskState::Running),
                "task {id}: {running} running attempts in {:?}",
                t.state
            );
            for w in t.history.windows(2) {
                ensure!(
                    w[0].lease_token < w[1].lease_token,
                    "task {id}: tokens in history only grow"
                );
            }
        }
        ensure_eq!(self.ready.values().map(|r| r.len()).sum::<usize>(), pending);
        Ok(())
    }

    /// The claims, leases, retention and listing indexes against each other and the tasks.
    fn validate_indexes(&self) -> Result<(), String> {
        ensure_eq!(self.used_claims.len(), self.used_order.len());
        ensure!(self.used_order.len() <= USED_CLAIMS_KEPT);
        for k in &self.used_order {
            ensure!(self.used_claims.contains_key(k), "used claim {k:?} indexed");
            ensure!(
                !self.claims.contains_key(k),
                "claim {k:?} both live and used"
            );
        }
        for ((worker, claim), token) in &self.claims {
            let l = self
                .leases
                .get(token)
                .ok_or_else(|| format!("claim {claim:?} points at ended lease {token}"))?;
            ensure!(&l.worker_id == worker && &l.claim_id == claim);
        }
        ensure_eq!(
            self.finished.len(),
            self.tasks
                .values()
                .filter(|t| t.state.is_terminal())
                .count(),
            "every terminal task is in the retention index"
        );
        for (at, id) in &self.finished {
            let t = self
                .tasks
                .get(id)
                .ok_or_else(|| format!("finished {id} has no task"))?;
            ensure_eq!(t.updated_at_unix_ms, *at);
        }
        ensure_eq!(
            self.claims.len(),
            self.leases
                .values()
                .filter(|l| !l.claim_id.is_empty())
                .count()
        );
        let mut live_tasks = BTreeSet::new();
        for (token, l) in &self.leases {
            ensure_eq!(*token, l.token);
            ensure!(
                *token <= self.last_token,
                "lease {token} above last token {}",
                self.last_token
            );
            let t = self
                .tasks
                .get(&l.task_id)
                .ok_or_else(|| format!("lease {token} without task"))?;
            ensure_eq!(
                t.state,
                TaskState::Running,
                "lease {token} on a {:?} task",
                t.state
            );
            ensure_eq!(
                t.lease,
                Some(*token),
                "task {} does not point at its lease {token}",
                t.spec.id
            );
            ensure!(
                live_tasks.insert(l.task_id.clone()),
                "two live leases for task {}",
                l.task_id
            );
        }
        ensure_eq!(
            self.by_queue_state.values().map(|e| e.len()).sum::<usize>(),
            self.tasks.len()
        );
        ensure!(self.by_queue_state.values().all(|e| !e.is_empty()));
        ensure_eq!(self.counts.len(), self.by_queue_state.len());
        for (q, entries) in &self.by_queue_state {
            let mut c = [0u64; 5];
            for (state, _) in entries {
                c[state.index()] += 1;
            }
            ensure_eq!(self.counts.get(q), Some(&c));
        }
        for l in self.leases.values() {
            let evidence = self
                .tasks
                .get(&l.task_id)
                .and_then(|t| t.record(l.token))
                .map(|r| &r.expiry_silence_ms);
            ensure!(
                evidence.is_some_and(|e| e.iter().all(|(n, _)| l.votes.contains(n))),
                "lease {}: evidence of a vote not counted",
                l.token
            );
        }
        Ok(())
    }
}

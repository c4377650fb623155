//! The state's indexes: tasks by queue and state (listing, pages), claimable tasks by queue
//! in claim order, and finished tasks by age (retention).
use super::machine::State;
use super::types::*;

pub(super) fn ready_key(t: &Task) -> (u64, Revision, Name) {
    (t.not_before_unix_ms, t.updated_rev, t.spec.id.clone())
}

impl State {
    // ------------------------------------------------------------------ reads

    pub fn task(&self, id: &str) -> Option<&Task> {
        self.tasks.get(id).map(|t| &**t)
    }
    pub fn lease(&self, token: Token) -> Option<&Lease> {
        self.leases.get(&token)
    }
    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values()
    }
    /// Every live lease with its task's queue.
    pub fn leases_with_queues(&self) -> impl Iterator<Item = (&Lease, Name)> {
        self.leases.values().map(|l| {
            let queue = self
                .tasks
                .get(&l.task_id)
                .map(|t| t.spec.queue.clone())
                .unwrap_or_else(|| "".into());
            (l, queue)
        })
    }
    pub fn tasks(&self) -> impl Iterator<Item = &Task> {
        self.tasks.values().map(|t| &**t)
    }
    /// Tasks in id order, from the first id at or after `start` (an id-prefix search starts
    /// at the prefix).
    pub fn tasks_from<'a>(&'a self, start: &str) -> impl Iterator<Item = &'a Task> + 'a {
        use std::ops::Bound::{Included, Unbounded};
        self.tasks
            .range::<_, str>((Included(start), Unbounded))
            .map(|(_, t)| &**t)
    }
    /// Tasks per state (in [`TaskState::ALL`]'s order), per queue.
    pub fn counts_by_queue(&self) -> impl Iterator<Item = (&Name, &[u64; 5])> {
        self.counts.iter()
    }
    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }
    pub fn lease_count(&self) -> usize {
        self.leases.len()
    }
    /// The highest fencing token handed out.
    pub fn last_token(&self) -> Token {
        self.last_token
    }
    pub fn last_revision(&self) -> Revision {
        self.last_revision
    }

    /// Whether a claim on `queue` at `now_unix_ms` would find a task (lets a leader skip writing
    /// an entry that would only answer "no task").
    pub fn has_claimable(&self, queue: &str, now_unix_ms: u64) -> bool {
        self.first_claimable(queue, now_unix_ms).is_some()
    }

    /// The pending task of `queue` that a claim stamped `now_unix_ms` takes: the one whose
    /// not-before passed first; failing that, the one with the latest not-before if it lies
    /// further ahead than that task's longest back-off. Only a proposer whose wall clock runs
    /// ahead of this claim's stamps such a not-before (a node an hour ahead deciding an expiry),
    /// and a retry must not wait for one node's clock.
    pub(super) fn first_claimable(&self, queue: &str, now_unix_ms: u64) -> Option<&Name> {
        let ready = self.ready.get(queue)?;
        let (nb, _, id) = ready.first()?;
        if *nb <= now_unix_ms {
            return Some(id);
        }
        let (nb, _, id) = ready.last()?;
        let longest_backoff_ms = self
            .tasks
            .get(id)
            .map_or(0, |t| t.spec.max_backoff_ms.max(t.spec.initial_backoff_ms));
        (nb.saturating_sub(now_unix_ms) > longest_backoff_ms).then_some(id)
    }

    /// Earliest not-before instant of a pending task in `queue`.
    pub fn next_ready_at(&self, queue: &str) -> Option<u64> {
        self.ready
            .get(queue)
            .and_then(|r| r.first())
            .map(|(nb, _, _)| *nb)
    }

    /// Tasks ordered by (queue, state, id), starting after `after`, filtered, at most `limit`.
    /// Returns the page and the key to continue from, if more may follow.
    pub fn list(
        &self,
        queue: Option<&str>,
        state: Option<TaskState>,
        after: Option<&(String, TaskState, String)>,
        limit: usize,
    ) -> (Vec<&Task>, Option<(String, TaskState, String)>) {
        use std::ops::Bound::{self, *};
        // Where to start: a queue, and where within it.
        let (start, within): (Bound<&str>, Bound<(TaskState, Name)>) = match (after, queue, state) {
            (Some(k), _, _) => (Included(k.0.as_str()), Excluded((k.1, k.2.as_str().into()))),
            (None, Some(q), Some(s)) => (Included(q), Included((s, "".into()))),
            (None, Some(q), None) => (Included(q), Unbounded),
            (None, None, _) => (Unbounded, Unbounded),
        };
        let mut out = Vec::new();
        let mut last = None;
        let mut within = Some(within);
        for (q, entries) in self.by_queue_state.range::<str, _>((start, Unbounded)) {
            if queue.is_some_and(|want| **q != *want) {
                break;
            }
            // The bound within a queue applies to the queue the listing starts at only.
            // Entries are ordered by state first: a state filter starts at its first entry and
            // ends the queue at the next state, whatever the queue holds in other states.
            let lower = match (start, within.take()) {
                (Included(sq), Some(w)) if sq == &**q => w,
                _ => match state {
                    Some(s) => Included((s, "".into())),
                    None => Unbounded,
                },
            };
            for (st, id) in entries.range((lower, Unbounded)) {
                if let Some(s) = state {
                    if *st > s {
                        break;
                    }
                    if *st != s {
                        continue;
                    }
                }
                if out.len() == limit {
                    return (out, last);
                }
                out.push(&*self.tasks[id]);
                last = Some((q.to_string(), *st, id.to_string()));
            }
        }
        (out, None)
    }

    pub(super) fn index(&mut self, t: &Task) {
        match self.counts.get_mut(&t.spec.queue) {
            Some(c) => c[t.state.index()] += 1,
            None => {
                let mut c = [0; 5];
                c[t.state.index()] = 1;
                self.counts.insert(t.spec.queue.clone(), c);
            }
        }
        match self.by_queue_state.get_mut(&t.spec.queue) {
            Some(entries) => entries.insert((t.state, t.spec.id.clone())),
            None => self
                .by_queue_state
                .entry(t.spec.queue.clone())
                .or_default()
                .insert((t.state, t.spec.id.clone())),
        };
        if t.state.is_terminal() {
            self.finished
                .insert((t.updated_at_unix_ms, t.spec.id.clone()));
        }
        if t.state == TaskState::Pending {
            self.ready
                .entry(t.spec.queue.clone())
                .or_default()
                .insert(ready_key(t));
        }
    }

    /// Removes a task from the listing index (and its queue, once empty).
    pub(super) fn unlist(&mut self, queue: &str, state: TaskState, id: &Name) {
        if let Some(c) = self.counts.get_mut(queue) {
            c[state.index()] = c[state.index()].saturating_sub(1);
            if c.iter().all(|n| *n == 0) {
                self.counts.remove(queue);
            }
        }
        if let Some(entries) = self.by_queue_state.get_mut(queue) {
            entries.remove(&(state, id.clone()));
            if entries.is_empty() {
                self.by_queue_state.remove(queue);
            }
        }
    }

    pub(super) fn unindex(&mut self, t: &Task) {
        self.unlist(&t.spec.queue, t.state, &t.spec.id);
        if t.state.is_terminal() {
            self.finished
                .remove(&(t.updated_at_unix_ms, t.spec.id.clone()));
        }
        if t.state == TaskState::Pending {
            if let Some(r) = self.ready.get_mut(&t.spec.queue) {
                r.remove(&ready_key(t));
                if r.is_empty() {
                    self.ready.remove(&t.spec.queue);
                }
            }
        }
    }
}

//! The state machine: applies commands to tasks and leases, deterministically.
//!
//! No I/O, no clocks, no randomness: the same commands in the same order give the same state
//! and the same answers on every node. Time-like inputs travel inside the commands.
use super::types::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

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

/// What the node around the state machine must know about one apply step.
#[derive(Debug, Default)]
pub struct Effects {
    pub events: Vec<Event>,
    /// Leases claimed or renewed: the node notes its own monotonic time for them.
    pub heard: Vec<(Token, u64, u64)>,
    /// Leases that ended.
    pub gone: Vec<Token>,
}

impl Effects {
    pub fn clear(&mut self) {
        self.events.clear();
        self.heard.clear();
        self.gone.clear();
    }
}

/// The voter configurations in force when an entry applies (two during joint consensus).
/// Expiry needs a majority in each.
pub type VoterConfigs = [BTreeSet<NodeId>];

/// What a claim asks for (from `Command::Claim` or the older `Command::ClaimV0`).
struct ClaimArgs<'a> {
    queue: &'a str,
    worker_id: &'a str,
    claim_id: &'a str,
    ttl_override: Option<u64>,
    task_id: Option<&'a str>,
    secret: LeaseSecret,
}

/// Claim keys remembered after their lease ended (the most recent ones).
pub const USED_CLAIMS_KEPT: usize = 65_536;

/// The persisted part of the state; indexes are rebuilt on load. Written after
/// [`SNAPSHOT_MAGIC`] and the CRC-32 of these bytes.
#[derive(Deserialize)]
struct Persisted {
    tasks: Vec<Task>,
    leases: Vec<Lease>,
    last_token: Token,
    last_revision: Revision,
    /// (worker_id, claim_id, token), oldest first.
    used_claims: Vec<(String, String, Token)>,
    /// The secrets of the tokens in task histories (none for leases claimed before secrets).
    secrets: Vec<(Token, LeaseSecret)>,
}

/// Snapshots written before secrets and checksums: no magic, no CRC.
#[derive(Deserialize)]
struct PersistedV1 {
    tasks: Vec<Task>,
    leases: Vec<Lease>,
    last_token: Token,
    last_revision: Revision,
    used_claims: Vec<(String, String, Token)>,
}

/// What a snapshot of the state starts with, followed by the CRC-32 (little endian) of the rest.
pub const SNAPSHOT_MAGIC: &[u8; 8] = b"LKSTATE2";

/// Why snapshot bytes were refused.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot is damaged: its CRC-32 is {found:#010x}, its header says {expected:#010x}")]
    Checksum { expected: u32, found: u32 },
    #[error("snapshot does not decode: {0}")]
    Decode(#[from] postcard::Error),
    #[error("snapshot is inconsistent: {0}")]
    Inconsistent(String),
}

/// Snapshots written before claim keys were remembered past their lease.
#[derive(Deserialize)]
struct PersistedV0 {
    tasks: Vec<Task>,
    leases: Vec<Lease>,
    last_token: Token,
    last_revision: Revision,
}

/// The same encoding as [`Persisted`], borrowing the state instead of copying it (a snapshot
/// of a million tasks must not hold a second copy of them in memory).
#[derive(Serialize)]
struct PersistedRef<'a> {
    tasks: Vec<&'a Task>,
    leases: Vec<&'a Lease>,
    last_token: Token,
    last_revision: Revision,
    used_claims: Vec<(&'a str, &'a str, Token)>,
    secrets: Vec<(Token, LeaseSecret)>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct State {
    /// Boxed: a B-tree node keeps its entries inline and is on average a third empty, so a
    /// 300-byte task inline would waste about 100 bytes a task (measured: docs/PERFORMANCE.md).
    tasks: BTreeMap<Name, Box<Task>>,
    leases: BTreeMap<Token, Lease>,
    /// Every token still in some task's history → that task, and the lease's secret.
    tokens: BTreeMap<Token, Owner>,
    /// (finished_at_unix_ms, id) of terminal tasks, oldest first, for retention.
    finished: BTreeSet<(u64, Name)>,
    /// (worker_id, claim_id) → token of the live lease that claim created.
    claims: BTreeMap<(String, String), Token>,
    /// The same for the last `USED_CLAIMS_KEPT` claims whose lease ended, oldest first in
    /// `used_order`: a claim key makes one lease, ever. A duplicate of a claim that arrives late
    /// (a forwarded proposal re-sent, an attempt the worker gave up on) must not make a second
    /// lease, on another task, that nobody knows of and that expires as a failed attempt.
    used_claims: BTreeMap<(String, String), Token>,
    used_order: std::collections::VecDeque<(String, String)>,
    /// Queue → (state, id), for listing (the queue name kept once per queue, not per task).
    by_queue_state: BTreeMap<Name, BTreeSet<(TaskState, Name)>>,
    /// Claimable order per queue: (not_before_unix_ms, updated_rev, id) of PENDING tasks.
    ready: BTreeMap<Name, BTreeSet<(u64, Revision, Name)>>,
    last_token: Token,
    last_revision: Revision,
}

/// The task a token was a lease of, and that lease's secret (kept as long as the attempt is in
/// the task's history, so that a late report can still prove itself).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Owner {
    task: Name,
    secret: LeaseSecret,
}

/// The body of a snapshot after its magic, once its CRC-32 matches.
fn snapshot_body(rest: &[u8]) -> Result<&[u8], SnapshotError> {
    let (crc, body) = rest.split_at_checked(4).ok_or(SnapshotError::Checksum {
        expected: 0,
        found: 0,
    })?;
    let expected = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let found = crc32fast::hash(body);
    if expected != found {
        return Err(SnapshotError::Checksum { expected, found });
    }
    Ok(body)
}

fn ready_key(t: &Task) -> (u64, Revision, Name) {
    (t.not_before_unix_ms, t.updated_rev, t.spec.id.clone())
}

fn quorum(votes: &BTreeSet<NodeId>, configs: &VoterConfigs) -> bool {
    !configs.is_empty()
        && configs
            .iter()
            .all(|c| !c.is_empty() && c.iter().filter(|n| votes.contains(n)).count() * 2 > c.len())
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

    // ------------------------------------------------------------------ reads

    pub fn task(&self, id: &str) -> Option<&Task> {
        self.tasks.get(id).map(|t| &**t)
    }
    pub fn lease(&self, token: Token) -> Option<&Lease> {
        self.leases.get(&token)
    }
    /// The live lease a claim with this idempotency key created, if any.
    pub fn lease_of_claim(&self, worker_id: &str, claim_id: &str) -> Option<&Lease> {
        self.claims
            .get(&(worker_id.to_string(), claim_id.to_string()))
            .and_then(|t| self.leases.get(t))
    }
    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values()
    }
    pub fn tasks(&self) -> impl Iterator<Item = &Task> {
        self.tasks.values().map(|t| &**t)
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
    fn first_claimable(&self, queue: &str, now_unix_ms: u64) -> Option<&Name> {
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
            let lower = match (start, within.take()) {
                (Included(sq), Some(w)) if sq == &**q => w,
                _ => Unbounded,
            };
            for (st, id) in entries.range((lower, Unbounded)) {
                if let Some(s) = state {
                    if *st != s {
                        if queue.is_some() && *st > s {
                            break;
                        }
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

    // ------------------------------------------------------------------ snapshots

    /// The state as snapshot bytes: [`SNAPSHOT_MAGIC`], a CRC-32 of the body, the body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let p = PersistedRef {
            tasks: self.tasks.values().map(|t| &**t).collect(),
            leases: self.leases.values().collect(),
            last_token: self.last_token,
            last_revision: self.last_revision,
            used_claims: self
                .used_order
                .iter()
                .map(|k| (k.0.as_str(), k.1.as_str(), self.used_claims[k]))
                .collect(),
            secrets: self
                .tokens
                .iter()
                .filter(|(_, o)| o.secret != 0)
                .map(|(t, o)| (*t, o.secret))
                .collect(),
        };
        let mut out = Vec::with_capacity(64 + 400 * self.tasks.len());
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.extend_from_slice(&[0; 4]);
        let body = postcard::to_extend(&p, out).expect("state serializes");
        let mut out = body;
        let crc = crc32fast::hash(&out[SNAPSHOT_MAGIC.len() + 4..]);
        out[SNAPSHOT_MAGIC.len()..SNAPSHOT_MAGIC.len() + 4].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Checks snapshot bytes' CRC without decoding them (older snapshots, which carry none,
    /// pass).
    pub fn check_snapshot_bytes(bytes: &[u8]) -> Result<(), SnapshotError> {
        match bytes.strip_prefix(SNAPSHOT_MAGIC.as_slice()) {
            None => Ok(()),
            Some(rest) => snapshot_body(rest).map(|_| ()),
        }
    }

    /// Loads snapshot bytes, refusing damaged ones (CRC) and ones that break an invariant.
    /// Snapshots of older versions (no magic, no CRC) still load.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let p: Persisted = match bytes.strip_prefix(SNAPSHOT_MAGIC.as_slice()) {
            Some(rest) => postcard::from_bytes(snapshot_body(rest)?)?,
            // postcard ignores trailing bytes, so the newer layout is tried first.
            None => match postcard::from_bytes::<PersistedV1>(bytes) {
                Ok(v1) => Persisted {
                    tasks: v1.tasks,
                    leases: v1.leases,
                    last_token: v1.last_token,
                    last_revision: v1.last_revision,
                    used_claims: v1.used_claims,
                    secrets: Vec::new(),
                },
                Err(e) => match postcard::from_bytes::<PersistedV0>(bytes) {
                    Ok(v0) => Persisted {
                        tasks: v0.tasks,
                        leases: v0.leases,
                        last_token: v0.last_token,
                        last_revision: v0.last_revision,
                        used_claims: Vec::new(),
                        secrets: Vec::new(),
                    },
                    Err(_) => return Err(e.into()),
                },
            },
        };
        let secrets: BTreeMap<Token, LeaseSecret> = p.secrets.into_iter().collect();
        let mut s = State {
            last_token: p.last_token,
            last_revision: p.last_revision,
            ..Default::default()
        };
        for (worker, claim, token) in p.used_claims {
            s.remember_used_claim((worker, claim), token);
        }
        for l in p.leases {
            if !l.claim_id.is_empty() {
                s.claims
                    .insert((l.worker_id.clone(), l.claim_id.clone()), l.token);
            }
            s.leases.insert(l.token, l);
        }
        for mut t in p.tasks {
            // Names shared as `submit` shares them: one allocation per queue.
            if let Some((queue, _)) = s.by_queue_state.get_key_value(&*t.spec.queue) {
                t.spec.queue = queue.clone();
            }
            for r in &t.history {
                let secret = secrets.get(&r.lease_token).copied().unwrap_or(0);
                s.tokens.insert(
                    r.lease_token,
                    Owner {
                        task: t.spec.id.clone(),
                        secret,
                    },
                );
            }
            s.index(&t);
            s.tasks.insert(t.spec.id.clone(), Box::new(t));
        }
        for l in s.leases.values_mut() {
            if let Some((id, _)) = s.tasks.get_key_value(&*l.task_id) {
                l.task_id = id.clone();
            }
        }
        s.validate().map_err(SnapshotError::Inconsistent)?;
        Ok(s)
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

    /// Applies one command at revision `rev`.
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
            Command::Submit(spec) => self.submit(rev, now, spec, fx),
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
            Command::ExpiryVote { voter, votes } => self.vote(rev, now, *voter, votes, configs, fx),
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

    fn index(&mut self, t: &Task) {
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
    fn unlist(&mut self, queue: &str, state: TaskState, id: &Name) {
        if let Some(entries) = self.by_queue_state.get_mut(queue) {
            entries.remove(&(state, id.clone()));
            if entries.is_empty() {
                self.by_queue_state.remove(queue);
            }
        }
    }

    fn unindex(&mut self, t: &Task) {
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

    /// Takes a task out of the indexes for a change; `put` puts it back.
    fn take(&mut self, id: &str) -> Option<Task> {
        let t = *self.tasks.remove(id)?;
        debug_assert!(
            !t.state.is_terminal(),
            "terminal task {id} taken for a change"
        );
        self.unindex(&t);
        Some(t)
    }

    fn put(
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
        self.tasks.insert(t.spec.id.clone(), Box::new(t.clone()));
        t
    }

    fn submit(&mut self, rev: Revision, now: u64, spec: &TaskSpec, fx: &mut Effects) -> Response {
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
        };
        let task = self.put(rev, now, t, Some(EventKind::Submitted), fx);
        Response::Submitted {
            task,
            created: true,
        }
    }

    fn claim(&mut self, rev: Revision, now: u64, args: ClaimArgs, fx: &mut Effects) -> Response {
        let ClaimArgs {
            queue,
            worker_id,
            claim_id,
            ttl_override,
            task_id,
            secret,
        } = args;
        if !claim_id.is_empty() {
            let key = (worker_id.to_string(), claim_id.to_string());
            if let Some(lease) = self.claims.get(&key).and_then(|t| self.leases.get(t)) {
                // A retry of a claim that was applied (its answer was lost): same lease, and
                // the secret it was made with (the retry's own is not used).
                let task = (*self.tasks[&lease.task_id]).clone();
                return Response::Claimed {
                    task,
                    lease: lease.clone(),
                    secret: self.secret_of(lease.token).unwrap_or(0),
                };
            }
            if let Some(&token) = self.used_claims.get(&key) {
                return Response::Rejected(Rejection::ClaimKeyUsed {
                    claim_id: claim_id.to_string(),
                    token,
                });
            }
        }
        let id = match task_id {
            Some(id) => match self.tasks.get(id) {
                None => return Response::Rejected(Rejection::TaskNotFound { id: id.to_string() }),
                Some(t) if *t.spec.queue != *queue => {
                    return Response::Rejected(Rejection::TaskNotFound { id: id.to_string() })
                }
                Some(t) if t.state.is_terminal() => {
                    return Response::Rejected(Rejection::Terminal {
                        id: id.to_string(),
                        state: t.state,
                    })
                }
                Some(t) if t.state != TaskState::Pending => {
                    return Response::Rejected(Rejection::NotClaimable {
                        id: id.to_string(),
                        state: t.state,
                    })
                }
                Some(t) => t.spec.id.clone(),
            },
            None => match self.first_claimable(queue, now) {
                Some(id) => id.clone(),
                None => return Response::NoTask,
            },
        };
        let mut t = self.take(&id).expect("indexed task exists");
        debug_assert!(rev > self.last_token, "tokens only grow");
        self.last_token = rev;
        let token = rev;
        t.attempt += 1;
        t.state = TaskState::Running;
        t.lease = Some(token);
        let lease = Lease {
            token,
            task_id: id.clone(),
            attempt: t.attempt,
            worker_id: worker_id.to_string(),
            claim_id: claim_id.to_string(),
            ttl_ms: ttl_override.unwrap_or(t.spec.lease_ttl_ms),
            renewals: 0,
            votes: BTreeSet::new(),
        };
        t.history.push(AttemptRecord {
            attempt: t.attempt,
            worker_id: worker_id.to_string(),
            lease_token: token,
            outcome: Outcome::Running,
            exit_code: None,
            error: String::new(),
            started_rev: rev,
            ended_rev: 0,
            late: false,
            reported: None,
            expiry_voters: Vec::new(),
        });
        self.tokens.insert(
            token,
            Owner {
                task: id.clone(),
                secret,
            },
        );
        if !claim_id.is_empty() {
            self.claims
                .insert((worker_id.to_string(), claim_id.to_string()), token);
        }
        self.leases.insert(token, lease.clone());
        fx.heard.push((token, 0, lease.ttl_ms));
        let task = self.put(rev, now, t, Some(EventKind::Claimed), fx);
        Response::Claimed {
            task,
            lease,
            secret,
        }
    }

    /// The secret of the lease `token` made, while its attempt is in its task's history (0:
    /// claimed before secrets existed).
    pub fn secret_of(&self, token: Token) -> Option<LeaseSecret> {
        self.tokens.get(&token).map(|o| o.secret)
    }

    fn remember_used_claim(&mut self, key: (String, String), token: Token) {
        if self.used_claims.insert(key.clone(), token).is_none() {
            self.used_order.push_back(key);
        }
        while self.used_order.len() > USED_CLAIMS_KEPT {
            let old = self.used_order.pop_front().expect("not empty");
            self.used_claims.remove(&old);
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

    /// Why `token` holds no live lease.
    pub fn lost_reason(&self, token: Token) -> LostReason {
        let Some(task) = self
            .tokens
            .get(&token)
            .and_then(|o| self.tasks.get(&o.task))
        else {
            return LostReason::Unknown;
        };
        match task.record(token).map(|r| r.outcome) {
            Some(Outcome::Expired) => LostReason::Expired {
                voters: task
                    .record(token)
                    .map(|r| r.expiry_voters.clone())
                    .unwrap_or_default(),
            },
            Some(Outcome::Released) => LostReason::Released,
            Some(Outcome::Failed) => LostReason::Failed,
            Some(Outcome::Cancelled) if task.state == TaskState::Cancelled => LostReason::Cancelled,
            Some(_) => LostReason::Finished { state: task.state },
            None => LostReason::Unknown,
        }
    }

    fn touch(&mut self, token: Token, fx: &mut Effects) -> Result<&Lease, LostReason> {
        if !self.leases.contains_key(&token) {
            return Err(self.lost_reason(token));
        }
        let l = self.leases.get_mut(&token).expect("checked");
        l.renewals += 1;
        l.votes.clear();
        fx.heard.push((token, l.renewals, l.ttl_ms));
        Ok(l)
    }

    fn renew(&mut self, token: Token, fx: &mut Effects) -> RenewOutcome {
        match self.touch(token, fx) {
            Ok(l) => RenewOutcome::Alive {
                renewals: l.renewals,
            },
            Err(reason) => RenewOutcome::Lost(reason),
        }
    }

    fn progress(
        &mut self,
        rev: Revision,
        now: u64,
        token: Token,
        progress: &[u8],
        fx: &mut Effects,
    ) -> Response {
        let lease = match self.touch(token, fx) {
            Ok(l) => l.clone(),
            Err(reason) => return Response::Rejected(Rejection::LeaseLost { token, reason }),
        };
        let mut t = self
            .take(&lease.task_id)
            .expect("a live lease's task exists");
        t.progress = progress.to_vec();
        self.put(rev, now, t, Some(EventKind::Progress), fx);
        Response::Progressed { lease }
    }

    /// Ends the live lease `token`, recording `outcome` on its attempt.
    fn end_lease(
        &mut self,
        rev: Revision,
        t: &mut Task,
        token: Token,
        outcome: Outcome,
        fx: &mut Effects,
    ) -> Lease {
        let lease = self.leases.remove(&token).expect("live lease");
        if !lease.claim_id.is_empty() {
            let key = (lease.worker_id.clone(), lease.claim_id.clone());
            self.claims.remove(&key);
            self.remember_used_claim(key, token);
        }
        debug_assert_eq!(t.lease, Some(token));
        t.lease = None;
        if let Some(r) = t.record_mut(token) {
            r.outcome = outcome;
            r.ended_rev = rev;
        }
        fx.gone.push(token);
        lease
    }

    /// After a failed or expired attempt: retry later, or fail for good.
    fn after_failure(
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
        report: &Report,
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
                self.end_lease(rev, &mut t, token, Outcome::Succeeded, fx);
                t.state = TaskState::Succeeded;
                t.result = report.result.clone();
                t.exit_code = Some(report.exit_code);
                t.error.clear();
                kind = EventKind::Succeeded;
            } else {
                self.end_lease(rev, &mut t, token, Outcome::Failed, fx);
                kind =
                    self.after_failure(now, &mut t, Some(report.exit_code), report.error.clone());
            }
        } else if report.success {
            // The work did finish: accept it, and stop any newer attempt.
            if let Some(current) = t.lease {
                self.end_lease(rev, &mut t, current, Outcome::Cancelled, fx);
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
                r.outcome = Outcome::Succeeded;
                r.late = true;
            }
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
        self.end_lease(rev, &mut t, token, Outcome::Released, fx);
        if let Some(r) = t.record_mut(token) {
            r.error = reason.to_string();
        }
        t.state = TaskState::Pending;
        t.not_before_unix_ms = now;
        let task = self.put(rev, now, t, Some(EventKind::RetryScheduled), fx);
        Response::Released { task }
    }

    fn cancel(
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
            self.end_lease(rev, &mut t, token, Outcome::Cancelled, fx);
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

    fn vote(
        &mut self,
        rev: Revision,
        now: u64,
        voter: NodeId,
        votes: &[(Token, u64)],
        configs: &VoterConfigs,
        fx: &mut Effects,
    ) -> Response {
        let mut expired = Vec::new();
        if !configs.iter().any(|c| c.contains(&voter)) {
            // Learners and removed nodes have no say.
            return Response::Rejected(Rejection::Malformed {
                why: format!("node {voter} is not a voter and cannot vote on expiry"),
            });
        }
        for &(token, renewals_seen) in votes {
            let Some(lease) = self.leases.get_mut(&token) else {
                continue;
            };
            if lease.renewals != renewals_seen {
                // A renewal was committed after the voter looked: it won the race.
                continue;
            }
            lease.votes.insert(voter);
            if !quorum(&lease.votes, configs) {
                continue;
            }
            let voters: Vec<NodeId> = lease.votes.iter().copied().collect();
            let id = lease.task_id.clone();
            let mut t = self.take(&id).expect("a live lease's task exists");
            let lease = self.end_lease(rev, &mut t, token, Outcome::Expired, fx);
            if let Some(r) = t.record_mut(token) {
                r.expiry_voters = voters.clone();
                r.error = format!(
                    "lease expired after {} renewals (ttl {} ms), by votes of nodes {voters:?}",
                    lease.renewals, lease.ttl_ms
                );
            }
            let error = format!(
                "attempt {} lost its lease: no renewal within {} ms",
                lease.attempt, lease.ttl_ms
            );
            let kind = self.after_failure(now, &mut t, None, error);
            self.put(rev, now, t, Some(kind), fx);
            expired.push(token);
        }
        Response::Voted { expired }
    }

    // ------------------------------------------------------------------ invariants

    /// Panics if an invariant does not hold. Cheap enough for debug builds and tests only.
    pub fn check_invariants(&self) {
        if let Err(e) = self.validate() {
            panic!("{e}");
        }
    }

    /// Whether every invariant holds; the first that does not, if any. Loaded snapshots are
    /// checked with it, so a damaged one is refused instead of half-loaded.
    pub fn validate(&self) -> Result<(), String> {
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
                .filter(|r| r.outcome == Outcome::Running)
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
        ensure_eq!(
            self.by_queue_state.values().map(|e| e.len()).sum::<usize>(),
            self.tasks.len()
        );
        ensure!(self.by_queue_state.values().all(|e| !e.is_empty()));
        ensure_eq!(self.ready.values().map(|r| r.len()).sum::<usize>(), pending);
        Ok(())
    }
}

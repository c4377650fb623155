//! Value types of the replicated state: tasks, leases, attempts, events, and the commands that
//! change them. Everything here is serialized into the Raft log or into snapshots.
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::Arc;

/// Raft node id.
pub type NodeId = u64;
/// Where a change happened: log entry `i`'s `j`-th command (a batch entry holds many) has
/// revision `i · 65 536 + j` (`entry_revision`), so revisions are unique and only grow.
pub type Revision = u64;
/// A lease's fencing token: the revision of the claim that created it, so tokens are unique
/// and only grow (see [`Revision`]).
pub type Token = u64;
/// What only the claimer of a lease holds: drawn at random by the node that proposes the
/// claim, handed to the claimer in the claim's answer, and never shown by reads or watches.
/// Renewals, progress, release and reports must present it. 0 means "none": leases claimed
/// before secrets existed (replayed from an older log) accept any.
pub type LeaseSecret = u128;
/// A task id or queue name. Immutable and shared: the state keeps a task's id in its map key,
/// its spec, its lease and two indexes, and a queue's name in every task of the queue — one
/// allocation each instead of one per copy (serialized as a plain string).
pub type Name = Arc<str>;

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TaskState {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl TaskState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled
        )
    }
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "PENDING",
            TaskState::Running => "RUNNING",
            TaskState::Succeeded => "SUCCEEDED",
            TaskState::Failed => "FAILED",
            TaskState::Cancelled => "CANCELLED",
        }
    }
    /// Its position in [`TaskState::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
    pub const ALL: [TaskState; 5] = [
        TaskState::Pending,
        TaskState::Running,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::Cancelled,
    ];
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    Running,
    Succeeded,
    Failed,
    Expired,
    Released,
    /// Cancelled by a scheduler, or superseded because another attempt finished the task.
    Cancelled,
}

/// One attempt of a task, kept in the task's bounded history.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub worker_id: String,
    pub lease_token: Token,
    pub outcome: AttemptOutcome,
    pub exit_code: Option<i32>,
    pub error: String,
    pub started_rev: Revision,
    pub ended_rev: Revision,
    /// The worker reported after the attempt had lost its lease.
    pub late: bool,
    /// The worker's own final report has been recorded (makes reports idempotent).
    pub reported: Option<WorkerReport>,
    /// For `Expired`: the voters whose clocks decided it.
    pub expiry_voters: Vec<NodeId>,
    /// The evidence of the votes counted against this attempt's lease: each voter, and how
    /// long (ms, on its own monotonic clock) it had gone without hearing the lease when it
    /// voted. While the lease lives these are the votes cast since its last renewal; once it
    /// expired, the votes that decided it. Votes logged before silences were sent are absent.
    pub expiry_silence_ms: Vec<(NodeId, u64)>,
    /// Renewals committed while its lease lived (set when the lease ends; the live lease
    /// counts its own).
    pub renewals: u64,
}

/// A worker's final report of an attempt, as recorded.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct WorkerReport {
    pub success: bool,
    pub exit_code: i32,
    #[serde(with = "serde_bytes")]
    pub result: Vec<u8>,
    pub error: String,
}

// Byte fields are encoded as bytes (serde_bytes): the same postcard encoding as a sequence of
// u8 (a length, then the bytes), so logs and snapshots of either form read alike, but copied in
// one go instead of byte by byte — a 1 MiB payload must replicate within a heartbeat interval.

/// What a scheduler asked for; identical specs make a submit idempotent.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TaskSpec {
    pub id: Name,
    pub queue: Name,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    pub max_attempts: u32,
    pub lease_ttl_ms: u64,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Task {
    pub spec: TaskSpec,
    pub state: TaskState,
    /// Attempts started (the running one included).
    pub attempt: u32,
    /// Attempts that failed or expired: retries are exhausted when this reaches `max_attempts`.
    pub failures: u32,
    #[serde(with = "serde_bytes")]
    pub progress: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub result: Vec<u8>,
    pub exit_code: Option<i32>,
    pub error: String,
    pub history: Vec<AttemptRecord>,
    pub created_rev: Revision,
    pub updated_rev: Revision,
    pub created_at_unix_ms: u64,
    pub updated_at_unix_ms: u64,
    pub not_before_unix_ms: u64,
    /// The live lease while RUNNING.
    pub lease: Option<Token>,
    /// The W3C `traceparent` of the submit that created the task ("" = none).
    pub trace_parent: String,
}

impl Task {
    pub fn id(&self) -> &str {
        &self.spec.id
    }
    pub fn queue(&self) -> &str {
        &self.spec.queue
    }
    pub fn record_mut(&mut self, token: Token) -> Option<&mut AttemptRecord> {
        self.history
            .iter_mut()
            .rev()
            .find(|r| r.lease_token == token)
    }
    pub fn record(&self, token: Token) -> Option<&AttemptRecord> {
        self.history.iter().rev().find(|r| r.lease_token == token)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub token: Token,
    pub task_id: Name,
    pub attempt: u32,
    pub worker_id: String,
    /// The worker's idempotency key for the claim that created this lease ("" = none).
    pub claim_id: String,
    pub ttl_ms: u64,
    /// Committed renewals (progress reports count too).
    pub renewals: u64,
    /// Voters that judged this lease expired at the current `renewals`.
    pub votes: BTreeSet<NodeId>,
}

/// A command, stamped by the node that proposed it. `now_unix_ms` is the proposer's wall clock:
/// it only feeds human-facing timestamps and retry back-off, never liveness.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub now_unix_ms: u64,
    pub cmd: Command,
}

/// The longest `traceparent` a task keeps (version 00 is 55 characters).
pub const MAX_TRACE_PARENT_LEN: usize = 64;

/// Commands decode at most this deep: a batch (depth 1) of single commands (depth 2). Deeper
/// input is refused by the decoder before it can recurse (one message of nested batches
/// would otherwise overflow the stack).
pub const MAX_COMMAND_DEPTH: u32 = 2;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(remote = "Self")]
pub enum Command {
    Submit(TaskSpec),
    /// A claim as logged before lease secrets existed: decoded from older logs only, never
    /// proposed. Its lease has no secret.
    ClaimV0 {
        queue: String,
        worker_id: String,
        /// Overrides the task's own TTL when set.
        lease_ttl_ms: Option<u64>,
        /// Claim this task only (used when one externally scheduled job is wrapped).
        task_id: Option<String>,
        /// Idempotency key: a retry with the same (worker_id, claim_id) gets the same live lease.
        claim_id: String,
    },
    RenewBatch {
        tokens: Vec<Token>,
    },
    Progress {
        token: Token,
        #[serde(with = "serde_bytes")]
        progress: Vec<u8>,
    },
    Complete {
        task_id: String,
        token: Token,
        report: WorkerReport,
    },
    Release {
        token: Token,
        reason: String,
    },
    Cancel {
        task_id: String,
        reason: String,
    },
    /// Several commands committed as one log entry (group commit); each gets its own revision
    /// and answer. Never nested.
    Batch(Vec<Command>),
    /// Forgets up to `max` terminal tasks that finished before `finished_before_unix_ms`
    /// (retention). Proposed by the leader from its wall clock.
    Purge {
        finished_before_unix_ms: u64,
        max: u32,
    },
    /// `voter`'s own monotonic clock says these leases outlived their TTL, as of the renewal
    /// count it had seen.
    ExpiryVote {
        voter: NodeId,
        votes: Vec<(Token, u64)>,
    },
    /// Claims a task of `queue` for `worker_id`. `secret` becomes the lease's secret.
    Claim {
        queue: String,
        worker_id: String,
        /// Overrides the task's own TTL when set.
        lease_ttl_ms: Option<u64>,
        /// Claim this task only (used when one externally scheduled job is wrapped).
        task_id: Option<String>,
        /// Idempotency key: a retry with the same (worker_id, claim_id) gets the same live lease.
        claim_id: String,
        secret: LeaseSecret,
    },
    /// `voter`'s own monotonic clock says these leases outlived their TTL: `(token, renewals
    /// seen, silence_ms)`, where `silence_ms` is how long the voter had not heard the lease
    /// when it voted (the evidence kept with the expiry).
    ExpiryVoteSilence {
        voter: NodeId,
        votes: Vec<(Token, u64, u64)>,
    },
    /// A submit that carried a trace context (its W3C `traceparent`, kept with the task).
    SubmitTraced {
        spec: TaskSpec,
        trace_parent: String,
    },
    /// An operator's retry of a FAILED or CANCELLED task: it goes back to PENDING with its
    /// attempts budget renewed, and keeps its history.
    Retry {
        task_id: String,
        reason: String,
    },
}

// Variants are appended, never reordered or changed: logs written by older versions decode.

thread_local! {
    static DECODE_DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Counts one level of nesting while a value decodes; refuses past `max`.
struct DepthGuard;

impl DepthGuard {
    fn enter<E: serde::de::Error>(max: u32, what: &str) -> Result<Self, E> {
        let d = DECODE_DEPTH.with(|d| {
            let v = d.get() + 1;
            d.set(v);
            v
        });
        let guard = DepthGuard;
        if d > max {
            return Err(E::custom(format!("{what} nested deeper than {max}")));
        }
        Ok(guard)
    }
}

impl Drop for DepthGuard {
    fn drop(&mut self) {
        DECODE_DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

impl Serialize for Command {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Command::serialize(self, s)
    }
}

impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let _depth = DepthGuard::enter(MAX_COMMAND_DEPTH, "commands")?;
        Command::deserialize(d)
    }
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::Submit(_) | Command::SubmitTraced { .. } => "submit",
            Command::Claim { .. } | Command::ClaimV0 { .. } => "claim",
            Command::RenewBatch { .. } => "renew_batch",
            Command::Progress { .. } => "progress",
            Command::Complete { .. } => "complete",
            Command::Release { .. } => "release",
            Command::Cancel { .. } => "cancel",
            Command::Retry { .. } => "retry",
            Command::Purge { .. } => "purge",
            Command::Batch(_) => "batch",
            Command::ExpiryVote { .. } | Command::ExpiryVoteSilence { .. } => "expiry_vote",
        }
    }
}

/// Why a lease token no longer holds its task.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum LostReason {
    Expired {
        voters: Vec<NodeId>,
    },
    Cancelled,
    /// The task reached a terminal state, or another attempt finished it.
    Finished {
        state: TaskState,
    },
    Released,
    /// The attempt reported failure and ended.
    Failed,
    /// This token never held a lease (or its task is no longer retained).
    Unknown,
}

impl std::fmt::Display for LostReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LostReason::Expired { voters } => write!(
                f,
                "the lease expired: nodes {voters:?} did not hear a renewal within its TTL"
            ),
            LostReason::Cancelled => write!(f, "the task was cancelled"),
            LostReason::Finished { state } => {
                write!(
                    f,
                    "the task is already {} (finished by another attempt or report)",
                    state.as_str()
                )
            }
            LostReason::Released => write!(f, "the lease was released by its worker"),
            LostReason::Failed => write!(f, "this attempt already reported failure"),
            LostReason::Unknown => write!(f, "no lease with this token exists"),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum RenewOutcome {
    Alive { renewals: u64 },
    Lost(LostReason),
}

/// Domain refusals: deterministic answers of the state machine, mapped to gRPC codes at the API
/// edge.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("task {id:?} not found")]
    TaskNotFound { id: String },
    #[error("task {id:?} already exists with a different spec (queue, payload, attempts, TTL or retry differ): choose another id or submit the same spec")]
    AlreadyExists { id: String },
    #[error("lease {token} is no longer valid: {reason}")]
    LeaseLost { token: Token, reason: LostReason },
    #[error("lease {token} never held task {task_id:?}")]
    TokenNotOfTask { token: Token, task_id: String },
    #[error("task {id:?} is already {} and cannot change", state.as_str())]
    Terminal { id: String, state: TaskState },
    #[error("task {id:?} is {} and not claimable now", state.as_str())]
    NotClaimable { id: String, state: TaskState },
    #[error("claim_id {claim_id:?} already made lease {token}, which has ended: claim again under a new claim_id")]
    ClaimKeyUsed { claim_id: String, token: Token },
    /// A command no API call produces (a nested or oversized batch, a vote of a non-voter).
    #[error("refused: {why}")]
    Malformed { why: String },
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Submitted,
    Claimed,
    Progress,
    Succeeded,
    Failed,
    RetryScheduled,
    Cancelled,
    LateReport,
}

/// One change, as watchers see it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub revision: Revision,
    pub kind: EventKind,
    pub task: Task,
}

/// The state machine's answer to one command.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(remote = "Self")]
pub enum Response {
    /// Blank and membership entries.
    #[default]
    Ok,
    Submitted {
        task: Task,
        created: bool,
    },
    Claimed {
        task: Task,
        lease: Lease,
        /// The lease's secret, for the claimer's answer only.
        secret: LeaseSecret,
    },
    NoTask,
    Renewed(Vec<(Token, RenewOutcome)>),
    Progressed {
        lease: Lease,
    },
    Completed {
        task: Task,
        late: bool,
    },
    Released {
        task: Task,
    },
    Cancelled {
        task: Task,
    },
    Voted {
        expired: Vec<Token>,
    },
    Purged {
        count: u32,
    },
    /// One answer per command of a `Batch`, in order.
    Batch(Vec<Response>),
    Rejected(Rejection),
    /// A retry's answer: the task, PENDING again (or as it was, when it was not finished).
    Retried {
        task: Task,
    },
}

impl Serialize for Response {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Response::serialize(self, s)
    }
}

impl<'de> Deserialize<'de> for Response {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let _depth = DepthGuard::enter(MAX_COMMAND_DEPTH, "answers")?;
        Response::deserialize(d)
    }
}

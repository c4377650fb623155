//! Snapshot bytes of the state: the current layout behind a magic and a CRC-32, and the
//! layouts of older versions, which still load. Loading rebuilds the indexes and checks every
//! invariant, so a damaged or inconsistent snapshot is refused, never half-loaded.
use super::machine::{Owner, State};
use super::types::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The persisted part of the state; indexes are rebuilt on load. Written after
/// [`SNAPSHOT_MAGIC`] and the CRC-32 of these bytes. `T` is the task layout of the version.
#[derive(Deserialize)]
struct Persisted<T> {
    tasks: Vec<T>,
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
struct PersistedV1<T> {
    tasks: Vec<T>,
    leases: Vec<Lease>,
    last_token: Token,
    last_revision: Revision,
    used_claims: Vec<(String, String, Token)>,
}

/// What a snapshot of the state starts with, followed by the CRC-32 (little endian) of the rest.
pub const SNAPSHOT_MAGIC: &[u8; 8] = b"LKSTATE4";
/// The layout before attempts kept their renewals ([`TaskV3`]), with the same CRC.
const SNAPSHOT_MAGIC_V3: &[u8; 8] = b"LKSTATE3";
/// The layout before the votes' silences were kept ([`TaskV0`]), with the same CRC.
const SNAPSHOT_MAGIC_V2: &[u8; 8] = b"LKSTATE2";

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
struct PersistedV0<T> {
    tasks: Vec<T>,
    leases: Vec<Lease>,
    last_token: Token,
    last_revision: Revision,
}

/// A task as snapshots before `LKSTATE3` hold it: its attempts carry no votes' silences.
#[derive(Serialize, Deserialize)]
pub(super) struct TaskV0 {
    spec: TaskSpec,
    state: TaskState,
    attempt: u32,
    failures: u32,
    #[serde(with = "serde_bytes")]
    progress: Vec<u8>,
    #[serde(with = "serde_bytes")]
    result: Vec<u8>,
    exit_code: Option<i32>,
    error: String,
    history: Vec<AttemptRecordV0>,
    created_rev: Revision,
    updated_rev: Revision,
    created_at_unix_ms: u64,
    updated_at_unix_ms: u64,
    not_before_unix_ms: u64,
    lease: Option<Token>,
}

#[derive(Serialize, Deserialize)]
struct AttemptRecordV0 {
    attempt: u32,
    worker_id: String,
    lease_token: Token,
    outcome: AttemptOutcome,
    exit_code: Option<i32>,
    error: String,
    started_rev: Revision,
    ended_rev: Revision,
    late: bool,
    reported: Option<WorkerReport>,
    expiry_voters: Vec<NodeId>,
}

/// A task as `LKSTATE3` snapshots hold it: its attempts carry no renewal count.
#[derive(Serialize, Deserialize)]
pub(super) struct TaskV3 {
    spec: TaskSpec,
    state: TaskState,
    attempt: u32,
    failures: u32,
    #[serde(with = "serde_bytes")]
    progress: Vec<u8>,
    #[serde(with = "serde_bytes")]
    result: Vec<u8>,
    exit_code: Option<i32>,
    error: String,
    history: Vec<AttemptRecordV3>,
    created_rev: Revision,
    updated_rev: Revision,
    created_at_unix_ms: u64,
    updated_at_unix_ms: u64,
    not_before_unix_ms: u64,
    lease: Option<Token>,
    trace_parent: String,
}

#[derive(Serialize, Deserialize)]
struct AttemptRecordV3 {
    attempt: u32,
    worker_id: String,
    lease_token: Token,
    outcome: AttemptOutcome,
    exit_code: Option<i32>,
    error: String,
    started_rev: Revision,
    ended_rev: Revision,
    late: bool,
    reported: Option<WorkerReport>,
    expiry_voters: Vec<NodeId>,
    expiry_silence_ms: Vec<(NodeId, u64)>,
}

/// `$To { f: $from.f, ... }` for the fields both layouts share, plus `$rest`.
macro_rules! moved {
    ($from:ident => $To:ident { $($f:ident),* } $($rest:tt)*) => {
        $To { $($f: $from.$f,)* $($rest)* }
    };
}

impl From<TaskV3> for Task {
    fn from(t: TaskV3) -> Task {
        let history = t.history.into_iter().map(|r| {
            moved!(r => AttemptRecord { attempt, worker_id, lease_token, outcome, exit_code, error,
                started_rev, ended_rev, late, reported, expiry_voters, expiry_silence_ms } renewals: 0)
        });
        let history = history.collect();
        moved!(t => Task { spec, state, attempt, failures, progress, result, exit_code, error,
            created_rev, updated_rev, created_at_unix_ms, updated_at_unix_ms, not_before_unix_ms,
            lease, trace_parent } history)
    }
}

/// The `LKSTATE3` layout of a task, for tests of loading older snapshots.
#[cfg(test)]
pub(super) fn task_v3(t: &Task) -> TaskV3 {
    let t = t.clone();
    let history = t.history.into_iter().map(|r| {
        moved!(r => AttemptRecordV3 { attempt, worker_id, lease_token, outcome, exit_code, error,
            started_rev, ended_rev, late, reported, expiry_voters, expiry_silence_ms })
    });
    let history = history.collect();
    moved!(t => TaskV3 { spec, state, attempt, failures, progress, result, exit_code, error,
        created_rev, updated_rev, created_at_unix_ms, updated_at_unix_ms, not_before_unix_ms,
        lease, trace_parent } history)
}

impl From<TaskV0> for Task {
    fn from(t: TaskV0) -> Task {
        let history = t.history.into_iter().map(|r| {
            moved!(r => AttemptRecord { attempt, worker_id, lease_token, outcome, exit_code, error,
                started_rev, ended_rev, late, reported, expiry_voters } expiry_silence_ms: Vec::new(),
                renewals: 0)
        });
        let history = history.collect();
        moved!(t => Task { spec, state, attempt, failures, progress, result, exit_code, error,
            created_rev, updated_rev, created_at_unix_ms, updated_at_unix_ms, not_before_unix_ms,
            lease } history, trace_parent: String::new())
    }
}

/// The older layout of a task, for tests of loading older snapshots.
#[cfg(test)]
pub(super) fn task_v0(t: &Task) -> TaskV0 {
    let t = t.clone();
    let history = t.history.into_iter().map(|r| {
        moved!(r => AttemptRecordV0 { attempt, worker_id, lease_token, outcome, exit_code, error,
            started_rev, ended_rev, late, reported, expiry_voters })
    });
    let history = history.collect();
    moved!(t => TaskV0 { spec, state, attempt, failures, progress, result, exit_code, error,
        created_rev, updated_rev, created_at_unix_ms, updated_at_unix_ms, not_before_unix_ms,
        lease } history)
}

impl<T: Into<Task>> Persisted<T> {
    fn upgrade(self) -> Persisted<Arc<Task>> {
        Persisted {
            tasks: self.tasks.into_iter().map(|t| Arc::new(t.into())).collect(),
            leases: self.leases,
            last_token: self.last_token,
            last_revision: self.last_revision,
            used_claims: self.used_claims,
            secrets: self.secrets,
        }
    }
}

/// The same encoding as [`Persisted`] after its task list, borrowing the state instead of
/// copying it: postcard writes a struct as its fields one after the other, so the bytes of a
/// snapshot are the task list (a varint count, then each task) followed by these.
#[derive(Serialize)]
struct TailRef<'a> {
    leases: Vec<&'a Lease>,
    last_token: Token,
    last_revision: Revision,
    used_claims: Vec<(&'a str, &'a str, Token)>,
    secrets: Vec<(Token, LeaseSecret)>,
}

/// The state's bytes after the task list, decoded (see [`TailRef`]).
#[derive(Deserialize)]
struct Tail {
    leases: Vec<Lease>,
    last_token: Token,
    last_revision: Revision,
    used_claims: Vec<(String, String, Token)>,
    secrets: Vec<(Token, LeaseSecret)>,
}

/// A current snapshot decoded: the state persisted, each task's offset, the tail's offset.
type Decoded = (Persisted<Arc<Task>>, Vec<usize>, usize);

/// Decodes the body of a snapshot of the current layout ([`SNAPSHOT_MAGIC`]), the last
/// `total` bytes long in all (offsets count from the start of the whole): the persisted
/// state, the offset of each task (in the same order), and the offset where the tail starts.
fn decode_current(total: usize, body: &[u8]) -> Result<Decoded, SnapshotError> {
    let (count, mut cur) = postcard::take_from_bytes::<u64>(body)?;
    // Reserved as serde reserves a sequence, cautiously: a count from a peer is not trusted
    // beyond what the bytes can hold, nor beyond 64 Ki tasks before they are decoded.
    let room = usize::try_from(count)
        .unwrap_or(usize::MAX)
        .min(cur.len())
        .min(1 << 16);
    let mut tasks: Vec<Arc<Task>> = Vec::with_capacity(room);
    let mut offsets: Vec<usize> = Vec::with_capacity(room);
    for _ in 0..count {
        offsets.push(total - cur.len());
        let (t, next) = postcard::take_from_bytes::<Arc<Task>>(cur)?;
        tasks.push(t);
        cur = next;
    }
    let tail_at = total - cur.len();
    let tail: Tail = postcard::from_bytes(cur)?;
    let p = Persisted {
        tasks,
        leases: tail.leases,
        last_token: tail.last_token,
        last_revision: tail.last_revision,
        used_claims: tail.used_claims,
        secrets: tail.secrets,
    };
    Ok((p, offsets, tail_at))
}

/// The most tasks a part of a snapshot's task list holds when it is encoded anew (see
/// [`SnapshotView::plan`]).
pub const PART_TASKS: usize = 4096;

/// A part of the task list in the bytes of a built snapshot, kept for the next build: if the
/// view then holds the very same tasks in this part, its bytes are copied instead of encoded.
#[derive(Debug, Clone)]
pub struct Part {
    /// The lowest creation revision the part covers: up to the next part's, the last part
    /// without end.
    pub from_rev: Revision,
    /// Its tasks in the order encoded. Holding them keeps each one's allocation: a change to a
    /// task then makes a new one (`Arc::make_mut` copies a shared task), so the same pointers
    /// mean the same tasks unchanged.
    pub tasks: Vec<Arc<Task>>,
    /// Where its bytes lie in the snapshot's bytes, and their CRC-32.
    pub offset: u64,
    pub len: u64,
    pub crc: u32,
}

/// One piece of a planned snapshot's bytes.
#[derive(Debug)]
pub enum Piece {
    /// Bytes the caller has: the previous snapshot's, at `offset` of its bytes.
    Kept { offset: u64, len: u64, crc: u32 },
    /// Bytes encoded now.
    New(Vec<u8>),
}

/// A view's snapshot bytes as pieces, in order: [`SNAPSHOT_MAGIC`], the CRC-32 of the body and
/// the task count (`head`), the task list's parts, then the rest of the state (`tail`).
#[derive(Debug)]
pub struct Plan {
    pub pieces: Vec<Piece>,
    /// The parts of the task list, for the next build's plan.
    pub parts: Vec<Part>,
    /// The length of the whole.
    pub len: u64,
    /// Tasks copied from the previous bytes / encoded anew.
    pub kept_tasks: u64,
    pub encoded_tasks: u64,
    /// The parts of the base that were not kept, for the caller to drop where it likes: they
    /// may hold the last references to tasks changed since, whose memory their drop frees.
    pub replaced: Vec<Part>,
}

impl Plan {
    /// The whole as one buffer; every piece must be `New`.
    fn concat(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len as usize);
        for p in self.pieces {
            match p {
                Piece::New(b) => out.extend_from_slice(&b),
                Piece::Kept { .. } => unreachable!("a plan without a base keeps nothing"),
            }
        }
        out
    }
}

/// Encodes the tasks of a run of changed parts as new parts of at most `part_tasks`, the first
/// covering from `from`, and empties `changed`.
fn encode_changed(
    changed: &mut Vec<&Arc<Task>>,
    from: Revision,
    part_tasks: usize,
    plan: &mut Plan,
    crc: &mut crc32fast::Hasher,
) {
    for (k, chunk) in changed.chunks(part_tasks).enumerate() {
        let mut bytes = Vec::with_capacity(chunk.len() * 160);
        for t in chunk {
            bytes = postcard::to_extend(&***t, bytes).expect("a task serializes");
        }
        let part_crc = crc32fast::hash(&bytes);
        crc.update(&bytes);
        plan.parts.push(Part {
            from_rev: if k == 0 { from } else { chunk[0].created_rev },
            tasks: chunk.iter().map(|t| Arc::clone(t)).collect(),
            offset: plan.len,
            len: bytes.len() as u64,
            crc: part_crc,
        });
        plan.len += bytes.len() as u64;
        plan.encoded_tasks += chunk.len() as u64;
        plan.pieces.push(Piece::New(bytes));
    }
    changed.clear();
}

/// The tasks of a view in the range of a base part (the range's start, the tasks, the part).
type Segment<'a> = (Revision, &'a [&'a Arc<Task>], Option<Part>);

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

/// What a snapshot holds, copied from the state in O(1): the persistent maps share their tree
/// nodes with the state, so taking a view under the state's lock costs microseconds, and
/// [`SnapshotView::to_bytes`] runs without the lock while applies go on (each change then
/// copies the nodes on its path, not the state).
#[derive(Clone)]
pub struct SnapshotView {
    tasks: imbl::OrdMap<Name, Arc<Task>>,
    leases: imbl::OrdMap<Token, Lease>,
    tokens: imbl::OrdMap<Token, Owner>,
    used_claims: imbl::OrdMap<(String, String), Token>,
    used_order: imbl::Vector<(String, String)>,
    last_token: Token,
    last_revision: Revision,
}

impl State {
    /// A copy of what a snapshot holds, in O(1) (see [`SnapshotView`]).
    pub fn snapshot_view(&self) -> SnapshotView {
        SnapshotView {
            tasks: self.tasks.clone(),
            leases: self.leases.clone(),
            tokens: self.tokens.clone(),
            used_claims: self.used_claims.clone(),
            used_order: self.used_order.clone(),
            last_token: self.last_token,
            last_revision: self.last_revision,
        }
    }

    /// The state as snapshot bytes: [`SNAPSHOT_MAGIC`], a CRC-32 of the body, the body.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.snapshot_view().to_bytes()
    }
}

impl SnapshotView {
    /// The snapshot bytes: [`SNAPSHOT_MAGIC`], a CRC-32 of the body, the body.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.plan(Vec::new()).concat()
    }

    /// The snapshot bytes as pieces, reusing the parts of the previous build's bytes (`base`,
    /// its [`Plan::parts`], taken so that a kept part's tasks move on without being counted
    /// again) whose tasks are all unchanged. Tasks are written in the order they
    /// were created (their creation revision, then id), so the tasks of an old part, mostly
    /// finished ones that never change again, stay together and keep their bytes, while new
    /// and changing tasks gather in the last parts. The bytes are the same whatever the base:
    /// only which pieces are copied and which are encoded differs.
    pub fn plan(&self, base: Vec<Part>) -> Plan {
        self.plan_in_parts_of(base, PART_TASKS)
    }

    /// [`SnapshotView::plan`] with parts of at most `part_tasks` tasks.
    pub(crate) fn plan_in_parts_of(&self, base: Vec<Part>, part_tasks: usize) -> Plan {
        let part_tasks = part_tasks.max(1);
        // Sorted on the revision read once per task (a comparison that reads tasks would
        // miss the cache twice on each of its ~20 rounds a task); ids only break ties.
        let mut keyed: Vec<(Revision, &Arc<Task>)> =
            self.tasks.values().map(|t| (t.created_rev, t)).collect();
        keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.id().cmp(b.1.id())));
        let all: Vec<&Arc<Task>> = keyed.into_iter().map(|(_, t)| t).collect();
        let mut head: Vec<u8> = Vec::with_capacity(24);
        head.extend_from_slice(SNAPSHOT_MAGIC);
        head.extend_from_slice(&[0; 4]);
        // The task count, as postcard writes a sequence's length.
        let mut head = postcard::to_extend(&(all.len() as u64), head).expect("a u64 serializes");
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head[SNAPSHOT_MAGIC.len() + 4..]);
        let mut plan = Plan {
            pieces: Vec::new(),
            parts: Vec::new(),
            len: head.len() as u64,
            kept_tasks: 0,
            encoded_tasks: 0,
            replaced: Vec::new(),
        };
        // The tasks in the range of base part `i` (the first part's range has no start).
        let starts: Vec<Revision> = base.iter().map(|p| p.from_rev).collect();
        let mut rest = &all[..];
        let mut segments: Vec<Segment<'_>> = Vec::new();
        let empty = base.is_empty();
        for (i, part) in base.into_iter().enumerate() {
            let end = match starts.get(i + 1) {
                Some(next) => rest.partition_point(|t| t.created_rev < *next),
                None => rest.len(),
            };
            let (these, after) = rest.split_at(end);
            segments.push((if i == 0 { 0 } else { part.from_rev }, these, Some(part)));
            rest = after;
        }
        if empty {
            segments.push((0, rest, None));
        }
        // Runs of changed segments are encoded together, cut into parts of `part_tasks`.
        let mut changed: Vec<&Arc<Task>> = Vec::new();
        let mut changed_from = 0;
        for (from, tasks, part) in segments {
            let same = part.as_ref().is_some_and(|p| {
                p.tasks.len() == tasks.len()
                    && p.tasks.iter().zip(tasks).all(|(a, b)| Arc::ptr_eq(a, b))
            });
            match part {
                Some(p) if same && !tasks.is_empty() => {
                    encode_changed(&mut changed, changed_from, part_tasks, &mut plan, &mut crc);
                    crc.combine(&crc32fast::Hasher::new_with_initial_len(p.crc, p.len));
                    plan.pieces.push(Piece::Kept {
                        offset: p.offset,
                        len: p.len,
                        crc: p.crc,
                    });
                    plan.len += p.len;
                    plan.kept_tasks += tasks.len() as u64;
                    plan.parts.push(Part {
                        from_rev: from,
                        offset: plan.len - p.len,
                        ..p
                    });
                }
                part => {
                    plan.replaced.extend(part);
                    if changed.is_empty() {
                        changed_from = from;
                    }
                    changed.extend_from_slice(tasks);
                }
            }
        }
        encode_changed(&mut changed, changed_from, part_tasks, &mut plan, &mut crc);
        let tail = TailRef {
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
        let tail = postcard::to_allocvec(&tail).expect("state serializes");
        crc.update(&tail);
        plan.len += tail.len() as u64;
        plan.pieces.push(Piece::New(tail));
        let crc = crc.finalize();
        head[SNAPSHOT_MAGIC.len()..SNAPSHOT_MAGIC.len() + 4].copy_from_slice(&crc.to_le_bytes());
        plan.pieces.insert(0, Piece::New(head));
        plan
    }
}

impl State {
    /// Checks snapshot bytes' CRC without decoding them (older snapshots, which carry none,
    /// pass).
    pub fn check_snapshot_bytes(bytes: &[u8]) -> Result<(), SnapshotError> {
        match bytes
            .strip_prefix(SNAPSHOT_MAGIC.as_slice())
            .or_else(|| bytes.strip_prefix(SNAPSHOT_MAGIC_V3.as_slice()))
            .or_else(|| bytes.strip_prefix(SNAPSHOT_MAGIC_V2.as_slice()))
        {
            None => Ok(()),
            Some(rest) => snapshot_body(rest).map(|_| ()),
        }
    }

    /// The same check as [`State::check_snapshot_bytes`], reading the bytes from `r` a piece
    /// at a time (a snapshot file of hundreds of MiB is checked without being held in memory).
    pub fn check_snapshot_reader(
        mut r: impl std::io::Read,
    ) -> std::io::Result<Result<(), SnapshotError>> {
        let mut head = [0u8; 12];
        let mut got = 0;
        while got < head.len() {
            match r.read(&mut head[got..])? {
                0 => break,
                n => got += n,
            }
        }
        let head = &head[..got];
        let magic = SNAPSHOT_MAGIC.len();
        if head.len() < magic
            || ![SNAPSHOT_MAGIC, SNAPSHOT_MAGIC_V3, SNAPSHOT_MAGIC_V2]
                .iter()
                .any(|m| head[..magic] == m[..])
        {
            return Ok(Ok(()));
        }
        if head.len() < magic + 4 {
            return Ok(Err(SnapshotError::Checksum {
                expected: 0,
                found: 0,
            }));
        }
        let expected = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
        let mut hasher = crc32fast::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match r.read(&mut buf)? {
                0 => break,
                n => hasher.update(&buf[..n]),
            }
        }
        let found = hasher.finalize();
        Ok(if expected == found {
            Ok(())
        } else {
            Err(SnapshotError::Checksum { expected, found })
        })
    }

    /// Loads snapshot bytes, refusing damaged ones (CRC) and ones that break an invariant.
    /// Snapshots of older versions (no magic, no CRC) still load.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SnapshotError> {
        // Tasks are decoded straight into the `Arc`s the state keeps them in: decoded into a
        // `Vec<Task>` first, every task's 288-byte struct would be held twice while the state is
        // built (about 290 MB more at a million tasks).
        let p: Persisted<Arc<Task>> =
            if let Some(rest) = bytes.strip_prefix(SNAPSHOT_MAGIC.as_slice()) {
                decode_current(bytes.len(), snapshot_body(rest)?)?.0
            } else if let Some(rest) = bytes.strip_prefix(SNAPSHOT_MAGIC_V3.as_slice()) {
                postcard::from_bytes::<Persisted<TaskV3>>(snapshot_body(rest)?)?.upgrade()
            } else if let Some(rest) = bytes.strip_prefix(SNAPSHOT_MAGIC_V2.as_slice()) {
                postcard::from_bytes::<Persisted<TaskV0>>(snapshot_body(rest)?)?.upgrade()
            } else {
                // postcard ignores trailing bytes, so the newer layout is tried first.
                match postcard::from_bytes::<PersistedV1<TaskV0>>(bytes) {
                    Ok(v1) => Persisted {
                        tasks: v1.tasks,
                        leases: v1.leases,
                        last_token: v1.last_token,
                        last_revision: v1.last_revision,
                        used_claims: v1.used_claims,
                        secrets: Vec::new(),
                    }
                    .upgrade(),
                    Err(e) => match postcard::from_bytes::<PersistedV0<TaskV0>>(bytes) {
                        Ok(v0) => Persisted {
                            tasks: v0.tasks,
                            leases: v0.leases,
                            last_token: v0.last_token,
                            last_revision: v0.last_revision,
                            used_claims: Vec::new(),
                            secrets: Vec::new(),
                        }
                        .upgrade(),
                        Err(_) => return Err(e.into()),
                    },
                }
            };
        Self::from_persisted(p).map(|(s, _)| s)
    }

    /// The state from its persisted parts, as a checkpoint holds them (see [`Record`]): the
    /// indexes are rebuilt and every invariant is checked, as for snapshot bytes.
    pub fn from_parts(parts: Parts) -> Result<Self, SnapshotError> {
        Self::from_persisted(Persisted {
            tasks: parts.tasks.into_iter().map(Arc::new).collect(),
            leases: parts.leases,
            last_token: parts.last_token,
            last_revision: parts.last_revision,
            used_claims: parts.used_claims,
            secrets: parts.secrets,
        })
        .map(|(s, _)| s)
    }

    /// The state, and its tasks in the order `p` holds them.
    fn from_persisted(p: Persisted<Arc<Task>>) -> Result<(Self, Vec<Arc<Task>>), SnapshotError> {
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
        // Names shared as `submit` shares them: one allocation per queue.
        let mut queues: std::collections::BTreeSet<Name> = std::collections::BTreeSet::new();
        let tasks: Vec<Arc<Task>> = p
            .tasks
            .into_iter()
            .map(|mut t| {
                // Just decoded, so not shared yet.
                if let Some(t) = Arc::get_mut(&mut t) {
                    match queues.get(&*t.spec.queue) {
                        Some(q) => t.spec.queue = q.clone(),
                        None => {
                            queues.insert(t.spec.queue.clone());
                        }
                    }
                }
                t
            })
            .collect();
        drop(queues);
        // The task map on a thread of its own, the tokens and the indexes on this one: a
        // restart at a million tasks spends most of its load here.
        let task_map = || {
            tasks
                .iter()
                .map(|t| (t.spec.id.clone(), t.clone()))
                .collect::<imbl::OrdMap<Name, Arc<Task>>>()
        };
        s.tasks = std::thread::scope(|scope| {
            // A thread that cannot be started (the process is out of them) only costs time.
            let map = std::thread::Builder::new().spawn_scoped(scope, task_map);
            for t in &tasks {
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
                s.index(t);
            }
            match map {
                Ok(map) => map.join(),
                Err(_) => Ok(task_map()),
            }
        })
        .map_err(|_| SnapshotError::Inconsistent("the task map could not be built".into()))?;
        let in_order = tasks;
        let tasks = &s.tasks;
        s.leases = std::mem::take(&mut s.leases)
            .into_iter()
            .map(|(token, mut l)| {
                if let Some((id, _)) = tasks.get_key_value(&*l.task_id) {
                    l.task_id = id.clone();
                }
                (token, l)
            })
            .collect();
        s.validate_in_parallel()
            .map_err(SnapshotError::Inconsistent)?;
        Ok((s, in_order))
    }

    /// Loads snapshot bytes as [`State::from_bytes`] does and, where they are of this version's
    /// layout with the tasks in the order builds write them (see [`SnapshotView::plan`]), also
    /// returns their task list's parts of at most `part_tasks` tasks, so that the next build
    /// copies the parts that did not change from these bytes (a start's first build, or the
    /// first after an install, then encodes only what changed since).
    pub fn from_bytes_with_parts(
        bytes: &[u8],
        part_tasks: usize,
    ) -> Result<(Self, Option<Vec<Part>>), SnapshotError> {
        let Some(rest) = bytes.strip_prefix(SNAPSHOT_MAGIC.as_slice()) else {
            return Ok((Self::from_bytes(bytes)?, None));
        };
        let (p, offsets, tail_at) = decode_current(bytes.len(), snapshot_body(rest)?)?;
        let (state, tasks) = Self::from_persisted(p)?;
        let in_order = tasks
            .windows(2)
            .all(|w| (w[0].created_rev, w[0].id()) < (w[1].created_rev, w[1].id()));
        if !in_order {
            return Ok((state, None));
        }
        let part_tasks = part_tasks.max(1);
        let parts = tasks
            .chunks(part_tasks)
            .enumerate()
            .map(|(k, chunk)| {
                let first = k * part_tasks;
                let offset = offsets[first];
                let end = offsets.get(first + chunk.len()).copied().unwrap_or(tail_at);
                Part {
                    from_rev: if k == 0 { 0 } else { chunk[0].created_rev },
                    tasks: chunk.to_vec(),
                    offset: offset as u64,
                    len: (end - offset) as u64,
                    crc: crc32fast::hash(&bytes[offset..end]),
                }
            })
            .collect();
        Ok((state, Some(parts)))
    }
}

/// The persisted parts of a state, as a checkpoint loads them (see [`State::from_parts`]).
#[derive(Debug, Default)]
pub struct Parts {
    pub tasks: Vec<Task>,
    pub leases: Vec<Lease>,
    pub last_token: Token,
    pub last_revision: Revision,
    /// (worker_id, claim_id, token) of the remembered used claims, oldest first.
    pub used_claims: Vec<(String, String, Token)>,
    pub secrets: Vec<(Token, LeaseSecret)>,
}

/// One record of a checkpoint of the state: a key with its new value, or `None` where the key
/// is deleted. The remembered used claims are numbered in the order they were used, so that
/// the oldest can be dropped and new ones added without rewriting the others.
#[derive(Debug, PartialEq, Eq)]
pub enum Record<'a> {
    Task(&'a str, Option<&'a Task>),
    Lease(Token, Option<&'a Lease>),
    Secret(Token, Option<LeaseSecret>),
    UsedClaim(u64, Option<(&'a str, &'a str, Token)>),
}

fn secret_of(o: &Owner) -> Option<LeaseSecret> {
    (o.secret != 0).then_some(o.secret)
}

impl SnapshotView {
    /// Tasks in the view.
    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// The last token and revision, which a checkpoint keeps beside its records.
    pub fn counters(&self) -> (Token, Revision) {
        (self.last_token, self.last_revision)
    }

    /// Every record of the view, its used claims numbered from `first_claim`.
    pub fn records<E>(
        &self,
        first_claim: u64,
        f: &mut impl FnMut(Record<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        for (id, t) in &self.tasks {
            f(Record::Task(id, Some(t)))?;
        }
        for (token, l) in &self.leases {
            f(Record::Lease(*token, Some(l)))?;
        }
        for (token, o) in &self.tokens {
            if let Some(s) = secret_of(o) {
                f(Record::Secret(*token, Some(s)))?;
            }
        }
        for (i, k) in self.used_order.iter().enumerate() {
            let token = self.used_claims[k];
            f(Record::UsedClaim(
                first_claim + i as u64,
                Some((&k.0, &k.1, token)),
            ))?;
        }
        Ok(())
    }

    /// The records that turn `base`, whose oldest used claim is numbered `base_claim`, into
    /// this view. Returns the number of this view's oldest used claim. Costs what changed: the
    /// persistent maps skip the tree nodes they share.
    pub fn changes_since<E>(
        &self,
        base: &SnapshotView,
        base_claim: u64,
        f: &mut impl FnMut(Record<'_>) -> Result<(), E>,
    ) -> Result<u64, E> {
        for d in base.tasks.diff(&self.tasks) {
            match d {
                imbl::ordmap::DiffItem::Add(id, t)
                | imbl::ordmap::DiffItem::Update { new: (id, t), .. } => {
                    f(Record::Task(id, Some(t)))?
                }
                imbl::ordmap::DiffItem::Remove(id, _) => f(Record::Task(id, None))?,
            }
        }
        for d in base.leases.diff(&self.leases) {
            match d {
                imbl::ordmap::DiffItem::Add(token, l)
                | imbl::ordmap::DiffItem::Update {
                    new: (token, l), ..
                } => f(Record::Lease(*token, Some(l)))?,
                imbl::ordmap::DiffItem::Remove(token, _) => f(Record::Lease(*token, None))?,
            }
        }
        for d in base.tokens.diff(&self.tokens) {
            match d {
                imbl::ordmap::DiffItem::Add(token, o) => {
                    if let Some(s) = secret_of(o) {
                        f(Record::Secret(*token, Some(s)))?;
                    }
                }
                imbl::ordmap::DiffItem::Update {
                    old,
                    new: (token, o),
                } => {
                    if secret_of(o) != secret_of(old.1) {
                        f(Record::Secret(*token, secret_of(o)))?;
                    }
                }
                imbl::ordmap::DiffItem::Remove(token, o) => {
                    if secret_of(o).is_some() {
                        f(Record::Secret(*token, None))?;
                    }
                }
            }
        }
        // The used claims are a queue: some dropped from the front, some added at the back.
        let (old, new) = (&base.used_order, &self.used_order);
        let dropped = match new.front() {
            None => old.len(),
            Some(first) => old.iter().position(|k| k == first).unwrap_or(old.len()),
        };
        let kept = old.len() - dropped;
        let is_queue = kept <= new.len()
            && old
                .iter()
                .skip(dropped)
                .zip(new.iter())
                .all(|(a, b)| a == b);
        let (dropped, kept) = if is_queue {
            (dropped, kept)
        } else {
            (old.len(), 0)
        };
        for i in 0..dropped {
            f(Record::UsedClaim(base_claim + i as u64, None))?;
        }
        let first = base_claim + dropped as u64;
        for (i, k) in new.iter().enumerate().skip(kept) {
            let token = self.used_claims[k];
            f(Record::UsedClaim(
                first + i as u64,
                Some((&k.0, &k.1, token)),
            ))?;
        }
        // A kept claim whose token changed.
        for d in base.used_claims.diff(&self.used_claims) {
            if let imbl::ordmap::DiffItem::Update {
                new: (k, token), ..
            } = d
            {
                if let Some(i) = new.iter().take(kept).position(|x| x == k) {
                    f(Record::UsedClaim(
                        first + i as u64,
                        Some((&k.0, &k.1, *token)),
                    ))?;
                }
            }
        }
        Ok(first)
    }
}

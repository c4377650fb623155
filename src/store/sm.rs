//! The state machine store: applies committed entries to the in-memory [`State`], publishes
//! their effects, and keeps snapshots as atomic files.
//!
//! To ensure correctness:
//! - a snapshot file is complete on disk (written, fsynced, renamed, directory fsynced) before
//!   `build_snapshot` returns, because openraft purges the log up to it afterwards;
//! - installing a snapshot replaces the whole state in one step.
//!
//! A node may run its whole event loop on one thread, so nothing here waits on that thread for
//! a snapshot build: the build holds the state's read lock only for an O(1) copy of its
//! persistent maps, then serializes and writes the copy on a thread of its own at the lowest CPU
//! priority, with the file's writeback paced so that the Raft log's fsyncs do not queue behind
//! it. An apply that still finds the state busy waits on a blocking thread.
use super::checkpoint::{Checkpoints, Written};
use super::snapshot_data::{SnapshotData, Source};
use super::EventLog;
use crate::clock::{Clock, LeaseTimers};
use crate::raft::{codec, Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use crate::state::{Effects, Part, Piece, Response, SnapshotView, State};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{AnyError, EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::watch;

/// The applied state with its position in the log.
#[derive(Default)]
pub struct Applied {
    pub state: State,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
}

/// A snapshot received and checked: its id, its state, and its task list's parts.
type Received = (String, State, Option<Vec<Part>>);

/// What the state machine shares with the rest of the node (the API reads it).
pub struct Shared {
    applied: RwLock<Applied>,
    pub events: Mutex<EventLog>,
    pub timers: Mutex<LeaseTimers>,
    pub clock: Arc<dyn Clock>,
    /// The last applied index, for waiters (long-poll claims, follower reads).
    pub applied_index: watch::Sender<u64>,
    /// A snapshot received from the leader, decoded and checked before Raft was asked to
    /// install it (by snapshot id): the install takes it instead of decoding it again.
    /// The parts of its task list come with it, for the first build after the install.
    received: Mutex<Option<Received>>,
    /// Where a snapshot from the leader is spooled while it arrives (the data directory), set
    /// when the state machine store opens.
    spool: Mutex<Option<PathBuf>>,
    /// Decode snapshots inline instead of on a blocking thread (the simulation).
    inline: std::sync::atomic::AtomicBool,
    /// The node's metrics (fed by every apply, every log fsync and every snapshot).
    pub metrics: Arc<crate::metrics::NodeMetrics>,
    /// The latest expiries and late successes applied (the dashboard's recent verdicts).
    pub verdicts: Mutex<super::Verdicts>,
}

impl Shared {
    /// `event_retention` events of at most `event_bytes` (estimated) in all are kept for
    /// watchers to resume from; `live_buffer` are buffered for live ones.
    pub fn new(
        clock: Arc<dyn Clock>,
        event_retention: usize,
        event_bytes: usize,
        live_buffer: usize,
    ) -> Self {
        Self {
            applied: RwLock::new(Applied::default()),
            events: Mutex::new(EventLog::new(event_retention, event_bytes, live_buffer)),
            timers: Mutex::new(LeaseTimers::default()),
            clock,
            applied_index: watch::channel(0).0,
            received: Mutex::new(None),
            spool: Mutex::new(None),
            inline: std::sync::atomic::AtomicBool::new(false),
            verdicts: Mutex::new(super::Verdicts::default()),
            metrics: Arc::new(crate::metrics::NodeMetrics::new(
                0,
                crate::metrics::DEFAULT_MAX_QUEUES,
            )),
        }
    }

    /// The same, with the node's own metrics.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::NodeMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The applied state, to read. Never waits behind a waiting apply: a read lock held by a
    /// snapshot build must not stop readers (on a one-thread node, the whole node) for as long
    /// as the build runs.
    pub fn read(&self) -> RwLockReadGuard<'_, Applied> {
        self.applied.read_recursive()
    }

    /// Decodes and checks a snapshot received from a peer, off the runtime. A sound one is kept
    /// for the install that follows, and its bytes are given back for Raft to hand to it.
    pub async fn check_received(
        self: &Arc<Self>,
        snapshot_id: String,
        data: SnapshotData,
    ) -> Result<SnapshotData, String> {
        let inline = self.inline.load(std::sync::atomic::Ordering::Relaxed);
        let this = self.clone();
        let src = data.into_source().await;
        let check = move || {
            let (state, parts) = src
                .with_bytes(|b| State::from_bytes_with_parts(b, crate::state::PART_TASKS))
                .map_err(|e| format!("reading it back: {e}"))?
                .map_err(|e| e.to_string())?;
            *this.received.lock() = Some((snapshot_id, state, parts));
            Ok::<_, String>(src)
        };
        let src = if inline {
            check()?
        } else {
            tokio::task::spawn_blocking(check)
                .await
                .map_err(|e| e.to_string())??
        };
        SnapshotData::from_source(src)
            .await
            .map_err(|e| format!("reading it back: {e}"))
    }

    /// Starts receiving the snapshot `id` from the leader: spooled to a temporary file beside
    /// the node's data, or in memory in the simulation.
    pub fn receive(&self, id: String) -> std::io::Result<super::snapshot_data::Incoming> {
        let inline = self.inline.load(std::sync::atomic::Ordering::Relaxed);
        let spool = if inline {
            None
        } else {
            self.spool.lock().clone()
        };
        super::snapshot_data::Incoming::new(
            id,
            spool.as_deref(),
            super::snapshot_data::MAX_SNAPSHOT_BYTES,
        )
    }

    /// Drops a checked snapshot that was not installed.
    pub fn forget_received(&self) {
        self.received.lock().take();
    }

    /// Replaces the whole state (start-up from a snapshot, or a snapshot install).
    fn replace(&self, state: State, meta: &SnapshotMeta) {
        let idx = meta.last_log_id.map(|l| l.index).unwrap_or(0);
        let mut a = self.applied.write();
        self.timers
            .lock()
            .reset(state.leases_with_queues(), self.clock.monotonic_ms());
        self.events.lock().reset(if idx == 0 {
            0
        } else {
            crate::state::last_revision_of_entry(idx)
        });
        *a = Applied {
            state,
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        drop(a);
        self.applied_index.send_replace(idx);
    }
}

/// The checkpoint store's directory under the data directory.
pub const STATE_DIR: &str = "state";

#[derive(Clone)]
pub struct StateMachineStore {
    shared: Arc<Shared>,
    path: PathBuf,
    /// The last log id of the snapshot in the file. A build runs beside the state machine, so a
    /// snapshot from the leader can be installed while a build writes an older one: the build
    /// must then leave the file alone, because the log is purged up to the installed snapshot.
    on_disk: Arc<parking_lot::Mutex<Option<LogId>>>,
    /// The same, published once durable (the file and its directory entry fsynced): the log
    /// store waits on it before a purge.
    durable: Arc<watch::Sender<Option<LogId>>>,
    /// Serialize and write snapshots on a blocking thread (production) or inline (the
    /// deterministic simulation, where a thread finishing at a real-time moment would make the
    /// run depend on more than its seed).
    blocking: bool,
    /// The state checkpointed in sled (`--state-store sled`): a snapshot build then writes only
    /// what changed since the last one, and a whole snapshot is serialized only to be sent.
    /// `None`: whole snapshots in the file at `path`.
    ckpt: Option<Arc<Checkpoints>>,
    /// The file the last build wrote and the parts of its task list: the next build copies the
    /// parts whose tasks did not change from it instead of encoding them again.
    last_build: Arc<Mutex<Option<LastBuild>>>,
    /// The most tasks a part of the task list holds ([`crate::state::PART_TASKS`]).
    part_tasks: usize,
}

/// A built snapshot file, open, with where its state's bytes start and their parts.
struct LastBuild {
    file: Arc<std::fs::File>,
    start: u64,
    parts: Vec<Part>,
}

/// Runs `f` on a thread of its own at the lowest CPU priority (nice 19), for a snapshot build:
/// serializing a large state takes seconds of CPU, and at normal priority it takes them from
/// the applies, the Raft messages and the clients' calls on a machine with few cores. Runs
/// inline where `blocking` is false (the simulation).
async fn in_background<T: Send + 'static>(
    blocking: bool,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, StorageError> {
    if !blocking {
        return Ok(f());
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("snapshot".into())
        .spawn(move || {
            lower_this_threads_priority();
            let _ = tx.send(f());
        })
        .map_err(write_err)?;
    rx.await
        .map_err(|_| write_err(std::io::Error::other("the snapshot thread stopped early")))
}

/// Sets the calling thread's nice value to 19. On Linux the nice value is per thread, so this
/// leaves the rest of the process as it was; elsewhere it does nothing.
fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority takes plain integers and only changes the calling thread's nice value.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 19);
    }
}

/// The CPU time the calling thread has used (zero where it cannot be read): a snapshot
/// build's encoding at nice 19 takes longer than its CPU time on a busy machine.
fn thread_cpu_time() -> std::time::Duration {
    #[cfg(target_os = "linux")]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes only the timespec it is given.
        if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0 {
            return std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
        }
    }
    std::time::Duration::ZERO
}

/// Gives freed memory back to the system after a snapshot, which allocates and frees a copy of
/// the whole state: without it glibc keeps the pages, and a node's resident memory stays at its
/// peak.
fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory the allocator holds free.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Runs `f` on a blocking thread, or right here.
async fn off_runtime<T: Send + 'static>(
    blocking: bool,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, StorageError> {
    if blocking {
        tokio::task::spawn_blocking(f).await.map_err(write_err)
    } else {
        Ok(f())
    }
}

fn read_err<E: std::error::Error + 'static>(e: E) -> StorageError {
    StorageIOError::read_snapshot(None, &e).into()
}

fn write_err<E: std::error::Error + 'static>(e: E) -> StorageError {
    StorageIOError::write_snapshot(None, &e).into()
}

impl StateMachineStore {
    pub fn open(path: PathBuf, shared: Arc<Shared>) -> Result<Self, StorageError> {
        let sm = Self {
            shared,
            path,
            on_disk: Arc::new(parking_lot::Mutex::new(None)),
            durable: Arc::new(watch::channel(None).0),
            blocking: true,
            ckpt: None,
            last_build: Arc::default(),
            part_tasks: crate::state::PART_TASKS,
        };
        *sm.shared.spool.lock() = sm.path.parent().map(Path::to_path_buf);
        if let Some(state_dir) = sm.path.parent().map(|d| d.join(STATE_DIR)) {
            if state_dir.exists() {
                return Err(read_err(std::io::Error::other(format!(
                    "{} holds a state checkpoint: snapshot files (`--state-store file`, the \
                     default) run only on a node that never checkpointed, and nothing converts \
                     back; start with --state-store sled",
                    state_dir.display()
                ))));
            }
        }
        // A build or an install stopped mid-write leaves its temporary file: never read, so
        // only removed.
        for tmp in ["build.tmp", "tmp"] {
            let tmp = sm.path.with_extension(tmp);
            if std::fs::remove_file(&tmp).is_ok() {
                tracing::info!(path = %tmp.display(), "removed the temporary file of a snapshot write that did not finish");
            }
        }
        let started = std::time::Instant::now();
        if let Some(opened) = sm.open_file()? {
            let (meta, body) = opened.map_err(|e| sm.damaged(e))?;
            // Kept open for the first build, which copies the unchanged parts from it.
            let kept = match &body {
                Source::File { file, start, .. } => {
                    Some((file.try_clone().map_err(read_err)?, *start))
                }
                Source::Bytes(_) => None,
            };
            let data = body.into_bytes().map_err(read_err)?;
            *sm.on_disk.lock() = meta.last_log_id;
            sm.durable.send_replace(meta.last_log_id);
            let read_ms = started.elapsed().as_millis() as u64;
            let (state, parts) =
                State::from_bytes_with_parts(&data, sm.part_tasks).map_err(|e| {
                    read_err(std::io::Error::other(format!(
                    "{}: {e}. This node's log is purged up to that snapshot, so it cannot start \
                     from it: move the node's data directory aside and add the node again \
                     (`leasekeeper node remove`, then `node add`), and it is sent a snapshot by \
                     the leader",
                    sm.path.display()
                )))
                })?;
            let tasks = state.task_count();
            sm.shared.replace(state, &meta);
            if let (Some((file, start)), Some(parts)) = (kept, parts) {
                *sm.last_build.lock() = Some(LastBuild {
                    file: Arc::new(file),
                    start,
                    parts,
                });
            }
            drop(data);
            return_freed_memory();
            tracing::info!(
                snapshot = %meta.snapshot_id,
                tasks,
                read_ms,
                decode_ms = started.elapsed().as_millis() as u64 - read_ms,
                "state loaded from the snapshot file; the log after it is applied next"
            );
        }
        Ok(sm)
    }

    /// Opens the state checkpointed in sled under `dir` ([`STATE_DIR`]), loading it. A snapshot
    /// file of the earlier layout (`snapshot` in `dir`) is converted: its state is written to
    /// the checkpoint store, which is fsynced before the file is removed, so a crash in between
    /// converts again on the next start.
    pub fn open_checkpointed(dir: &Path, shared: Arc<Shared>) -> Result<Self, StorageError> {
        let started = std::time::Instant::now();
        let (ckpt, loaded) = Checkpoints::open(&dir.join(STATE_DIR)).map_err(read_err)?;
        let ckpt = Arc::new(ckpt);
        let sm = Self {
            shared,
            path: dir.join("snapshot"),
            on_disk: Arc::new(parking_lot::Mutex::new(None)),
            durable: Arc::new(watch::channel(None).0),
            blocking: true,
            ckpt: Some(ckpt.clone()),
            last_build: Arc::default(),
            part_tasks: crate::state::PART_TASKS,
        };
        *sm.shared.spool.lock() = Some(dir.to_path_buf());
        let loaded_ms = started.elapsed().as_millis() as u64;
        let mut loaded = loaded;
        if let Some((meta, data)) = sm.read_file()? {
            if loaded
                .as_ref()
                .is_some_and(|(m, _)| m.last_log_id >= meta.last_log_id)
            {
                tracing::info!(path = %sm.path.display(), "removing the snapshot file left by a finished conversion");
            } else {
                let state = State::from_bytes(&data).map_err(|e| {
                    read_err(std::io::Error::other(format!(
                        "{}: {e}. It cannot be converted: move the node's data directory aside \
                         and add the node again (`leasekeeper node remove`, then `node add`)",
                        sm.path.display()
                    )))
                })?;
                drop(data);
                let written = ckpt
                    .replace(&meta, &state.snapshot_view())
                    .map_err(write_err)?;
                tracing::info!(path = %sm.path.display(), tasks = state.task_count(), ?written, "snapshot file converted to the state checkpoint");
                loaded = Some((meta, state));
            }
            std::fs::remove_file(&sm.path).map_err(write_err)?;
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(write_err)?;
        }
        if let Some((meta, state)) = loaded {
            sm.durable.send_replace(meta.last_log_id);
            let tasks = state.task_count();
            sm.shared.replace(state, &meta);
            return_freed_memory();
            tracing::info!(
                checkpoint = %meta.snapshot_id,
                tasks,
                load_ms = loaded_ms,
                total_ms = started.elapsed().as_millis() as u64,
                "state loaded from the checkpoint; the log after it is applied next"
            );
        }
        Ok(sm)
    }

    /// Builds snapshots on the calling task instead of a blocking thread (for the simulation).
    pub fn inline_snapshots(mut self) -> Self {
        self.blocking = false;
        self.shared
            .inline
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self
    }

    fn read_file(&self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StorageError> {
        let Some(opened) = self.open_file()? else {
            return Ok(None);
        };
        let (meta, body) = opened.map_err(|e| self.damaged(e))?;
        Ok(Some((meta, body.into_bytes().map_err(read_err)?)))
    }

    fn damaged(&self, what: String) -> StorageError {
        read_err(std::io::Error::other(format!(
            "{}: {what}",
            self.path.display()
        )))
    }

    /// The snapshot file's meta and where its state's bytes are, if there is a file; a file
    /// whose header does not hold together is `Err`, with what is wrong.
    fn open_file(&self) -> Result<Option<Opened>, StorageError> {
        let file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(read_err(e)),
        };
        Ok(Some(read_header(&file).map_err(read_err)?.map(
            |(meta, start, len)| (meta, Source::File { file, start, len }),
        )))
    }

    /// The snapshot file, checked (its header, and the CRC of its state's bytes read a piece
    /// at a time), to send: its state's bytes as a range of the file, or read into memory
    /// where this store does not block (the simulation). `Err` names the damage.
    fn open_to_send(&self) -> Result<Option<Opened>, StorageError> {
        let Some(opened) = self.open_file()? else {
            return Ok(None);
        };
        let Ok((meta, body)) = opened else {
            return Ok(Some(opened));
        };
        let reader = body.reader().map_err(read_err)?;
        if let Err(e) = State::check_snapshot_reader(reader).map_err(read_err)? {
            return Ok(Some(Err(e.to_string())));
        }
        let body = if self.blocking {
            body
        } else {
            Source::Bytes(body.into_bytes().map_err(read_err)?)
        };
        Ok(Some(Ok((meta, body))))
    }

    /// Replaces the snapshot file with `meta` and the `len` bytes `data` reads (the state's
    /// bytes) so that a crash leaves either the old file or the new one, writing at no more than
    /// `pace` bytes a second if given, through the temporary file `<path>.<tmp>`. Returns the
    /// file written, open; or `None`, leaving the file as it was, when the file already holds a
    /// later snapshot (see `on_disk`).
    fn save_from(
        &self,
        meta: &SnapshotMeta,
        data: impl Read,
        len: u64,
        tmp: &str,
        pace: Option<u64>,
    ) -> std::io::Result<Option<std::fs::File>> {
        let tmp = self.path.with_extension(tmp);
        let file = write_synced(&tmp, &file_header(meta, len), data, len, pace)?;
        let mut on_disk = self.on_disk.lock();
        if *on_disk > meta.last_log_id {
            drop(on_disk);
            let _ = std::fs::remove_file(&tmp);
            return Ok(None);
        }
        std::fs::rename(&tmp, &self.path)?;
        *on_disk = meta.last_log_id;
        drop(on_disk);
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        self.durable.send_if_modified(|d| {
            let later = *d < meta.last_log_id;
            if later {
                *d = meta.last_log_id;
            }
            later
        });
        Ok(Some(file))
    }

    /// The last log id of the snapshot durable in the file, as it changes.
    pub fn snapshot_durable(&self) -> super::SnapshotDurable {
        self.durable.subscribe()
    }
}

/// A snapshot file opened: its meta and its state's bytes, or what is wrong with it.
type Opened = Result<(SnapshotMeta, Source), String>;

/// The snapshot file is `codec::encode(&(meta, data))`: the encoded meta, the length of `data`
/// as a varint, then `data`, the state's bytes. This is the part before `data`, so that a large
/// snapshot is written (and sent) from where it is without being copied into one buffer.
fn file_header(meta: &SnapshotMeta, data_len: u64) -> Vec<u8> {
    // postcard writes a u64 as the varint it writes a length as.
    postcard::to_extend(&data_len, codec::encode(meta)).expect("a u64 serializes")
}

/// The most of a snapshot file read to find its header: the meta holds the membership, a few
/// hundred bytes for a five-member cluster.
const MAX_HEADER_BYTES: u64 = 64 << 10;

/// Reads the header of the snapshot file `file` (see [`file_header`]): the meta, and the offset
/// and length of the state's bytes, which must end where the file ends. `Err` says what does
/// not hold together.
fn read_header(file: &std::fs::File) -> std::io::Result<Result<(SnapshotMeta, u64, u64), String>> {
    use std::os::unix::fs::FileExt;
    let file_len = file.metadata()?.len();
    let mut head = vec![0u8; file_len.min(MAX_HEADER_BYTES) as usize];
    file.read_exact_at(&mut head, 0)?;
    let Ok((meta, rest)) = postcard::take_from_bytes::<SnapshotMeta>(&head) else {
        return Ok(Err(format!(
            "its header (the snapshot's meta, within the first {MAX_HEADER_BYTES} bytes) does not decode"
        )));
    };
    let mut len = 0u64;
    let mut used = None;
    for (i, b) in rest.iter().take(10).enumerate() {
        len |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            used = Some(i + 1);
            break;
        }
    }
    let Some(used) = used else {
        return Ok(Err("the length of its state's bytes does not decode".into()));
    };
    let start = (head.len() - rest.len() + used) as u64;
    if start.checked_add(len) != Some(file_len) {
        return Ok(Err(format!(
            "its header gives {len} bytes of state, and the file holds {} after the header",
            file_len - start
        )));
    }
    Ok(Ok((meta, start, len)))
}

/// How much of a snapshot file is written before its writeback is started and the piece before
/// it waited for (see `write_atomically`): at most about two steps are queued at the disk ahead
/// of a Raft log fdatasync.
const WRITEBACK_STEP: usize = 1 << 20;

/// How fast a snapshot build writes its file. A build is not waited for by anything but the
/// log's purge, so it is paced: unpaced, the file (hundreds of MiB at a million tasks) reaches
/// the disk as fast as the disk takes it, and the log's fdatasyncs, which every acknowledged
/// write waits for, queue behind it. A snapshot received from the leader is written unpaced: the
/// leader waits for its install.
const BUILD_WRITE_BYTES_PER_S: u64 = 64 << 20;

/// Writes `header`, then the `body_len` bytes of `body`, to the file `tmp` and makes it
/// durable, at no more than `bytes_per_s` if given.
///
/// A large file is written in steps of [`WRITEBACK_STEP`]: each step's writeback is started as
/// soon as it is written and waited for one step later, as RocksDB's `bytes_per_sync` does. A
/// single fsync at the end would send the whole file (hundreds of MiB at a million tasks) to
/// the disk at once, and the Raft log's fdatasyncs, which every acknowledged write waits for,
/// would queue behind it.
fn write_synced(
    tmp: &Path,
    header: &[u8],
    body: impl Read,
    body_len: u64,
    bytes_per_s: Option<u64>,
) -> std::io::Result<std::fs::File> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp)?;
    let total = header.len() as u64 + body_len;
    let mut src = header.chain(body.take(body_len));
    let mut buf = vec![0u8; (WRITEBACK_STEP as u64).min(total).max(1) as usize];
    let mut written = 0u64;
    let started = std::time::Instant::now();
    loop {
        let mut n = 0;
        while n < buf.len() {
            match src.read(&mut buf[n..])? {
                0 => break,
                k => n += k,
            }
        }
        if n == 0 {
            break;
        }
        if let Some(rate) = bytes_per_s.filter(|r| *r > 0) {
            let due = std::time::Duration::from_secs_f64(written as f64 / rate as f64);
            if let Some(early) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(early);
            }
        }
        f.write_all(&buf[..n])?;
        start_writeback(&f, written, n as u64);
        written += n as u64;
    }
    if written != total {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("the snapshot's bytes ended after {written} of {total}"),
        ));
    }
    f.sync_all()?;
    Ok(f)
}

/// Starts writing `len` bytes at `offset` of `f` back to the disk, and waits until the range
/// before it has been written back. A hint for pacing only: `sync_all` makes the file durable.
fn start_writeback(f: &std::fs::File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let fd = f.as_raw_fd();
        // SAFETY: sync_file_range reads only its integer arguments; fd is open for the call.
        unsafe {
            libc::sync_file_range(
                fd,
                offset as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
            if offset > 0 {
                libc::sync_file_range(
                    fd,
                    0,
                    offset as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WAIT_BEFORE
                        | libc::SYNC_FILE_RANGE_WRITE
                        | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                );
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (f, offset, len);
}

/// Applies `entries` to the state behind `guard` and publishes their effects (lease timers,
/// events, the applied index) before the state is unlocked: a reader never sees the state ahead
/// of its events.
fn apply_entries(
    shared: &Shared,
    guard: &mut Applied,
    entries: impl IntoIterator<Item = Entry>,
) -> Vec<Response> {
    let mut fx = Effects::default();
    let mut out = Vec::new();
    let a = guard;
    for e in entries {
        let index = e.log_id.index;
        a.last_applied = Some(e.log_id);
        let resp = match &e.payload {
            EntryPayload::Blank => {
                a.state.note_entry(index);
                Response::Ok
            }
            EntryPayload::Normal(req) => {
                let configs = a.membership.membership().get_joint_config();
                a.state.apply_entry(index, req, configs, &mut fx)
            }
            EntryPayload::Membership(m) => {
                a.membership = StoredMembership::new(Some(e.log_id), m.clone());
                a.state.note_entry(index);
                Response::Ok
            }
        };
        out.push(resp);
    }
    let last = a.last_applied.map(|l| l.index).unwrap_or(0);
    let last_rev = a.state.last_revision();
    let seen = shared.timers.lock().apply(&fx, shared.clock.monotonic_ms());
    shared.metrics.observe_apply(&fx, seen, out.len());
    if !fx.ended.is_empty() {
        shared.verdicts.lock().record(&fx);
    }
    {
        let mut ev = shared.events.lock();
        for e in fx.events {
            ev.push(e);
        }
        ev.advance(last_rev);
    }
    shared.applied_index.send_replace(last);
    out
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        if let Some(ckpt) = self.ckpt.clone() {
            return self.checkpoint(ckpt).await;
        }
        self.build_file().await
    }
}

impl StateMachineStore {
    /// Builds a snapshot file from the state now. The snapshot returned carries no bytes:
    /// openraft keeps only the meta of a built snapshot (and would drop the bytes on the
    /// runtime, where freeing hundreds of MiB stalls it), and a snapshot to send is read from
    /// the file.
    ///
    /// The parts of the task list whose tasks did not change since the last build are copied
    /// from the last build's file, each checked against its CRC as it is copied (see
    /// [`SnapshotView::plan`]); only the changed parts and the rest of the state are encoded.
    /// If a copied part no longer matches its CRC, the build starts again with nothing copied.
    async fn build_file(&self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let started = std::time::Instant::now();
        let mut last = self.last_build.lock().take();
        loop {
            let copying = last.is_some();
            // Planned (the changed parts encoded) on a thread of its own at nice 19: a large
            // state takes long enough to stall a runtime worker (and with it Raft heartbeats)
            // otherwise.
            let this = self.clone();
            let (base, source) = match last.take() {
                Some(l) => (l.parts, Some((l.file, l.start))),
                None => (Vec::new(), None),
            };
            let (plan, view, meta, locked_us, serialize_cpu_ms) =
                in_background(self.blocking, move || {
                    // Under the state's read lock only the O(1) copy of the persistent maps:
                    // applies never wait for the encoding below.
                    let (view, meta, locked_us) = this.view_now();
                    let cpu = thread_cpu_time();
                    let plan = view.plan_in_parts_of(base, this.part_tasks);
                    let cpu_ms = thread_cpu_time().saturating_sub(cpu).as_millis() as u64;
                    (plan, view, meta, locked_us, cpu_ms)
                })
                .await?;
            let serialize_ms = started.elapsed().as_millis() as u64;
            let (kept_tasks, encoded_tasks) = (plan.kept_tasks, plan.encoded_tasks);
            // Dropping the view frees what applies copied while it was held, and the trim
            // takes the allocator's locks: both at normal priority, since the applies need those
            // locks too and would wait for a preempted nice-19 thread that holds one.
            let this = self.clone();
            let pace = self.blocking.then_some(BUILD_WRITE_BYTES_PER_S);
            let m = meta.clone();
            let written = off_runtime(self.blocking, move || {
                drop(view);
                let len = plan.len;
                // The last build's parts not kept are let go: what changed since is freed.
                drop(plan.replaced);
                let reader = PlanReader::new(plan.pieces, source);
                let start = file_header(&m, len).len() as u64;
                let saved = this.save_from(&m, reader, len, "build.tmp", pace);
                return_freed_memory();
                let last = saved?.map(|file| LastBuild {
                    file: Arc::new(file),
                    start,
                    parts: plan.parts,
                });
                Ok::<_, std::io::Error>((len, last))
            })
            .await?;
            let (bytes, saved) = match written {
                Ok((bytes, last)) => {
                    let saved = last.is_some();
                    *self.last_build.lock() = last;
                    (bytes, saved)
                }
                Err(e) if copying && e.kind() == std::io::ErrorKind::InvalidData => {
                    tracing::error!(path = %self.path.display(), error = %e, "a part copied from the last snapshot file does not match its CRC; building the whole snapshot from the state in memory");
                    last = None;
                    continue;
                }
                Err(e) => return Err(write_err(e)),
            };
            let m = &self.shared.metrics;
            m.snapshot_build.observe(started.elapsed().as_secs_f64());
            m.snapshot_bytes.set(bytes as i64);
            m.snapshot_tasks_copied.inc_by(kept_tasks);
            m.snapshot_tasks_encoded.inc_by(encoded_tasks);
            tracing::info!(
                snapshot = %meta.snapshot_id,
                bytes,
                kept_tasks,
                encoded_tasks,
                serialize_ms,
                serialize_cpu_ms,
                locked_us,
                write_ms = started.elapsed().as_millis() as u64 - serialize_ms,
                "snapshot built"
            );
            if !saved {
                tracing::info!(snapshot = %meta.snapshot_id, "a later snapshot was installed while this one was written: the file keeps the later one");
            }
            return Ok(Snapshot {
                meta,
                snapshot: Box::new(SnapshotData::memory(Vec::new())),
            });
        }
    }
}

/// Reads a planned snapshot's bytes (see [`SnapshotView::plan`]): the pieces encoded for it,
/// and the pieces kept from the last build's file (`source`: the file and where its state's
/// bytes start), each checked against its CRC as it is read. A kept piece that does not match
/// is an `InvalidData` error.
struct PlanReader {
    pieces: std::collections::VecDeque<Piece>,
    source: Option<(Arc<std::fs::File>, u64)>,
    /// How far into the first piece.
    pos: u64,
    crc: crc32fast::Hasher,
}

impl PlanReader {
    fn new(pieces: Vec<Piece>, source: Option<(Arc<std::fs::File>, u64)>) -> Self {
        PlanReader {
            pieces: pieces.into(),
            source,
            pos: 0,
            crc: crc32fast::Hasher::new(),
        }
    }

    fn next_piece(&mut self) {
        self.pieces.pop_front();
        self.pos = 0;
        self.crc = crc32fast::Hasher::new();
    }
}

impl Read for PlanReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let (offset, len, crc) = match self.pieces.front() {
                None => return Ok(0),
                Some(Piece::New(b)) => {
                    let rest = &b[self.pos as usize..];
                    if rest.is_empty() {
                        self.next_piece();
                        continue;
                    }
                    let n = rest.len().min(buf.len());
                    buf[..n].copy_from_slice(&rest[..n]);
                    self.pos += n as u64;
                    return Ok(n);
                }
                Some(Piece::Kept { offset, len, crc }) => (*offset, *len, *crc),
            };
            if self.pos == len {
                let found = std::mem::take(&mut self.crc).finalize();
                if found != crc {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "the {len} bytes at offset {offset} of the last snapshot's state \
                             have CRC-32 {found:#010x}, not {crc:#010x} as written"
                        ),
                    ));
                }
                self.next_piece();
                continue;
            }
            let Some((file, start)) = &self.source else {
                return Err(std::io::Error::other(
                    "a snapshot plan keeps bytes of a file it was not given",
                ));
            };
            let want = ((len - self.pos) as usize).min(buf.len());
            let n = file.read_at(&mut buf[..want], start + offset + self.pos)?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("the last snapshot file ends inside the part at offset {offset}"),
                ));
            }
            self.crc.update(&buf[..n]);
            self.pos += n as u64;
            return Ok(n);
        }
    }
}

impl StateMachineStore {
    /// The state at this moment, with its snapshot meta, copied in O(1) under the read lock.
    fn view_now(&self) -> (SnapshotView, SnapshotMeta, u64) {
        let locked = std::time::Instant::now();
        let a = self.shared.read();
        let id = match a.last_applied {
            Some(l) => format!(
                "{}-{}-{}",
                l.leader_id,
                l.index,
                self.shared.clock.unix_ms()
            ),
            None => format!("empty-{}", self.shared.clock.unix_ms()),
        };
        let meta = SnapshotMeta {
            last_log_id: a.last_applied,
            last_membership: a.membership.clone(),
            snapshot_id: id,
        };
        let view = a.state.snapshot_view();
        drop(a);
        (view, meta, locked.elapsed().as_micros() as u64)
    }

    /// A snapshot build with a checkpoint store: writes what changed since the last checkpoint.
    /// openraft keeps only the meta of a built snapshot, so no bytes are made here; a snapshot
    /// to send is serialized from the checkpoint when one is asked for.
    async fn checkpoint(
        &self,
        ckpt: Arc<Checkpoints>,
    ) -> Result<Snapshot<TypeConfig>, StorageError> {
        let started = std::time::Instant::now();
        let this = self.clone();
        let (meta, locked_us, written) = in_background(self.blocking, move || {
            let (view, meta, locked_us) = this.view_now();
            let written = ckpt.write(&meta, &view)?;
            Ok::<_, std::io::Error>((meta, locked_us, written))
        })
        .await?
        .map_err(write_err)?;
        self.mark_durable(&meta);
        let m = &self.shared.metrics;
        m.snapshot_build.observe(started.elapsed().as_secs_f64());
        if let Written::Records { records, bytes } = written {
            m.snapshot_bytes.set(bytes as i64);
            tracing::info!(checkpoint = %meta.snapshot_id, records, bytes, locked_us, ms = started.elapsed().as_millis() as u64, "state checkpointed");
        }
        Ok(Snapshot {
            meta,
            snapshot: Box::new(SnapshotData::memory(Vec::new())),
        })
    }

    /// Publishes that the state at `meta` is durable (the log store waits on it to purge).
    fn mark_durable(&self, meta: &SnapshotMeta) {
        self.durable.send_if_modified(|d| {
            let later = *d < meta.last_log_id;
            if later {
                *d = meta.last_log_id;
            }
            later
        });
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let a = self.shared.read();
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        if let Some(mut guard) = self.shared.applied.try_write() {
            return Ok(apply_entries(&self.shared, &mut guard, entries));
        }
        if !self.blocking {
            let mut guard = self.shared.applied.write();
            return Ok(apply_entries(&self.shared, &mut guard, entries));
        }
        // A snapshot build is reading the state: wait for it off the runtime.
        let shared = self.shared.clone();
        let entries: Vec<Entry> = entries.into_iter().collect();
        tokio::task::spawn_blocking(move || {
            let mut guard = shared.applied.write();
            apply_entries(&shared, &mut guard, entries)
        })
        .await
        .map_err(|e| StorageIOError::write_state_machine(AnyError::new(&e)).into())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, StorageError> {
        // Only for callers of openraft's own chunk receiver (the storage suite): the node
        // receives snapshots itself (`Shared::receive`).
        Ok(Box::new(SnapshotData::memory(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotData>,
    ) -> Result<(), StorageError> {
        // Decoding and writing a large snapshot takes seconds: not on the runtime.
        let started = std::time::Instant::now();
        let data = snapshot.into_source().await;
        let (this, m) = (self.clone(), meta.clone());
        let bytes = off_runtime(self.blocking, move || {
            let checked = this.shared.received.lock().take();
            let (state, parts) = match checked {
                Some((id, state, parts)) if id == m.snapshot_id => (state, parts),
                _ => data
                    .with_bytes(|b| State::from_bytes_with_parts(b, this.part_tasks))
                    .map_err(read_err)?
                    .map_err(read_err)?,
            };
            let mut last = None;
            if let Some(ckpt) = &this.ckpt {
                let written = ckpt.replace(&m, &state.snapshot_view()).map_err(write_err)?;
                if written == Written::Kept {
                    tracing::warn!(snapshot = %m.snapshot_id, "the state checkpoint already holds a later state than the snapshot installed; it is kept");
                }
                this.mark_durable(&m);
            } else {
                let reader = data.reader().map_err(write_err)?;
                match this
                    .save_from(&m, reader, data.len(), "tmp", None)
                    .map_err(write_err)?
                {
                    // The next build copies what did not change from the file just written.
                    Some(file) => {
                        last = parts.map(|parts| LastBuild {
                            file: Arc::new(file),
                            start: file_header(&m, data.len()).len() as u64,
                            parts,
                        })
                    }
                    None => tracing::warn!(snapshot = %m.snapshot_id, "the snapshot file already holds a later snapshot than the one installed; it is kept"),
                }
            }
            this.shared.replace(state, &m);
            // The last build's tasks are of the state just replaced.
            *this.last_build.lock() = last;
            let bytes = data.len();
            drop(data);
            return_freed_memory();
            Ok::<_, StorageError>(bytes)
        })
        .await??;
        let m = &self.shared.metrics;
        m.snapshot_install.observe(started.elapsed().as_secs_f64());
        m.snapshot_bytes.set(bytes as i64);
        tracing::info!(snapshot = %meta.snapshot_id, bytes, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        if let Some(ckpt) = &self.ckpt {
            // The last checkpoint's state, kept as an O(1) copy beside the store, serialized
            // for the follower that needs it, off the runtime, into an unnamed temporary file
            // that it is sent from.
            let Some(base) = ckpt.current() else {
                return Ok(None);
            };
            let started = std::time::Instant::now();
            let (blocking, dir) = (self.blocking, self.path.parent().map(Path::to_path_buf));
            let data = off_runtime(self.blocking, move || {
                let data = base.view.to_bytes();
                let Some(dir) = dir.filter(|_| blocking) else {
                    return Ok(Source::Bytes(data));
                };
                let mut file = tempfile::tempfile_in(dir)?;
                file.write_all(&data)?;
                let len = data.len() as u64;
                drop(data);
                return_freed_memory();
                Ok::<_, std::io::Error>(Source::File {
                    file,
                    start: 0,
                    len,
                })
            })
            .await?
            .map_err(read_err)?;
            tracing::info!(snapshot = %base.meta.snapshot_id, bytes = data.len(), ms = started.elapsed().as_millis() as u64, "snapshot serialized from the checkpoint, to send");
            return Ok(Some(Snapshot {
                meta: base.meta,
                snapshot: Box::new(SnapshotData::from_source(data).await.map_err(read_err)?),
            }));
        }
        // Checking hundreds of MiB: not on the runtime, which runs Raft's heartbeats.
        let mut rebuilt = false;
        loop {
            let this = self.clone();
            let opened = off_runtime(self.blocking, move || this.open_to_send()).await??;
            match opened {
                None => return Ok(None),
                Some(Ok((meta, body))) => {
                    return Ok(Some(Snapshot {
                        meta,
                        snapshot: Box::new(
                            SnapshotData::from_source(body).await.map_err(read_err)?,
                        ),
                    }))
                }
                Some(Err(e)) if rebuilt => return Err(self.damaged(e)),
                Some(Err(e)) => {
                    // Never sent on (a follower would refuse it). The state in memory is
                    // sound: build a new snapshot from it, which replaces the damaged file.
                    tracing::error!(path = %self.path.display(), error = %e, "the snapshot file is damaged; building a new one from the state in memory");
                    self.build_file().await?;
                    rebuilt = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Command, Request, TaskSpec};
    use std::time::Duration;

    fn submit_entry(index: u64, id: &str) -> Entry {
        Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Request {
                now_unix_ms: 1,
                cmd: Command::Submit(TaskSpec {
                    id: id.into(),
                    queue: "q".into(),
                    payload: Vec::new(),
                    max_attempts: 1,
                    lease_ttl_ms: 30_000,
                    initial_backoff_ms: 1_000,
                    max_backoff_ms: 60_000,
                }),
            }),
        }
    }

    /// A node may run on one thread: an apply that finds a snapshot build reading the state
    /// must not stop that thread (Raft heartbeats, gRPC) until the build ends, and readers must
    /// still read.
    #[test]
    fn an_apply_behind_a_snapshot_build_leaves_the_thread_running() {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock: Arc<dyn Clock> = Arc::new(crate::clock::SystemClock::default());
        let shared = Arc::new(Shared::new(clock, 100, 1 << 20, 100));
        let mut sm =
            StateMachineStore::open(dir.path().join("snapshot"), shared.clone()).expect("open");
        // The "build": holds a read lock until the runtime says it ran on while the apply
        // waited, or until 5 s have passed.
        let (held_tx, held) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let s2 = shared.clone();
        let build = std::thread::spawn(move || {
            let _reading = s2.read();
            held_tx.send(()).expect("send");
            release_rx.recv_timeout(Duration::from_secs(5)).is_ok()
        });
        held.recv().expect("the build holds the state");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let apply = tokio::spawn(async move { sm.apply(vec![submit_entry(1, "t1")]).await });
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                assert_eq!(
                    shared.read().state.task_count(),
                    0,
                    "applied behind the build"
                );
            }
            assert!(!apply.is_finished(), "the apply waits for the build");
            let _ = release.send(());
            let out = apply.await.expect("join").expect("applied");
            assert_eq!(out.len(), 1);
            assert_eq!(shared.read().state.task_count(), 1);
            assert_eq!(*shared.applied_index.borrow(), 1);
        });
        assert!(
            build.join().expect("build thread"),
            "the runtime stood still while the apply waited for the build"
        );
    }

    /// A damaged snapshot file is never served: the node builds a sound one from its state in
    /// memory (and replaces the file); a node started on a damaged file refuses, naming it.
    #[test]
    fn a_damaged_snapshot_file_is_rebuilt_not_sent_and_refused_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("snapshot");
        let clock: Arc<dyn Clock> = Arc::new(crate::clock::SystemClock::default());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let shared = Arc::new(Shared::new(clock.clone(), 100, 1 << 20, 100));
            let mut sm = StateMachineStore::open(path.clone(), shared.clone()).expect("open");
            sm.apply((1..=5).map(|i| submit_entry(i, &format!("t{i}"))))
                .await
                .expect("apply");
            sm.build_snapshot().await.expect("build");
            let mut bytes = std::fs::read(&path).unwrap();
            let last = bytes.len() - 3;
            bytes[last] ^= 0x55;
            std::fs::write(&path, &bytes).unwrap();
            let served = sm
                .get_current_snapshot()
                .await
                .expect("no storage error")
                .expect("a snapshot");
            let served = bytes_of(served).await;
            let state = State::from_bytes(&served).expect("sound");
            assert_eq!(state.task_count(), 5);
            // The file was replaced by the sound one.
            assert!(sm.read_file().unwrap().is_some_and(|(_, d)| d == served));
            // Damaged again, and opened at start: refused with the path.
            std::fs::write(&path, &bytes).unwrap();
            let e = StateMachineStore::open(
                path.clone(),
                Arc::new(Shared::new(clock, 100, 1 << 20, 100)),
            )
            .err()
            .expect("refused");
            assert!(e.to_string().contains(path.to_str().unwrap()), "{e}");
        });
    }

    /// A build copies the parts of the task list that did not change from the last build's
    /// file, and the file still holds exactly the state's bytes; a part damaged on disk in
    /// between is caught by its CRC as it is copied, and the whole snapshot is encoded again.
    #[test]
    fn a_build_copies_unchanged_parts_from_the_last_file_and_checks_them() {
        const PART_TASKS: usize = 16;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("snapshot");
        runtime().block_on(async {
            let shared = new_shared();
            let mut sm = StateMachineStore::open(path.clone(), shared.clone()).expect("open");
            sm.part_tasks = PART_TASKS;
            let n = 2 * PART_TASKS as u64 + 5;
            sm.apply((1..=n).map(|i| submit_entry(i, &format!("t{i}"))))
                .await
                .expect("apply");
            let file_state = |sm: &StateMachineStore| sm.read_file().unwrap().expect("a file").1;
            let counts = || {
                let m = &shared.metrics;
                (
                    m.snapshot_tasks_copied.get(),
                    m.snapshot_tasks_encoded.get(),
                )
            };
            sm.build_snapshot().await.expect("build");
            assert_eq!(counts(), (0, n), "the first build encodes every task");
            assert_eq!(file_state(&sm), shared.read().state.to_bytes());

            // The oldest task claimed (the first part changes) and ten new tasks (the last).
            sm.apply([claim_entry(n + 1)]).await.expect("apply");
            sm.apply((n + 2..n + 12).map(|i| submit_entry(i, &format!("t{i}"))))
                .await
                .expect("apply");
            sm.build_snapshot().await.expect("build");
            let second = PART_TASKS as u64;
            assert_eq!(
                counts(),
                (second, n + (n + 10 - second)),
                "the untouched second part is copied"
            );
            assert_eq!(file_state(&sm), shared.read().state.to_bytes());

            // A byte of the second part flipped on disk: noticed while copying it.
            let at = {
                let last = sm.last_build.lock();
                let last = last.as_ref().expect("a last build");
                last.start + last.parts[1].offset + 7
            };
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[at as usize] ^= 0x40;
            std::fs::write(&path, &bytes).unwrap();
            sm.apply([submit_entry(n + 20, "late")])
                .await
                .expect("apply");
            let before = counts();
            sm.build_snapshot().await.expect("built anew");
            let after = counts();
            assert_eq!(after.1 - before.1, n + 11, "every task encoded again");
            assert_eq!(file_state(&sm), shared.read().state.to_bytes());
            // A start loads it, and keeps its parts (one here: parts of the default size):
            // its first build copies every task unchanged since, and the file is the state's
            // bytes still.
            drop(sm);
            let again = new_shared();
            let mut sm = StateMachineStore::open(path.clone(), again.clone()).expect("reopen");
            assert_eq!(again.read().state, shared.read().state);
            sm.build_snapshot().await.expect("build");
            let m = &again.metrics;
            assert_eq!(
                (
                    m.snapshot_tasks_copied.get(),
                    m.snapshot_tasks_encoded.get()
                ),
                (n + 11, 0),
                "the parts read at the start are copied"
            );
            assert_eq!(file_state(&sm), again.read().state.to_bytes());
        });
    }

    /// A paced write (several writeback steps, with and without a rate) leaves exactly the
    /// bytes given.
    #[test]
    fn a_paced_snapshot_file_holds_exactly_its_parts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("snapshot.tmp");
        std::fs::write(&path, b"the file before").unwrap();
        let big: Vec<u8> = (0..(WRITEBACK_STEP * 3 + 12_345))
            .map(|i| (i % 251) as u8)
            .collect();
        for rate in [None, Some(1u64 << 30), Some(0)] {
            write_synced(&path, b"head", big.as_slice(), big.len() as u64, rate).expect("written");
            let back = std::fs::read(&path).unwrap();
            assert_eq!(back.len(), 4 + big.len(), "rate {rate:?}");
            assert!(
                back.starts_with(b"head") && back[4..] == big[..],
                "rate {rate:?}"
            );
        }
        // A body shorter than it was said to be is an error, not a short file.
        let e = write_synced(&path, b"head", &big[..10], 11, None).expect_err("short");
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    /// A build runs beside the state machine: when a snapshot from the leader is installed
    /// while a build writes an older one, the build must not replace the installed file (the
    /// log is purged up to the installed snapshot, so a node restarted on the older file would
    /// miss the entries between them).
    #[test]
    fn an_older_snapshot_never_replaces_a_later_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("snapshot");
        let clock: Arc<dyn Clock> = Arc::new(crate::clock::SystemClock::default());
        let sm = StateMachineStore::open(
            path.clone(),
            Arc::new(Shared::new(clock.clone(), 100, 1 << 20, 100)),
        )
        .expect("open");
        let meta = |index: u64| SnapshotMeta {
            last_log_id: Some(openraft::LogId::new(
                openraft::CommittedLeaderId::new(1, 1),
                index,
            )),
            last_membership: StoredMembership::default(),
            snapshot_id: format!("s-{index}"),
        };
        let save = |meta: &SnapshotMeta, data: &[u8], tmp: &str, pace: Option<u64>| {
            sm.save_from(meta, data, data.len() as u64, tmp, pace)
                .map(|f| f.is_some())
        };
        assert!(save(&meta(10), b"ten", "tmp", None).expect("installed"));
        // The build of a view at index 5 finishes after the install.
        assert!(!save(&meta(5), b"five", "build.tmp", Some(1 << 30)).expect("no error"));
        let (m, d) = sm.read_file().unwrap().expect("a file");
        assert_eq!(
            (m.snapshot_id.as_str(), d.as_slice()),
            ("s-10", b"ten".as_slice())
        );
        assert!(!path.with_extension("build.tmp").exists());
        // A later one replaces it.
        assert!(save(&meta(12), b"twelve", "build.tmp", None).expect("saved"));
        assert_eq!(
            sm.read_file().unwrap().expect("a file").0.snapshot_id,
            "s-12"
        );
    }

    #[test]
    fn snapshot_file_parts_are_the_encoded_pair() {
        let meta = SnapshotMeta {
            last_log_id: None,
            last_membership: StoredMembership::default(),
            snapshot_id: "s-1".into(),
        };
        for n in [0usize, 1, 127, 128, 16_383, 16_384, 300_000] {
            let data: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let joined: Vec<u8> = [file_header(&meta, data.len() as u64), data.clone()].concat();
            assert_eq!(joined, codec::encode(&(&meta, &data)), "n = {n}");
            let (m, d): (SnapshotMeta, Vec<u8>) = codec::decode(&joined).unwrap();
            assert_eq!((m, d), (meta.clone(), data));
        }
    }

    async fn bytes_of(s: Snapshot<TypeConfig>) -> Vec<u8> {
        s.snapshot
            .into_source()
            .await
            .into_bytes()
            .expect("readable")
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    fn new_shared() -> Arc<Shared> {
        let clock: Arc<dyn Clock> = Arc::new(crate::clock::SystemClock::default());
        Arc::new(Shared::new(clock, 100, 1 << 20, 100))
    }

    fn claim_entry(index: u64) -> Entry {
        Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Request {
                now_unix_ms: 2,
                cmd: Command::Claim {
                    queue: "q".into(),
                    worker_id: "w".into(),
                    lease_ttl_ms: None,
                    task_id: None,
                    claim_id: format!("c{index}"),
                    secret: 9,
                },
            }),
        }
    }

    /// A checkpointed node restarts into exactly the state it had applied at its last
    /// checkpoint, whole or incremental, and sends that state as its snapshot.
    #[test]
    fn a_checkpointed_state_reopens_as_it_was_checkpointed() {
        let dir = tempfile::tempdir().expect("tempdir");
        runtime().block_on(async {
            let shared = new_shared();
            let mut sm = StateMachineStore::open_checkpointed(dir.path(), shared.clone()).unwrap();
            assert!(sm.get_current_snapshot().await.unwrap().is_none());
            sm.apply((1..=5).map(|i| submit_entry(i, &format!("t{i}"))))
                .await
                .unwrap();
            let first = sm.build_snapshot().await.unwrap().meta;
            assert_eq!(*sm.snapshot_durable().borrow(), first.last_log_id);
            sm.apply([claim_entry(6), claim_entry(7), submit_entry(8, "t8")])
                .await
                .unwrap();
            let second = sm.build_snapshot().await.unwrap().meta;
            assert_eq!(second.last_log_id.unwrap().index, 8);
            let want = shared.read().state.clone();
            // Applied after the last checkpoint: replayed from the log on restart, not here.
            sm.apply([submit_entry(9, "t9")]).await.unwrap();
            let sent = sm
                .get_current_snapshot()
                .await
                .unwrap()
                .expect("a snapshot");
            assert_eq!(sent.meta, second);
            assert_eq!(State::from_bytes(&bytes_of(sent).await).unwrap(), want);
            drop(sm);

            let again = new_shared();
            let mut sm = StateMachineStore::open_checkpointed(dir.path(), again.clone()).unwrap();
            assert_eq!(again.read().state, want);
            assert_eq!(sm.applied_state().await.unwrap().0, second.last_log_id);
            assert_eq!(*sm.snapshot_durable().borrow(), second.last_log_id);
        });
    }

    /// A node of the previous layout (a snapshot file) is converted on start; a checkpointed
    /// node is refused by the file store.
    #[test]
    fn a_snapshot_file_is_converted_to_a_checkpoint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("snapshot");
        runtime().block_on(async {
            let shared = new_shared();
            let mut sm = StateMachineStore::open(path.clone(), shared.clone()).unwrap();
            sm.apply([submit_entry(1, "a"), submit_entry(2, "b"), claim_entry(3)])
                .await
                .unwrap();
            let built = sm.build_snapshot().await.unwrap().meta;
            let want = shared.read().state.clone();
            drop(sm);
            assert!(path.exists());

            let again = new_shared();
            let mut sm = StateMachineStore::open_checkpointed(dir.path(), again.clone()).unwrap();
            assert_eq!(again.read().state, want);
            assert_eq!(sm.applied_state().await.unwrap().0, built.last_log_id);
            assert!(!path.exists(), "the converted file is removed");
            drop(sm);
            let refused = StateMachineStore::open(path.clone(), new_shared())
                .err()
                .unwrap();
            assert!(refused.to_string().contains("--state-store"), "{refused}");
        });
    }

    /// Sends `snap` as openraft's chunked sender reads it (its size from a seek to the end,
    /// then a seek to each offset and a read of up to `chunk` bytes) into `to`'s receiver, and
    /// returns it assembled and checked, as a node hands it to Raft.
    async fn send_in_chunks(
        snap: Snapshot<TypeConfig>,
        to: &Arc<Shared>,
        chunk: usize,
    ) -> Snapshot<TypeConfig> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let id = snap.meta.snapshot_id.clone();
        let mut data = snap.snapshot;
        let end = data.seek(std::io::SeekFrom::End(0)).await.unwrap();
        let mut incoming = to.receive(id.clone()).expect("a spool");
        let mut offset = 0;
        let mut chunks = 0;
        while offset < end {
            data.seek(std::io::SeekFrom::Start(offset)).await.unwrap();
            let mut buf = Vec::with_capacity(chunk);
            while buf.capacity() > buf.len() {
                if data.read_buf(&mut buf).await.unwrap() == 0 {
                    break;
                }
            }
            incoming.write(offset, &buf).await.expect("in order");
            offset += buf.len() as u64;
            chunks += 1;
        }
        assert!(chunks > 3, "{chunks} chunks of {end} bytes");
        let received = incoming.finish().await.expect("finished");
        assert!(
            matches!(received, SnapshotData::File(_)),
            "spooled to a file"
        );
        let checked = to.check_received(id, received).await.expect("sound");
        Snapshot {
            meta: snap.meta,
            snapshot: Box::new(checked),
        }
    }

    /// A snapshot is sent from the leader's snapshot file (or from a checkpoint, through a
    /// temporary file) as a range of that file, read a chunk at a time, and received into a
    /// temporary file: the follower installs exactly the leader's state, its snapshot file is
    /// the leader's byte for byte, and a node restarted on it loads the same state.
    #[test]
    fn a_snapshot_is_sent_and_received_a_chunk_at_a_time_through_files() {
        runtime().block_on(async {
            for checkpointed in [false, true] {
                let (from, to) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
                let leader = new_shared();
                let mut l = if checkpointed {
                    StateMachineStore::open_checkpointed(from.path(), leader.clone()).unwrap()
                } else {
                    StateMachineStore::open(from.path().join("snapshot"), leader.clone()).unwrap()
                };
                l.apply((1..=300).map(|i| submit_entry(i, &format!("task-{i}"))))
                    .await
                    .unwrap();
                l.apply([claim_entry(301)]).await.unwrap();
                l.build_snapshot().await.unwrap();
                let snap = l.get_current_snapshot().await.unwrap().expect("a snapshot");
                assert!(
                    matches!(*snap.snapshot, SnapshotData::File(_)),
                    "sent from a file, not read into memory (checkpointed: {checkpointed})"
                );
                let meta = snap.meta.clone();

                let follower = new_shared();
                let fpath = to.path().join("snapshot");
                let mut f = StateMachineStore::open(fpath.clone(), follower.clone()).unwrap();
                f.apply((1..=3).map(|i| submit_entry(i, &format!("old-{i}"))))
                    .await
                    .unwrap();
                let snap = send_in_chunks(snap, &follower, 4096).await;
                f.install_snapshot(&meta, snap.snapshot).await.unwrap();
                let want = leader.read().state.clone();
                assert_eq!(follower.read().state, want);
                assert_eq!(f.applied_state().await.unwrap().0, meta.last_log_id);
                assert_eq!(*f.snapshot_durable().borrow(), meta.last_log_id);
                if !checkpointed {
                    assert_eq!(
                        std::fs::read(&fpath).unwrap(),
                        std::fs::read(from.path().join("snapshot")).unwrap()
                    );
                }
                // Nothing is left beside the snapshot file: the spool had no name.
                let names: Vec<_> = std::fs::read_dir(to.path())
                    .unwrap()
                    .map(|e| e.unwrap().file_name())
                    .collect();
                assert_eq!(names, ["snapshot"]);
                // The follower's next build copies every task from the file just installed.
                f.build_snapshot().await.unwrap();
                let m = &follower.metrics;
                assert_eq!(
                    (
                        m.snapshot_tasks_copied.get(),
                        m.snapshot_tasks_encoded.get()
                    ),
                    (300, 0),
                    "checkpointed leader: {checkpointed}"
                );
                drop(f);
                let again = new_shared();
                StateMachineStore::open(fpath, again.clone()).unwrap();
                assert_eq!(again.read().state, want);
            }
        });
    }

    /// The receiver takes chunks in order only, up to its limit; a damaged snapshot is refused
    /// once assembled, and nothing of it is kept for an install.
    #[test]
    fn a_received_snapshot_takes_chunks_in_order_and_refuses_damage() {
        use super::super::snapshot_data::{ChunkRefused, Incoming};
        let dir = tempfile::tempdir().unwrap();
        runtime().block_on(async {
            let mut inc = Incoming::new("s".into(), Some(dir.path()), 10).unwrap();
            inc.write(0, b"abcd").await.unwrap();
            assert!(matches!(
                inc.write(5, b"x").await,
                Err(ChunkRefused::OutOfOrder { expected: 4 })
            ));
            assert!(matches!(
                inc.write(0, b"x").await,
                Err(ChunkRefused::OutOfOrder { expected: 4 })
            ));
            inc.write(4, b"efgh").await.unwrap();
            assert!(matches!(
                inc.write(8, b"ijk").await,
                Err(ChunkRefused::TooLarge)
            ));
            let got = inc.finish().await.unwrap().into_source().await;
            assert_eq!(got.into_bytes().unwrap(), b"abcdefgh");

            let shared = new_shared();
            let mut sm =
                StateMachineStore::open(dir.path().join("snapshot"), shared.clone()).unwrap();
            sm.apply((1..=50).map(|i| submit_entry(i, &format!("t{i}"))))
                .await
                .unwrap();
            sm.build_snapshot().await.unwrap();
            let mut bytes = bytes_of(sm.get_current_snapshot().await.unwrap().unwrap()).await;
            let last = bytes.len() - 2;
            bytes[last] ^= 0x10;
            let mut inc = shared.receive("damaged".into()).unwrap();
            inc.write(0, &bytes).await.unwrap();
            let e = shared
                .check_received("damaged".into(), inc.finish().await.unwrap())
                .await
                .err()
                .expect("refused");
            assert!(e.contains("CRC") || e.contains("checksum"), "{e}");
            assert!(shared.received.lock().is_none());
        });
    }

    /// An installed snapshot replaces the checkpoint whole, and a build of an older view that
    /// finishes after it leaves it alone.
    #[test]
    fn an_installed_snapshot_replaces_the_checkpoint() {
        let (from, to) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        runtime().block_on(async {
            let leader = new_shared();
            let mut l = StateMachineStore::open_checkpointed(from.path(), leader.clone()).unwrap();
            l.apply((1..=20).map(|i| submit_entry(i, &format!("l{i}"))))
                .await
                .unwrap();
            l.apply([claim_entry(21)]).await.unwrap();
            l.build_snapshot().await.unwrap();
            let snap = l.get_current_snapshot().await.unwrap().unwrap();

            let follower = new_shared();
            let mut f = StateMachineStore::open_checkpointed(to.path(), follower.clone()).unwrap();
            f.apply((1..=3).map(|i| submit_entry(i, &format!("f{i}"))))
                .await
                .unwrap();
            f.build_snapshot().await.unwrap();
            let stale = f.view_now();
            f.install_snapshot(&snap.meta, snap.snapshot).await.unwrap();
            let want = leader.read().state.clone();
            assert_eq!(follower.read().state, want);
            let ckpt = f.ckpt.clone().unwrap();
            assert_eq!(ckpt.write(&stale.1, &stale.0).unwrap(), Written::Kept);
            drop((f, ckpt));

            let again = new_shared();
            StateMachineStore::open_checkpointed(to.path(), again.clone()).unwrap();
            assert_eq!(again.read().state, want);
        });
    }

    /// The temporary file of a write that a crash stopped is removed at start-up, and the
    /// snapshot file beside it is what loads.
    #[test]
    fn a_leftover_temporary_snapshot_file_is_removed_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("snapshot");
        runtime().block_on(async {
            let shared = new_shared();
            let mut sm = StateMachineStore::open(path.clone(), shared.clone()).unwrap();
            sm.apply([submit_entry(1, "a")]).await.unwrap();
            sm.build_snapshot().await.unwrap();
            let want = shared.read().state.clone();
            drop(sm);
            std::fs::write(path.with_extension("build.tmp"), b"half a snapshot").unwrap();
            let again = new_shared();
            StateMachineStore::open(path.clone(), again.clone()).unwrap();
            assert!(!path.with_extension("build.tmp").exists());
            assert_eq!(again.read().state, want);
        });
    }
}

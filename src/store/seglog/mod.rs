//! The Raft log in append-only segment files, as etcd's WAL and HashiCorp's raft-wal keep it.
//!
//! A directory of segments `{seq:020}.seg`, each starting with the log's metadata (vote,
//! committed and purged ids) and then records in the order they were written: entries,
//! truncations, purges, votes and committed ids (framing and CRC: [`record`]). Nothing is ever
//! rewritten in place: a truncation is a record that drops the entries from an index on, a
//! purge a record that drops those up to one; the memory index maps each live entry to its
//! place on disk, and keeps the most recent entries decoded for the replication that reads them.
//!
//! To ensure correctness:
//! - `append` calls its callback only after an fsync (fdatasync) that started after the batch
//!   was written. A flusher thread runs one fsync for every append waiting (group commit);
//! - `save_vote` and `save_committed` return only once their record is durable (they share the
//!   flusher's fsyncs);
//! - a segment is removed only when every entry in it is purged, every segment after it holds
//!   the metadata at its start, and the purge record is durable: a crash at any point leaves a
//!   log that replays to a state the store acknowledged, or one it had not yet acknowledged;
//! - a write or fsync that fails leaves the store refusing every later write (after a failed
//!   fsync the kernel may have dropped the pages: retrying would acknowledge lost data); a
//!   restart replays the disk as it is.
//!
//! On open, every segment is read back in order. A record that fails its CRC, or is cut short,
//! at the end of the last segment with nothing valid after it is a torn write: the file is cut
//! back to the last valid record, and a warning names what was dropped. Damage anywhere else
//! (an earlier segment, or records that check out after the bad one) is refused with a message
//! saying where; it is never skipped.
mod fs;
mod record;

pub use fs::{Fs, LogFile, OsFs};
pub use record::Meta;

use crate::raft::{codec, Entry, LogId, StorageError, TypeConfig, Vote};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, StorageIOError};
use parking_lot::RwLock;
use record::{COMMITTED, ENTRY, MAGIC, PURGE, STATE, TRUNCATE, VOTE};
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A segment is closed and a new one started once it holds this much.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// Decoded entries kept for reads: the most recent, at most this many...
const CACHE_ENTRIES: usize = 4096;
/// ...and at most this many bytes of them.
const CACHE_BYTES: usize = 16 << 20;
/// A log fsync this slow is worth a warning: it holds up every commit of the node.
const SLOW_FSYNC: std::time::Duration = std::time::Duration::from_millis(100);

fn seg_name(seq: u64) -> String {
    format!("{seq:020}.seg")
}

fn parse_name(name: &str) -> Option<u64> {
    let n = name.strip_suffix(".seg")?;
    (n.len() == 20).then(|| n.parse().ok()).flatten()
}

/// Where a live entry is: the segment, the offset of its record, the payload's length.
#[derive(Clone, Copy, Debug)]
struct Loc {
    seq: u64,
    offset: u64,
    len: u32,
    log_id: LogId,
}

struct Seg<F: Fs> {
    file: Arc<F::File>,
    /// The highest entry index written into it (live or since truncated).
    last: Option<u64>,
    size: u64,
}

/// What readers see, behind one lock held only to look up or publish (never across I/O).
struct Index<F: Fs> {
    /// The index of `locs[0]`.
    first: u64,
    locs: VecDeque<Loc>,
    /// The decoded entries of the last `cache.len()` indexes, with their encoded sizes.
    cache: VecDeque<(Entry, usize)>,
    cache_bytes: usize,
    meta: Meta,
    segs: BTreeMap<u64, Seg<F>>,
}

impl<F: Fs> Index<F> {
    fn new() -> Self {
        Self {
            first: 0,
            locs: VecDeque::new(),
            cache: VecDeque::new(),
            cache_bytes: 0,
            meta: Meta::default(),
            segs: BTreeMap::new(),
        }
    }

    /// One past the last index held (`first` when empty).
    fn end(&self) -> u64 {
        self.first + self.locs.len() as u64
    }

    fn cache_first(&self) -> u64 {
        self.end() - self.cache.len() as u64
    }

    fn last_log_id(&self) -> Option<LogId> {
        self.locs.back().map(|l| l.log_id).or(self.meta.purged)
    }

    /// Drops every entry at `index` and after.
    fn truncate_from(&mut self, index: u64) {
        if index >= self.end() {
            return;
        }
        let cache_first = self.cache_first();
        let keep_cache = index.saturating_sub(cache_first) as usize;
        while self.cache.len() > keep_cache {
            if let Some((_, n)) = self.cache.pop_back() {
                self.cache_bytes -= n;
            }
        }
        self.locs
            .truncate(index.saturating_sub(self.first) as usize);
        if self.locs.is_empty() {
            self.first = index.min(self.first);
        }
    }

    /// Drops every entry up to `id` and records it as purged.
    fn purge(&mut self, id: LogId) {
        if self.meta.purged.is_some_and(|p| p.index >= id.index) {
            return;
        }
        self.meta.purged = Some(id);
        let cache_first = self.cache_first();
        let drop_cache = (id.index + 1)
            .saturating_sub(cache_first)
            .min(self.cache.len() as u64);
        for _ in 0..drop_cache {
            if let Some((_, n)) = self.cache.pop_front() {
                self.cache_bytes -= n;
            }
        }
        let n = (id.index + 1)
            .saturating_sub(self.first)
            .min(self.locs.len() as u64);
        self.locs.drain(..n as usize);
        self.first += n;
        if self.locs.is_empty() {
            self.first = id.index + 1;
        }
    }

    /// Adds the entry at `loc`, after dropping any it replaces. An index past the end is a
    /// gap: refused.
    /// `strict`: the entry must also follow the purged id when the log is empty (not so in a
    /// replay, where the purge record that explains a removed segment may come later).
    fn push(
        &mut self,
        loc: Loc,
        entry: Option<(Entry, usize)>,
        strict: bool,
    ) -> Result<(), String> {
        let i = loc.log_id.index;
        if self.meta.purged.is_some_and(|p| i <= p.index) {
            // Purged already: a segment older than the purge, replayed (openraft's storage
            // suite appends such entries too). Never read.
            return Ok(());
        }
        self.truncate_from(i);
        if strict && self.locs.is_empty() {
            if let Some(p) = self.meta.purged.filter(|p| i != p.index + 1) {
                return Err(format!(
                    "entry {i} does not follow the purged id {}: a gap in the log",
                    p.index
                ));
            }
        }
        if self.locs.is_empty() {
            self.first = i;
            self.cache.clear();
            self.cache_bytes = 0;
        } else if i != self.end() {
            return Err(format!(
                "entry {i} follows entry {}: a gap in the log",
                self.end() - 1
            ));
        }
        self.locs.push_back(loc);
        match entry {
            Some((e, n)) => {
                self.cache.push_back((e, n));
                self.cache_bytes += n;
                while self.cache.len() > CACHE_ENTRIES || self.cache_bytes > CACHE_BYTES {
                    match self.cache.pop_front() {
                        Some((_, n)) => self.cache_bytes -= n,
                        None => break,
                    }
                }
            }
            None => {
                self.cache.clear();
                self.cache_bytes = 0;
            }
        }
        if let Some(s) = self.segs.get_mut(&loc.seq) {
            s.last = Some(s.last.map_or(i, |l| l.max(i)));
        }
        Ok(())
    }
}

/// An append or a metadata write waiting for the fsync.
enum Done {
    Append(LogFlushed<TypeConfig>, usize),
    Wait(tokio::sync::oneshot::Sender<Result<(), String>>),
}

struct Flush<F: Fs> {
    file: Arc<F::File>,
    done: Done,
}

/// The Raft log in segment files on the file layer `F` (see the module docs).
pub struct SegLog<F: Fs> {
    fs: F,
    index: Arc<RwLock<Index<F>>>,
    active_seq: u64,
    active: Arc<F::File>,
    active_size: u64,
    segment_bytes: u64,
    buf: Vec<u8>,
    /// Set by a write or fsync that failed: every later write is refused.
    failed: Arc<AtomicBool>,
    flusher: Option<std::sync::mpsc::Sender<Flush<F>>>,
    metrics: Arc<crate::metrics::NodeMetrics>,
    /// Purges wait for the snapshot file to cover them (see `store::snapshot_covers`).
    snapshot_durable: Option<super::SnapshotDurable>,
}

/// Reads the log while the store appends.
pub struct SegLogReader<F: Fs> {
    index: Arc<RwLock<Index<F>>>,
}

fn err(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::other(msg.into())
}

fn write_err(e: &std::io::Error) -> StorageError {
    StorageIOError::write_logs(e).into()
}

fn read_err(e: &std::io::Error) -> StorageError {
    StorageIOError::read_logs(e).into()
}

impl<F: Fs> SegLog<F> {
    /// Opens the log in `fs`, creating it if the directory holds no segment. Replays every
    /// segment, cuts a torn tail, refuses damage (see the module docs).
    pub fn open(fs: F, metrics: Arc<crate::metrics::NodeMetrics>) -> Result<Self, StorageError> {
        Self::open_with(fs, metrics, SEGMENT_BYTES)
    }

    /// Makes every purge wait until the snapshot file covers it (see `store::snapshot_covers`).
    pub fn purge_after_snapshot(mut self, durable: super::SnapshotDurable) -> Self {
        self.snapshot_durable = Some(durable);
        self
    }

    /// Purges without waiting for a snapshot: for openraft's storage suite, which purges logs no
    /// snapshot covers to test the log store alone. Never on a node.
    pub fn purge_any_time(mut self) -> Self {
        self.snapshot_durable = None;
        self
    }

    /// [`SegLog::open`], closing segments at `segment_bytes` (small in tests, to rotate often).
    pub fn open_with(
        fs: F,
        metrics: Arc<crate::metrics::NodeMetrics>,
        segment_bytes: u64,
    ) -> Result<Self, StorageError> {
        let mut seqs: Vec<u64> = fs
            .list()
            .map_err(|e| read_err(&e))?
            .iter()
            .filter_map(|n| parse_name(n))
            .collect();
        seqs.sort_unstable();
        let mut index = Index::<F>::new();
        let mut active: Option<(u64, Arc<F::File>, u64)> = None;
        for (k, &seq) in seqs.iter().enumerate() {
            let last = k + 1 == seqs.len();
            let name = seg_name(seq);
            let file = fs.open(&name).map_err(|e| read_err(&e))?;
            index.segs.insert(
                seq,
                Seg {
                    file: file.clone(),
                    last: None,
                    size: 0,
                },
            );
            let first_seg = k == 0;
            let scan = record::scan(&*file, |r| replay(&mut index, seq, first_seg, r))
                .map_err(|e| read_err(&e))?
                .map_err(|why| read_err(&err(format!("log segment {name}: {why}: {REFUSED}"))))?;
            let mut size = scan.valid_len;
            if let Some((at, why)) = &scan.bad {
                if !last || scan.valid_after_bad {
                    return Err(read_err(&err(format!(
                        "log segment {name} is damaged at byte {at} ({why}), and {}: {REFUSED}",
                        if last {
                            "records that check out follow it"
                        } else {
                            "later segments follow it"
                        }
                    ))));
                }
                tracing::warn!(
                    segment = %name,
                    at,
                    dropped_bytes = scan.len - scan.valid_len,
                    reason = %why,
                    "the log ends in a torn write: cut back to the last valid record"
                );
                if scan.valid_len < MAGIC.len() as u64 {
                    // Not even its header made it: the segment was being started.
                    index.segs.remove(&seq);
                    drop(file);
                    fs.remove(&name).map_err(|e| write_err(&e))?;
                    fs.sync_dir().map_err(|e| write_err(&e))?;
                    continue;
                }
                file.set_len(scan.valid_len).map_err(|e| write_err(&e))?;
                file.sync().map_err(|e| write_err(&e))?;
                size = scan.valid_len;
            }
            if let Some(s) = index.segs.get_mut(&seq) {
                s.size = size;
            }
            active = Some((seq, file, size));
        }
        if let Some(p) = index.meta.purged {
            index.purge_again(p);
        }
        if let (Some(p), Some(first)) = (index.meta.purged, index.locs.front()) {
            if first.log_id.index != p.index + 1 {
                return Err(read_err(&err(format!(
                    "the log's entries start at {} but it is purged only up to {}: a segment is missing: {REFUSED}",
                    first.log_id.index, p.index
                ))));
            }
        }
        let index = Arc::new(RwLock::new(index));
        let (active_seq, active, active_size) = match active {
            Some(a) => a,
            None => {
                let (file, size) = start_segment(&fs, 1, &Meta::default())?;
                index.write().segs.insert(
                    1,
                    Seg {
                        file: file.clone(),
                        last: None,
                        size,
                    },
                );
                (1, file, size)
            }
        };
        Ok(Self {
            fs,
            index,
            active_seq,
            active,
            active_size,
            segment_bytes,
            buf: Vec::new(),
            failed: Default::default(),
            flusher: None,
            metrics,
            snapshot_durable: None,
        })
    }

    /// The log's metadata as it stands.
    pub fn meta(&self) -> Meta {
        self.index.read().meta
    }

    /// Bytes the segments take on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.index.read().segs.values().map(|s| s.size).sum()
    }

    /// How many segment files the log has.
    pub fn segments(&self) -> usize {
        self.index.read().segs.len()
    }

    fn check(&self) -> Result<(), StorageError> {
        if self.failed.load(Ordering::Acquire) {
            return Err(write_err(&err(
                "an earlier log write or fsync failed; restart the node to replay the log from disk",
            )));
        }
        Ok(())
    }

    /// Appends `self.buf` to the active segment.
    fn write_buf(&mut self) -> Result<(), StorageError> {
        self.check()?;
        if let Err(e) = self.active.append(&self.buf) {
            self.failed.store(true, Ordering::Release);
            return Err(write_err(&e));
        }
        self.active_size += self.buf.len() as u64;
        Ok(())
    }

    /// Writes one metadata record.
    fn write_value<T: serde::Serialize>(&mut self, kind: u8, v: &T) -> Result<(), StorageError> {
        self.rotate_if_full()?;
        self.buf.clear();
        record::frame_value(&mut self.buf, kind, v);
        self.write_buf()?;
        self.publish_size();
        Ok(())
    }

    fn publish_size(&self) {
        if let Some(s) = self.index.write().segs.get_mut(&self.active_seq) {
            s.size = self.active_size;
        }
    }

    /// Closes the active segment once it is full: its writes made durable, a new one started
    /// with the metadata at its head.
    fn rotate_if_full(&mut self) -> Result<(), StorageError> {
        if self.active_size < self.segment_bytes {
            return Ok(());
        }
        self.check()?;
        if let Err(e) = self.active.sync() {
            self.failed.store(true, Ordering::Release);
            return Err(write_err(&e));
        }
        let seq = self.active_seq + 1;
        let meta = self.meta();
        let (file, size) = start_segment(&self.fs, seq, &meta).inspect_err(|_| {
            self.failed.store(true, Ordering::Release);
        })?;
        self.index.write().segs.insert(
            seq,
            Seg {
                file: file.clone(),
                last: None,
                size,
            },
        );
        self.active_seq = seq;
        self.active = file;
        self.active_size = size;
        Ok(())
    }

    /// Hands `done` to whatever makes the active segment durable.
    fn flush(&mut self, done: Done) {
        let file = self.active.clone();
        if let Some(delay) = self.fs.inline_sync() {
            let failed = self.failed.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let res = file.sync().map_err(|e| e.to_string());
                if res.is_err() {
                    failed.store(true, Ordering::Release);
                }
                complete(done, &res);
            });
            return;
        }
        let tx = self.flusher.get_or_insert_with(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            let (metrics, failed) = (self.metrics.clone(), self.failed.clone());
            std::thread::Builder::new()
                .name("log-flush".into())
                .spawn(move || flusher::<F>(rx, metrics, failed))
                .unwrap_or_else(|e| panic!("cannot start the log-flush thread: {e}"));
            tx
        });
        if let Err(std::sync::mpsc::SendError(f)) = tx.send(Flush { file, done }) {
            // The thread is gone: sync here.
            let res = f.file.sync().map_err(|e| e.to_string());
            complete(f.done, &res);
        }
    }

    /// Waits until everything written so far is durable.
    async fn durable(&mut self) -> Result<(), StorageError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.flush(Done::Wait(tx));
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(write_err(&err(e))),
            Err(_) => Err(write_err(&err("the log flusher stopped"))),
        }
    }

    /// Writes `entries` after the log's last (dropping any they replace) and publishes them to
    /// readers; durable once a flush that follows has completed.
    fn write_entries(
        &mut self,
        entries: impl IntoIterator<Item = Entry>,
    ) -> Result<usize, StorageError> {
        self.rotate_if_full()?;
        self.buf.clear();
        let mut placed = Vec::new();
        for e in entries {
            let offset = self.active_size + self.buf.len() as u64;
            let Some(n) = record::frame_entry(&mut self.buf, &e) else {
                return Err(write_err(&err(format!(
                    "entry {} encodes to more than {} bytes, the most a log record holds",
                    e.log_id,
                    record::MAX_RECORD
                ))));
            };
            let loc = Loc {
                seq: self.active_seq,
                offset,
                len: n as u32,
                log_id: e.log_id,
            };
            placed.push((loc, e, n));
        }
        self.write_buf()?;
        let count = placed.len();
        let mut ix = self.index.write();
        for (loc, e, n) in placed {
            if let Err(why) = ix.push(loc, Some((e, n)), true) {
                self.failed.store(true, Ordering::Release);
                return Err(write_err(&err(why)));
            }
        }
        if let Some(s) = ix.segs.get_mut(&self.active_seq) {
            s.size = self.active_size;
        }
        Ok(count)
    }

    /// Appends `entries` and returns once they are durable: for conversion and tests, where
    /// no Raft callback waits.
    pub async fn append_durable(&mut self, entries: Vec<Entry>) -> Result<(), StorageError> {
        self.write_entries(entries)?;
        self.durable().await
    }

    /// Writes `meta` as the log's metadata (the purged id first, so that entries after it
    /// follow): for conversion. Durable after [`SegLog::sync_now`].
    pub fn import_meta(&mut self, meta: &Meta) -> Result<(), StorageError> {
        if let Some(p) = meta.purged {
            self.write_value(PURGE, &p)?;
            self.index.write().purge(p);
        }
        if let Some(v) = meta.vote {
            self.write_value(VOTE, &v)?;
            self.index.write().meta.vote = Some(v);
        }
        self.write_value(COMMITTED, &meta.committed)?;
        self.index.write().meta.committed = meta.committed;
        Ok(())
    }

    /// Writes entries after the last: for conversion. Durable after [`SegLog::sync_now`].
    pub fn import_entries(&mut self, entries: Vec<Entry>) -> Result<(), StorageError> {
        self.write_entries(entries).map(|_| ())
    }

    /// Makes everything written durable, on this thread.
    pub fn sync_now(&mut self) -> Result<(), StorageError> {
        self.check()?;
        if let Err(e) = self.active.sync() {
            self.failed.store(true, Ordering::Release);
            return Err(write_err(&e));
        }
        Ok(())
    }

    /// Removes the oldest segments whose entries are all purged (never the active one).
    fn remove_purged_segments(&mut self) -> Result<(), StorageError> {
        let purged = match self.index.read().meta.purged {
            Some(p) => p.index,
            None => return Ok(()),
        };
        let doomed: Vec<u64> = self
            .index
            .read()
            .segs
            .iter()
            .take_while(|(seq, s)| **seq < self.active_seq && s.last.map_or(true, |l| l <= purged))
            .map(|(seq, _)| *seq)
            .collect();
        if doomed.is_empty() {
            return Ok(());
        }
        // The purge record first: once a segment is gone, only it says where the log starts.
        if let Err(e) = self.active.sync() {
            self.failed.store(true, Ordering::Release);
            return Err(write_err(&e));
        }
        for seq in doomed {
            self.index.write().segs.remove(&seq);
            self.fs.remove(&seg_name(seq)).map_err(|e| write_err(&e))?;
        }
        self.fs.sync_dir().map_err(|e| write_err(&e))?;
        Ok(())
    }
}

/// What a refusal to open tells the operator to do.
const REFUSED: &str = "refusing to start on a damaged log. Move this node's data directory aside \
and rejoin the node empty (docs/OPERATIONS.md, \"Replacing a node\"): it catches up from the leader";

impl<F: Fs> Index<F> {
    /// The purged id applied once more after replay, for entries of segments older than it.
    fn purge_again(&mut self, p: LogId) {
        self.meta.purged = None;
        self.purge(p);
    }
}

/// Applies one record read back from segment `seq` to the index being rebuilt.
fn replay<F: Fs>(
    index: &mut Index<F>,
    seq: u64,
    first_seg: bool,
    r: record::Read,
) -> Result<(), String> {
    let bad = |e: postcard::Error| format!("a record that checks out but does not decode ({e})");
    match r.kind {
        ENTRY => {
            let e: Entry = codec::decode(&r.payload).map_err(bad)?;
            let loc = Loc {
                seq,
                offset: r.offset,
                len: r.payload.len() as u32,
                log_id: e.log_id,
            };
            index.push(loc, None, false)
        }
        TRUNCATE => {
            index.truncate_from(codec::decode::<u64>(&r.payload).map_err(bad)?);
            Ok(())
        }
        PURGE => {
            index.purge(codec::decode::<LogId>(&r.payload).map_err(bad)?);
            Ok(())
        }
        VOTE => {
            index.meta.vote = Some(codec::decode::<Vote>(&r.payload).map_err(bad)?);
            Ok(())
        }
        COMMITTED => {
            index.meta.committed = codec::decode::<Option<LogId>>(&r.payload).map_err(bad)?;
            Ok(())
        }
        STATE => {
            let m: Meta = codec::decode(&r.payload).map_err(bad)?;
            // The first segment's header is where the log starts; later headers repeat what
            // the records before them said.
            if first_seg {
                index.meta = m;
            }
            Ok(())
        }
        k => Err(format!("record kind {k} is unknown")),
    }
}

/// Creates segment `seq` with its header and `meta`, durable (file and directory) on return.
fn start_segment<F: Fs>(
    fs: &F,
    seq: u64,
    meta: &Meta,
) -> Result<(Arc<F::File>, u64), StorageError> {
    let file = fs.create(&seg_name(seq)).map_err(|e| write_err(&e))?;
    let mut buf = MAGIC.to_vec();
    record::frame_value(&mut buf, STATE, meta);
    file.append(&buf).map_err(|e| write_err(&e))?;
    file.sync().map_err(|e| write_err(&e))?;
    fs.sync_dir().map_err(|e| write_err(&e))?;
    Ok((file, buf.len() as u64))
}

fn complete(done: Done, res: &Result<(), String>) {
    match done {
        Done::Append(cb, _) => cb.log_io_completed(res.clone().map_err(std::io::Error::other)),
        Done::Wait(tx) => {
            let _ = tx.send(res.clone());
        }
    }
}

/// One fsync per distinct file for every flush waiting, then their completion in order. On its
/// own thread: an append wakes it directly, with no runtime hand-off between write and fsync.
fn flusher<F: Fs>(
    rx: std::sync::mpsc::Receiver<Flush<F>>,
    metrics: Arc<crate::metrics::NodeMetrics>,
    failed: Arc<AtomicBool>,
) {
    let mut waiting: Vec<Flush<F>> = Vec::new();
    while let Ok(first) = rx.recv() {
        waiting.push(first);
        while let Ok(more) = rx.try_recv() {
            waiting.push(more);
        }
        let started = std::time::Instant::now();
        let mut res = Ok(());
        let mut synced: Vec<&Arc<F::File>> = Vec::new();
        for w in &waiting {
            if res.is_ok() && !synced.iter().any(|f| Arc::ptr_eq(f, &w.file)) {
                res = w.file.sync().map_err(|e| e.to_string());
                synced.push(&w.file);
            }
        }
        let took = started.elapsed();
        if res.is_err() {
            failed.store(true, Ordering::Release);
        }
        let entries: usize = waiting
            .iter()
            .map(|w| match w.done {
                Done::Append(_, n) => n,
                Done::Wait(_) => 0,
            })
            .sum();
        metrics.log_fsync.observe(took.as_secs_f64());
        metrics.log_append_batch.observe(entries as f64);
        if took >= SLOW_FSYNC {
            tracing::warn!(
                ms = took.as_millis() as u64,
                waiting = waiting.len(),
                "slow log fsync: the disk is saturated or shared with heavier writers"
            );
        }
        for w in waiting.drain(..) {
            complete(w.done, &res);
        }
    }
}

/// The entries of `range` from the index: cached ones cloned, the rest read from their
/// segments (outside the lock) and checked against their CRC.
fn read_entries<F: Fs, RB: RangeBounds<u64>>(
    index: &RwLock<Index<F>>,
    range: RB,
) -> Result<Vec<Entry>, StorageError> {
    let (cached, on_disk) = {
        let ix = index.read();
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        }
        .max(ix.first);
        let end = match range.end_bound() {
            Bound::Included(x) => x.saturating_add(1),
            Bound::Excluded(x) => *x,
            Bound::Unbounded => u64::MAX,
        }
        .min(ix.end());
        if start >= end {
            return Ok(Vec::new());
        }
        let cache_first = ix.cache_first();
        let disk_end = end.min(cache_first.max(start));
        let mut on_disk = Vec::new();
        for i in start..disk_end {
            let l = ix.locs[(i - ix.first) as usize];
            let file = match ix.segs.get(&l.seq) {
                Some(s) => s.file.clone(),
                None => {
                    return Err(read_err(&err(format!(
                        "entry {i}'s segment {} is gone",
                        l.seq
                    ))))
                }
            };
            on_disk.push((l, file));
        }
        let cached: Vec<Entry> = (disk_end.max(start)..end)
            .map(|i| ix.cache[(i - cache_first) as usize].0.clone())
            .collect();
        (cached, on_disk)
    };
    let mut out = Vec::with_capacity(on_disk.len() + cached.len());
    for (l, file) in on_disk {
        let payload = record::read_record(&*file, l.offset, ENTRY, l.len as usize)
            .map_err(|e| read_err(&e))?
            .map_err(|why| read_err(&err(why)))?;
        let e: Entry = codec::decode(&payload).map_err(|e| read_err(&err(e.to_string())))?;
        if e.log_id != l.log_id {
            return Err(read_err(&err(format!(
                "the record at byte {} holds entry {} where the index expects {}",
                l.offset, e.log_id, l.log_id
            ))));
        }
        out.push(e);
    }
    out.extend(cached);
    Ok(out)
}

impl<F: Fs> RaftLogReader<TypeConfig> for SegLogReader<F> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        read_entries(&self.index, range)
    }
}

impl<F: Fs> RaftLogReader<TypeConfig> for SegLog<F> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        read_entries(&self.index, range)
    }
}

impl<F: Fs> RaftLogStorage<TypeConfig> for SegLog<F> {
    type LogReader = SegLogReader<F>;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let ix = self.index.read();
        Ok(LogState {
            last_purged_log_id: ix.meta.purged,
            last_log_id: ix.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        SegLogReader {
            index: self.index.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.write_value(VOTE, vote)?;
        self.index.write().meta.vote = Some(*vote);
        self.durable().await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.index.read().meta.vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.write_value(COMMITTED, &committed)?;
        self.index.write().meta.committed = committed;
        self.durable().await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.index.read().meta.committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let count = self.write_entries(entries)?;
        self.flush(Done::Append(callback, count));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.write_value(TRUNCATE, &log_id.index)?;
        self.index.write().truncate_from(log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        super::snapshot_covers(&mut self.snapshot_durable, log_id).await?;
        self.write_value(PURGE, &log_id)?;
        self.index.write().purge(log_id);
        self.remove_purged_segments()
    }
}

#[cfg(test)]
mod tests;

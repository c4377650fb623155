//! The Raft log and vote in sled: the layout before segment files, kept to convert from (and to
//! measure against, `--log-store sled`).
//!
//! To ensure correctness:
//! - `append` calls its callback only after the batch is flushed (fsync) to disk, so openraft
//!   never counts an entry as replicated before it is durable;
//! - `save_vote` returns only after the vote is flushed.
//!
//! Log entries live in tree `log` under their big-endian index; vote, committed and purged ids
//! in tree `meta`. One sled database holds both, so one flush covers a truncation, the appends
//! after it and the committed id.
//!
//! Purging is logical first, physical later: `purge` records the purged id (every read skips the
//! entries at or below it from then on) and hands the deletion to a purger thread that removes
//! the keys one by one. Deleting a snapshot's worth of entries (20 000 by default) in one sled
//! batch took 120–130 ms under sled's global write lock, stalling the node's event loop and every
//! append and flush behind it; one key at a time, appends and flushes interleave with it. A
//! crash mid-purge leaves keys below the purged id, which reads ignore and the next purge removes.
//!
//! Group commit: `append` writes the batch into sled and hands its callback to a flusher task.
//! The flusher takes every callback waiting, runs one fsync, then completes them in order; the
//! fsync covers every batch written before it started. While one fsync runs, the next batches
//! pile up behind it, so under load many appends share one fsync.
use crate::raft::{codec, Entry, LogId, StorageError, TypeConfig, Vote};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, StorageIOError};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

#[derive(Clone)]
pub struct SledLog {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    /// The flusher thread, started on first append; it ends when the last clone is dropped.
    flusher: std::sync::Arc<std::sync::OnceLock<std::sync::mpsc::Sender<Flush>>>,
    /// The purger thread (started on first purge), told the index to delete up to.
    purger: std::sync::Arc<std::sync::OnceLock<std::sync::mpsc::Sender<u64>>>,
    /// The last purged id (kept in `meta` too): reads skip every entry at or below it, whether or
    /// not the purger has deleted it yet.
    purged: std::sync::Arc<parking_lot::Mutex<Option<LogId>>>,
    metrics: std::sync::Arc<crate::metrics::NodeMetrics>,
    /// Purges wait for the snapshot file to cover them (see `store::snapshot_covers`).
    snapshot_durable: Option<super::SnapshotDurable>,
}

/// Deletes the log keys up to each index it is sent, one key at a time (see the module docs).
fn purger(log: sled::Tree, rx: std::sync::mpsc::Receiver<u64>) {
    use std::sync::mpsc::TryRecvError;
    let mut next: Option<u64> = None;
    loop {
        let mut up_to = match next.take() {
            Some(i) => i,
            None => match rx.recv() {
                Ok(i) => i,
                Err(_) => return,
            },
        };
        while let Ok(more) = rx.try_recv() {
            up_to = up_to.max(more);
        }
        for (n, k) in log.range(..=key(up_to)).keys().enumerate() {
            if let Err(e) = k.and_then(|k| log.remove(k)) {
                tracing::warn!(error = %e, up_to, "purging the log failed; the next purge retries");
                break;
            }
            // The store was dropped (node stopping): let the database close now; the keys left
            // are skipped by reads and removed by the next purge.
            if n % 256 == 255 {
                match rx.try_recv() {
                    Err(TryRecvError::Disconnected) => return,
                    Ok(more) => next = Some(next.map_or(more, |i| i.max(more))),
                    Err(TryRecvError::Empty) => {}
                }
            }
        }
    }
}

/// One fsync for every callback waiting, then their completion in order. Runs on its own
/// thread: an append wakes it directly, with no runtime task or blocking-pool hand-off between
/// the write and the fsync.
fn flusher(
    db: sled::Db,
    metrics: std::sync::Arc<crate::metrics::NodeMetrics>,
    rx: std::sync::mpsc::Receiver<Flush>,
) {
    let mut waiting = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut entries = first.entries;
        waiting.push(first.callback);
        while let Ok(more) = rx.try_recv() {
            entries += more.entries;
            waiting.push(more.callback);
        }
        let started = std::time::Instant::now();
        let res = db.flush();
        let took = started.elapsed();
        metrics.log_fsync.observe(took.as_secs_f64());
        metrics.log_append_batch.observe(entries as f64);
        if took >= SLOW_FSYNC {
            // Every commit of this node waited this long (etcd warns of a "slow fdatasync" too).
            tracing::warn!(
                ms = took.as_millis() as u64,
                appends = waiting.len(),
                "slow log fsync: the disk is saturated or shared with heavier writers"
            );
        }
        for cb in waiting.drain(..) {
            match &res {
                Ok(_) => cb.log_io_completed(Ok(())),
                Err(e) => cb.log_io_completed(Err(std::io::Error::other(e.to_string()))),
            }
        }
    }
}

/// An append waiting for the fsync: its callback, and how many entries it wrote.
struct Flush {
    callback: LogFlushed<TypeConfig>,
    entries: usize,
}

/// The sender of the thread kept in `cell`, which is started (as `run` on its receiver) on first
/// use; the thread ends once the last sender is dropped.
fn helper_thread<'a, T: Send + 'static>(
    cell: &'a std::sync::OnceLock<std::sync::mpsc::Sender<T>>,
    name: &str,
    run: impl FnOnce(std::sync::mpsc::Receiver<T>) + Send + 'static,
) -> &'a std::sync::mpsc::Sender<T> {
    cell.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(rx))
            .unwrap_or_else(|e| panic!("cannot start the {name} thread: {e}"));
        tx
    })
}

/// A log fsync this slow is worth a warning: it holds up every commit of the node.
const SLOW_FSYNC: std::time::Duration = std::time::Duration::from_millis(100);

fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn io<E: std::error::Error + 'static>(e: E) -> StorageError {
    StorageIOError::write(&e).into()
}

impl SledLog {
    /// Makes every purge wait until the snapshot file covers it (see `store::snapshot_covers`).
    pub fn purge_after_snapshot(mut self, durable: super::SnapshotDurable) -> Self {
        self.snapshot_durable = Some(durable);
        self
    }

    pub fn new(
        db: sled::Db,
        metrics: std::sync::Arc<crate::metrics::NodeMetrics>,
    ) -> Result<Self, StorageError> {
        let log = db.open_tree("log").map_err(io)?;
        let meta = db.open_tree("meta").map_err(io)?;
        let store = Self {
            db,
            log,
            meta,
            flusher: Default::default(),
            purger: Default::default(),
            purged: Default::default(),
            metrics,
            snapshot_durable: None,
        };
        *store.purged.lock() = store.get_meta::<Option<LogId>>("last_purged")?.flatten();
        Ok(store)
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, k: &str) -> Result<Option<T>, StorageError> {
        match self.meta.get(k).map_err(|e| StorageIOError::read(&e))? {
            None => Ok(None),
            Some(v) => Ok(Some(
                codec::decode(&v).map_err(|e| StorageIOError::read(&e))?,
            )),
        }
    }

    fn put_meta<T: serde::Serialize>(&self, k: &str, v: &T) -> Result<(), StorageError> {
        self.meta.insert(k, codec::encode(v)).map_err(io)?;
        Ok(())
    }

    async fn flush(&self) -> Result<(), StorageError> {
        self.db.flush_async().await.map_err(io)?;
        Ok(())
    }

    /// Removes the log entries whose keys fall in `range`, in one atomic batch.
    fn remove_range<R: RangeBounds<[u8; 8]>>(&self, range: R) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for k in self.log.range(range).keys() {
            batch.remove(k.map_err(|e| StorageIOError::read_logs(&e))?);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    /// The first index that is not purged.
    fn first_kept(&self) -> u64 {
        self.purged.lock().map_or(0, |p| p.index + 1)
    }

    /// What the log holds, for conversion: vote, committed and purged ids, and the live
    /// entries in index order.
    pub(super) fn export(
        &self,
    ) -> Result<
        (
            super::seglog::Meta,
            impl Iterator<Item = Result<Entry, StorageError>> + '_,
        ),
        StorageError,
    > {
        let meta = super::seglog::Meta {
            vote: self.get_meta("vote")?,
            committed: self.get_meta::<Option<LogId>>("committed")?.flatten(),
            purged: *self.purged.lock(),
        };
        let entries = self.log.range(key(self.first_kept())..).map(|kv| {
            let (_, v) = kv.map_err(|e| StorageIOError::read_logs(&e))?;
            Ok(codec::decode::<Entry>(&v).map_err(|e| StorageIOError::read_logs(&e))?)
        });
        Ok((meta, entries))
    }

    /// Bytes the database takes on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

impl RaftLogReader<TypeConfig> for SledLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        // Entries below the first kept index are purged, deleted by the purger or not yet.
        let first_kept = self.first_kept();
        let start = match range.start_bound() {
            Bound::Included(x) if *x >= first_kept => Bound::Included(key(*x)),
            Bound::Excluded(x) if *x >= first_kept => Bound::Excluded(key(*x)),
            _ => Bound::Included(key(first_kept)),
        };
        let end = match range.end_bound() {
            Bound::Included(x) => Bound::Included(key(*x)),
            Bound::Excluded(x) => Bound::Excluded(key(*x)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for kv in self.log.range::<[u8; 8], _>((start, end)) {
            let (_, v) = kv.map_err(|e| StorageIOError::read_logs(&e))?;
            let e: Entry = codec::decode(&v).map_err(|e| StorageIOError::read_logs(&e))?;
            out.push(e);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for SledLog {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged = *self.purged.lock();
        let last = match self.log.last().map_err(|e| StorageIOError::read_logs(&e))? {
            // The last key may be one the purger has not deleted yet.
            Some((k, v)) if k.as_ref() >= key(self.first_kept()).as_slice() => Some(
                codec::decode::<Entry>(&v)
                    .map_err(|e| StorageIOError::read_logs(&e))?
                    .log_id,
            ),
            _ => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.meta
            .insert("vote", codec::encode(vote))
            .map_err(|e| StorageIOError::write_vote(&e))?;
        self.db
            .flush_async()
            .await
            .map_err(|e| StorageIOError::write_vote(&e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta("vote")
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not flushed here: the next append's flush carries it. A lost committed id only means
        // fewer entries are re-applied at start-up, until the leader says again.
        self.put_meta("committed", &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>("committed")?.flatten())
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
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for e in entries {
            batch.insert(&key(e.log_id.index), codec::encode(&e));
            n += 1;
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        // Durable before openraft hears of it: the flusher completes the callback after an
        // fsync that started after this write.
        let (db, metrics) = (self.db.clone(), self.metrics.clone());
        let tx = helper_thread(&self.flusher, "log-flush", move |rx| {
            flusher(db, metrics, rx)
        });
        if let Err(e) = tx.send(Flush {
            callback,
            entries: n,
        }) {
            // The flusher is gone (shutting down): flush here.
            self.flush().await?;
            e.0.callback.log_io_completed(Ok(()));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.remove_range(key(log_id.index)..)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        super::snapshot_covers(&mut self.snapshot_durable, log_id).await?;
        self.put_meta("last_purged", &Some(log_id))?;
        *self.purged.lock() = Some(log_id);
        let log = self.log.clone();
        let tx = helper_thread(&self.purger, "log-purge", move |rx| purger(log, rx));
        if tx.send(log_id.index).is_err() {
            // The purger is gone (shutting down): delete here.
            self.remove_range(..=key(log_id.index))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};
    use std::time::{Duration, Instant};

    fn log_id(index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    /// Writes entries straight into the tree, as appends (or keys a crash left behind) would.
    fn put(store: &SledLog, indexes: impl IntoIterator<Item = u64>) {
        for i in indexes {
            let e = Entry {
                log_id: log_id(i),
                payload: EntryPayload::Blank,
            };
            store.log.insert(key(i), codec::encode(&e)).unwrap();
        }
    }

    async fn indexes(store: &mut SledLog) -> Vec<u64> {
        let got = store.try_get_log_entries(0..=1000).await.unwrap();
        got.iter().map(|e| e.log_id.index).collect()
    }

    fn wait_deleted(store: &SledLog, up_to: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.log.range(..=key(up_to)).next().is_some() {
            assert!(
                Instant::now() < deadline,
                "purger did not delete up to {up_to}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[tokio::test]
    async fn purged_entries_are_never_read_and_are_deleted_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let mut store = SledLog::new(db.clone(), Default::default()).unwrap();
        put(&store, 1..=100);

        store.purge(log_id(60)).await.unwrap();
        // At once, whether or not the keys are gone yet.
        assert_eq!(indexes(&mut store).await, (61..=100).collect::<Vec<_>>());
        let st = store.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id, Some(log_id(60)));
        assert_eq!(st.last_log_id, Some(log_id(100)));
        wait_deleted(&store, 60);

        // Keys below the purged id that a crash left behind: skipped after a restart too...
        put(&store, 10..=20);
        drop(store);
        let mut store = SledLog::new(db.clone(), Default::default()).unwrap();
        assert_eq!(indexes(&mut store).await, (61..=100).collect::<Vec<_>>());
        assert_eq!(
            store.try_get_log_entries(15..70).await.unwrap()[0].log_id,
            log_id(61)
        );

        // ...and removed by the next purge. Purging everything leaves the purged id as the last.
        store.purge(log_id(100)).await.unwrap();
        assert!(indexes(&mut store).await.is_empty());
        let st = store.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id, Some(log_id(100)));
        assert_eq!(st.last_log_id, Some(log_id(100)));
        wait_deleted(&store, 100);
        assert_eq!(store.log.len(), 0);
    }
}

//! Durable storage: the Raft log in segment files ([`seglog`]), the state machine in memory with
//! atomic snapshot files on disk, or checkpointed in sled ([`checkpoint`], `--state-store sled`).
//!
//! Why the state machine is applied in memory, not in sled: every entry is applied to the pure
//! [`crate::state::State`], and durability comes from the log (fsynced before any
//! acknowledgement) plus snapshots or checkpoints, written off the apply path. On restart the
//! node loads its last snapshot or checkpoint and openraft re-applies the committed log after
//! it. Logs are purged only up to a snapshot or checkpoint that is already durable.
//!
//! Layout under the data directory: `raftlog/` (segments), `snapshot` (the last snapshot) or
//! `state/` (the checkpoint store). A log of the previous layout (`sled/`, the Raft log in sled)
//! is converted on start ([`open`]); `--log-store sled` keeps running on it, for comparison. A
//! snapshot file is converted to a checkpoint when a node starts with `--state-store sled`.
pub mod checkpoint;
mod events;
mod log;
pub mod seglog;
mod sm;
pub mod snapshot_data;
mod verdicts;

pub use events::{EventLog, WatchError};
pub use log::SledLog;
pub use seglog::{OsFs, SegLog};
pub use sm::{Applied, Shared, StateMachineStore};
pub use snapshot_data::SnapshotData;
pub use verdicts::{Verdict, VerdictKind, Verdicts, VERDICTS_KEPT};

pub use crate::node::StateStoreKind;
use crate::raft::StorageError;
use openraft::StorageIOError;
use std::path::Path;

/// The node's Raft log store: segment files on the machine's disk.
pub type LogStore = SegLog<OsFs>;

fn io(e: std::io::Error) -> StorageError {
    StorageIOError::write(&e).into()
}

/// The last log id of the snapshot that is durable in the node's snapshot file, as the state
/// machine store publishes it.
pub type SnapshotDurable = tokio::sync::watch::Receiver<Option<crate::raft::LogId>>;

/// How long a purge waits for the snapshot that covers it to be durable.
const PURGE_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Waits until the snapshot file covers `upto`, before the log is purged up to it.
///
/// openraft (0.9) purges a follower's log up to a snapshot received from the leader as soon as
/// it hands the snapshot to the state machine, not once the state machine has written it: a
/// crash in between would leave a snapshot file older than the log's start, and a node that
/// cannot start. So a purge waits here for the install to be durable. Refused after
/// [`PURGE_WAIT`] (the install failed): the log is then never purged past its snapshot.
async fn snapshot_covers(
    durable: &mut Option<SnapshotDurable>,
    upto: crate::raft::LogId,
) -> Result<(), StorageError> {
    let Some(rx) = durable else {
        return Ok(());
    };
    let covered = |d: &Option<crate::raft::LogId>| d.is_some_and(|d| d.index >= upto.index);
    match tokio::time::timeout(PURGE_WAIT, rx.wait_for(covered)).await {
        Ok(Ok(_)) => Ok(()),
        _ => Err(io(std::io::Error::other(format!(
            "the log was to be purged up to {upto}, but no snapshot that covers it was written \
             in {} s: the log is kept",
            PURGE_WAIT.as_secs()
        )))),
    }
}

/// Opens (or creates) the node's storage under `dir`, converting a log of the previous layout
/// first (see [`convert_sled_log`]).
pub fn open(
    dir: &Path,
    shared: std::sync::Arc<Shared>,
) -> Result<(LogStore, StateMachineStore), StorageError> {
    open_with(dir, shared, seglog::SEGMENT_BYTES, StateStoreKind::File)
}

/// The state machine store of `kind` under `dir`.
fn open_state(
    dir: &Path,
    shared: std::sync::Arc<Shared>,
    kind: StateStoreKind,
) -> Result<StateMachineStore, StorageError> {
    match kind {
        StateStoreKind::Sled => StateMachineStore::open_checkpointed(dir, shared),
        StateStoreKind::File => StateMachineStore::open(dir.join("snapshot"), shared),
    }
}

/// [`open`], closing log segments at `segment_bytes`, the state in a store of `state`.
pub fn open_with(
    dir: &Path,
    shared: std::sync::Arc<Shared>,
    segment_bytes: u64,
    state: StateStoreKind,
) -> Result<(LogStore, StateMachineStore), StorageError> {
    std::fs::create_dir_all(dir).map_err(io)?;
    let (log_dir, sled_dir) = (dir.join("raftlog"), dir.join("sled"));
    if sled_dir.exists() {
        if log_dir.exists() {
            // A conversion that finished but was stopped before removing the old log.
            tracing::info!(dir = %sled_dir.display(), "removing the sled log left by a finished conversion");
            std::fs::remove_dir_all(&sled_dir).map_err(io)?;
        } else {
            convert_sled_log(dir, shared.metrics.clone())?;
        }
    }
    let log = SegLog::open_with(
        OsFs::new(&log_dir).map_err(io)?,
        shared.metrics.clone(),
        segment_bytes,
    )?;
    let sm = open_state(dir, shared, state)?;
    let log = log.purge_after_snapshot(sm.snapshot_durable());
    Ok((log, sm))
}

/// Opens the previous layout's log (`sled/` under `dir`), for `--log-store sled`. Refuses a
/// directory already converted to segments.
pub fn open_sled(
    dir: &Path,
    shared: std::sync::Arc<Shared>,
    state: StateStoreKind,
) -> Result<(SledLog, StateMachineStore), StorageError> {
    std::fs::create_dir_all(dir).map_err(io)?;
    if dir.join("raftlog").exists() {
        return Err(io(std::io::Error::other(format!(
            "{} holds a segment log (raftlog/): --log-store sled runs only on the sled layout, \
             and nothing converts back; start without --log-store",
            dir.display()
        ))));
    }
    let log = SledLog::new(open_sled_db(&dir.join("sled"))?, shared.metrics.clone())?;
    let sm = open_state(dir, shared, state)?;
    let log = log.purge_after_snapshot(sm.snapshot_durable());
    Ok((log, sm))
}

fn open_sled_db(path: &Path) -> Result<sled::Db, StorageError> {
    sled::Config::new()
        .path(path)
        .cache_capacity(64 * 1024 * 1024)
        .flush_every_ms(None)
        .open()
        .map_err(|e| StorageIOError::write(&e).into())
}

/// Converts the sled log under `dir/sled` into segment files under `dir/raftlog`.
///
/// Crash-safe at every step: the segments are written and made durable under
/// `raftlog.converting/`, which is then renamed to `raftlog/` (the directory synced), and only
/// then is `sled/` removed. A crash before the rename leaves the sled log, converted again on
/// the next start; after it, the segment log, and the old log is removed on the next start.
pub fn convert_sled_log(
    dir: &Path,
    metrics: std::sync::Arc<crate::metrics::NodeMetrics>,
) -> Result<(), StorageError> {
    let started = std::time::Instant::now();
    let (tmp, log_dir, sled_dir) = (
        dir.join("raftlog.converting"),
        dir.join("raftlog"),
        dir.join("sled"),
    );
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io)?;
    }
    let old = SledLog::new(open_sled_db(&sled_dir)?, metrics.clone())?;
    let (meta, entries) = old.export()?;
    let mut new = SegLog::open(OsFs::new(&tmp).map_err(io)?, metrics)?;
    let mut count = 0u64;
    let mut chunk = Vec::new();
    new.import_meta(&meta)?;
    for e in entries {
        chunk.push(e?);
        if chunk.len() == 1024 {
            count += chunk.len() as u64;
            new.import_entries(std::mem::take(&mut chunk))?;
        }
    }
    count += chunk.len() as u64;
    new.import_entries(chunk)?;
    new.sync_now()?;
    drop(new);
    drop(old);
    std::fs::rename(&tmp, &log_dir).map_err(io)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    std::fs::remove_dir_all(&sled_dir).map_err(io)?;
    tracing::info!(
        entries = count,
        ms = started.elapsed().as_millis() as u64,
        "converted the Raft log from sled to segment files"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::storage::RaftLogStorage;

    /// A purge waits until the snapshot that covers it is durable (a follower's install), and
    /// goes on at once when it already is (a build).
    #[test]
    fn a_purge_waits_for_the_snapshot_that_covers_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tx, rx) = tokio::sync::watch::channel(None);
        let mut log = SegLog::open(OsFs::new(dir.path()).expect("fs"), Default::default())
            .expect("open")
            .purge_after_snapshot(rx);
        let id = |index| openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            tx.send_replace(Some(id(5)));
            log.purge(id(5)).await.expect("covered: purged at once");
            let mut purge = Box::pin(log.purge(id(10)));
            let waited =
                tokio::time::timeout(std::time::Duration::from_millis(200), &mut purge).await;
            assert!(waited.is_err(), "purged past the snapshot on disk");
            tx.send_replace(Some(id(12)));
            purge.await.expect("purged once the snapshot is durable");
            drop(log);
        });
    }
}

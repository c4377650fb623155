//! Durable storage: the Raft log and vote in sled, the state machine in memory with atomic
//! snapshot files on disk.
//!
//! Why the state machine is not a sled tree: every entry is applied in memory (the pure
//! [`crate::state::State`]), and durability comes from the log (fsynced before any
//! acknowledgement) plus snapshots. On restart the node loads its last snapshot and openraft
//! re-applies the committed log after it. This keeps sled out of the apply path; logs are
//! purged only up to a snapshot that is already on disk.
mod events;
mod log;
mod sm;
mod verdicts;

pub use events::{EventLog, WatchError};
pub use log::LogStore;
pub use sm::{Applied, Shared, StateMachineStore};
pub use verdicts::{Verdict, VerdictKind, Verdicts, VERDICTS_KEPT};

use std::path::Path;

/// Opens (or creates) the node's storage under `dir`.
pub fn open(
    dir: &Path,
    shared: std::sync::Arc<Shared>,
) -> Result<(LogStore, StateMachineStore), crate::raft::StorageError> {
    std::fs::create_dir_all(dir).map_err(|e| openraft::StorageIOError::write(&e))?;
    let db = sled::Config::new()
        .path(dir.join("sled"))
        .cache_capacity(64 * 1024 * 1024)
        .flush_every_ms(None)
        .open()
        .map_err(|e| openraft::StorageIOError::write(&e))?;
    let log = LogStore::new(db, shared.metrics.clone())?;
    let sm = StateMachineStore::open(dir.join("snapshot"), shared)?;
    Ok((log, sm))
}

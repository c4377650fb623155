//! The pure state machine: tasks, leases, expiry votes and events.
//!
//! This module decides; it performs no I/O and reads no clock, so every node that applies the
//! same log reaches the same state. Storage, network and time live outside and call in.
mod index;
mod invariants;
mod leases;
mod machine;
mod operator;
mod snapshot;
mod types;

pub use machine::{
    backoff_ms, entry_revision, last_revision_of_entry, Effects, EndedLease, HeardLease,
    LateSuccess, State, VoterConfigs, HISTORY_LIMIT, MAX_BATCH_COMMANDS, REVISIONS_PER_ENTRY,
};
pub use snapshot::{
    Part, Parts, Piece, Plan, Record, SnapshotError, SnapshotView, PART_TASKS, SNAPSHOT_MAGIC,
};
pub use types::*;

#[cfg(test)]
mod tests;

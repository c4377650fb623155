//! leasekeeper: replicated task and lease state for schedulers.
//!
//! A task whose process exited 0 is recorded as SUCCEEDED, whatever the network, a leader
//! failover or one node's clock does. See `docs/DESIGN.md`.
pub mod clock;
pub mod raft;
pub mod state;
pub mod store;

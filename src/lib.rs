//! leasekeeper: replicated task and lease state for schedulers.
//!
//! A task whose process exited 0 is recorded as SUCCEEDED, whatever the network, a leader
//! failover or one node's clock does. See `docs/DESIGN.md`.
pub mod api;
pub mod cli;
pub mod client;
pub mod clock;
pub mod node;
pub mod proto;
pub mod raft;
pub mod server;
pub mod state;
pub mod store;

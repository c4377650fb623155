//! leasekeeper: replicated task and lease state for schedulers.
//!
//! A task whose process exited 0 is recorded as SUCCEEDED, whatever the network, a leader
//! failover or one node's clock does. See `docs/DESIGN.md`.

// `tonic::Status` and openraft's `StorageError` are the error types of the APIs we implement;
// boxing them at every call site would only add allocations on the error path.
#![allow(clippy::result_large_err)]
pub mod api;
pub mod auth;
pub mod bench;
pub mod cli;
pub mod client;
pub mod clock;
pub mod dash;
pub mod http;
pub mod metrics;
pub mod node;
pub mod proto;
pub mod raft;
pub mod server;
pub mod sim;
pub mod state;
pub mod store;
pub mod tls;
pub mod trace;
pub mod worker;

//! leasekeeper: replicated task and lease state for schedulers.
pub mod state;

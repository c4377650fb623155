//! Deterministic simulation of a whole cluster: real nodes (openraft, the state machine, group
//! commit, forwarding, expiry voting) on a simulated network, simulated disks and simulated
//! per-node clocks, with workers and a scheduler as clients — all on one thread in simulated
//! time, every choice drawn from one seed, so a failing seed replays exactly.
//!
//! What is simulated and what is real: the nodes are the production `Node`; only the
//! [`Transport`](crate::raft::network::Transport) (here [`net::SimNet`]), the file layer under
//! the real segment log ([`disk::SimDisk`], which loses unsynced writes on a crash, keeping a
//! torn part of them) and the clocks ([`net::SimClock`]) are replaced. Snapshot files are real files in a temporary directory.
//! The gRPC layer is not in the loop (the real-cluster tests cover it).
//!
//! Checked on every run ([`cluster::run`]): no lease expires less than a TTL after its holder's
//! last acknowledged renewal was sent; the state machine's own invariants on every node all the
//! time (one live lease per task, tokens only grow, terminal states final); no acknowledged
//! submit, success or cancel lost or changed; every client history is linearizable
//! ([`lincheck`]); every task finishes once the faults heal, and a dead worker's lease expires;
//! all nodes converge on the same state.
mod checks;
mod clients;
pub mod cluster;
pub mod disk;
mod faults;
pub mod lincheck;
pub mod net;

pub use cluster::{run, SimConfig, SimReport};

//! A node's configuration: identity, addresses, storage, Raft timing and request limits.
use crate::raft::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Bounds that every request is checked against at the API edge.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    pub min_ttl_ms: u64,
    pub max_ttl_ms: u64,
    pub default_ttl_ms: u64,
    pub max_payload_bytes: usize,
    pub max_result_bytes: usize,
    pub default_max_attempts: u32,
    pub max_attempts_cap: u32,
    pub default_initial_backoff_ms: u64,
    pub default_max_backoff_ms: u64,
    pub max_wait_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            min_ttl_ms: 2_000,
            max_ttl_ms: 24 * 3_600_000,
            default_ttl_ms: 30_000,
            max_payload_bytes: 1 << 20,
            max_result_bytes: 1 << 20,
            default_max_attempts: 3,
            max_attempts_cap: 100,
            default_initial_backoff_ms: 1_000,
            default_max_backoff_ms: 60_000,
            max_wait_ms: 30_000,
        }
    }
}

/// Raft timing. The minimum TTL must exceed an election timeout plus two renew intervals
/// (TTL/3 each), so that a leader failover never eats a lease: `min_ttl_ms > 3 * election_max`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RaftTiming {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Build a snapshot after this many entries since the last one.
    pub snapshot_every_entries: u64,
    /// Entries kept in the log behind a snapshot (for followers that lag a little).
    pub keep_after_snapshot: u64,
}

impl Default for RaftTiming {
    fn default() -> Self {
        Self {
            heartbeat_ms: 100,
            election_min_ms: 400,
            election_max_ms: 600,
            snapshot_every_entries: 20_000,
            keep_after_snapshot: 1_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeConfig {
    pub id: NodeId,
    /// Address to bind (all gRPC services share it).
    pub listen: String,
    /// Address other nodes and clients use to reach this node; defaults to `listen`.
    pub advertise: Option<String>,
    pub data_dir: PathBuf,
    /// The founding members (id → address). A node in it with an empty log bootstraps the
    /// cluster; a node not in it waits to be added with `AddNode`.
    pub initial_cluster: BTreeMap<NodeId, String>,
    pub raft: RaftTiming,
    pub limits: Limits,
    /// Change events kept in memory for watchers to resume from.
    pub event_retention: usize,
    /// Events buffered per node for live watchers; a watcher that falls further behind is
    /// resumed from the retained events (slower, but nothing is skipped).
    pub watch_live_buffer: usize,
    /// How long finished (SUCCEEDED/FAILED/CANCELLED) tasks are kept before they are forgotten;
    /// 0 keeps them forever. A submit with a forgotten id creates a new task, so keep this
    /// longer than any scheduler may retry a submit.
    pub terminal_retention_ms: u64,
    /// How long a write or linearizable read waits for a leader before answering UNAVAILABLE.
    pub request_timeout_ms: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            id: 1,
            listen: "127.0.0.1:7001".into(),
            advertise: None,
            data_dir: PathBuf::from(".leasekeeper/node-1"),
            initial_cluster: BTreeMap::new(),
            raft: RaftTiming::default(),
            limits: Limits::default(),
            event_retention: 100_000,
            watch_live_buffer: 4096,
            terminal_retention_ms: 7 * 24 * 3600 * 1000,
            request_timeout_ms: 5_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("min_ttl_ms {min} must exceed 3 × election_max_ms ({e}) so that a leader failover cannot eat a lease: raise min_ttl_ms to at least {need}")]
    TtlBelowFailover { min: u64, e: u64, need: u64 },
    #[error("{0}")]
    Invalid(String),
}

impl NodeConfig {
    pub fn advertise(&self) -> String {
        self.advertise
            .clone()
            .unwrap_or_else(|| self.listen.clone())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let r = &self.raft;
        if !(r.heartbeat_ms > 0
            && r.heartbeat_ms < r.election_min_ms
            && r.election_min_ms < r.election_max_ms)
        {
            return Err(ConfigError::Invalid(format!(
                "raft timing needs 0 < heartbeat_ms ({}) < election_min_ms ({}) < election_max_ms ({})",
                r.heartbeat_ms, r.election_min_ms, r.election_max_ms
            )));
        }
        let l = &self.limits;
        if l.min_ttl_ms <= 3 * r.election_max_ms {
            return Err(ConfigError::TtlBelowFailover {
                min: l.min_ttl_ms,
                e: r.election_max_ms,
                need: 3 * r.election_max_ms + 1,
            });
        }
        if !(l.min_ttl_ms <= l.default_ttl_ms && l.default_ttl_ms <= l.max_ttl_ms) {
            return Err(ConfigError::Invalid(format!(
                "ttl bounds need min_ttl_ms ({}) <= default_ttl_ms ({}) <= max_ttl_ms ({})",
                l.min_ttl_ms, l.default_ttl_ms, l.max_ttl_ms
            )));
        }
        if l.default_max_attempts == 0 || l.default_max_attempts > l.max_attempts_cap {
            return Err(ConfigError::Invalid(
                "default_max_attempts must be in 1..=max_attempts_cap".into(),
            ));
        }
        if !self.initial_cluster.is_empty() && !self.initial_cluster.contains_key(&self.id) {
            return Err(ConfigError::Invalid(format!(
                "initial_cluster does not name this node's id {}: add `{}={}` or leave initial_cluster empty to join with AddNode",
                self.id,
                self.id,
                self.advertise()
            )));
        }
        Ok(())
    }

    /// Settings for fast tests: short elections and TTLs.
    pub fn for_tests(id: NodeId, data_dir: PathBuf) -> Self {
        Self {
            id,
            data_dir,
            raft: RaftTiming {
                heartbeat_ms: 50,
                election_min_ms: 150,
                election_max_ms: 300,
                snapshot_every_entries: 20_000,
                keep_after_snapshot: 500,
            },
            limits: Limits {
                min_ttl_ms: 1_000,
                default_ttl_ms: 3_000,
                default_initial_backoff_ms: 50,
                default_max_backoff_ms: 1_000,
                ..Limits::default()
            },
            ..Self::default()
        }
    }
}

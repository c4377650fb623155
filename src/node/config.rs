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
    /// The longest retry back-off a task may ask for (initial or maximum).
    pub max_backoff_cap_ms: u64,
    pub max_wait_ms: u64,
    /// Watch streams open on this node at most; past it WatchTasks answers RESOURCE_EXHAUSTED.
    pub max_watchers: usize,
    /// Heartbeat streams open on this node at most; past it Heartbeat answers
    /// RESOURCE_EXHAUSTED.
    pub max_heartbeat_streams: usize,
    /// A watch whose client has not taken an event for this long, while events wait for it,
    /// is ended (it holds memory for a reader that is gone or stuck).
    pub stream_stall_ms: u64,
    /// A ListTasks page holds at most about this many bytes of tasks (and always one task).
    pub max_page_bytes: usize,
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
            max_backoff_cap_ms: 24 * 3_600_000,
            max_wait_ms: 30_000,
            max_watchers: 1024,
            max_heartbeat_streams: 8192,
            stream_stall_ms: 30_000,
            max_page_bytes: 4 << 20,
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

/// The secret every member of a cluster shares; peer calls prove it (see
/// [`crate::raft::peer_auth`]). Never printed: its `Debug` is redacted and it is not serialized.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct ClusterSecret(String);

impl ClusterSecret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for ClusterSecret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeConfig {
    pub id: NodeId,
    /// Address the client port binds: the public API, health and reflection.
    pub listen: String,
    /// Address clients use to reach this node; defaults to `listen`.
    pub advertise: Option<String>,
    /// Address the peer port binds: Raft RPCs and forwarding between members only (like etcd's
    /// peer URLs). Never the same as `listen`.
    pub peer_listen: String,
    /// Address other members use to reach this node's peer port; defaults to `peer_listen`.
    /// This is the address the membership records.
    pub peer_advertise: Option<String>,
    /// The cluster's name: peers of another cluster are refused even with the same secret.
    pub cluster_name: String,
    /// The secret every member shares (at least 16 bytes). Prefer `cluster_secret_file`.
    pub cluster_secret: Option<ClusterSecret>,
    /// A file holding the cluster secret (surrounding whitespace is ignored).
    pub cluster_secret_file: Option<PathBuf>,
    pub data_dir: PathBuf,
    /// The founding members (id → peer address). A node in it with an empty log bootstraps the
    /// cluster; a node not in it waits to be added with `AddNode`.
    pub initial_cluster: BTreeMap<NodeId, String>,
    pub raft: RaftTiming,
    pub limits: Limits,
    /// Change events kept in memory for watchers to resume from.
    pub event_retention: usize,
    /// The most bytes (estimated) the retained events may take; the oldest go first.
    pub event_retention_bytes: usize,
    /// Events buffered per node for live watchers; a watcher that falls further behind is
    /// resumed from the retained events (slower, but nothing is skipped).
    pub watch_live_buffer: usize,
    /// How long finished (SUCCEEDED/FAILED/CANCELLED) tasks are kept before they are forgotten;
    /// 0 keeps them forever. A submit with a forgotten id creates a new task, so keep this
    /// longer than any scheduler may retry a submit.
    pub terminal_retention_ms: u64,
    /// How long a write or linearizable read waits for a leader before answering UNAVAILABLE.
    pub request_timeout_ms: u64,
    /// TLS on the client port: its certificate chain (PEM). With `key_file`.
    pub cert_file: Option<PathBuf>,
    /// The client port's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// The CA (PEM) client certificates must chain to.
    pub trusted_ca_file: Option<PathBuf>,
    /// Require a client certificate signed by `trusted_ca_file` on the client port.
    pub client_cert_auth: bool,
    /// TLS on the peer port: this member's certificate (PEM), which must name it as
    /// `node-<id>.<cluster_name>` (and the host others dial) and serves both as its server and
    /// its client certificate.
    pub peer_cert_file: Option<PathBuf>,
    pub peer_key_file: Option<PathBuf>,
    /// The CA (PEM) other members' certificates must chain to. Required with peer TLS.
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Require members to present their certificate (mTLS). On by default with peer TLS; only
    /// turn it off behind another layer that authenticates members.
    pub peer_client_cert_auth: bool,
    /// Principals, their tokens (hashed) and grants (`leasekeeper auth` writes it). Every call
    /// on the client port but health must then name a principal allowed to make it. Reloaded
    /// when it changes.
    pub auth_file: Option<PathBuf>,
    /// The HTTP listener for the dashboard, `/metrics` (Prometheus) and `/health`: plain HTTP,
    /// apart from the gRPC ports (etcd's `--listen-metrics-urls`). None: no listener.
    pub metrics_listen: Option<String>,
    /// Serve the web dashboard on the HTTP listener.
    pub dashboard: bool,
    /// A trace UI's address for one trace, `{trace_id}` standing for the id (e.g.
    /// `http://jaeger:16686/trace/{trace_id}`): the dashboard links each task's trace there.
    pub trace_url: Option<String>,
    /// Queues that get their own metric series; the rest share one (`queue="(other)"`).
    pub metrics_max_queues: usize,
    /// A node whose clock runs at a rate off by more than this fraction against most other
    /// voters' (0.1: 10 %) judges its own clock off, warns, and casts no expiry votes until it
    /// is back within the bound. 0 turns the check off.
    pub clock_rate_bound: f64,
    /// Where the Raft log lives: segment files (the default), or the previous layout's sled
    /// tree, kept to measure against.
    pub log_store: LogStoreKind,
    /// Where the state machine's durable copy lives (`--state-store`).
    pub state_store: StateStoreKind,
    /// A Raft log segment is closed and a new one started at this size (bytes, at least 4 KiB).
    pub log_segment_bytes: u64,
}

/// The Raft log's store (`--log-store`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogStoreKind {
    /// Append-only segment files under `raftlog/` (a sled log of the previous layout is
    /// converted on start).
    #[default]
    Segments,
    /// The previous layout, the log in a sled tree under `sled/`: for comparison only; a
    /// directory already converted is refused.
    Sled,
}

/// The state machine's durable copy (`--state-store`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StateStoreKind {
    /// Whole snapshot files (`snapshot`), written atomically at every build.
    #[default]
    File,
    /// Checkpoints in a sled tree under `state/`, written incrementally (a snapshot file is
    /// converted on start). Not the default yet: docs/PERFORMANCE.md, "The state checkpoint in
    /// sled", has what it costs.
    Sled,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            id: 1,
            listen: "127.0.0.1:7001".into(),
            advertise: None,
            peer_listen: "127.0.0.1:7101".into(),
            peer_advertise: None,
            cluster_name: "leasekeeper".into(),
            cluster_secret: None,
            cluster_secret_file: None,
            data_dir: PathBuf::from(".leasekeeper/node-1"),
            initial_cluster: BTreeMap::new(),
            raft: RaftTiming::default(),
            limits: Limits::default(),
            event_retention: 100_000,
            event_retention_bytes: 256 << 20,
            watch_live_buffer: 4096,
            terminal_retention_ms: 7 * 24 * 3600 * 1000,
            request_timeout_ms: 5_000,
            cert_file: None,
            key_file: None,
            trusted_ca_file: None,
            client_cert_auth: false,
            peer_cert_file: None,
            peer_key_file: None,
            peer_trusted_ca_file: None,
            peer_client_cert_auth: true,
            auth_file: None,
            metrics_listen: None,
            dashboard: true,
            trace_url: None,
            metrics_max_queues: crate::metrics::DEFAULT_MAX_QUEUES,
            clock_rate_bound: 0.1,
            log_store: LogStoreKind::Segments,
            state_store: StateStoreKind::File,
            log_segment_bytes: crate::store::seglog::SEGMENT_BYTES,
        }
    }
}

fn tls_files(
    prefix: &str,
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
    ca: &Option<PathBuf>,
    client_cert_auth: bool,
) -> Result<Option<crate::tls::TlsFiles>, ConfigError> {
    match (cert, key) {
        (Some(cert), Some(key)) => {
            if prefix.is_empty() && client_cert_auth && ca.is_none() {
                return Err(ConfigError::Invalid(
                    "client_cert_auth needs trusted_ca_file (--trusted-ca-file): the CA client \
                     certificates must chain to"
                        .into(),
                ));
            }
            Ok(Some(crate::tls::TlsFiles {
                cert_file: cert.clone(),
                key_file: key.clone(),
                trusted_ca_file: ca.clone(),
                client_cert_auth,
            }))
        }
        (None, None) => {
            if ca.is_some() || (prefix.is_empty() && client_cert_auth) {
                return Err(ConfigError::Invalid(format!(
                    "{prefix}trusted_ca_file / {prefix}client_cert_auth need TLS: add \
                     {prefix}cert_file and {prefix}key_file (--{}cert-file, --{}key-file)",
                    prefix.replace('_', "-"),
                    prefix.replace('_', "-")
                )));
            }
            Ok(None)
        }
        _ => Err(ConfigError::Invalid(format!(
            "TLS needs both {prefix}cert_file and {prefix}key_file (--{}cert-file, --{}key-file)",
            prefix.replace('_', "-"),
            prefix.replace('_', "-")
        ))),
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

    /// The address the membership records for this node: its peer port.
    pub fn peer_advertise(&self) -> String {
        self.peer_advertise
            .clone()
            .unwrap_or_else(|| self.peer_listen.clone())
    }

    /// The client port's TLS settings, if it serves TLS.
    pub fn client_tls(&self) -> Result<Option<crate::tls::TlsFiles>, ConfigError> {
        tls_files(
            "",
            &self.cert_file,
            &self.key_file,
            &self.trusted_ca_file,
            self.client_cert_auth,
        )
    }

    /// The peer port's TLS settings, if it serves TLS (members then dial each other with TLS
    /// too, presenting the same certificate).
    pub fn peer_tls(&self) -> Result<Option<crate::tls::TlsFiles>, ConfigError> {
        let t = tls_files(
            "peer_",
            &self.peer_cert_file,
            &self.peer_key_file,
            &self.peer_trusted_ca_file,
            self.peer_client_cert_auth,
        )?;
        if t.as_ref().is_some_and(|t| t.trusted_ca_file.is_none()) {
            return Err(ConfigError::Invalid(
                "peer TLS needs peer_trusted_ca_file (--peer-trusted-ca-file): the CA every \
                 member's certificate chains to"
                    .into(),
            ));
        }
        Ok(t)
    }

    /// How this member dials the others' peer ports.
    pub fn peer_client_tls(&self) -> Result<Option<crate::tls::ClientTlsFiles>, ConfigError> {
        Ok(self.peer_tls()?.map(|t| crate::tls::ClientTlsFiles {
            ca_file: t.trusted_ca_file,
            cert_file: Some(t.cert_file),
            key_file: Some(t.key_file),
        }))
    }

    /// The cluster secret, from `cluster_secret` or else `cluster_secret_file`.
    pub fn secret(&self) -> Result<ClusterSecret, ConfigError> {
        let s =
            match (&self.cluster_secret, &self.cluster_secret_file) {
                (Some(s), _) => s.clone(),
                (None, Some(path)) => {
                    let text = std::fs::read_to_string(path).map_err(|e| {
                        ConfigError::Invalid(format!(
                            "cannot read the cluster secret file {}: {e}",
                            path.display()
                        ))
                    })?;
                    ClusterSecret(text.trim().to_string())
                }
                (None, None) => return Err(ConfigError::Invalid(
                    "no cluster secret: members prove themselves to each other with a secret they \
                     share. Create one (e.g. `head -c 32 /dev/urandom | base64 > cluster-secret`), \
                     copy it to every member and pass --cluster-secret-file (TOML: \
                     cluster_secret_file), or set LEASEKEEPER_CLUSTER_SECRET"
                        .into(),
                )),
            };
        if s.0.len() < crate::raft::peer_auth::MIN_SECRET_BYTES {
            return Err(ConfigError::Invalid(format!(
                "the cluster secret is {} bytes, the minimum is {}: use a longer one",
                s.0.len(),
                crate::raft::peer_auth::MIN_SECRET_BYTES
            )));
        }
        Ok(s)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(4096..=1 << 30).contains(&self.log_segment_bytes) {
            return Err(ConfigError::Invalid(format!(
                "log_segment_bytes {} must be between 4096 and 1073741824 (default 64 MiB)",
                self.log_segment_bytes
            )));
        }
        self.client_tls()?;
        self.peer_tls()?;
        if !(0.0..1.0).contains(&self.clock_rate_bound) {
            return Err(ConfigError::Invalid(format!(
                "clock_rate_bound is {}: give a fraction from 0 (off) to below 1 (0.1 = 10 %)",
                self.clock_rate_bound
            )));
        }
        if self.metrics_max_queues == 0 || self.metrics_max_queues > 10_000 {
            return Err(ConfigError::Invalid(format!(
                "metrics_max_queues is {}: give 1 to 10000 (queues past it share one series)",
                self.metrics_max_queues
            )));
        }
        if let Some(u) = &self.trace_url {
            let ok = (u.starts_with("http://") || u.starts_with("https://"))
                && u.contains("{trace_id}")
                && u.len() <= 512
                && !u.contains(['"', '<', '>', ' ']);
            if !ok {
                return Err(ConfigError::Invalid(format!(
                    "trace_url {:?} must be an http(s) address of at most 512 characters holding {{trace_id}}, e.g. http://jaeger:16686/trace/{{trace_id}}",
                    crate::api::validate::clip(u)
                )));
            }
        }
        if let Some(a) = &self.metrics_listen {
            check_addr(a).map_err(|e| ConfigError::Invalid(format!("metrics_listen: {e}")))?;
        }
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
        if r.snapshot_every_entries < 10 {
            return Err(ConfigError::Invalid(format!(
                "snapshot_every_entries is {}: give at least 10 (default 20000); each one is a checkpoint (with --state-store file, a whole snapshot file)",
                r.snapshot_every_entries
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
        if l.default_initial_backoff_ms > l.max_backoff_cap_ms
            || l.default_max_backoff_ms > l.max_backoff_cap_ms
        {
            return Err(ConfigError::Invalid(format!(
                "default back-offs ({} / {} ms) must not exceed max_backoff_cap_ms ({})",
                l.default_initial_backoff_ms, l.default_max_backoff_ms, l.max_backoff_cap_ms
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
                self.peer_advertise()
            )));
        }
        if self.id == 0 {
            return Err(ConfigError::Invalid(
                "node id 0 is reserved: pick a positive id".into(),
            ));
        }
        for (id, addr) in &self.initial_cluster {
            check_addr(addr)
                .map_err(|e| ConfigError::Invalid(format!("initial_cluster member {id}: {e}")))?;
            if *id == 0 {
                return Err(ConfigError::Invalid(
                    "initial_cluster names node 0, which is reserved: pick positive ids".into(),
                ));
            }
        }
        if self.peer_listen == self.listen {
            return Err(ConfigError::Invalid(format!(
                "peer_listen and listen are both {}: the peer port (Raft, members only) and the \
                 client port must differ, e.g. --listen host:7001 --peer-listen host:7101",
                self.listen
            )));
        }
        check_addr(&self.peer_advertise())
            .map_err(|e| ConfigError::Invalid(format!("peer address: {e}")))?;
        if self.cluster_name.is_empty()
            || self.cluster_name.len() > 64
            || !self
                .cluster_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        {
            return Err(ConfigError::Invalid(format!(
                "cluster_name {:?} is invalid: use 1-64 characters from A-Z a-z 0-9 _ . -",
                crate::api::validate::clip(&self.cluster_name)
            )));
        }
        self.secret()?;
        Ok(())
    }

    /// Settings for fast tests: short elections and TTLs, and a fixed cluster secret.
    pub fn for_tests(id: NodeId, data_dir: PathBuf) -> Self {
        Self {
            id,
            data_dir,
            cluster_secret: Some(ClusterSecret::new(TEST_CLUSTER_SECRET)),
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

/// The cluster secret of [`NodeConfig::for_tests`] (and of the test suites' server processes).
pub const TEST_CLUSTER_SECRET: &str = "leasekeeper-test-cluster-secret";

/// The longest address accepted, in bytes (a DNS name is at most 253).
pub const MAX_ADDR_LEN: usize = 261;

/// Checks an address that members dial: `host:port`, the host an IP address (IPv6 in
/// brackets) or a DNS name, the port 1-65535. Whatever enters the membership is dialled by
/// every later leader, so nothing else may enter it.
pub fn check_addr(addr: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "address {:?} is not host:port ({why}): give e.g. 10.0.0.4:7101 or node4.example:7101",
            crate::api::validate::clip(addr)
        ))
    };
    if addr.len() > MAX_ADDR_LEN {
        return bad("too long");
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return bad("no port");
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return bad("the port must be 1-65535"),
    }
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else if host.parse::<std::net::Ipv4Addr>().is_ok() {
        true
    } else {
        !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
    };
    if !host_ok {
        return bad("the host must be an IP address or a DNS name");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_addr;

    #[test]
    fn only_dialable_addresses_pass() {
        for ok in [
            "127.0.0.1:7101",
            "[::1]:7101",
            "node-4.example.com:1",
            "sim-3:1",
        ] {
            assert_eq!(check_addr(ok), Ok(()), "{ok}");
        }
        let long = format!("{}:1", "a".repeat(300));
        for bad in [
            "",
            "a b:1",
            "host",
            "host:0",
            "host:65536",
            ":7101",
            "[::1:7101",
            "-a:1",
            "a..b:1",
            "http://x:1",
            "ex ample:80",
            "10.0.0.1:port",
            &long,
        ] {
            assert!(check_addr(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_snapshot_policy_that_would_snapshot_every_entry_is_refused() {
        let mut c = super::NodeConfig::for_tests(1, std::env::temp_dir().join("lk-config-test"));
        assert!(c.validate().is_ok());
        c.raft.snapshot_every_entries = 0;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("snapshot_every_entries is 0"), "{e}");
        c.raft.snapshot_every_entries = 10;
        assert!(c.validate().is_ok());
    }
}

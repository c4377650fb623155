//! One leasekeeper node: Raft, storage, the gRPC server, and the node's own duties (voting on
//! expiry from its own clock, coalescing renewals, forwarding writes to the leader).
mod commit;
mod config;
mod duties;
pub mod history;
mod observe;

pub use config::{
    check_addr, ClusterSecret, ConfigError, Limits, LogStoreKind, NodeConfig, RaftTiming,
    StateStoreKind, TEST_CLUSTER_SECRET,
};

use crate::clock::{Clock, SystemClock};
use crate::raft::network::{Channels, GrpcTransport, Network, PeerCall, PeerError, Transport};
use crate::raft::peer_auth::{PeerKey, PeerRefusal, Refusals};
use crate::raft::{
    codec, ClientWriteError, Node as RaftNode, NodeId, Raft, RaftError, RaftMetrics, TypeConfig,
};
use crate::state::{Command, RenewOutcome, Request, Response, Token};
use crate::store::{self, Shared, StateMachineStore};
use commit::{Coalescer, Commands, Renewals, Submitter};
use openraft::storage::RaftLogStorage;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Errors of the node's own duties, mapped to gRPC statuses at the API edge.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NodeError {
    #[error("no leader could be reached within {0} ms: the cluster may have lost its majority or be electing; retry")]
    NoLeader(u64),
    #[error("the request reached leader {leader} but its outcome is unknown ({detail}); retrying an idempotent call is safe")]
    Unknown { leader: NodeId, detail: String },
    #[error("this node is shutting down: {0}")]
    Stopped(String),
    #[error("raft refused the request: {0}")]
    Raft(String),
    #[error("this node is overloaded: {0} requests are already waiting to be committed; retry with back-off, or spread the load over more nodes")]
    Overloaded(usize),
}

/// A forwarded proposal's answer (encoded once and sent; never kept around).
#[derive(Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum ProposeReply {
    Applied(Response),
    NotLeader,
    Failed(String),
}

/// A forwarded read-index request's answer.
#[derive(Serialize, Deserialize)]
pub(crate) enum ReadIndexReply {
    Index(u64),
    NotLeader,
    Failed(String),
}

/// What a node is built from besides its configuration and storage.
pub struct Parts {
    pub clock: Arc<dyn Clock>,
    pub transport: Arc<dyn Transport>,
}

pub struct Node {
    pub id: NodeId,
    pub config: NodeConfig,
    pub raft: Raft,
    pub shared: Arc<Shared>,
    pub clock: Arc<dyn Clock>,
    /// The cluster's peer credentials: outgoing calls are signed with them, incoming ones
    /// verified against them (`api::raft_service`).
    pub peer_key: PeerKey,
    /// Peer calls refused (non-members, wrong secret), counted and logged once per source.
    pub refusals: Refusals,
    /// Proposes (leader) or forwards (follower) stamped requests: the end of the commit path.
    submitter: Submitter,
    /// The commit path: commands and votes, and renewals, each grouped by its own rule.
    commands: Coalescer<Commands>,
    renewals: Coalescer<Renewals>,
    /// A snapshot being received from the leader, chunk by chunk, spooled to disk; verified
    /// before it is handed to Raft.
    snapshot_in: tokio::sync::Mutex<Option<store::snapshot_data::Incoming>>,
    /// Other members' clock rates and round trips, from this node's clock probes.
    pub clocks: observe::Clocks,
    /// Leader changes and throughput of the recent past (the dashboard).
    pub history: history::History,
    shutdown: watch::Sender<bool>,
}

impl Node {
    /// Opens storage and starts Raft. The gRPC server is started separately
    /// ([`crate::api::serve`]), so that the caller picks the listener.
    pub async fn start(
        config: NodeConfig,
    ) -> Result<Arc<Node>, Box<dyn std::error::Error + Send + Sync>> {
        Self::start_with_clock(config, Arc::new(SystemClock::default())).await
    }

    pub async fn start_with_clock(
        config: NodeConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Node>, Box<dyn std::error::Error + Send + Sync>> {
        config.validate()?;
        let parts = Parts {
            clock: clock.clone(),
            transport: Arc::new(GrpcTransport {
                channels: match config.peer_client_tls()? {
                    Some(files) => Channels::with_tls(
                        crate::tls::ClientTls::load(&files, "peer TLS (dialling members)")
                            .map_err(ConfigError::Invalid)?,
                    ),
                    None => Channels::default(),
                },
                from: config.id,
                key: Self::peer_key_of(&config)?,
            }),
        };
        let shared = Self::new_shared(&config, clock);
        if config.log_store == LogStoreKind::Sled {
            let (log, sm) = store::open_sled(&config.data_dir, shared.clone(), config.state_store)?;
            return Self::start_with_parts(config, parts, shared, log, sm).await;
        }
        let (log, sm) = store::open_with(
            &config.data_dir,
            shared.clone(),
            config.log_segment_bytes,
            config.state_store,
        )?;
        Self::start_with_parts(config, parts, shared, log, sm).await
    }

    fn peer_key_of(config: &NodeConfig) -> Result<PeerKey, ConfigError> {
        Ok(PeerKey::new(
            &config.cluster_name,
            config.secret()?.as_bytes(),
        ))
    }

    /// What the state machine shares with the node, for [`Node::start_with_parts`].
    pub fn new_shared(config: &NodeConfig, clock: Arc<dyn Clock>) -> Arc<Shared> {
        Arc::new(
            Shared::new(
                clock,
                config.event_retention,
                config.event_retention_bytes,
                config.watch_live_buffer,
            )
            .with_metrics(Arc::new(crate::metrics::NodeMetrics::new(
                config.id,
                config.metrics_max_queues,
            ))),
        )
    }

    /// Starts a node on storage and a transport of the caller's choosing (the deterministic
    /// simulation passes its own disk, network and clocks; [`Node::start`] passes sled, gRPC
    /// and the system clock).
    pub async fn start_with_parts<LS: RaftLogStorage<crate::raft::TypeConfig>>(
        config: NodeConfig,
        parts: Parts,
        shared: Arc<Shared>,
        log: LS,
        sm: StateMachineStore,
    ) -> Result<Arc<Node>, Box<dyn std::error::Error + Send + Sync>> {
        config.validate()?;
        let peer_key = Self::peer_key_of(&config)?;
        let Parts { clock, transport } = parts;
        let t = &config.raft;
        let raft_config = openraft::Config {
            cluster_name: "leasekeeper".into(),
            heartbeat_interval: t.heartbeat_ms,
            election_timeout_min: t.election_min_ms,
            election_timeout_max: t.election_max_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(t.snapshot_every_entries),
            max_in_snapshot_log_to_keep: t.keep_after_snapshot,
            snapshot_max_chunk_size: 1 << 20,
            // Bounds an AppendEntries in bytes: entries of at most ~3.1 MiB (`batch::MAX_BYTES`)
            // times this stays under the peer port's message limit, so a lagging follower is
            // never sent a message it must refuse (and then sent it again, forever).
            max_payload_entries: crate::raft::network::MAX_APPEND_ENTRIES,
            // Per InstallSnapshot call. The last chunk's answer waits for the follower to decode
            // and install the snapshot: 2-4 s at a million tasks. A shorter timeout sends the
            // whole snapshot again, forever (measured with scripts/bench-scale.sh).
            install_snapshot_timeout: 30_000,
            ..Default::default()
        }
        .validate()?;
        let raft = Raft::new(
            config.id,
            Arc::new(raft_config),
            Network {
                transport: transport.clone(),
            },
            log,
            sm,
        )
        .await?;
        let (shutdown, _) = watch::channel(false);
        let submitter = Submitter {
            id: config.id,
            raft: raft.clone(),
            transport,
            clock: clock.clone(),
            timeout: Duration::from_millis(config.request_timeout_ms),
            shutdown: shutdown.subscribe(),
            metrics: shared.metrics.clone(),
        };
        let node = Arc::new(Node {
            id: config.id,
            raft,
            shared,
            clock,
            peer_key,
            refusals: Refusals::default(),
            commands: Coalescer::new(submitter.clone()),
            renewals: Coalescer::new(submitter.clone()),
            submitter,
            snapshot_in: tokio::sync::Mutex::new(None),
            clocks: observe::Clocks::default(),
            history: history::History::default(),
            shutdown,
            config,
        });
        if !node.config.initial_cluster.is_empty() && !node.raft.is_initialized().await? {
            let members: std::collections::BTreeMap<NodeId, RaftNode> = node
                .config
                .initial_cluster
                .iter()
                .map(|(id, addr)| (*id, RaftNode::new(addr.clone())))
                .collect();
            match node.raft.initialize(members).await {
                Ok(()) => tracing::info!(id = node.id, "initialized a new cluster"),
                // Another founding member got there first: fine.
                Err(e) => tracing::info!(id = node.id, error = %e, "cluster already initialized"),
            }
        }
        tokio::spawn(expiry_scanner(node.clone()));
        tokio::spawn(duties::contact_watcher(node.clone()));
        tokio::spawn(duties::throughput_sampler(node.clone()));
        tokio::spawn(observe::clock_prober(node.clone()));
        if node.config.terminal_retention_ms > 0 {
            tokio::spawn(duties::retention_sweeper(node.clone()));
        }
        Ok(node)
    }

    pub fn metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow().clone()
    }

    /// The leader as this node last heard of it, with its peer address.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        self.submitter.leader()
    }

    pub fn is_leader(&self) -> bool {
        self.leader().is_some_and(|(id, _)| id == self.id)
    }

    fn timeout(&self) -> Duration {
        self.submitter.timeout
    }

    /// Commits `cmd` through the leader and returns the state machine's answer. Commands
    /// proposed concurrently share one log entry (group commit, see `commit`).
    pub async fn propose(&self, cmd: Command) -> Result<Response, NodeError> {
        self.commands.write(cmd).await
    }

    /// Whether member `from` (its proof already verified) may call this node: it must be in
    /// the membership this node knows. A node that knows none yet (it waits to be added)
    /// accepts any holder of the cluster secret: only a member can add it.
    pub fn check_peer(&self, from: NodeId) -> Result<(), PeerRefusal> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        if membership.nodes().next().is_none() || membership.get_node(&from).is_some() {
            Ok(())
        } else {
            Err(PeerRefusal::NotMember { from })
        }
    }

    /// Sends a node-to-node call to the member at `addr`.
    pub(crate) async fn peer_call(
        &self,
        addr: &str,
        kind: PeerCall,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, PeerError> {
        self.submitter
            .transport
            .call(addr, kind, body, timeout)
            .await
    }

    /// Answers one node-to-node call from member `from` (the server side of [`Transport`];
    /// the caller has checked who `from` is): decodes it, hands it to Raft or to the leader's
    /// proposal path, and encodes the answer.
    pub async fn handle_peer(
        &self,
        from: NodeId,
        kind: PeerCall,
        body: &[u8],
    ) -> Result<Vec<u8>, String> {
        fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, String> {
            codec::decode(b).map_err(|e| {
                format!("undecodable raft message ({e}): are all nodes the same version?")
            })
        }
        Ok(match kind {
            PeerCall::Append => codec::encode(&self.raft.append_entries(decode(body)?).await),
            PeerCall::Vote => codec::encode(&self.raft.vote(decode(body)?).await),
            PeerCall::Snapshot => codec::encode(&self.receive_snapshot(decode(body)?).await?),
            PeerCall::Propose => {
                let req: Request = decode(body)?;
                check_forwarded(from, &req.cmd)?;
                codec::encode(&self.propose_local(req).await)
            }
            PeerCall::ReadIndex => codec::encode(&self.read_index_local().await),
            PeerCall::Clock => codec::encode(&self.clock.monotonic_ms()),
            PeerCall::Status | PeerCall::Membership => {
                return Err(format!("{kind:?} is answered by the peer service"))
            }
        })
    }

    /// One chunk of a snapshot from the leader, written to a temporary file as it comes (the
    /// node holds about a chunk of it in memory until the last one). Chunks are taken in order
    /// only: a gap or a chunk of another snapshot is answered with the offset expected, and
    /// openraft's sender starts again from there. The assembled snapshot is checked (magic and
    /// CRC, then decoded) before Raft installs it: a damaged one is refused, this node keeps its
    /// own state, and the leader sends it again.
    async fn receive_snapshot(
        &self,
        req: openraft::raft::InstallSnapshotRequest<TypeConfig>,
    ) -> Result<
        Result<
            openraft::raft::InstallSnapshotResponse<NodeId>,
            RaftError<openraft::error::InstallSnapshotError>,
        >,
        String,
    > {
        use store::snapshot_data::ChunkRefused;
        let vote = req.vote;
        let mine = self.raft.metrics().borrow().vote;
        if vote < mine {
            return Ok(Ok(openraft::raft::InstallSnapshotResponse { vote: mine }));
        }
        let id = req.meta.snapshot_id.clone();
        let finished = {
            let mut incoming = self.snapshot_in.lock().await;
            if req.offset == 0 {
                *incoming = Some(self.shared.receive(id.clone()).map_err(|e| {
                    format!("snapshot {id}: no temporary file to receive it in: {e}")
                })?);
            }
            let written = match incoming.as_mut().filter(|i| i.id == id) {
                None => Err(0),
                Some(inc) => match inc.write(req.offset, &req.data).await {
                    Ok(()) => Ok(()),
                    Err(ChunkRefused::OutOfOrder { expected }) => Err(expected),
                    Err(ChunkRefused::TooLarge) => {
                        incoming.take();
                        let max = store::snapshot_data::MAX_SNAPSHOT_BYTES;
                        tracing::warn!(snapshot = %id, "refused a snapshot larger than {max} bytes");
                        return Err(format!("snapshot {id} refused: larger than {max} bytes"));
                    }
                    Err(ChunkRefused::Io(e)) => {
                        incoming.take();
                        tracing::warn!(snapshot = %id, error = %e, "could not write a snapshot chunk from the leader; it is sent again");
                        return Err(format!("snapshot {id}: writing a chunk: {e}"));
                    }
                },
            };
            if let Err(expected) = written {
                let mismatch = openraft::error::SnapshotMismatch {
                    expect: openraft::SnapshotSegmentId {
                        id: id.clone(),
                        offset: expected,
                    },
                    got: openraft::SnapshotSegmentId {
                        id,
                        offset: req.offset,
                    },
                };
                return Ok(Err(RaftError::APIError(
                    openraft::error::InstallSnapshotError::SnapshotMismatch(mismatch),
                )));
            }
            if !req.done {
                return Ok(Ok(openraft::raft::InstallSnapshotResponse { vote: mine }));
            }
            let inc = incoming
                .take()
                .ok_or("the snapshot being received is gone")?;
            inc.finish()
                .await
                .map_err(|e| format!("snapshot {id}: reading it back: {e}"))?
        };
        // Decoded and checked (CRC, invariants) before Raft sees it: a storage error in the
        // install would stop this node's Raft core for good.
        let data = match self.shared.check_received(id.clone(), finished).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(
                    snapshot = %id,
                    error = %e,
                    "refused a damaged snapshot from the leader; keeping this node's state, it is sent again"
                );
                return Err(format!("snapshot {id} refused: {e}"));
            }
        };
        let snapshot = openraft::Snapshot {
            meta: req.meta,
            snapshot: Box::new(data),
        };
        let installed = self.raft.install_full_snapshot(vote, snapshot).await;
        // A snapshot Raft did not install (a newer vote, an older snapshot) must not keep a
        // second copy of the state in memory.
        self.shared.forget_received();
        match installed {
            Ok(r) => Ok(Ok(openraft::raft::InstallSnapshotResponse { vote: r.vote })),
            Err(f) => Ok(Err(RaftError::Fatal(f))),
        }
    }

    /// Leader side of a follower's forwarded proposal.
    pub(crate) async fn propose_local(&self, req: Request) -> ProposeReply {
        match self.raft.client_write(req).await {
            Ok(r) => ProposeReply::Applied(r.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                ProposeReply::NotLeader
            }
            Err(e) => ProposeReply::Failed(e.to_string()),
        }
    }

    /// Leader side of a follower's read-index request.
    pub(crate) async fn read_index_local(&self) -> ReadIndexReply {
        match self.raft.ensure_linearizable().await {
            Ok(l) => ReadIndexReply::Index(l.map(|l| l.index).unwrap_or(0)),
            Err(RaftError::APIError(_)) => ReadIndexReply::NotLeader,
            Err(e) => ReadIndexReply::Failed(e.to_string()),
        }
    }

    /// Returns once this node's state machine reflects every write acknowledged before the call
    /// (a read index confirmed by a quorum through the leader).
    pub async fn read_barrier(&self) -> Result<(), NodeError> {
        let deadline = Instant::now() + self.timeout();
        loop {
            let (leader, addr) = self.submitter.wait_leader(deadline).await?;
            let index = if leader == self.id {
                match self.read_index_local().await {
                    ReadIndexReply::Index(_) => return Ok(()),
                    ReadIndexReply::NotLeader => None,
                    ReadIndexReply::Failed(e) => return Err(NodeError::Raft(e)),
                }
            } else {
                let sent = self
                    .submitter
                    .transport
                    .call(&addr, PeerCall::ReadIndex, Vec::new(), self.timeout())
                    .await;
                match sent {
                    Ok(data) => match codec::decode::<ReadIndexReply>(&data) {
                        Ok(ReadIndexReply::Index(i)) => Some(i),
                        Ok(ReadIndexReply::NotLeader) => None,
                        Ok(ReadIndexReply::Failed(e)) => return Err(NodeError::Raft(e)),
                        Err(e) => return Err(NodeError::Raft(e.to_string())),
                    },
                    Err(_) => None,
                }
            };
            if let Some(index) = index {
                let mut rx = self.shared.applied_index.subscribe();
                return match tokio::time::timeout_at(deadline, rx.wait_for(|a| *a >= index)).await {
                    Ok(Ok(_)) => Ok(()),
                    _ => Err(NodeError::NoLeader(self.config.request_timeout_ms)),
                };
            }
            if Instant::now() + Duration::from_millis(20) >= deadline {
                return Err(NodeError::NoLeader(self.config.request_timeout_ms));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Renews leases through the coalescer: renewals that arrive while earlier ones are being
    /// committed travel together in one `RenewBatch` entry.
    pub async fn renew(&self, tokens: Vec<Token>) -> Result<Vec<(Token, RenewOutcome)>, NodeError> {
        self.renewals.write(tokens).await
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub async fn shutdown(&self) {
        self.shutdown.send_replace(true);
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }
}

/// What a follower may forward to the leader: the commands the API makes and the node's own
/// expiry votes, cast under its own id. Retention (`Purge`) is the leader's own duty and never
/// travels.
fn check_forwarded(from: NodeId, cmd: &Command) -> Result<(), String> {
    match cmd {
        Command::ExpiryVote { voter, .. } | Command::ExpiryVoteSilence { voter, .. }
            if *voter != from =>
        {
            Err(format!(
                "member {from} forwarded an expiry vote in the name of node {voter}: refused"
            ))
        }
        Command::Purge { .. } => Err(format!(
            "member {from} forwarded a retention purge, which only the leader proposes: refused"
        )),
        Command::ClaimV0 { .. } => Err("a claim without a lease secret: refused".into()),
        Command::Batch(cmds) => {
            for c in cmds {
                if matches!(c, Command::Batch(_)) {
                    return Err("a batch inside a batch: refused".into());
                }
                check_forwarded(from, c)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Votes, from this node's own monotonic clock, on leases it has not heard for their TTL.
async fn expiry_scanner(node: Arc<Node>) {
    let tick_ms = (node.config.limits.min_ttl_ms / 10).clamp(10, 200);
    let pause_ms = node.config.raft.election_max_ms;
    let revote_ms = node.config.raft.election_max_ms;
    let mut shutdown = node.shutdown_signal();
    let mut last = node.clock.monotonic_ms();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(tick_ms)) => {}
            _ = shutdown.changed() => return,
        }
        let now = node.clock.monotonic_ms();
        let due = {
            let mut timers = node.shared.timers.lock();
            if now.saturating_sub(last) > tick_ms + pause_ms {
                // This process did not run for longer than an election timeout (paused, or its
                // clock stood still): whatever it missed must not count against the leases.
                tracing::warn!(
                    gap_ms = now.saturating_sub(last),
                    "scanner was paused; hearing every lease now"
                );
                timers.refresh_all(now);
            }
            timers.due(now, revote_ms)
        };
        last = now;
        if node.clocks.is_off() {
            // This node's clock disagrees with most others: its judgement of a TTL cannot be
            // trusted, so it leaves expiry to the others (a late expiry, never a false one).
            continue;
        }
        let is_voter = node
            .metrics()
            .membership_config
            .membership()
            .get_joint_config()
            .iter()
            .any(|c| c.contains(&node.id));
        if due.is_empty() || !is_voter {
            continue;
        }
        tracing::debug!(count = due.len(), "voting to expire leases");
        node.shared
            .metrics
            .expiry_votes_cast
            .inc_by(due.len() as u64);
        let n = node.clone();
        tokio::spawn(async move {
            if let Err(e) = n
                .propose(Command::ExpiryVoteSilence {
                    voter: n.id,
                    votes: due,
                })
                .await
            {
                tracing::debug!(error = %e, "expiry vote not committed; it is cast again later");
            }
        });
    }
}

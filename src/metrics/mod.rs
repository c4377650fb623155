//! What a node and a worker show Prometheus: metric families in the OpenMetrics text format
//! (`prometheus-client`), served on the HTTP listener (`crate::http`).
//!
//! Labels stay bounded: per queue (at most [`NodeMetrics::new`]'s `max_queues` queues get their
//! own series; the rest share the queue label [`OTHER_QUEUES`]), per peer, per reason or status;
//! never per task or per lease. docs/OPERATIONS.md lists every family with its meaning.
use crate::state::{AttemptOutcome, EventKind, Name, NodeId, TaskState};
use parking_lot::RwLock;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// Registers `$m` in registry `$r` as `$name` with `$help`, and gives it back.
macro_rules! reg {
    ($r:expr, $name:literal, $help:literal, $m:expr) => {{
        let m = $m;
        $r.register($name, $help, m.clone());
        m
    }};
}

mod queue;
mod worker;
use queue::QueueFamilies;
pub use queue::{Buckets, QueueMetrics, CHART_BUCKETS};
pub use worker::WorkerMetrics;

/// The queue label of every queue past the cap (not a legal queue name, so it cannot clash).
pub const OTHER_QUEUES: &str = "(other)";
/// Queues that get their own series by default (`--metrics-max-queues`).
pub const DEFAULT_MAX_QUEUES: usize = 64;

/// The content type of what [`encode`] writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabel {
    pub queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueStateLabel {
    pub queue: String,
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueReasonLabel {
    pub queue: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    pub peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: &'static str,
}

/// Seconds, from 1 ms to about 33 s.
fn seconds_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 16)
}

/// Seconds, from 100 µs to about 3 s (round trips, fsyncs, renewals).
fn fast_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0001, 2.0, 16)
}

type GaugeF64 = Gauge<f64, AtomicU64>;

/// Every family of a node.
pub struct NodeMetrics {
    registry: Registry,
    /// Held while a scrape sets the read gauges and encodes (`Node::render_metrics`).
    pub(crate) scrape: parking_lot::Mutex<()>,
    max_queues: usize,
    queues: RwLock<HashMap<Name, Arc<QueueMetrics>>>,
    /// The series every queue past the cap shares (made when first needed).
    other: std::sync::OnceLock<Arc<QueueMetrics>>,

    // Raft and storage.
    pub has_leader: Gauge,
    pub is_leader: Gauge,
    pub term: Gauge,
    pub leader_changes: Counter,
    pub last_log_index: Gauge,
    pub applied_index: Gauge,
    pub snapshot_index: Gauge,
    pub proposals_committed: Counter,
    pub proposals_failed: Counter,
    pub proposals_forwarded: Counter,
    pub proposals_pending: Gauge,
    pub entries_applied: Counter,
    pub log_append_batch: Histogram,
    pub log_fsync: Histogram,
    pub snapshot_build: Histogram,
    pub snapshot_install: Histogram,
    pub snapshot_bytes: Gauge,
    pub snapshot_tasks_copied: Counter,
    pub snapshot_tasks_encoded: Counter,
    pub peer_rtt: Family<PeerLabel, Histogram>,
    pub peer_clock_rate: Family<PeerLabel, GaugeF64>,
    pub clock_off: Gauge,
    pub peer_calls_refused: Counter,

    // Leases.
    pub leases_live: Gauge,
    pub renew_duration: Histogram,
    pub renewal_answers: Family<StatusLabel, Counter>,
    pub leases_ended: Family<QueueReasonLabel, Counter>,
    pub expiry_votes_cast: Counter,
    pub expiry_votes_received: Family<PeerLabel, Counter>,

    // Tasks.
    pub tasks: Family<QueueStateLabel, Gauge>,
    /// The per-queue families.
    families: QueueFamilies,
}

fn secs() -> Histogram {
    Histogram::new(seconds_buckets())
}
pub(crate) fn fast() -> Histogram {
    Histogram::new(fast_buckets())
}
fn entries() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 12))
}

fn queue_histograms() -> Family<QueueLabel, Histogram> {
    Family::new_with_constructor(secs)
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self::new(0, DEFAULT_MAX_QUEUES)
    }
}

impl NodeMetrics {
    /// A node's families, registered under the `leasekeeper_` prefix; `max_queues` queues get
    /// their own series.
    pub fn new(node: NodeId, max_queues: usize) -> Self {
        let mut r = Registry::with_prefix_and_labels(
            "leasekeeper",
            [(
                std::borrow::Cow::Borrowed("node"),
                std::borrow::Cow::Owned(node.to_string()),
            )]
            .into_iter(),
        );
        let m = NodeMetrics {
            has_leader: reg!(
                r,
                "raft_has_leader",
                "1 when this node knows a leader.",
                Gauge::default()
            ),
            is_leader: reg!(r, "raft_is_leader", "1 on the leader.", Gauge::default()),
            term: reg!(r, "raft_term", "The Raft term.", Gauge::default()),
            leader_changes: reg!(
                r,
                "raft_leader_changes",
                "Leader changes this node has seen (a new term or a new leader).",
                Counter::default()
            ),
            last_log_index: reg!(
                r,
                "raft_last_log_index",
                "The last index in this node's log.",
                Gauge::default()
            ),
            applied_index: reg!(
                r,
                "raft_applied_index",
                "The last log index applied to the state machine.",
                Gauge::default()
            ),
            snapshot_index: reg!(
                r,
                "raft_snapshot_index",
                "The last log index in this node's snapshot.",
                Gauge::default()
            ),
            proposals_committed: reg!(
                r,
                "raft_proposals_committed",
                "Entries this node proposed (or forwarded) that were committed and applied.",
                Counter::default()
            ),
            proposals_failed: reg!(
                r,
                "raft_proposals_failed",
                "Entries this node proposed (or forwarded) that were not committed.",
                Counter::default()
            ),
            proposals_forwarded: reg!(
                r,
                "raft_proposals_forwarded",
                "Entries this follower forwarded to the leader.",
                Counter::default()
            ),
            proposals_pending: reg!(
                r,
                "raft_proposals_pending",
                "Writes waiting in this node's commit path.",
                Gauge::default()
            ),
            entries_applied: reg!(
                r,
                "raft_entries_applied",
                "Log entries applied to the state machine.",
                Counter::default()
            ),
            log_append_batch: reg!(
                r,
                "log_append_batch_entries",
                "Entries written per log fsync.",
                entries()
            ),
            log_fsync: reg!(
                r,
                "log_fsync_duration_seconds",
                "Duration of one fsync of the Raft log.",
                fast()
            ),
            snapshot_build: reg!(
                r,
                "snapshot_build_duration_seconds",
                "Duration of building (serializing and writing) a snapshot.",
                secs()
            ),
            snapshot_install: reg!(
                r,
                "snapshot_install_duration_seconds",
                "Duration of installing a snapshot received from the leader.",
                secs()
            ),
            snapshot_bytes: reg!(
                r,
                "snapshot_size_bytes",
                "Size of the last snapshot built or installed.",
                Gauge::default()
            ),
            snapshot_tasks_copied: reg!(
                r,
                "snapshot_tasks_copied",
                "Tasks snapshot builds copied from the last snapshot file, unchanged since, instead of encoding them.",
                Counter::default()
            ),
            snapshot_tasks_encoded: reg!(
                r,
                "snapshot_tasks_encoded",
                "Tasks snapshot builds encoded (new or changed since the last build, or all of them in a first build).",
                Counter::default()
            ),
            peer_rtt: reg!(
                r,
                "peer_round_trip_seconds",
                "Round trip of this node's clock probes, per peer.",
                Family::<PeerLabel, Histogram>::new_with_constructor(fast)
            ),
            peer_clock_rate: reg!(
                r,
                "peer_clock_rate",
                "Each peer's monotonic clock rate against this node's (1: the same; 2: twice as fast), over the last 10 s.",
                Family::<PeerLabel, GaugeF64>::default()
            ),
            clock_off: reg!(
                r,
                "clock_off",
                "1 while this node judges its own clock off (most other voters run at a rate off by more than --clock-rate-bound against it); it casts no expiry votes then.",
                Gauge::default()
            ),
            peer_calls_refused: reg!(
                r,
                "peer_calls_refused",
                "Peer-port calls refused (no or wrong credentials, not a member).",
                Counter::default()
            ),
            leases_live: reg!(
                r,
                "leases_live",
                "Live leases (RUNNING tasks).",
                Gauge::default()
            ),
            renew_duration: reg!(
                r,
                "renew_duration_seconds",
                "From a heartbeat or renewal arriving at this node to its answer.",
                fast()
            ),
            renewal_answers: reg!(
                r,
                "renewal_answers",
                "Renewal answers by status: alive, expired, cancelled, finished, unknown, denied, retry.",
                Family::<StatusLabel, Counter>::default()
            ),
            leases_ended: reg!(
                r,
                "leases_ended",
                "Leases that ended, per queue and reason: succeeded, failed, expired, released, cancelled.",
                Family::<QueueReasonLabel, Counter>::default()
            ),
            expiry_votes_cast: reg!(
                r,
                "expiry_votes_cast",
                "Expiry votes this node cast from its own clock.",
                Counter::default()
            ),
            expiry_votes_received: reg!(
                r,
                "expiry_votes_counted",
                "Expiry votes counted by the state machine, per voter.",
                Family::<PeerLabel, Counter>::default()
            ),
            tasks: reg!(
                r,
                "tasks",
                "Retained tasks, per queue and state.",
                Family::<QueueStateLabel, Gauge>::default()
            ),
            registry: Registry::default(),
            scrape: parking_lot::Mutex::new(()),
            max_queues,
            queues: RwLock::new(HashMap::new()),
            other: std::sync::OnceLock::new(),
            families: QueueFamilies::register(&mut r),
        };
        NodeMetrics { registry: r, ..m }
    }

    /// The series of `queue` (or of [`OTHER_QUEUES`], past the cap).
    pub fn queue(&self, queue: &str) -> Arc<QueueMetrics> {
        if let Some(q) = self.queues.read().get(queue) {
            return q.clone();
        }
        let mut map = self.queues.write();
        if let Some(q) = map.get(queue) {
            return q.clone();
        }
        if map.len() >= self.max_queues {
            let other = || Arc::new(self.families.series(OTHER_QUEUES));
            return self.other.get_or_init(other).clone();
        }
        let q = Arc::new(self.families.series(queue));
        map.insert(queue.into(), q.clone());
        q
    }

    /// Every queue with series of its own, and the shared `(other)` series once in use.
    pub fn queues(&self) -> Vec<Arc<QueueMetrics>> {
        let mut all: Vec<_> = self.queues.read().values().cloned().collect();
        all.extend(self.other.get().cloned());
        all.sort_by(|a, b| a.label.cmp(&b.label));
        all
    }

    /// Counts one applied event.
    pub fn event(&self, kind: EventKind, queue: &str) {
        let q = self.queue(queue);
        match kind {
            EventKind::Submitted => q.submitted.inc(),
            EventKind::Claimed => q.claimed.inc(),
            EventKind::Succeeded => q.succeeded.inc(),
            EventKind::Failed => q.failed.inc(),
            EventKind::Cancelled => q.cancelled.inc(),
            EventKind::RetryScheduled => q.retried.inc(),
            EventKind::Progress | EventKind::LateReport => 0,
        };
    }

    /// Counts one lease that ended.
    pub fn lease_ended(&self, queue: &str, outcome: AttemptOutcome) {
        let reason = match outcome {
            AttemptOutcome::Succeeded => "succeeded",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Expired => "expired",
            AttemptOutcome::Released => "released",
            AttemptOutcome::Cancelled | AttemptOutcome::Running => "cancelled",
        };
        let label = self.queue(queue).label.clone();
        self.leases_ended
            .get_or_create(&QueueReasonLabel {
                queue: label,
                reason,
            })
            .inc();
    }

    /// Sets the tasks gauge from the state's counts (per queue, per state).
    pub fn set_task_counts<'a>(&self, counts: impl Iterator<Item = (&'a Name, &'a [u64; 5])>) {
        self.tasks.clear();
        for (queue, counts) in counts {
            let label = self.queue(queue).label.clone();
            for (state, n) in TaskState::ALL.iter().zip(counts) {
                self.tasks
                    .get_or_create(&QueueStateLabel {
                        queue: label.clone(),
                        state: state.as_str(),
                    })
                    .inc_by(*n as i64);
            }
        }
    }

    pub fn peer(&self, peer: NodeId) -> PeerLabel {
        PeerLabel {
            peer: peer.to_string(),
        }
    }

    /// Counts what one apply step did: its events, the leases it heard and ended, late
    /// successes and votes, and what this node's clock made of them (`seen`).
    pub fn observe_apply(
        &self,
        fx: &crate::state::Effects,
        seen: crate::clock::Observed,
        entries: usize,
    ) {
        let m = self;
        m.entries_applied.inc_by(entries as u64);
        for e in &fx.events {
            m.event(e.kind, e.task.queue());
        }
        for e in &fx.ended {
            m.lease_ended(&e.queue, e.outcome);
        }
        for l in &fx.late_successes {
            m.queue(&l.queue).late_successes.inc();
        }
        for v in &fx.votes {
            m.expiry_votes_received.get_or_create(&m.peer(*v)).inc();
        }
        // Renewals come in runs of one queue: look each queue up once per run.
        let mut last: Option<(&str, Arc<QueueMetrics>)> = None;
        for (queue, ms) in &seen.intervals_ms {
            let q = match &last {
                Some((name, q)) if *name == &**queue => q.clone(),
                _ => {
                    let q = m.queue(queue);
                    last = Some((queue, q.clone()));
                    q
                }
            };
            q.renewed.inc();
            q.observe_heartbeat(*ms as f64 / 1000.0);
        }
        for (queue, ms) in &seen.expiry_late_ms {
            m.queue(queue).expiry_late.observe(*ms as f64 / 1000.0);
        }
    }

    /// The families in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        encode(&self.registry)
    }
}

/// A registry in the OpenMetrics text format (ends with `# EOF`).
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).expect("writing to a String");
    out
}

#[cfg(test)]
mod tests;

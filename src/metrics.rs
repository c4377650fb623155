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

/// The per-queue series of one queue (handles into the families, cloned once per queue so that
/// the apply path does not look labels up per event).
pub struct QueueMetrics {
    pub submitted: Counter,
    pub claimed: Counter,
    pub succeeded: Counter,
    pub failed: Counter,
    pub cancelled: Counter,
    pub retried: Counter,
    pub late_successes: Counter,
    pub renewed: Counter,
    pub heartbeat_interval: Histogram,
    pub report_latency: Histogram,
    pub reports: Counter,
    pub reports_retried: Counter,
    pub expiry_late: Histogram,
    label: String,
}

/// Every family of a node.
pub struct NodeMetrics {
    registry: Registry,
    max_queues: usize,
    queues: RwLock<HashMap<Name, Arc<QueueMetrics>>>,
    other: Arc<QueueMetrics>,

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
    submitted: Family<QueueLabel, Counter>,
    claimed: Family<QueueLabel, Counter>,
    succeeded: Family<QueueLabel, Counter>,
    failed: Family<QueueLabel, Counter>,
    cancelled: Family<QueueLabel, Counter>,
    retried: Family<QueueLabel, Counter>,
    late_successes: Family<QueueLabel, Counter>,
    renewed: Family<QueueLabel, Counter>,
    heartbeat_interval: Family<QueueLabel, Histogram>,
    report_latency: Family<QueueLabel, Histogram>,
    reports: Family<QueueLabel, Counter>,
    reports_retried: Family<QueueLabel, Counter>,
    expiry_late: Family<QueueLabel, Histogram>,
}

fn secs() -> Histogram {
    Histogram::new(seconds_buckets())
}
fn fast() -> Histogram {
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
        macro_rules! reg {
            ($name:literal, $help:literal, $m:expr) => {{
                let m = $m;
                r.register($name, $help, m.clone());
                m
            }};
        }
        let submitted = reg!(
            "tasks_submitted",
            "Tasks created by a submit, per queue (a repeated submit is not counted).",
            Family::<QueueLabel, Counter>::default()
        );
        let claimed = reg!(
            "tasks_claimed",
            "Claims that started an attempt (leases granted), per queue.",
            Family::<QueueLabel, Counter>::default()
        );
        let succeeded = reg!(
            "tasks_succeeded",
            "Tasks that ended SUCCEEDED, per queue (late successes included).",
            Family::<QueueLabel, Counter>::default()
        );
        let failed = reg!(
            "tasks_failed",
            "Tasks that ended FAILED (their attempts exhausted), per queue.",
            Family::<QueueLabel, Counter>::default()
        );
        let cancelled = reg!(
            "tasks_cancelled",
            "Tasks cancelled by a scheduler, per queue.",
            Family::<QueueLabel, Counter>::default()
        );
        let retried = reg!(
            "tasks_retried",
            "Attempts that ended without finishing their task, which went back to PENDING (failed, expired or released), per queue.",
            Family::<QueueLabel, Counter>::default()
        );
        let late_successes = reg!(
            "tasks_late_successes",
            "Successes reported by an attempt after its lease had ended, accepted, per queue: each one is a false failure another scheduler would have recorded.",
            Family::<QueueLabel, Counter>::default()
        );
        let renewed = reg!(
            "leases_renewed",
            "Committed lease renewals (progress reports included), per queue.",
            Family::<QueueLabel, Counter>::default()
        );
        let heartbeat_interval = reg!(
            "heartbeat_interval_seconds",
            "Time between committed renewals of the same lease (the first from its claim), on this node's clock, per queue.",
            queue_histograms()
        );
        let report_latency = reg!(
            "report_latency_seconds",
            "From the task's process exiting (the worker's measure, sent with the report) to the final report committed, per queue.",
            queue_histograms()
        );
        let reports = reg!(
            "reports",
            "Final reports committed through this node, per queue.",
            Family::<QueueLabel, Counter>::default()
        );
        let reports_retried = reg!(
            "reports_retried",
            "Final reports committed through this node that were a retry (the worker's try number above 1), per queue.",
            Family::<QueueLabel, Counter>::default()
        );
        let expiry_late = reg!(
            "expiry_lateness_seconds",
            "How long after its TTL had passed, on this node's clock since it applied the lease's last renewal, each expiry was applied, per queue.",
            queue_histograms()
        );
        let other = Arc::new(QueueMetrics::of(
            OTHER_QUEUES,
            &Handles {
                submitted: &submitted,
                claimed: &claimed,
                succeeded: &succeeded,
                failed: &failed,
                cancelled: &cancelled,
                retried: &retried,
                late_successes: &late_successes,
                renewed: &renewed,
                heartbeat_interval: &heartbeat_interval,
                report_latency: &report_latency,
                reports: &reports,
                reports_retried: &reports_retried,
                expiry_late: &expiry_late,
            },
        ));
        let m = NodeMetrics {
            has_leader: reg!(
                "raft_has_leader",
                "1 when this node knows a leader.",
                Gauge::default()
            ),
            is_leader: reg!("raft_is_leader", "1 on the leader.", Gauge::default()),
            term: reg!("raft_term", "The Raft term.", Gauge::default()),
            leader_changes: reg!(
                "raft_leader_changes",
                "Leader changes this node has seen (a new term or a new leader).",
                Counter::default()
            ),
            last_log_index: reg!(
                "raft_last_log_index",
                "The last index in this node's log.",
                Gauge::default()
            ),
            applied_index: reg!(
                "raft_applied_index",
                "The last log index applied to the state machine.",
                Gauge::default()
            ),
            snapshot_index: reg!(
                "raft_snapshot_index",
                "The last log index in this node's snapshot.",
                Gauge::default()
            ),
            proposals_committed: reg!(
                "raft_proposals_committed",
                "Entries this node proposed (or forwarded) that were committed and applied.",
                Counter::default()
            ),
            proposals_failed: reg!(
                "raft_proposals_failed",
                "Entries this node proposed (or forwarded) that were not committed.",
                Counter::default()
            ),
            proposals_forwarded: reg!(
                "raft_proposals_forwarded",
                "Entries this follower forwarded to the leader.",
                Counter::default()
            ),
            proposals_pending: reg!(
                "raft_proposals_pending",
                "Writes waiting in this node's commit path.",
                Gauge::default()
            ),
            entries_applied: reg!(
                "raft_entries_applied",
                "Log entries applied to the state machine.",
                Counter::default()
            ),
            log_append_batch: reg!(
                "log_append_batch_entries",
                "Entries written per log fsync.",
                entries()
            ),
            log_fsync: reg!(
                "log_fsync_duration_seconds",
                "Duration of one fsync of the Raft log.",
                fast()
            ),
            snapshot_build: reg!(
                "snapshot_build_duration_seconds",
                "Duration of building (serializing and writing) a snapshot.",
                secs()
            ),
            snapshot_install: reg!(
                "snapshot_install_duration_seconds",
                "Duration of installing a snapshot received from the leader.",
                secs()
            ),
            snapshot_bytes: reg!(
                "snapshot_size_bytes",
                "Size of the last snapshot built or installed.",
                Gauge::default()
            ),
            peer_rtt: reg!(
                "peer_round_trip_seconds",
                "Round trip of this node's clock probes, per peer.",
                Family::<PeerLabel, Histogram>::new_with_constructor(fast)
            ),
            peer_clock_rate: reg!(
                "peer_clock_rate",
                "Each peer's monotonic clock rate against this node's (1: the same; 2: twice as fast), over the last 10 s.",
                Family::<PeerLabel, GaugeF64>::default()
            ),
            clock_off: reg!(
                "clock_off",
                "1 while this node judges its own clock off (most other voters run at a rate off by more than --clock-rate-bound against it); it casts no expiry votes then.",
                Gauge::default()
            ),
            peer_calls_refused: reg!(
                "peer_calls_refused",
                "Peer-port calls refused (no or wrong credentials, not a member).",
                Counter::default()
            ),
            leases_live: reg!(
                "leases_live",
                "Live leases (RUNNING tasks).",
                Gauge::default()
            ),
            renew_duration: reg!(
                "renew_duration_seconds",
                "From a heartbeat or renewal arriving at this node to its answer.",
                fast()
            ),
            renewal_answers: reg!(
                "renewal_answers",
                "Renewal answers by status: alive, expired, cancelled, finished, unknown, denied, retry.",
                Family::<StatusLabel, Counter>::default()
            ),
            leases_ended: reg!(
                "leases_ended",
                "Leases that ended, per queue and reason: succeeded, failed, expired, released, cancelled.",
                Family::<QueueReasonLabel, Counter>::default()
            ),
            expiry_votes_cast: reg!(
                "expiry_votes_cast",
                "Expiry votes this node cast from its own clock.",
                Counter::default()
            ),
            expiry_votes_received: reg!(
                "expiry_votes_counted",
                "Expiry votes counted by the state machine, per voter.",
                Family::<PeerLabel, Counter>::default()
            ),
            tasks: reg!(
                "tasks",
                "Retained tasks, per queue and state.",
                Family::<QueueStateLabel, Gauge>::default()
            ),
            registry: Registry::default(),
            max_queues,
            queues: RwLock::new(HashMap::new()),
            other,
            submitted,
            claimed,
            succeeded,
            failed,
            cancelled,
            retried,
            late_successes,
            renewed,
            heartbeat_interval,
            report_latency,
            reports,
            reports_retried,
            expiry_late,
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
            return self.other.clone();
        }
        let q = Arc::new(QueueMetrics::of(queue, &self.handles()));
        map.insert(queue.into(), q.clone());
        q
    }

    fn handles(&self) -> Handles<'_> {
        Handles {
            submitted: &self.submitted,
            claimed: &self.claimed,
            succeeded: &self.succeeded,
            failed: &self.failed,
            cancelled: &self.cancelled,
            retried: &self.retried,
            late_successes: &self.late_successes,
            renewed: &self.renewed,
            heartbeat_interval: &self.heartbeat_interval,
            report_latency: &self.report_latency,
            reports: &self.reports,
            reports_retried: &self.reports_retried,
            expiry_late: &self.expiry_late,
        }
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

struct Handles<'a> {
    submitted: &'a Family<QueueLabel, Counter>,
    claimed: &'a Family<QueueLabel, Counter>,
    succeeded: &'a Family<QueueLabel, Counter>,
    failed: &'a Family<QueueLabel, Counter>,
    cancelled: &'a Family<QueueLabel, Counter>,
    retried: &'a Family<QueueLabel, Counter>,
    late_successes: &'a Family<QueueLabel, Counter>,
    renewed: &'a Family<QueueLabel, Counter>,
    heartbeat_interval: &'a Family<QueueLabel, Histogram>,
    report_latency: &'a Family<QueueLabel, Histogram>,
    reports: &'a Family<QueueLabel, Counter>,
    reports_retried: &'a Family<QueueLabel, Counter>,
    expiry_late: &'a Family<QueueLabel, Histogram>,
}

impl QueueMetrics {
    fn of(queue: &str, h: &Handles<'_>) -> Self {
        let l = QueueLabel {
            queue: queue.to_string(),
        };
        QueueMetrics {
            submitted: h.submitted.get_or_create(&l).clone(),
            claimed: h.claimed.get_or_create(&l).clone(),
            succeeded: h.succeeded.get_or_create(&l).clone(),
            failed: h.failed.get_or_create(&l).clone(),
            cancelled: h.cancelled.get_or_create(&l).clone(),
            retried: h.retried.get_or_create(&l).clone(),
            late_successes: h.late_successes.get_or_create(&l).clone(),
            renewed: h.renewed.get_or_create(&l).clone(),
            heartbeat_interval: h.heartbeat_interval.get_or_create(&l).clone(),
            report_latency: h.report_latency.get_or_create(&l).clone(),
            reports: h.reports.get_or_create(&l).clone(),
            reports_retried: h.reports_retried.get_or_create(&l).clone(),
            expiry_late: h.expiry_late.get_or_create(&l).clone(),
            label: l.queue,
        }
    }
}

/// What a worker (`leasekeeper worker`, `run`, or the SDK) shows.
pub struct WorkerMetrics {
    registry: Registry,
    pub node_rtt: Family<PeerLabel, Histogram>,
    pub journal_depth: Gauge,
    pub reports_sent: Counter,
    pub reports_retried: Counter,
    pub leases_held: Gauge,
    pub leases_lost: Family<StatusLabel, Counter>,
    pub tasks_run: Family<StatusLabel, Counter>,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        let mut r = Registry::with_prefix("leasekeeper_worker");
        macro_rules! reg {
            ($name:literal, $help:literal, $m:expr) => {{
                let m = $m;
                r.register($name, $help, m.clone());
                m
            }};
        }
        WorkerMetrics {
            node_rtt: reg!(
                "node_round_trip_seconds",
                "Round trip of each heartbeat to the node that answered it, per node address.",
                Family::<PeerLabel, Histogram>::new_with_constructor(fast)
            ),
            journal_depth: reg!(
                "journal_depth",
                "Final reports journaled and not yet acknowledged by the cluster.",
                Gauge::default()
            ),
            reports_sent: reg!(
                "reports_sent",
                "Sends of final reports (first tries and retries).",
                Counter::default()
            ),
            reports_retried: reg!(
                "reports_retried",
                "Sends of final reports that were a retry.",
                Counter::default()
            ),
            leases_held: reg!("leases_held", "Leases this worker holds.", Gauge::default()),
            leases_lost: reg!(
                "leases_lost",
                "Leases this worker lost before reporting, per reason: expired, cancelled, finished, unknown, denied, unconfirmed.",
                Family::<StatusLabel, Counter>::default()
            ),
            tasks_run: reg!(
                "tasks_run",
                "Attempts this worker ran, per outcome: succeeded, failed, released.",
                Family::<StatusLabel, Counter>::default()
            ),
            registry: r,
        }
    }
}

impl std::fmt::Debug for WorkerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkerMetrics")
    }
}

impl WorkerMetrics {
    pub fn encode(&self) -> String {
        encode(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_past_the_cap_share_one_series() {
        let m = NodeMetrics::new(1, 2);
        m.event(EventKind::Submitted, "a");
        m.event(EventKind::Submitted, "b");
        m.event(EventKind::Submitted, "c");
        m.event(EventKind::Submitted, "d");
        m.event(EventKind::Submitted, "a");
        let text = m.encode();
        assert!(
            text.contains(r#"leasekeeper_tasks_submitted_total{node="1",queue="a"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"leasekeeper_tasks_submitted_total{node="1",queue="b"} 1"#));
        assert!(text.contains(r#"leasekeeper_tasks_submitted_total{node="1",queue="(other)"} 2"#));
        assert!(!text.contains(r#"queue="c""#));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn task_counts_replace_the_last_ones() {
        let m = NodeMetrics::new(1, 8);
        let q: Name = "q".into();
        m.set_task_counts([(&q, &[3, 1, 0, 0, 0])].into_iter());
        m.set_task_counts([(&q, &[2, 2, 0, 0, 0])].into_iter());
        let text = m.encode();
        assert!(
            text.contains(r#"leasekeeper_tasks{node="1",queue="q",state="PENDING"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"leasekeeper_tasks{node="1",queue="q",state="RUNNING"} 2"#));
    }
}

//! One queue's series: handles into the node's per-queue families.
use super::{queue_histograms, QueueLabel};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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
    /// The same observations as `heartbeat_interval` and `report_latency`, in buckets the
    /// dashboard reads (prometheus-client does not expose a histogram's buckets).
    pub heartbeat_chart: Arc<Buckets>,
    pub report_chart: Arc<Buckets>,
    pub label: String,
}

impl QueueMetrics {
    pub fn observe_heartbeat(&self, seconds: f64) {
        self.heartbeat_interval.observe(seconds);
        self.heartbeat_chart.observe(seconds);
    }
    pub fn observe_report(&self, seconds: f64) {
        self.report_latency.observe(seconds);
        self.report_chart.observe(seconds);
    }
}

/// Buckets of a chart: bucket i counts observations up to 2^i ms (i < 16), the last one the rest.
pub const CHART_BUCKETS: usize = 17;

/// Counts per bucket of [`CHART_BUCKETS`], for the dashboard's charts.
#[derive(Default, Debug)]
pub struct Buckets([AtomicU64; CHART_BUCKETS]);

impl Buckets {
    /// The bucket of `seconds`.
    pub fn index(seconds: f64) -> usize {
        let ms = seconds * 1000.0;
        (0..CHART_BUCKETS - 1)
            .find(|i| ms <= (1u64 << i) as f64)
            .unwrap_or(CHART_BUCKETS - 1)
    }
    pub fn observe(&self, seconds: f64) {
        self.0[Self::index(seconds)].fetch_add(1, Ordering::Relaxed);
    }
    pub fn counts(&self) -> Vec<u64> {
        self.0.iter().map(|c| c.load(Ordering::Relaxed)).collect()
    }
}

/// The families with a series per queue.
pub(super) struct QueueFamilies {
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

impl QueueFamilies {
    pub(super) fn register(r: &mut Registry) -> Self {
        let submitted = reg!(
            r,
            "tasks_submitted",
            "Tasks created by a submit, per queue (a repeated submit is not counted).",
            Family::<QueueLabel, Counter>::default()
        );
        let claimed = reg!(
            r,
            "tasks_claimed",
            "Claims that started an attempt (leases granted), per queue.",
            Family::<QueueLabel, Counter>::default()
        );
        let succeeded = reg!(
            r,
            "tasks_succeeded",
            "Tasks that ended SUCCEEDED, per queue (late successes included).",
            Family::<QueueLabel, Counter>::default()
        );
        let failed = reg!(
            r,
            "tasks_failed",
            "Tasks that ended FAILED (their attempts exhausted), per queue.",
            Family::<QueueLabel, Counter>::default()
        );
        let cancelled = reg!(
            r,
            "tasks_cancelled",
            "Tasks cancelled by a scheduler, per queue.",
            Family::<QueueLabel, Counter>::default()
        );
        let retried = reg!(
            r,
            "tasks_retried",
            "Attempts that ended without finishing their task, which went back to PENDING (failed, expired or released), per queue.",
            Family::<QueueLabel, Counter>::default()
        );
        let late_successes = reg!(
            r,
            "tasks_late_successes",
            "Successes reported by an attempt after its lease had ended, accepted, per queue: each one is a false failure another scheduler would have recorded.",
            Family::<QueueLabel, Counter>::default()
        );
        let renewed = reg!(
            r,
            "leases_renewed",
            "Committed lease renewals (progress reports included), per queue.",
            Family::<QueueLabel, Counter>::default()
        );
        let heartbeat_interval = reg!(
            r,
            "heartbeat_interval_seconds",
            "Time between committed renewals of the same lease (the first from its claim), on this node's clock, per queue.",
            queue_histograms()
        );
        let report_latency = reg!(
            r,
            "report_latency_seconds",
            "From the task's process exiting (the worker's measure, sent with the report) to the final report committed, per queue.",
            queue_histograms()
        );
        let reports = reg!(
            r,
            "reports",
            "Final reports committed through this node, per queue.",
            Family::<QueueLabel, Counter>::default()
        );
        let reports_retried = reg!(
            r,
            "reports_retried",
            "Final reports committed through this node that were a retry (the worker's try number above 1), per queue.",
            Family::<QueueLabel, Counter>::default()
        );
        let expiry_late = reg!(
            r,
            "expiry_lateness_seconds",
            "How long after its TTL had passed, on this node's clock since it applied the lease's last renewal, each expiry was applied, per queue.",
            queue_histograms()
        );
        QueueFamilies {
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
        }
    }

    /// The series of `queue` (made on first use).
    pub(super) fn series(&self, queue: &str) -> QueueMetrics {
        let l = QueueLabel {
            queue: queue.to_string(),
        };
        QueueMetrics {
            submitted: self.submitted.get_or_create(&l).clone(),
            claimed: self.claimed.get_or_create(&l).clone(),
            succeeded: self.succeeded.get_or_create(&l).clone(),
            failed: self.failed.get_or_create(&l).clone(),
            cancelled: self.cancelled.get_or_create(&l).clone(),
            retried: self.retried.get_or_create(&l).clone(),
            late_successes: self.late_successes.get_or_create(&l).clone(),
            renewed: self.renewed.get_or_create(&l).clone(),
            heartbeat_interval: self.heartbeat_interval.get_or_create(&l).clone(),
            report_latency: self.report_latency.get_or_create(&l).clone(),
            reports: self.reports.get_or_create(&l).clone(),
            reports_retried: self.reports_retried.get_or_create(&l).clone(),
            expiry_late: self.expiry_late.get_or_create(&l).clone(),
            heartbeat_chart: Arc::default(),
            report_chart: Arc::default(),
            label: l.queue,
        }
    }
}

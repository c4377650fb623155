//! What a worker shows: round trips to the nodes, its journal, its reports and its leases.
use super::{encode, fast, PeerLabel, StatusLabel};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// What a worker (`leasekeeper worker`, `run`, or the SDK) shows.
pub struct WorkerMetrics {
    /// Final reports, and the journal holding them until acknowledged.
    pub reports_sent: Counter,
    pub reports_retried: Counter,
    pub journal_depth: Gauge,
    /// Leases, and the attempts run under them.
    pub leases_held: Gauge,
    pub leases_lost: Family<StatusLabel, Counter>,
    pub tasks_run: Family<StatusLabel, Counter>,
    /// Heartbeat round trips, per node.
    pub node_rtt: Family<PeerLabel, Histogram>,
    registry: Registry,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        let mut r = Registry::with_prefix("leasekeeper_worker");
        WorkerMetrics {
            node_rtt: reg!(
                r,
                "node_round_trip_seconds",
                "Round trip of each heartbeat to the node that answered it, per node address.",
                Family::<PeerLabel, Histogram>::new_with_constructor(fast)
            ),
            journal_depth: reg!(
                r,
                "journal_depth",
                "Final reports journaled and not yet acknowledged by the cluster.",
                Gauge::default()
            ),
            reports_sent: reg!(
                r,
                "reports_sent",
                "Sends of final reports (first tries and retries).",
                Counter::default()
            ),
            reports_retried: reg!(
                r,
                "reports_retried",
                "Sends of final reports that were a retry.",
                Counter::default()
            ),
            leases_held: reg!(r, "leases_held", "Leases this worker holds.", Gauge::default()),
            leases_lost: reg!(
                r,
                "leases_lost",
                "Leases this worker lost before reporting, per reason: expired, cancelled, finished, unknown, denied, unconfirmed.",
                Family::<StatusLabel, Counter>::default()
            ),
            tasks_run: reg!(
                r,
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

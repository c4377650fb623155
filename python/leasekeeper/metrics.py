"""What a worker counts (the Rust SDK's `metrics::WorkerMetrics`, under the same names), exposed
through `prometheus_client` when it is installed; without it every count is a no-op.

    from leasekeeper import Worker
    from leasekeeper.metrics import serve
    serve(9464)                     # /metrics on port 9464 (prometheus_client's own server)
    Worker(endpoints, "etl").run(handler)
"""
from __future__ import annotations

from typing import Optional

try:  # optional: `pip install prometheus-client`
    import prometheus_client as _prom
except ImportError:  # pragma: no cover - exercised where prometheus_client is absent
    _prom = None

#: Round trips, in seconds: 100 µs to about 3 s, as the nodes' (doubling buckets).
_FAST = tuple(0.0001 * 2 ** i for i in range(16))


class _Nothing:
    def labels(self, *a, **k):
        return self

    def inc(self, *a, **k):
        pass

    def set(self, *a, **k):
        pass

    def observe(self, *a, **k):
        pass


class WorkerMetrics:
    """One worker's families: `leasekeeper_worker_*`. Pass a `registry` to keep them apart from
    prometheus_client's default one (tests do)."""

    def __init__(self, registry=None):
        if _prom is None:
            n = _Nothing()
            self.node_rtt = self.journal_depth = self.reports_sent = self.reports_retried = n
            self.leases_held = self.leases_lost = self.tasks_run = n
            self.registry = None
            return
        kw = {"registry": registry} if registry is not None else {}
        self.registry = registry
        p = "leasekeeper_worker_"
        self.node_rtt = _prom.Histogram(
            p + "node_round_trip_seconds",
            "Round trip of each heartbeat to the node that answered it, per node address.",
            ["peer"], buckets=_FAST, **kw)
        self.journal_depth = _prom.Gauge(
            p + "journal_depth", "Final reports journaled and not yet acknowledged by the cluster.", **kw)
        self.reports_sent = _prom.Counter(
            p + "reports_sent", "Sends of final reports (first tries and retries).", **kw)
        self.reports_retried = _prom.Counter(
            p + "reports_retried", "Sends of final reports that were a retry.", **kw)
        self.leases_held = _prom.Gauge(p + "leases_held", "Leases this worker holds.", **kw)
        self.leases_lost = _prom.Counter(
            p + "leases_lost",
            "Leases this worker lost before reporting, per reason: expired, cancelled, finished, "
            "unknown, denied, unconfirmed.", ["status"], **kw)
        self.tasks_run = _prom.Counter(
            p + "tasks_run", "Attempts this worker ran, per outcome: succeeded, failed, released.",
            ["status"], **kw)


_default: Optional[WorkerMetrics] = None


def default() -> WorkerMetrics:
    """The process's metrics in prometheus_client's default registry (created on first use)."""
    global _default
    if _default is None:
        _default = WorkerMetrics()
    return _default


def serve(port: int, addr: str = "127.0.0.1") -> None:
    """Serves prometheus_client's default registry (where workers count by default) on
    http://addr:port/metrics. Needs prometheus_client."""
    if _prom is None:
        raise RuntimeError("pip install prometheus-client to serve metrics")
    _prom.start_http_server(port, addr=addr)

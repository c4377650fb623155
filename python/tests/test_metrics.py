"""Each node's /metrics parses with prometheus_client's OpenMetrics parser, and counts what a
Python worker did; the worker's own numbers are in its registry."""
import time
import urllib.request

from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from leasekeeper import Outcome, Worker
from leasekeeper.metrics import WorkerMetrics
from leasekeeper.v1 import leasekeeper_pb2 as pb


def scrape(addr: str) -> dict:
    """{(sample name, frozen labels): value} of one node, parsed by the official parser."""
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as r:
        assert r.headers["Content-Type"].startswith("application/openmetrics-text")
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: dict, name: str, **labels) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def test_nodes_count_a_python_workers_run_and_parse(cluster, tmp_path):
    c = cluster.client()
    c.submit("py-metrics", id="pm-1", payload=b"x", lease_ttl_ms=1500)
    registry = CollectorRegistry()
    w = Worker(cluster.addrs, "py-metrics", worker_id="pm", journal_dir=str(tmp_path / "j"),
               claim_wait_ms=200, metrics=WorkerMetrics(registry=registry))

    ctx = w.claim()
    assert ctx is not None
    time.sleep(1.0)  # the work: long enough for a heartbeat at a third of the TTL
    w.report(ctx, Outcome.success(b"done"))
    assert w.drain(10) == 0
    assert c.get("pm-1").state == pb.TASK_STATE_SUCCEEDED
    time.sleep(0.3)  # every node applies the report

    nodes = [scrape(a) for a in cluster.metrics_addrs]
    for s in nodes:
        assert value(s, "leasekeeper_tasks_submitted_total", queue="py-metrics") == 1
        assert value(s, "leasekeeper_tasks_claimed_total", queue="py-metrics") == 1
        assert value(s, "leasekeeper_tasks_succeeded_total", queue="py-metrics") == 1
        assert value(s, "leasekeeper_tasks", queue="py-metrics", state="SUCCEEDED") == 1
        assert value(s, "leasekeeper_raft_has_leader") == 1
    assert sum(value(s, "leasekeeper_raft_is_leader") for s in nodes) == 1
    assert sum(value(s, "leasekeeper_reports_total", queue="py-metrics") for s in nodes) == 1
    assert sum(value(s, "leasekeeper_reports_retried_total", queue="py-metrics") for s in nodes) == 0
    latency = sum(value(s, "leasekeeper_report_latency_seconds_count", queue="py-metrics") for s in nodes)
    assert latency == 1, "the Python worker sends its exit-to-send time"

    get = lambda name, **l: registry.get_sample_value(name, l) or 0.0  # noqa: E731
    assert get("leasekeeper_worker_tasks_run_total", status="succeeded") == 1
    assert get("leasekeeper_worker_reports_sent_total") == 1
    assert get("leasekeeper_worker_reports_retried_total") == 0
    assert get("leasekeeper_worker_journal_depth") == 0
    assert get("leasekeeper_worker_leases_held") == 0
    rtts = sum(get("leasekeeper_worker_node_round_trip_seconds_count", peer=a) for a in cluster.addrs)
    assert rtts >= 1
    w.close()

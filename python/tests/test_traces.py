"""Traces: a scheduler's submit inside an OpenTelemetry span carries its traceparent, the node
keeps it with the task, and the Python worker runs the task in a `task.run` span that is a
child of that submit (one trace id from submit to report)."""
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from leasekeeper import Worker
from leasekeeper.v1 import leasekeeper_pb2 as pb


def test_a_task_runs_in_the_trace_of_its_submit(cluster, tmp_path):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    tracer = trace.get_tracer("scheduler")

    c = cluster.client()
    with tracer.start_as_current_span("schedule nightly") as submit:
        c.submit("py-traced", id="pt-1", payload=b"x")
    trace_id = format(submit.get_span_context().trace_id, "032x")
    t = c.get("pt-1")
    assert t.trace_parent.split("-")[1] == trace_id, t.trace_parent

    w = Worker(cluster.addrs, "py-traced", worker_id="pt", journal_dir=str(tmp_path / "j"), claim_wait_ms=200)
    seen = {}

    def handler(ctx):
        seen["trace_id"] = format(trace.get_current_span().get_span_context().trace_id, "032x")
        w.stop()
        return b"ok"

    w.run(handler, install_signal_handlers=False)
    w.close()
    assert seen["trace_id"] == trace_id
    assert c.get("pt-1").state == pb.TASK_STATE_SUCCEEDED
    runs = [s for s in exporter.get_finished_spans() if s.name == "task.run"]
    assert len(runs) == 1
    run = runs[0]
    assert format(run.context.trace_id, "032x") == trace_id
    assert run.parent.span_id == submit.get_span_context().span_id
    assert run.attributes["task"] == "pt-1"

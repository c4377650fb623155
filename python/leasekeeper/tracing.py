"""Traces (the Rust SDK's `trace` module): the W3C `traceparent` of the current OpenTelemetry
span is sent with every call, and a worker runs each task in a `task.run` span that continues
the trace of the task's submit, when the `opentelemetry` API is installed
(`pip install 'leasekeeper[tracing]'`; export spans with the opentelemetry SDK as usual).
Without it, calls carry no trace context and nothing here costs anything."""
from __future__ import annotations

import contextlib
from typing import Iterator, Tuple

try:
    from opentelemetry import propagate as _propagate
    from opentelemetry import trace as _trace
except ImportError:  # pragma: no cover - exercised where opentelemetry is absent
    _propagate = None
    _trace = None


def metadata() -> Tuple[Tuple[str, str], ...]:
    """The current span's `traceparent`, as gRPC metadata (empty outside a span)."""
    if _propagate is None:
        return ()
    carrier: dict = {}
    _propagate.inject(carrier)
    tp = carrier.get("traceparent")
    return (("traceparent", tp),) if tp else ()


@contextlib.contextmanager
def task_span(task) -> Iterator[None]:
    """`task.run` for one attempt of `task`, a child of its submit's trace when it has one."""
    if _trace is None:
        yield
        return
    parent = _propagate.extract({"traceparent": task.trace_parent}) if task.trace_parent else None
    tracer = _trace.get_tracer("leasekeeper")
    attrs = {"task": task.id, "queue": task.queue, "attempt": task.attempt}
    with tracer.start_as_current_span("task.run", context=parent, attributes=attrs):
        yield

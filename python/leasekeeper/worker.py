"""A worker that never loses a success (the Rust SDK's `worker/mod.rs`: configuration, the task
context and the claim loop; the leases, heartbeats and reports have rooms of their own).

- Claims up to `concurrency` tasks at a time (long poll, idempotent claim ids).
- Renews every lease it holds over one Heartbeat stream (`heartbeat.py`), at the interval the
  cluster advises. A lease the cluster reports lost, or that the loss rules (`leases.py`) give
  up, sets the handler's `ctx.lost` event.
- Journals the handler's outcome (fsync) before sending it, retries it until the cluster
  acknowledges it, renews the lease until then, and replays unacknowledged reports at start
  (`outbox.py`).
- On SIGTERM/SIGINT (or `stop()`): no more claims (a long poll is cut short), running handlers
  get `shutdown_grace` seconds, then `ctx.stopping` is set; every outcome is reported before
  `run` returns.

A handler returns bytes (success, the result), an `Outcome`, or raises (failure).
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List, Optional, Sequence, Union

import grpc

from .metrics import WorkerMetrics, default as default_metrics
from . import protocol as P
from .client import RETRYABLE, Client, Interrupted
from .heartbeat import heartbeats
from .journal import Journal
from .leases import Leases
from .outbox import Outbox
from .report import Outcome, Report
from .tracing import task_span
from .v1 import leasekeeper_pb2 as pb

log = logging.getLogger("leasekeeper.worker")


def default_journal_dir(worker_id: str) -> str:
    base = os.environ.get("LEASEKEEPER_JOURNAL_DIR", os.path.join(".leasekeeper", "journal"))
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in worker_id)
    return os.path.join(base, safe)


class TaskContext:
    def __init__(self, worker: "Worker", task: pb.Task, lease: pb.Lease, lease_secret: bytes,
                 lost: threading.Event):
        self.task = task
        self.lease = lease
        # What proves this worker holds the lease (from the claim's answer only).
        self.lease_secret = lease_secret
        self.lost = lost
        self.stopping = worker._stopping
        self._worker = worker

    @property
    def token(self) -> int:
        return self.lease.token

    @property
    def payload(self) -> bytes:
        return self.task.payload

    @property
    def lost_reason(self) -> Optional[str]:
        return self._worker.leases.reason(self.lease.token)

    def progress(self, checkpoint: bytes) -> None:
        self._worker.client.progress(self.lease.token, self.lease_secret, checkpoint)


Handler = Callable[[TaskContext], Union[bytes, None, Outcome]]


class Worker:
    def __init__(
        self,
        endpoints: Union[str, Sequence[str]],
        queue: str,
        worker_id: Optional[str] = None,
        concurrency: int = 1,
        lease_ttl_ms: int = 0,
        journal_dir: Optional[str] = None,
        shutdown_grace: float = P.SHUTDOWN_GRACE,
        drain_timeout: float = P.DRAIN_TIMEOUT,
        claim_wait_ms: int = round(P.CLAIM_WAIT * 1000),
        ca_file: Optional[str] = None,
        cert_file: Optional[str] = None,
        key_file: Optional[str] = None,
        token: Optional[str] = None,
        metrics: Optional[WorkerMetrics] = None,
    ):
        """`metrics`: where this worker counts what it does (with prometheus_client installed;
        default: its default registry, which `leasekeeper.metrics.serve` serves)."""
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        # TLS as for `Client`: the CA the nodes' certificates chain to, and a client certificate
        # where the nodes require one; `token` for clusters with an auth file.
        self.client = Client(endpoints, ca_file=ca_file, cert_file=cert_file, key_file=key_file, token=token)
        # Claims give up sooner: the claim loop retries anyway, and a stop must not wait long
        # on an unreachable cluster. An attempt unanswered a second past its long-poll wait moves
        # on to another node (same claim id), so that a claim committed while its answer was cut
        # off is found, and renewed, well within its TTL; the heartbeats move with it.
        self._claims = self.client.derive(retry_for=P.CLAIM_RETRY_FOR, attempt_timeout=P.CLAIM_ATTEMPT_TIMEOUT)
        self.queue = queue
        self.worker_id = worker_id or f"{socket.gethostname()}-{queue}"
        self.concurrency = concurrency
        self.lease_ttl_ms = lease_ttl_ms
        self.shutdown_grace = shutdown_grace
        self.drain_timeout = drain_timeout
        self.claim_wait_ms = claim_wait_ms
        self.metrics = metrics if metrics is not None else default_metrics()
        self.leases = Leases(time.monotonic(), self.metrics)
        self.journal = Journal(journal_dir or default_journal_dir(self.worker_id))
        self.outbox = Outbox(self.client, self.journal, self.leases)
        self._stop = threading.Event()
        self._stopping = threading.Event()
        self._hb_stop = threading.Event()
        self._hb = threading.Thread(
            target=heartbeats, args=(self.client, self.leases, self._hb_stop),
            name="leasekeeper-heartbeat", daemon=True,
        )
        self._hb.start()
        self.outbox.replay()

    # ------------------------------------------------------------------ public

    def stop(self) -> None:
        """Stops claiming (a long poll in flight is cut short); `run` then winds down as after
        SIGTERM."""
        self._stop.set()

    def undelivered(self) -> int:
        return self.outbox.undelivered()

    def drain(self, timeout: float) -> int:
        """Waits until every journaled report is acknowledged; returns how many are left."""
        return self.outbox.drain(timeout)

    def report(self, ctx: TaskContext, outcome: Outcome) -> None:
        """Journals `outcome` (fsync), then delivers it in the background."""
        self.outbox.report(Report(ctx.task.id, ctx.token, outcome, ctx.lease_secret))

    def claim(
        self, task_id: str = "", wait_ms: Optional[int] = None, claim_id: Optional[str] = None,
        interrupt: Optional[threading.Event] = None,
    ) -> Optional[TaskContext]:
        """Claims a task. Pass the `claim_id` of a claim that failed to ask for it again: if it
        made a lease all the same, the answer is that lease. Setting `interrupt` cuts the long
        poll short (`client.Interrupted`)."""
        sent_at = time.monotonic()
        r = self._claims.claim(
            self.queue,
            self.worker_id,
            lease_ttl_ms=self.lease_ttl_ms,
            wait_ms=self.claim_wait_ms if wait_ms is None else wait_ms,
            task_id=task_id,
            claim_id=claim_id or uuid.uuid4().hex,
            interrupt=interrupt,
        )
        if not r.HasField("lease"):
            return None
        # The lease's TTL runs from when the nodes heard it, `lease_age_ms` before this answer (a
        # long poll may have waited far longer than the TTL; a retry's answer may name a lease an
        # earlier attempt created).
        now = time.monotonic()
        started_at = max(sent_at, now - r.lease_age_ms / 1000.0)
        self.leases.contact(now)
        lost = self.leases.track(
            r.lease.token, r.lease_secret, r.lease.ttl_ms / 1000.0, r.renew_interval_ms / 1000.0,
            started_at, now,
        )
        log.info("claimed task=%s token=%d attempt=%d", r.task.id, r.lease.token, r.lease.attempt)
        return TaskContext(self, r.task, r.lease, r.lease_secret, lost)

    def run(self, handler: Handler, install_signal_handlers: bool = True) -> int:
        """Runs `handler` on claimed tasks until stopped; returns the number of reports left
        undelivered (0 = everything acknowledged)."""
        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda s, f: (log.info("signal %d: stopping", s), self._stop.set()))
        slots = threading.Semaphore(self.concurrency)
        running: List = []
        # Reports an earlier run left behind go out before any claim: one of them may finish the
        # very task this worker would otherwise claim and run again.
        deadline = time.monotonic() + self.drain_timeout
        while self.undelivered() and not self._stop.is_set() and time.monotonic() < deadline:
            self.drain(0.2)
        backoff = P.CLAIM_BACKOFF_INITIAL
        # A claim key is kept until a claim under it returns a lease (or is refused for good): a
        # claim that failed in transit (or answered "none" while an earlier attempt of it was
        # still committing) may have made a lease all the same, and asking again under the same
        # key is answered that lease.
        claim_id = uuid.uuid4().hex
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="leasekeeper-task") as pool:
            while not self._stop.is_set():
                if not slots.acquire(timeout=0.1):
                    continue
                try:
                    try:
                        ctx = self.claim(claim_id=claim_id, interrupt=self._stop)
                    except Interrupted:
                        # Cut short by a stop. It may have been committed already (an orphaned
                        # lease would expire as a failed attempt), so the same claim key is asked
                        # again without waiting, and whatever lease it names is released.
                        ctx = self.claim(claim_id=claim_id, wait_ms=0)
                    backoff = P.CLAIM_BACKOFF_INITIAL
                    if ctx is not None:
                        claim_id = uuid.uuid4().hex
                except grpc.RpcError as e:
                    slots.release()
                    if e.code() not in RETRYABLE:
                        claim_id = uuid.uuid4().hex
                    log.warning("claim failed (%s); retrying", e.code())
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, P.CLAIM_BACKOFF_MAX)
                    continue
                if ctx is None:
                    slots.release()
                    continue
                if self._stop.is_set():
                    self.report(ctx, Outcome.release("worker stopping before the task started"))
                    slots.release()
                    break
                running.append(pool.submit(self._handle, handler, ctx, slots))
            log.info("stopping: no more claims; %d task(s) may still run", sum(not f.done() for f in running))
            grace_end = time.monotonic() + self.shutdown_grace
            while any(not f.done() for f in running):
                if time.monotonic() >= grace_end and not self._stopping.is_set():
                    log.warning("grace period over: telling running tasks to stop")
                    self._stopping.set()
                time.sleep(0.02)
        left = self.drain(self.drain_timeout)
        if left:
            log.error("%d report(s) not acknowledged yet; they are sent at the next start", left)
        return left

    def close(self) -> None:
        self._hb_stop.set()
        self.leases.renew_now.set()
        self._hb.join(timeout=5)
        self.outbox.close()
        self.client.close()
        self._claims.close()

    # ------------------------------------------------------------------ internals

    def _handle(self, handler: Handler, ctx: TaskContext, slots: threading.Semaphore) -> None:
        """Runs one handler, then journals and delivers its outcome."""
        try:
            # The handler runs, and its report is sent, in the task's trace.
            with task_span(ctx.task):
                try:
                    res = handler(ctx)
                    outcome = res if isinstance(res, Outcome) else Outcome.success(res or b"")
                except Exception as e:  # the task failed; the report says how
                    outcome = Outcome.failure(P.CRASH_EXIT_CODE, f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
                self.report(ctx, outcome)
        finally:
            slots.release()

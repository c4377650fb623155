"""A worker that never loses a success (same semantics as the Rust `leasekeeper::worker`).

- Claims up to `concurrency` tasks at a time (long poll, idempotent claim ids).
- Renews every lease it holds over one Heartbeat stream, at the interval the cluster advises
  (about a third of the TTL, jittered). A lease the cluster reports lost, or that no renewal
  confirmed for a TTL while no node answered at all (or for two TTLs while nodes answered "no
  leader"), sets the handler's `ctx.lost` event.
- Journals the handler's outcome (fsync) before sending it, retries it until the cluster
  acknowledges it, renews the lease until then, and replays unacknowledged reports at start.
- On SIGTERM/SIGINT (or `stop()`): no more claims, running handlers get `shutdown_grace`
  seconds, then `ctx.stopping` is set; every outcome is reported before `run` returns.

A handler returns bytes (success, the result), an `Outcome`, or raises (failure).
"""
from __future__ import annotations

import logging
import os
import queue
import random
import signal
import socket
import threading
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Union

import grpc

from . import protocol as P
from .client import RETRYABLE, Client
from .journal import Journal, Outcome, Report
from .v1 import leasekeeper_pb2 as pb
from .v1 import leasekeeper_pb2_grpc as rpc

log = logging.getLogger("leasekeeper.worker")


def default_journal_dir(worker_id: str) -> str:
    base = os.environ.get("LEASEKEEPER_JOURNAL_DIR", os.path.join(".leasekeeper", "journal"))
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in worker_id)
    return os.path.join(base, safe)


@dataclass
class _Tracked:
    secret: bytes
    ttl: float
    interval: float
    confirmed_at: float
    lost: threading.Event
    reason: Optional[str] = None
    reported: bool = False


class TaskContext:
    def __init__(
        self, worker: "Worker", task: pb.Task, lease: pb.Lease, lease_secret: bytes, lost: threading.Event
    ):
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
        return self._worker._reason(self.lease.token)

    def progress(self, checkpoint: bytes) -> None:
        self._worker.client.progress(self.lease.token, self.lease_secret, checkpoint)


Handler = Callable[[TaskContext], Union[bytes, None, Outcome]]


class _HeartbeatStream:
    """One bidirectional Heartbeat call: requests from a queue, answers read by a thread."""

    def __init__(self, channel: grpc.Channel):
        self._requests: "queue.Queue[Optional[pb.HeartbeatRequest]]" = queue.Queue()
        self._answers: "queue.Queue[Optional[pb.HeartbeatResponse]]" = queue.Queue()

        def requests():
            while True:
                r = self._requests.get()
                if r is None:
                    return
                yield r

        self._call = rpc.WorkerStub(channel).Heartbeat(requests())
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            for r in self._call:
                self._answers.put(r)
        except grpc.RpcError:
            pass
        self._answers.put(None)

    def exchange(self, req: pb.HeartbeatRequest, timeout: float) -> Optional[pb.HeartbeatResponse]:
        self._requests.put(req)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                r = self._answers.get(timeout=left)
            except queue.Empty:
                return None
            if r is None:
                return None
            if r.seq == req.seq:
                return r

    def close(self):
        self._requests.put(None)
        self._call.cancel()


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
        claim_wait_ms: int = 1000,
    ):
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.client = Client(endpoints)
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
        self.journal = Journal(journal_dir or default_journal_dir(self.worker_id))
        self._lock = threading.Lock()
        self._leases: Dict[int, _Tracked] = {}
        self._contact_at = time.monotonic()
        self._acked = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._stopping = threading.Event()
        self._hb_stop = threading.Event()
        # Set to cut the heartbeat loop's pause short: on stop, or for a lease to renew at once.
        self._hb_wake = threading.Event()
        self._hb = threading.Thread(target=self._heartbeats, name="leasekeeper-heartbeat", daemon=True)
        self._hb.start()
        for r in self.journal.pending():
            log.info("replaying an unacknowledged report task=%s token=%d", r.task_id, r.lease_token)
            self._track(r.lease_token, r.lease_secret, ttl=1e9, interval=0.3, started_at=time.monotonic())
            self._leases[r.lease_token].reported = True
            self._deliver_async(r)

    # ------------------------------------------------------------------ public

    def stop(self) -> None:
        """Stops claiming; `run` then winds down as after SIGTERM."""
        self._stop.set()

    def undelivered(self) -> int:
        with self._lock:
            return self.journal.pending_count()

    def drain(self, timeout: float) -> int:
        """Waits until every journaled report is acknowledged; returns how many are left."""
        deadline = time.monotonic() + timeout
        with self._acked:
            while self.journal.pending_count() and time.monotonic() < deadline:
                self._acked.wait(timeout=min(0.2, max(0.0, deadline - time.monotonic())))
            return self.journal.pending_count()

    def report(self, ctx: TaskContext, outcome: Outcome) -> None:
        """Journals `outcome` (fsync), then delivers it in the background."""
        r = Report(ctx.task.id, ctx.token, outcome, ctx.lease_secret)
        with self._lock:
            self.journal.append(r)
            t = self._leases.get(ctx.token)
            if t:
                t.reported = True
        self._deliver_async(r)

    def claim(
        self, task_id: str = "", wait_ms: Optional[int] = None, claim_id: Optional[str] = None
    ) -> Optional[TaskContext]:
        """Claims a task. Pass the `claim_id` of a claim that failed to ask for it again: if it
        made a lease all the same, the answer is that lease."""
        sent_at = time.monotonic()
        r = self._claims.claim(
            self.queue,
            self.worker_id,
            lease_ttl_ms=self.lease_ttl_ms,
            wait_ms=self.claim_wait_ms if wait_ms is None else wait_ms,
            task_id=task_id,
            claim_id=claim_id or uuid.uuid4().hex,
        )
        if not r.HasField("lease"):
            return None
        # The lease's TTL runs from when the nodes heard it, `lease_age_ms` before this answer (a
        # long poll may have waited far longer than the TTL; a retry's answer may name a lease an
        # earlier attempt created).
        now = time.monotonic()
        started_at = max(sent_at, now - r.lease_age_ms / 1000.0)
        with self._lock:
            self._contact_at = max(self._contact_at, now)
        lost = self._track(
            r.lease.token, r.lease_secret, r.lease.ttl_ms / 1000.0, r.renew_interval_ms / 1000.0, started_at
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
                    ctx = self.claim(claim_id=claim_id)
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
        self._hb_wake.set()
        self._hb.join(timeout=5)
        self.journal.close()
        self.client.close()
        self._claims.close()

    # ------------------------------------------------------------------ internals

    def _handle(self, handler: Handler, ctx: TaskContext, slots: threading.Semaphore) -> None:
        try:
            try:
                res = handler(ctx)
                outcome = res if isinstance(res, Outcome) else Outcome.success(res or b"")
            except Exception as e:  # the task failed; the report says how
                outcome = Outcome.failure(P.CRASH_EXIT_CODE, f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
            self.report(ctx, outcome)
        finally:
            slots.release()

    def _track(self, token: int, secret: bytes, ttl: float, interval: float, started_at: float) -> threading.Event:
        """Starts renewing a lease whose TTL started no earlier than `started_at`; one whose
        answer was slow in coming is renewed at once."""
        lost = threading.Event()
        interval = max(interval, 0.01)
        with self._lock:
            self._leases[token] = _Tracked(
                secret=secret, ttl=ttl, interval=interval, confirmed_at=started_at, lost=lost
            )
        if time.monotonic() - started_at > interval / 2:
            self._hb_wake.set()
        return lost

    def _pause(self, seconds: float) -> None:
        self._hb_wake.wait(seconds)
        self._hb_wake.clear()

    def _reason(self, token: int) -> Optional[str]:
        with self._lock:
            t = self._leases.get(token)
            return t.reason if t else None

    def _lose(self, token: int, why: str) -> None:
        with self._lock:
            t = self._leases.get(token)
            if t is None:
                return
            if t.reason is None:
                log.warning("lease lost token=%d: %s", token, why)
                t.reason = why
            t.lost.set()
            if t.reported:
                del self._leases[token]

    def _lose_unconfirmed(self, now: float) -> None:
        stale = []
        with self._lock:
            for token, t in self._leases.items():
                if t.reported or t.lost.is_set():
                    continue
                unconfirmed = now - t.confirmed_at
                silent = now - max(self._contact_at, t.confirmed_at)
                if unconfirmed > 2 * t.ttl:
                    stale.append((token, "no renewal committed within two lease TTLs although nodes answered"))
                elif unconfirmed > t.ttl and silent > t.ttl:
                    stale.append((token, "no node reachable within the lease TTL; the cluster may have expired it"))
        for token, why in stale:
            self._lose(token, why)

    def _heartbeats(self) -> None:
        seq = 0
        stream: Optional[_HeartbeatStream] = None
        hb_node = self.client.node()
        backoff = 0.05
        while not self._hb_stop.is_set():
            self._lose_unconfirmed(time.monotonic())
            with self._lock:
                live = [(k, t.secret) for k, t in self._leases.items() if not t.lost.is_set()]
                tokens = [k for k, _ in live]
                secrets = [s for _, s in live]
                interval = min((t.interval for t in self._leases.values()), default=0.5)
            if not tokens:
                self._hb_stop.wait(0.05)
                continue
            if stream is None:
                hb_node = self.client.node()
                stream = _HeartbeatStream(self.client.channel(hb_node))
            seq += 1
            sent_at = time.monotonic()
            # Silence for one renew interval (a third of the TTL; 0.2-1.5 s) means this node is
            # cut off: the renewal must still have the time to go through another node.
            answer = stream.exchange(
                pb.HeartbeatRequest(seq=seq, lease_tokens=tokens, lease_secrets=secrets),
                timeout=min(max(interval, P.HEARTBEAT_SILENCE_MIN), P.HEARTBEAT_SILENCE_MAX),
            )
            if answer is None:
                stream.close()
                stream = None
                self.client.move_from(hb_node)
                self._hb_stop.wait(backoff)
                backoff = min(backoff * 2, P.HEARTBEAT_RECONNECT_BACKOFF_MAX)
                continue
            backoff = 0.05
            retry = False
            with self._lock:
                self._contact_at = max(self._contact_at, sent_at)
            for l in answer.leases:
                if l.status == pb.LEASE_STATUS_ALIVE:
                    with self._lock:
                        t = self._leases.get(l.lease_token)
                        if t:
                            t.confirmed_at = max(t.confirmed_at, sent_at)
                            if answer.renew_interval_ms:
                                t.interval = answer.renew_interval_ms / 1000.0
                elif l.status in (pb.LEASE_STATUS_RETRY, pb.LEASE_STATUS_UNSPECIFIED):
                    retry = True
                else:
                    self._lose(l.lease_token, l.message)
            if retry:
                stream.close()
                stream = None
                self.client.move_from(hb_node)
            jitter = interval * 0.1
            self._pause(interval + random.uniform(-jitter, jitter))
        if stream is not None:
            stream.close()

    def _deliver_async(self, r: Report) -> None:
        threading.Thread(target=self._deliver, args=(r,), name="leasekeeper-report", daemon=True).start()

    def _send(self, r: Report) -> None:
        o = r.outcome
        if o.kind == "release":
            self.client.release(r.lease_token, r.lease_secret, o.reason)
        else:
            self.client.complete(
                r.task_id,
                r.lease_token,
                r.lease_secret,
                success=o.kind == "success",
                exit_code=o.exit_code,
                result=o.result,
                error=o.error,
            )

    def _deliver(self, r: Report) -> None:
        backoff = P.REPORT_BACKOFF_INITIAL
        tries = 0
        while True:
            tries += 1
            try:
                self._send(r)
                log.info("report committed task=%s token=%d tries=%d", r.task_id, r.lease_token, tries)
                break
            except grpc.RpcError as e:
                if e.code() in RETRYABLE or e.code() in (
                    grpc.StatusCode.CANCELLED,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    grpc.StatusCode.ABORTED,
                    grpc.StatusCode.INTERNAL,
                ):
                    log.warning("report not delivered yet (%s); retrying", e.code())
                    time.sleep(backoff)
                    backoff = min(backoff * 2, P.REPORT_BACKOFF_MAX)
                    continue
                log.error("report refused for good (%s: %s); dropping it", e.code(), e.details())
                break
        with self._acked:
            self.journal.ack(r.lease_token)
            self._leases.pop(r.lease_token, None)
            self._acked.notify_all()

"""Final reports, journal first (the Rust SDK's `worker/outbox.rs`): a report is appended and
fsynced to the journal before it is sent, sent to any node until the cluster acknowledges it
(or refuses it for good), renewed meanwhile so the task is not handed to anyone else, and
replayed at the next start if the worker stops first."""
from __future__ import annotations

import contextvars
import logging
import threading
import time
from typing import List, Optional

import grpc

from . import protocol as P
from .client import RETRYABLE, Client
from .journal import Journal
from .leases import Leases
from .report import Report

log = logging.getLogger("leasekeeper.worker")

#: Answers after which a final report is sent again (besides RETRYABLE): anything else refuses
#: it for good.
REPORT_RETRYABLE = RETRYABLE | {
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.INTERNAL,
}


class Outbox:
    """The journal and the deliveries of one worker."""

    def __init__(self, client: Client, journal: Journal, leases: Leases):
        self.client = client
        self.journal = journal
        self.leases = leases
        self._lock = threading.Lock()
        # Notified whenever a report leaves the journal.
        self._acked = threading.Condition(self._lock)

    def replay(self) -> None:
        """Sends again every report an earlier run left unacknowledged, renewing its lease until
        the cluster acknowledges it (a restart within the TTL keeps the lease)."""
        with self._lock:
            pending = self.journal.pending()
        for r in pending:
            log.info("replaying an unacknowledged report task=%s token=%d", r.task_id, r.lease_token)
            now = time.monotonic()
            self.leases.track(r.lease_token, r.lease_secret, ttl=1e9, interval=0.3, started_at=now, now=now)
            self.leases.mark_reported(r.lease_token)
            # When its process exited is not known to this run: its latency is not measured.
            self._deliver_async(r, None)
        self._depth()

    def report(self, r: Report) -> None:
        """Appends `r` to the journal (fsync), then delivers it in the background; the lease is
        renewed until the cluster acknowledges the report. Without the journal (it cannot be
        written) the report is still sent once, and the error raised."""
        # The handler returned (the process exited) now: the report latency starts here.
        exited = time.monotonic()
        self.leases.metrics.tasks_run.labels(status=_RUN[r.outcome.kind]).inc()
        try:
            with self._lock:
                self.journal.append(r)
        except OSError:
            log.exception("cannot journal the report; sending it anyway")
            try:
                _send(self.client, r, [0], exited)
            except grpc.RpcError:
                pass
            self.leases.untrack(r.lease_token)
            raise
        self.leases.mark_reported(r.lease_token)
        self._depth()
        self._deliver_async(r, exited)

    def _depth(self) -> None:
        with self._lock:
            self.leases.metrics.journal_depth.set(self.journal.pending_count())

    def undelivered(self) -> int:
        """Reports not yet acknowledged."""
        with self._lock:
            return self.journal.pending_count()

    def drain(self, timeout: float) -> int:
        """Waits until every journaled report is acknowledged, or `timeout` passes; returns how
        many are left."""
        deadline = time.monotonic() + timeout
        with self._acked:
            while self.journal.pending_count() and time.monotonic() < deadline:
                self._acked.wait(timeout=min(0.2, max(0.0, deadline - time.monotonic())))
            return self.journal.pending_count()

    def close(self) -> None:
        with self._lock:
            self.journal.close()

    def _deliver_async(self, r: Report, exited: Optional[float]) -> None:
        # Delivered in the caller's context: the report continues the task's trace.
        ctx = contextvars.copy_context()
        threading.Thread(target=ctx.run, args=(self._deliver, r, exited), name="leasekeeper-report",
                         daemon=True).start()

    def _deliver(self, r: Report, exited: Optional[float]) -> None:
        """Sends `r` until the cluster acknowledges it (or refuses it for good), then acks the
        journal."""
        backoff = P.REPORT_BACKOFF_INITIAL
        tries = 0
        sent = [0]
        while True:
            tries += 1
            try:
                _send(self.client, r, sent, exited)
                log.info("report committed task=%s token=%d tries=%d", r.task_id, r.lease_token, tries)
                break
            except grpc.RpcError as e:
                if e.code() in REPORT_RETRYABLE:
                    log.warning("report not delivered yet (%s); retrying", e.code())
                    time.sleep(backoff)
                    backoff = min(backoff * 2, P.REPORT_BACKOFF_MAX)
                    continue
                # Refused for good (the task was forgotten, or a release of a lease that had
                # ended): sending it again cannot change the answer.
                log.error("report refused for good (%s: %s); dropping it", e.code(), e.details())
                break
        m = self.leases.metrics
        sends = max(sent[0], 1)
        m.reports_sent.inc(sends)
        m.reports_retried.inc(sends - 1)
        with self._acked:
            try:
                self.journal.ack(r.lease_token)
            except OSError:
                log.exception("cannot record the acknowledgement; the report is sent again at the next start (harmless)")
            m.journal_depth.set(self.journal.pending_count())
            self._acked.notify_all()
        self.leases.untrack(r.lease_token)


#: The metrics' name of each kind of outcome.
_RUN = {"success": "succeeded", "failure": "failed", "release": "released"}


def _send(client: Client, r: Report, sent: List[int], exited: Optional[float]) -> None:
    o = r.outcome
    if o.kind == "release":
        sent[0] += 1
        client.release(r.lease_token, r.lease_secret, o.reason)
    else:
        client.complete(
            r.task_id,
            r.lease_token,
            r.lease_secret,
            success=o.kind == "success",
            exit_code=o.exit_code,
            result=o.result,
            error=o.error,
            sent=sent,
            exited=exited,
        )

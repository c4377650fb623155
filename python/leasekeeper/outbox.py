"""Final reports, journal first (the Rust SDK's `worker/outbox.rs`): a report is appended and
fsynced to the journal before it is sent, sent to any node until the cluster acknowledges it
(or refuses it for good), renewed meanwhile so the task is not handed to anyone else, and
replayed at the next start if the worker stops first."""
from __future__ import annotations

import logging
import threading
import time

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
            self._deliver_async(r)

    def report(self, r: Report) -> None:
        """Appends `r` to the journal (fsync), then delivers it in the background; the lease is
        renewed until the cluster acknowledges the report. Without the journal (it cannot be
        written) the report is still sent once, and the error raised."""
        try:
            with self._lock:
                self.journal.append(r)
        except OSError:
            log.exception("cannot journal the report; sending it anyway")
            try:
                _send(self.client, r)
            except grpc.RpcError:
                pass
            self.leases.untrack(r.lease_token)
            raise
        self.leases.mark_reported(r.lease_token)
        self._deliver_async(r)

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

    def _deliver_async(self, r: Report) -> None:
        threading.Thread(target=self._deliver, args=(r,), name="leasekeeper-report", daemon=True).start()

    def _deliver(self, r: Report) -> None:
        """Sends `r` until the cluster acknowledges it (or refuses it for good), then acks the
        journal."""
        backoff = P.REPORT_BACKOFF_INITIAL
        tries = 0
        while True:
            tries += 1
            try:
                _send(self.client, r)
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
        with self._acked:
            try:
                self.journal.ack(r.lease_token)
            except OSError:
                log.exception("cannot record the acknowledgement; the report is sent again at the next start (harmless)")
            self._acked.notify_all()
        self.leases.untrack(r.lease_token)


def _send(client: Client, r: Report) -> None:
    o = r.outcome
    if o.kind == "release":
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
        )

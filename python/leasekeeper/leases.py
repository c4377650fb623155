"""The leases a worker holds, and the rules by which it gives one up: the deciding part of the
SDK (the Rust SDK's `worker/leases.rs`). Time comes in as arguments (`time.monotonic()` in the
worker, any number in tests), the network never: the heartbeat loop reports what nodes
answered, and this decides what it means."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

log = logging.getLogger("leasekeeper.worker")


@dataclass
class _Tracked:
    secret: bytes
    ttl: float
    interval: float
    # When the request behind the last confirmation was sent (conservative).
    confirmed_at: float
    lost: threading.Event
    reason: Optional[str] = None
    # The work ended and its report is journaled: renew until it is acknowledged, but the lease
    # can no longer be "lost" for the handler.
    reported: bool = False


class Leases:
    """The leases this worker holds, shared by the claim loop, handlers, heartbeats and reports.
    Seconds throughout."""

    def __init__(self, now: float, metrics=None):
        from .metrics import WorkerMetrics
        # Leases held and lost (by reason) are counted here; heartbeats and reports count theirs.
        self.metrics = metrics if metrics is not None else WorkerMetrics(registry=_private_registry())
        self._lock = threading.Lock()
        self._map: Dict[int, _Tracked] = {}
        # When a node last answered a heartbeat at all (ALIVE or RETRY).
        self._contact_at = now
        # Set to wake the heartbeat loop for a lease that must be renewed without waiting its turn.
        self.renew_now = threading.Event()

    def track(self, token: int, secret: bytes, ttl: float, interval: float, started_at: float,
              now: float) -> threading.Event:
        """Starts renewing a lease whose TTL started at `started_at` (on this worker's clock: the
        claim's answer, less the lease's age on the answering node). A lease already half an
        interval old is renewed at once. Returns the event set when the lease is lost."""
        lost = threading.Event()
        interval = max(interval, 0.001)
        with self._lock:
            self._map[token] = _Tracked(secret=secret, ttl=ttl, interval=interval,
                                        confirmed_at=started_at, lost=lost)
            self.metrics.leases_held.set(len(self._map))
        if now - started_at > interval / 2:
            self.renew_now.set()
        return lost

    def untrack(self, token: int) -> None:
        with self._lock:
            self._map.pop(token, None)
            self.metrics.leases_held.set(len(self._map))

    def mark_reported(self, token: int) -> None:
        with self._lock:
            t = self._map.get(token)
            if t:
                t.reported = True

    def lose(self, token: int, why: str, kind: str = "unknown") -> None:
        """Gives the lease up: `kind` names the reason in the metrics (expired, cancelled,
        finished, unknown, denied, unconfirmed), `why` says it to the handler."""
        with self._lock:
            t = self._map.get(token)
            if t is None:
                return
            if t.reason is None:
                log.warning("lease lost token=%d: %s", token, why)
                t.reason = why
                if not t.reported:
                    self.metrics.leases_lost.labels(status=kind).inc()
            t.lost.set()
            if t.reported:
                # Nothing left to protect: the report stands on its own (late successes count).
                del self._map[token]
                self.metrics.leases_held.set(len(self._map))

    def reason(self, token: int) -> Optional[str]:
        with self._lock:
            t = self._map.get(token)
            return t.reason if t else None

    def due(self) -> Tuple[List[int], List[bytes], float]:
        """Tokens to renew now with their secrets, and the interval until the next heartbeat."""
        with self._lock:
            live = [(k, t.secret) for k, t in self._map.items() if not t.lost.is_set()]
            interval = min((t.interval for t in self._map.values()), default=0.5)
        return [k for k, _ in live], [s for _, s in live], interval

    def lose_unconfirmed(self, now: float) -> None:
        """Loses the leases presumed lost although the cluster could not say so:
        - no renewal confirmed for a TTL and no node answered at all meanwhile (this worker is
          cut off; the cluster may have expired the lease and cannot tell it);
        - no renewal confirmed for two TTLs although nodes answered "no leader, retry" (an
          election does not take that long; this worker may only reach a minority).

        A leader election alone never costs a lease: nodes answer RETRY meanwhile, and a new
        leader hears every lease anew."""
        stale = []
        with self._lock:
            for token, t in self._map.items():
                if t.reported or t.lost.is_set():
                    continue
                unconfirmed = now - t.confirmed_at
                silent = now - max(self._contact_at, t.confirmed_at)
                if unconfirmed > 2 * t.ttl:
                    stale.append((token, f"no renewal committed within two lease TTLs ({t.ttl * 1000:.0f} ms each) although nodes answered"))
                elif unconfirmed > t.ttl and silent > t.ttl:
                    stale.append((token, f"no node reachable within the lease TTL ({t.ttl * 1000:.0f} ms); the cluster may have expired it"))
        for token, why in stale:
            self.lose(token, why, "unconfirmed")

    def contact(self, at: float) -> None:
        with self._lock:
            self._contact_at = max(self._contact_at, at)

    def confirm(self, token: int, sent_at: float, interval: float) -> None:
        """A renewal sent at `sent_at` committed; `interval` (0 = unchanged) is the node's advice."""
        with self._lock:
            t = self._map.get(token)
            if t:
                t.confirmed_at = max(t.confirmed_at, sent_at)
                if interval > 0:
                    t.interval = interval

    def __len__(self) -> int:
        with self._lock:
            return len(self._map)


def _private_registry():
    """A registry of its own, for leases made without a worker's metrics (tests)."""
    try:
        import prometheus_client
    except ImportError:
        return None
    return prometheus_client.CollectorRegistry()

"""One Heartbeat stream per worker (the Rust SDK's `worker/heartbeat.rs`): renews every lease it
holds at the interval the cluster advises, moves to another node when the stream breaks or goes
silent, and tells the leases what the nodes answered."""
from __future__ import annotations

import queue
import random
import threading
import time
from typing import Optional

import grpc

from . import protocol as P
from .client import Client
from .leases import Leases
from .v1 import leasekeeper_pb2 as pb
from .v1 import leasekeeper_pb2_grpc as rpc


class _Stream:
    """One bidirectional Heartbeat call: requests from a queue, answers read by a thread."""

    def __init__(self, channel: grpc.Channel, metadata=()):
        self._requests: "queue.Queue[Optional[pb.HeartbeatRequest]]" = queue.Queue()
        self._answers: "queue.Queue[Optional[pb.HeartbeatResponse]]" = queue.Queue()

        def requests():
            while True:
                r = self._requests.get()
                if r is None:
                    return
                yield r

        self._call = rpc.WorkerStub(channel).Heartbeat(requests(), metadata=metadata)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            for r in self._call:
                self._answers.put(r)
        except grpc.RpcError:
            pass
        self._answers.put(None)

    def exchange(self, req: pb.HeartbeatRequest, timeout: float) -> Optional[pb.HeartbeatResponse]:
        """Sends `req` and waits up to `timeout` for its answer; None if none came."""
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


#: The metrics' name of each way a node says a lease is gone.
_LOST = {
    pb.LEASE_STATUS_EXPIRED: "expired",
    pb.LEASE_STATUS_CANCELLED: "cancelled",
    pb.LEASE_STATUS_FINISHED: "finished",
    pb.LEASE_STATUS_UNKNOWN: "unknown",
    pb.LEASE_STATUS_DENIED: "denied",
}


def heartbeats(client: Client, leases: Leases, stop: threading.Event) -> None:
    """Renews every tracked lease at the advised interval until `stop` is set."""
    seq = 0
    stream: Optional[_Stream] = None
    hb_node = client.node()
    backoff = 0.05
    while not stop.is_set():
        leases.lose_unconfirmed(time.monotonic())
        tokens, secrets, interval = leases.due()
        if not tokens:
            stop.wait(0.05)
            continue
        if stream is None:
            hb_node = client.node()
            stream = _Stream(client.channel(hb_node), client.metadata)
        seq += 1
        sent_at = time.monotonic()
        # Nodes answer within about a second (RETRY when they cannot commit in time), so silence
        # beyond that means this node is unreachable. With a short TTL the wait is shorter still
        # (one renew interval, a third of the TTL): a renewal that finds its node cut off must
        # still have the time to go through another node.
        answer = stream.exchange(
            pb.HeartbeatRequest(seq=seq, lease_tokens=tokens, lease_secrets=secrets),
            timeout=min(max(interval, P.HEARTBEAT_SILENCE_MIN), P.HEARTBEAT_SILENCE_MAX),
        )
        if answer is None:
            stream.close()
            stream = None
            client.move_from(hb_node)
            stop.wait(backoff)
            backoff = min(backoff * 2, P.HEARTBEAT_RECONNECT_BACKOFF_MAX)
            continue
        backoff = 0.05
        leases.contact(sent_at)
        leases.metrics.node_rtt.labels(peer=client.endpoints[hb_node]).observe(time.monotonic() - sent_at)
        retry = False
        for l in answer.leases:
            if l.status == pb.LEASE_STATUS_ALIVE:
                leases.confirm(l.lease_token, sent_at, answer.renew_interval_ms / 1000.0)
            elif l.status in (pb.LEASE_STATUS_RETRY, pb.LEASE_STATUS_UNSPECIFIED):
                retry = True
            else:
                leases.lose(l.lease_token, l.message, _LOST.get(l.status, "unknown"))
        if retry:
            # This node has no leader to commit through: ask another one next.
            stream.close()
            stream = None
            client.move_from(hb_node)
        jitter = interval * 0.1
        leases.renew_now.wait(interval + random.uniform(-jitter, jitter))
        leases.renew_now.clear()
    if stream is not None:
        stream.close()

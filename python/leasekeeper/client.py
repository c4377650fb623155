"""A client for schedulers and workers: talks to any node, moves on when one is unreachable."""
from __future__ import annotations

import copy
import random
import threading
import time
import uuid
from typing import Iterable, Iterator, List, Optional, Sequence, Union

import grpc

from . import tracing

from .v1 import leasekeeper_pb2 as pb
from .v1 import leasekeeper_pb2_grpc as rpc

# The largest answer accepted: the server's own limit (twice the largest legal task).
MAX_ANSWER_BYTES = 16 << 20

#: Codes after which another node (or the same one a little later) may answer differently.
RETRYABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED}
)


class Interrupted(Exception):
    """A call cut short by its `interrupt` event; its outcome is unknown."""


def _interruptible(method, request, timeout: float, interrupt: threading.Event, metadata=()):
    """Calls `method` and waits for its answer, cancelling the call once `interrupt` is set."""
    fut = method.future(request, timeout=timeout, metadata=metadata)
    while True:
        try:
            return fut.result(timeout=0.05)
        except grpc.FutureTimeoutError:
            if interrupt.is_set():
                fut.cancel()
                raise Interrupted(f"{request.DESCRIPTOR.name} interrupted")


class Client:
    """Scheduler and worker calls against a cluster.

    `endpoints` is every node's host:port (a list or a comma-separated string). Followers
    forward writes to the leader, so a call only moves to another node when one is unreachable,
    silent for `attempt_timeout` seconds, or answers UNAVAILABLE (no leader yet); it keeps
    trying for `retry_for` seconds. Every write is idempotent, so a retry is always safe.

    With `ca_file` (and `cert_file`/`key_file` where the nodes require a client certificate) it
    talks TLS; the nodes' certificates must name the hosts in `endpoints`. With `token`, every
    call carries it (`authorization: Bearer`), for clusters with an auth file.
    """

    def __init__(
        self,
        endpoints: Union[str, Sequence[str]],
        retry_for: float = 15.0,
        attempt_timeout: float = 5.0,
        ca_file: Optional[str] = None,
        cert_file: Optional[str] = None,
        key_file: Optional[str] = None,
        token: Optional[str] = None,
    ):
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e]
        if not endpoints:
            raise ValueError("no endpoints given: pass at least one node address (host:port)")
        self.endpoints = list(endpoints)
        # Sent with every call, for clusters with an auth file (`leasekeeper auth add`).
        self.metadata = (("authorization", f"Bearer {token.strip()}"),) if token else ()
        self.retry_for = retry_for
        self.attempt_timeout = attempt_timeout
        # Answers up to 16 MiB: any answer a legal task can produce (the server's limit too).
        options = [("grpc.max_receive_message_length", MAX_ANSWER_BYTES)]
        if ca_file or cert_file:
            # TLS: `ca_file` is the CA the nodes' certificates chain to (None = the system's);
            # `cert_file`/`key_file` a client certificate where the nodes require one.
            if bool(cert_file) != bool(key_file):
                raise ValueError("a client certificate needs both cert_file and key_file")
            read = lambda p: open(p, "rb").read() if p else None  # noqa: E731
            creds = grpc.ssl_channel_credentials(read(ca_file), read(key_file), read(cert_file))
            self._channels = [grpc.secure_channel(e, creds, options=options) for e in self.endpoints]
        else:
            self._channels = [grpc.insecure_channel(e, options=options) for e in self.endpoints]
        # [index of the node in use], shared with the clients `derive` makes.
        self._current = [random.randrange(len(self._channels))]
        self._lock = threading.Lock()

    def derive(self, retry_for: Optional[float] = None, attempt_timeout: Optional[float] = None) -> "Client":
        """A client with other timeouts over the same connections, moving between nodes
        together with this one: leaving an unreachable node leaves it for every call."""
        c = copy.copy(self)  # shares the channels, the node index and its lock
        if retry_for is not None:
            c.retry_for = retry_for
        if attempt_timeout is not None:
            c.attempt_timeout = attempt_timeout
        return c

    def close(self) -> None:
        for c in self._channels:
            c.close()

    def node(self) -> int:
        """The node currently in use (an index into `endpoints`)."""
        with self._lock:
            return self._current[0] % len(self._channels)

    def channel(self, node: Optional[int] = None) -> grpc.Channel:
        return self._channels[(self.node() if node is None else node) % len(self._channels)]

    def move_from(self, node: int) -> None:
        """Moves on from `node` to the next one, unless the client already moved away from it:
        many calls failing on one unreachable node at once move the client one step, not one
        step each (which could land on the same node again)."""
        with self._lock:
            if self._current[0] % len(self._channels) == node % len(self._channels):
                self._current[0] += 1

    def rotate(self) -> None:
        self.move_from(self.node())

    def _call(self, service: str, method: str, request, wait: float = 0.0,
              interrupt: Optional[threading.Event] = None):
        deadline = time.monotonic() + self.retry_for + wait
        backoff = 0.01
        while True:
            node = self.node()
            stub = getattr(rpc, service + "Stub")(self.channel(node))
            # A callable request is made anew for every attempt (a report numbers its sends).
            req = request() if callable(request) else request
            # The caller's trace (W3C traceparent), when OpenTelemetry is installed.
            md = self.metadata + tracing.metadata()
            try:
                if interrupt is None:
                    return getattr(stub, method)(req, timeout=self.attempt_timeout + wait, metadata=md)
                return _interruptible(getattr(stub, method), req, self.attempt_timeout + wait, interrupt, md)
            except grpc.RpcError as e:
                if e.code() in RETRYABLE and time.monotonic() + backoff < deadline:
                    self.move_from(node)
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 0.5)
                    continue
                raise

    # ------------------------------------------------------------------ scheduler

    def submit(
        self,
        queue: str,
        id: str = "",
        payload: bytes = b"",
        max_attempts: int = 0,
        lease_ttl_ms: int = 0,
        initial_backoff_ms: int = 0,
        max_backoff_ms: int = 0,
    ) -> pb.SubmitTaskResponse:
        """Idempotent on `id`: the same spec again returns the same task (created=False).

        Without an `id` one is chosen here, once, so that a retry of an attempt whose answer was
        lost finds the same task instead of creating a second one.
        """
        req = pb.SubmitTaskRequest(
            id=id or uuid.uuid4().hex,
            queue=queue,
            payload=payload,
            max_attempts=max_attempts,
            lease_ttl_ms=lease_ttl_ms,
            retry=pb.RetryPolicy(initial_backoff_ms=initial_backoff_ms, max_backoff_ms=max_backoff_ms),
        )
        return self._call("Scheduler", "SubmitTask", req)

    def get(self, id: str, stale: bool = False) -> pb.Task:
        consistency = pb.READ_CONSISTENCY_STALE if stale else pb.READ_CONSISTENCY_LINEARIZABLE
        return self._call("Scheduler", "GetTask", pb.GetTaskRequest(id=id, consistency=consistency)).task

    def list(self, queue: str = "", state: int = 0, page_size: int = 0, page_token: str = ""):
        req = pb.ListTasksRequest(queue=queue, state=state, page_size=page_size, page_token=page_token)
        return self._call("Scheduler", "ListTasks", req)

    def cancel(self, id: str, reason: str = "") -> pb.Task:
        return self._call("Scheduler", "CancelTask", pb.CancelTaskRequest(id=id, reason=reason)).task

    def retry(self, id: str, reason: str = "") -> pb.Task:
        """Sends a FAILED or CANCELLED task back to PENDING with a new budget of attempts (a
        PENDING or RUNNING one is answered unchanged; a SUCCEEDED one is refused)."""
        return self._call("Scheduler", "RetryTask", pb.RetryTaskRequest(id=id, reason=reason)).task

    def watch(self, from_revision: int = 0, queue: str = "", task_id: str = "",
              kinds: Sequence[int] = ()) -> Iterator[pb.TaskEvent]:
        """Change events from `from_revision` (0 = from now), in revision order. A broken stream
        is resumed on another node from the last revision seen, without gaps or repeats.
        `kinds` (e.g. `[pb.EVENT_KIND_SUCCEEDED, pb.EVENT_KIND_FAILED]`) keeps only those kinds,
        filtered on the server; empty = every kind."""
        next_rev = from_revision
        seen_in_rev = 0
        last_rev = 0
        backoff = 0.05
        while True:
            req = pb.WatchTasksRequest(from_revision=next_rev, queue=queue, task_id=task_id,
                                       kinds=list(kinds))
            stream = rpc.SchedulerStub(self.channel()).WatchTasks(req, metadata=self.metadata)
            skip = seen_in_rev if next_rev and next_rev == last_rev else 0
            try:
                for ev in stream:
                    if skip and ev.revision == last_rev:
                        skip -= 1
                        continue
                    if ev.revision == last_rev:
                        seen_in_rev += 1
                    else:
                        last_rev, seen_in_rev = ev.revision, 1
                    backoff = 0.05
                    yield ev
                return
            except grpc.RpcError as e:
                if e.code() not in RETRYABLE and e.code() != grpc.StatusCode.CANCELLED:
                    raise
                # Resume at the last revision (one revision may hold several events).
                next_rev = last_rev if last_rev else next_rev
                self.rotate()
                time.sleep(backoff)
                backoff = min(backoff * 2, 1.0)

    # ------------------------------------------------------------------ worker

    def claim(
        self,
        queue: str,
        worker_id: str,
        lease_ttl_ms: int = 0,
        wait_ms: int = 0,
        task_id: str = "",
        claim_id: Optional[str] = None,
        interrupt: Optional[threading.Event] = None,
    ) -> pb.ClaimTaskResponse:
        """Claims a task; retries reuse one claim id, so a lost answer never orphans a lease.
        Setting `interrupt` cuts a long poll short: the call raises `Interrupted` (the claim may
        have made a lease all the same; ask again under the same `claim_id` to learn it)."""
        req = pb.ClaimTaskRequest(
            queue=queue,
            worker_id=worker_id,
            lease_ttl_ms=lease_ttl_ms,
            wait_ms=wait_ms,
            task_id=task_id,
            claim_id=claim_id or uuid.uuid4().hex,
        )
        return self._call("Worker", "ClaimTask", req, wait=wait_ms / 1000.0, interrupt=interrupt)

    def renew(self, lease_token: int, lease_secret: bytes) -> pb.RenewLeaseResponse:
        """Renews a lease, proving it with the `lease_secret` its claim returned."""
        req = pb.RenewLeaseRequest(lease_token=lease_token, lease_secret=lease_secret)
        return self._call("Worker", "RenewLease", req)

    def progress(self, lease_token: int, lease_secret: bytes, progress: bytes) -> pb.ReportProgressResponse:
        req = pb.ReportProgressRequest(lease_token=lease_token, lease_secret=lease_secret, progress=progress)
        return self._call("Worker", "ReportProgress", req)

    def complete(
        self,
        task_id: str,
        lease_token: int,
        lease_secret: bytes,
        success: bool,
        exit_code: int = 0,
        result: bytes = b"",
        error: str = "",
        sent: Optional[List[int]] = None,
        exited: Optional[float] = None,
    ) -> pb.CompleteTaskResponse:
        """`sent` (a one-element list) counts the sends of this report across calls, and numbers
        each in `report_try`; `exited` is when the task's process exited (`time.monotonic()`),
        sent as `exit_to_send_us`. Both feed the cluster's report metrics."""
        base = pb.CompleteTaskRequest(task_id=task_id, lease_token=lease_token, lease_secret=lease_secret,
                                      success=success, exit_code=exit_code, result=result, error=error)

        def make():
            req = pb.CompleteTaskRequest()
            req.CopyFrom(base)
            if sent is not None:
                sent[0] += 1
                req.report_try = sent[0]
            if exited is not None:
                req.exit_to_send_us = max(1, int((time.monotonic() - exited) * 1e6))
            return req
        return self._call("Worker", "CompleteTask", make)

    def release(self, lease_token: int, lease_secret: bytes, reason: str = "") -> pb.ReleaseTaskResponse:
        req = pb.ReleaseTaskRequest(lease_token=lease_token, lease_secret=lease_secret, reason=reason)
        return self._call("Worker", "ReleaseTask", req)

    # ------------------------------------------------------------------ admin

    def cluster_status(self) -> pb.ClusterStatusResponse:
        return self._call("Admin", "ClusterStatus", pb.ClusterStatusRequest())

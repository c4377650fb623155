"""A real three-node cluster of `leasekeeper server` processes on 127.0.0.1 for the SDK tests."""
import os
import socket
import subprocess
import time

import pytest

from leasekeeper import Client

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.environ.get(
    "LEASEKEEPER_BIN", os.path.normpath(os.path.join(HERE, "..", "..", "target", "debug", "leasekeeper"))
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, tmp):
        self.tmp = tmp
        self.addrs = [f"127.0.0.1:{free_port()}" for _ in range(3)]
        self.peer_addrs = [f"127.0.0.1:{free_port()}" for _ in range(3)]
        self.procs = [None, None, None]
        for i in range(3):
            self.start(i)
        self.wait_leader()

    def start(self, i: int) -> None:
        members = ",".join(f"{j + 1}={a}" for j, a in enumerate(self.peer_addrs))
        log = open(os.path.join(self.tmp, f"node-{i + 1}.log"), "ab")
        self.procs[i] = subprocess.Popen(
            [
                BIN, "server", "--id", str(i + 1), "--listen", self.addrs[i],
                "--peer-listen", self.peer_addrs[i],
                "--data-dir", os.path.join(self.tmp, f"node-{i + 1}"),
                "--initial-cluster", members,
                "--heartbeat-ms", "50", "--election-min-ms", "150", "--election-max-ms", "300",
                "--min-ttl-ms", "1000", "--default-ttl-ms", "3000",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
            env={
                **os.environ,
                "LEASEKEEPER_LOG": "info,openraft=warn",
                "LEASEKEEPER_CLUSTER_SECRET": "leasekeeper-python-test-secret",
            },
        )

    def kill(self, i: int) -> None:
        p = self.procs[i]
        if p is not None:
            p.kill()
            p.wait()
            self.procs[i] = None

    def client(self) -> Client:
        return Client(self.addrs)

    def wait_leader(self, timeout: float = 15.0) -> int:
        """The 0-based index of the leader, once a running node names one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, a in enumerate(self.addrs):
                if self.procs[i] is None:
                    continue
                try:
                    s = Client([a], retry_for=0.2, attempt_timeout=0.5).cluster_status()
                except Exception:
                    continue
                if s.leader_id and self.procs[s.leader_id - 1] is not None:
                    return s.leader_id - 1
            time.sleep(0.05)
        raise AssertionError("no leader elected within %.0fs" % timeout)

    def stop(self) -> None:
        for i in range(3):
            self.kill(i)


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(str(tmp_path))
    yield c
    c.stop()

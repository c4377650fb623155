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


def make_pki(d: str) -> dict:
    """A CA, and one certificate per node for both ports (naming 127.0.0.1 and
    node-<id>.leasekeeper) and a client certificate, made with openssl."""
    def run(*args):
        subprocess.run(args, check=True, cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    run("openssl", "req", "-x509", *ec, "-days", "2", "-subj", "/CN=test-ca", "-keyout", "ca-key.pem", "-out", "ca.pem")
    names = {f"node-{i}": f"IP:127.0.0.1,DNS:node-{i}.leasekeeper" for i in (1, 2, 3)}
    names["client"] = None
    for n, san in names.items():
        ext = os.path.join(d, f"{n}.ext")
        with open(ext, "w") as f:
            if san:
                f.write(f"subjectAltName={san}\n")
            f.write("extendedKeyUsage=serverAuth,clientAuth\n")
        run("openssl", "req", *ec, "-subj", f"/CN={n}", "-keyout", f"{n}-key.pem", "-out", f"{n}.csr")
        run("openssl", "x509", "-req", "-in", f"{n}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
            "-days", "2", "-out", f"{n}.pem", "-extfile", ext)
    return {k: os.path.join(d, k) for k in ("ca.pem", "client.pem", "client-key.pem")}


class Cluster:
    def __init__(self, tmp, tls: bool = False, extra=(), token=None):
        self.tmp = tmp
        self.tls = tls
        self.extra = list(extra)
        # The token the harness itself uses (an admin's), with an auth file.
        self.token = token
        self.addrs = [f"127.0.0.1:{free_port()}" for _ in range(3)]
        self.peer_addrs = [f"127.0.0.1:{free_port()}" for _ in range(3)]
        self.metrics_addrs = [f"127.0.0.1:{free_port()}" for _ in range(3)]
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
                "--metrics-listen", self.metrics_addrs[i],
            ] + self._tls_args(i) + self.extra,
            stdout=subprocess.DEVNULL,
            stderr=log,
            env={
                **os.environ,
                "LEASEKEEPER_LOG": "info,openraft=warn",
                "LEASEKEEPER_CLUSTER_SECRET": "leasekeeper-python-test-secret",
            },
        )

    def _tls_args(self, i: int) -> list:
        if not self.tls:
            return []
        me = lambda suffix: os.path.join(self.tmp, f"node-{i + 1}{suffix}")  # noqa: E731
        ca = os.path.join(self.tmp, "ca.pem")
        return [
            "--cert-file", me(".pem"), "--key-file", me("-key.pem"),
            "--trusted-ca-file", ca, "--client-cert-auth",
            "--peer-cert-file", me(".pem"), "--peer-key-file", me("-key.pem"),
            "--peer-trusted-ca-file", ca,
        ]

    def tls_kwargs(self) -> dict:
        """What a client of this cluster passes: the CA, and the client certificate."""
        if not self.tls:
            return {}
        p = lambda n: os.path.join(self.tmp, n)  # noqa: E731
        return {"ca_file": p("ca.pem"), "cert_file": p("client.pem"), "key_file": p("client-key.pem")}

    def kill(self, i: int) -> None:
        p = self.procs[i]
        if p is not None:
            p.kill()
            p.wait()
            self.procs[i] = None

    def client(self) -> Client:
        return Client(self.addrs, token=self.token, **self.tls_kwargs())

    def wait_leader(self, timeout: float = 15.0) -> int:
        """The 0-based index of the leader, once a running node names one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, a in enumerate(self.addrs):
                if self.procs[i] is None:
                    continue
                try:
                    s = Client([a], retry_for=0.2, attempt_timeout=0.5, token=self.token,
                               **self.tls_kwargs()).cluster_status()
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


def auth_add(auth_file: str, name: str, *grants: str) -> str:
    """Adds a principal with `leasekeeper auth add`; returns its token."""
    args = [BIN, "auth", "add", "--file", auth_file, "--name", name]
    for g in grants:
        args += ["--grant", g]
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def secure_cluster(tmp_path):
    """TLS on both ports, client certificates required, and an auth file; `tokens` holds a
    token for the scheduler (etl/) and the worker (etl/)."""
    make_pki(str(tmp_path))
    auth = os.path.join(str(tmp_path), "auth.toml")
    tokens = {
        "admin": auth_add(auth, "root", "admin"),
        "scheduler": auth_add(auth, "airflow", "scheduler:etl/", "reader"),
        "worker": auth_add(auth, "etl-workers", "worker:etl/"),
    }
    c = Cluster(str(tmp_path), tls=True, extra=["--auth-file", auth], token=tokens["admin"])
    c.tokens = tokens
    yield c
    c.stop()


@pytest.fixture
def tls_cluster(tmp_path):
    """The same cluster with TLS on both ports and client certificates required."""
    make_pki(str(tmp_path))
    c = Cluster(str(tmp_path), tls=True)
    yield c
    c.stop()

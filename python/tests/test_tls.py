"""The Python SDK against a cluster with TLS on both ports and client certificates required: a
task's whole life through the client and the worker; plaintext and certificate-less clients
refused."""
import threading

import grpc
import pytest

from leasekeeper import Client, Worker
from leasekeeper.v1 import leasekeeper_pb2 as pb


def test_a_task_lifecycle_over_tls_with_a_client_certificate(tls_cluster, tmp_path):
    c = tls_cluster.client()
    c.submit("tls", id="py-tls", payload=b"in", lease_ttl_ms=3000)
    w = Worker(tls_cluster.addrs, "tls", worker_id="w-tls", journal_dir=str(tmp_path / "j"),
               claim_wait_ms=500, **tls_cluster.tls_kwargs())
    ran = threading.Event()

    def handler(ctx):
        ctx.progress(b"half")
        ran.set()
        w.stop()
        return b"out:" + ctx.payload

    assert w.run(handler, install_signal_handlers=False) == 0
    w.close()
    assert ran.is_set()
    t = c.get("py-tls")
    assert t.state == pb.TASK_STATE_SUCCEEDED and t.result == b"out:in", t


def test_plaintext_and_clients_without_a_certificate_are_refused(tls_cluster):
    plain = Client(tls_cluster.addrs, retry_for=0.3, attempt_timeout=1.0)
    with pytest.raises(grpc.RpcError):
        plain.cluster_status()
    kw = tls_cluster.tls_kwargs()
    no_cert = Client(tls_cluster.addrs, retry_for=0.3, attempt_timeout=1.0, ca_file=kw["ca_file"])
    with pytest.raises(grpc.RpcError):
        no_cert.cluster_status()
    with pytest.raises(ValueError):
        Client(tls_cluster.addrs, ca_file=kw["ca_file"], cert_file=kw["cert_file"])


def test_roles_over_tls_a_worker_of_etl_runs_etl_and_cannot_claim_ml(secure_cluster, tmp_path):
    kw = secure_cluster.tls_kwargs()
    tok = secure_cluster.tokens
    sched = Client(secure_cluster.addrs, token=tok["scheduler"], **kw)
    sched.submit("etl/daily", id="py-auth", payload=b"x", lease_ttl_ms=3000)
    with pytest.raises(grpc.RpcError) as e:
        sched.submit("ml/train", id="py-ml")
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "scheduler role on queue" in e.value.details()

    w = Worker(secure_cluster.addrs, "etl/daily", worker_id="w-auth", journal_dir=str(tmp_path / "j"),
               claim_wait_ms=500, token=tok["worker"], **kw)

    def handler(ctx):
        w.stop()
        return b"ok"

    assert w.run(handler, install_signal_handlers=False) == 0
    w.close()
    assert sched.get("py-auth").state == pb.TASK_STATE_SUCCEEDED

    worker = Client(secure_cluster.addrs, token=tok["worker"], **kw)
    with pytest.raises(grpc.RpcError) as e:
        worker.claim("ml/train", "w")
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "worker role on queue" in e.value.details() and tok["worker"] not in e.value.details()
    nobody = Client(secure_cluster.addrs, retry_for=0.3, **kw)
    with pytest.raises(grpc.RpcError) as e:
        nobody.get("py-auth")
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED

"""The Python SDK against a real cluster: a task's whole life seen by a watcher, the journal's
crash rules, and docs/SCENARIOS.md row S003 (no heartbeats in the task) with the leader killed."""
import os
import threading
import time

import pytest

from leasekeeper import Journal, Outcome, Report, Worker
from leasekeeper.journal import JournalCorrupt, JournalLocked, JournalOfOtherSdk
from leasekeeper.v1 import leasekeeper_pb2 as pb


def test_lifecycle_seen_by_a_watcher(cluster):
    c = cluster.client()
    events = []
    done = threading.Event()

    def watch():
        for ev in c.watch(from_revision=1, queue="py"):
            events.append(ev)
            if ev.kind == pb.EVENT_KIND_SUCCEEDED:
                done.set()
                return

    threading.Thread(target=watch, daemon=True).start()
    r = c.submit("py", id="job-1", payload=b"hello", lease_ttl_ms=3000)
    assert r.created
    assert not c.submit("py", id="job-1", payload=b"hello", lease_ttl_ms=3000).created
    claim = c.claim("py", "w-py")
    assert claim.task.id == "job-1" and claim.lease.token > 0
    assert 0 < claim.renew_interval_ms < 3000
    secret = claim.lease_secret
    assert len(secret) == 16
    assert c.renew(claim.lease.token, secret).lease.renewals >= 1
    c.progress(claim.lease.token, secret, b"half")
    # Reads never show the secret, and a renewal without it is refused.
    assert secret not in c.get("job-1").SerializeToString()
    with pytest.raises(Exception) as e:
        c.renew(claim.lease.token, b"")
    assert "lease_secret" in str(e.value)
    c.complete("job-1", claim.lease.token, secret, success=True, result=b"done")
    assert done.wait(10), f"watcher saw {[e.kind for e in events]}"
    kinds = [e.kind for e in events]
    assert kinds == [
        pb.EVENT_KIND_SUBMITTED,
        pb.EVENT_KIND_CLAIMED,
        pb.EVENT_KIND_PROGRESS,
        pb.EVENT_KIND_SUCCEEDED,
    ], kinds
    revs = [e.revision for e in events]
    assert revs == sorted(revs) and len(set(revs)) == len(revs)
    # Asking for outcomes only: the same success, and nothing before it.
    outcome = next(iter(c.watch(from_revision=1, queue="py", kinds=[pb.EVENT_KIND_SUCCEEDED])))
    assert (outcome.kind, outcome.revision) == (pb.EVENT_KIND_SUCCEEDED, events[-1].revision)
    t = c.get("job-1")
    assert t.state == pb.TASK_STATE_SUCCEEDED and t.result == b"done"
    # Completing again is idempotent; a bad id is a clear error.
    c.complete("job-1", claim.lease.token, secret, success=True, result=b"done")
    with pytest.raises(Exception) as e:
        c.get("no-such-task")
    assert "no-such-task" in str(e.value)
    # A success is never retried; a cancelled task is, with its history kept.
    with pytest.raises(Exception) as e:
        c.retry("job-1")
    assert "SUCCEEDED" in str(e.value)
    c.submit("py", id="job-2", payload=b"x", lease_ttl_ms=3000)
    c.cancel("job-2", reason="wrong input")
    t = c.retry("job-2", reason="input fixed")
    assert t.state == pb.TASK_STATE_PENDING and "input fixed" in t.error


def test_journal_keeps_unacknowledged_reports_and_cuts_torn_tails(tmp_path):
    d = str(tmp_path / "j")
    j = Journal(d)
    for tok in (1, 2, 3):
        j.append(Report(f"t{tok}", tok, Outcome.success(b"r%d" % tok)))
    j.ack(2)
    with pytest.raises(JournalLocked):
        Journal(d)
    j.close()
    with open(os.path.join(d, "reports.jsonl"), "ab") as f:
        f.write(b"0badc0de {\"type\":\"ack\",\"tok")  # a crash mid-append
    j = Journal(d)
    assert [r.lease_token for r in j.pending()] == [1, 3]
    assert j.pending()[0].outcome == Outcome.success(b"r1")
    j.ack(1)
    j.ack(3)
    assert os.path.getsize(os.path.join(d, "reports.jsonl")) == 0
    j.close()


def test_journal_damaged_in_the_middle_is_refused_not_dropped(tmp_path):
    d = str(tmp_path / "j")
    j = Journal(d)
    for tok in (1, 2, 3):
        j.append(Report(f"t{tok}", tok, Outcome.success(b"r"), b"s" * 16))
    j.close()
    path = os.path.join(d, "reports.jsonl")
    data = open(path, "rb").read()
    first = data.index(b"\n") + 1
    damaged = data[: first + 12] + bytes([data[first + 12] ^ 0x01]) + data[first + 13 :]
    open(path, "wb").write(damaged)
    with pytest.raises(JournalCorrupt) as e:
        Journal(d)
    assert e.value.offset == first and e.value.path == path
    assert open(path, "rb").read() == damaged, "nothing was cut"
    # The secret is journaled with the report, so a replay proves itself.
    open(path, "wb").write(data)
    assert Journal(d).pending()[0].lease_secret == b"s" * 16


def test_pending_reports_of_the_rust_sdk_are_not_skipped_silently(tmp_path):
    d = str(tmp_path / "j")
    os.makedirs(d)
    rust = os.path.join(d, "reports.journal")
    open(rust, "wb").write(b"\x05\x00\x00\x00" + b"\x00" * 9)
    with pytest.raises(JournalOfOtherSdk) as e:
        Journal(d)
    assert "Rust SDK" in str(e.value) and "worker_id" in str(e.value) and e.value.path == rust
    # A drained one (empty) is no obstacle.
    open(rust, "wb").close()
    Journal(d).close()


def test_a_stop_cuts_a_long_poll_short(cluster, tmp_path):
    """The claim loop's long poll (30 s here, nothing to claim) ends with the stop, not after it."""
    w = Worker(cluster.addrs, "idle", worker_id="w-idle", journal_dir=str(tmp_path / "j"),
               claim_wait_ms=30_000)
    done = threading.Event()
    left = []
    t = threading.Thread(target=lambda: (left.append(w.run(lambda ctx: b"", install_signal_handlers=False)), done.set()))
    t.start()
    time.sleep(1.0)  # the first claim is polling by now
    stopped_at = time.monotonic()
    w.stop()
    assert done.wait(10), "run() still in its long poll long after the stop"
    assert time.monotonic() - stopped_at < 10
    assert left == [0]
    w.close()


def test_s003_row_succeeds_once_with_the_leader_killed(cluster, tmp_path):
    """S003: report generation, runs 90 s, no heartbeat of its own, timeout 100 s. Scaled 1 s →
    20 ms. The worker renews for it; the leader is killed while it runs."""
    c = cluster.client()
    c.submit("s003", id="S003", payload=b"report", lease_ttl_ms=2000, max_attempts=3)
    runs = []

    w = Worker(cluster.addrs, "s003", worker_id="py-worker", journal_dir=str(tmp_path / "journal"))

    def generate_report(ctx):
        runs.append(ctx.task.id)
        time.sleep(1.8)  # and never calls anything itself
        if ctx.lost.is_set():
            return Outcome.release(f"lease lost: {ctx.lost_reason}")
        w.stop()
        return b"report generated"

    killer_done = threading.Event()

    def kill_leader():
        time.sleep(0.6)
        leader = cluster.wait_leader()
        cluster.kill(leader)
        time.sleep(1.0)
        cluster.start(leader)
        killer_done.set()

    threading.Thread(target=kill_leader, daemon=True).start()
    left = w.run(generate_report, install_signal_handlers=False)
    w.close()
    assert left == 0
    assert killer_done.wait(10)
    t = c.get("S003")
    assert t.state == pb.TASK_STATE_SUCCEEDED, t
    assert t.result == b"report generated"
    assert runs == ["S003"]
    assert t.attempt == 1
    assert sum(1 for r in t.history if r.outcome == pb.ATTEMPT_OUTCOME_SUCCEEDED) == 1


WORKER_SCRIPT = r'''
import os, signal, sys, time
from leasekeeper import Worker
w = Worker(sys.argv[1], "sig", worker_id="py-sig", journal_dir=sys.argv[2], shutdown_grace=10)
def handler(ctx):
    time.sleep(0.3)
    os.kill(os.getpid(), signal.SIGTERM)   # SIGTERM right as the work finishes
    return b"finished " + ctx.task.id.encode()
sys.exit(0 if w.run(handler) == 0 else 75)
'''


def test_sigterm_right_after_the_work_still_reports_success(cluster, tmp_path):
    import subprocess
    import sys

    c = cluster.client()
    for i in range(3):
        c.submit("sig", id=f"sig-{i}", lease_ttl_ms=3000)
    p = subprocess.run(
        [sys.executable, "-c", WORKER_SCRIPT, ",".join(cluster.addrs), str(tmp_path / "journal")],
        timeout=60,
        capture_output=True,
    )
    assert p.returncode == 0, p.stderr.decode()
    states = {i: c.get(f"sig-{i}").state for i in range(3)}
    # The first task finished and was reported; the worker stopped claiming after SIGTERM.
    assert list(states.values()).count(pb.TASK_STATE_SUCCEEDED) == 1, states
    assert list(states.values()).count(pb.TASK_STATE_PENDING) == 2, states


def test_a_claim_after_a_long_wait_keeps_its_lease(cluster, tmp_path):
    """The long poll waited more than two TTLs before the task came: the time spent waiting does
    not count against the lease (the node says how long it held the call)."""
    c = cluster.client()
    w = Worker(cluster.addrs, "idle", worker_id="py-idle", journal_dir=str(tmp_path / "j"))
    threading.Timer(3.5, lambda: c.submit("idle", id="late-1", lease_ttl_ms=1500)).start()
    ctx = w.claim(wait_ms=10000)
    assert ctx is not None and ctx.task.id == "late-1"
    time.sleep(2.0)  # more than the TTL: heartbeats must have kept it
    assert not ctx.lost.is_set(), ctx.lost_reason
    w.report(ctx, Outcome.success(b"ok"))
    assert w.drain(10) == 0
    t = c.get("late-1")
    assert t.state == pb.TASK_STATE_SUCCEEDED and t.attempt == 1, t

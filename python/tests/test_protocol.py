"""The Python SDK's protocol constants are docs/WORKER.md's table (the Rust SDK checks the same)."""
import os
import re

from leasekeeper import protocol as P

DOC = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "WORKER.md")

OURS = {
    "claim_wait": P.CLAIM_WAIT * 1000,
    "claim_attempt_timeout": P.CLAIM_ATTEMPT_TIMEOUT * 1000,
    "claim_retry_for": P.CLAIM_RETRY_FOR * 1000,
    "claim_backoff_initial": P.CLAIM_BACKOFF_INITIAL * 1000,
    "claim_backoff_max": P.CLAIM_BACKOFF_MAX * 1000,
    "report_backoff_initial": P.REPORT_BACKOFF_INITIAL * 1000,
    "report_backoff_max": P.REPORT_BACKOFF_MAX * 1000,
    "heartbeat_silence_min": P.HEARTBEAT_SILENCE_MIN * 1000,
    "heartbeat_silence_max": P.HEARTBEAT_SILENCE_MAX * 1000,
    "heartbeat_reconnect_backoff_max": P.HEARTBEAT_RECONNECT_BACKOFF_MAX * 1000,
    "shutdown_grace": P.SHUTDOWN_GRACE * 1000,
    "drain_timeout": P.DRAIN_TIMEOUT * 1000,
    "crash_exit_code": P.CRASH_EXIT_CODE,
}


def test_the_constants_are_docs_worker_md_table():
    text = open(DOC).read()
    table = text[text.index("<!-- protocol-table") : text.index("<!-- end protocol-table")]
    rows = {}
    for line in table.splitlines():
        m = re.match(r"\|\s*`(\w+)`\s*\|\s*(-?\d+)\s*\|", line)
        if m:
            rows[m.group(1)] = int(m.group(2))
    assert set(rows) == set(OURS), (sorted(rows), sorted(OURS))
    for name, value in OURS.items():
        assert round(value) == rows[name], name

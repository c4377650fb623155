"""The worker's durable journal of final reports (same rules as the Rust worker's).

A report is appended and fsynced *before* it is sent, and marked acknowledged once the cluster
committed it; on start every unacknowledged report is sent again (reports are idempotent).
Format: one record per line, `<crc32 hex> <json>`; a torn last record (a crash mid-append) is
cut off on open. A damaged record with records after it is not a crash's doing: the journal is
refused (`JournalCorrupt`, with the path and offset) rather than dropping every report after
it. A write that fails is cut back, so later appends never follow a torn record. When nothing
is left unacknowledged the file is truncated. One process per journal (an exclusive flock on
`LOCK`).
"""
from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import zlib
from typing import Dict, List

from .report import Outcome, Report

log = logging.getLogger("leasekeeper.journal")


class JournalLocked(Exception):
    pass


class JournalOfOtherSdk(Exception):
    """The directory holds reports the Rust SDK has not delivered yet: this SDK does not read
    its format, so it refuses to start over reports it would silently skip."""

    def __init__(self, path: str):
        super().__init__(
            f"journal directory {os.path.dirname(path)} holds reports the Rust SDK has not "
            f"delivered yet ({path}): run that worker until its journal is empty, or give this "
            "worker another worker_id; replaying them is up to the SDK that wrote them"
        )
        self.path = path


class JournalCorrupt(Exception):
    def __init__(self, path: str, offset: int):
        super().__init__(
            f"journal {path} is damaged at byte {offset} with records after it (not a crash's "
            "torn tail): move it aside to start without its reports, or repair it; nothing "
            "after it was dropped"
        )
        self.path = path
        self.offset = offset


def _encode(rec: dict) -> bytes:
    body = json.dumps(rec, separators=(",", ":"), sort_keys=True).encode()
    return b"%08x " % zlib.crc32(body) + body + b"\n"


def _decode(line: bytes):
    if not line.endswith(b"\n") or len(line) < 10 or line[8:9] != b" ":
        return None
    body = line[9:-1]
    try:
        if int(line[:8], 16) != zlib.crc32(body):
            return None
        return json.loads(body)
    except ValueError:
        return None


def _to_record(r: Report) -> dict:
    o = r.outcome
    return {
        "type": "report",
        "task_id": r.task_id,
        "token": r.lease_token,
        "kind": o.kind,
        "result": base64.b64encode(o.result).decode(),
        "exit_code": o.exit_code,
        "error": o.error,
        "reason": o.reason,
        "secret": base64.b64encode(r.lease_secret).decode(),
    }


def _from_record(d: dict) -> Report:
    o = Outcome(
        d["kind"],
        result=base64.b64decode(d["result"]),
        exit_code=d["exit_code"],
        error=d["error"],
        reason=d["reason"],
    )
    return Report(d["task_id"], d["token"], o, base64.b64decode(d.get("secret", "")))


class Journal:
    def __init__(self, directory: str):
        os.makedirs(directory, exist_ok=True)
        self.dir = directory
        self._lock = open(os.path.join(directory, "LOCK"), "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise JournalLocked(
                f"journal {directory} is in use by another worker process: "
                "give each worker its own journal_dir (or worker_id)"
            )
        other = os.path.join(directory, "reports.journal")
        if os.path.exists(other) and os.path.getsize(other) > 0:
            self._lock.close()
            raise JournalOfOtherSdk(other)
        self.path = os.path.join(directory, "reports.jsonl")
        self._f = open(self.path, "a+b")
        self._f.seek(0)
        data = self._f.read()
        self._pending: Dict[int, Report] = {}
        good = 0
        lines = data.splitlines(keepends=True)
        for i, line in enumerate(lines):
            rec = _decode(line)
            if rec is None:
                if i + 1 < len(lines):
                    self._f.close()
                    self._lock.close()
                    raise JournalCorrupt(self.path, good)
                break
            if rec["type"] == "report":
                self._pending.setdefault(rec["token"], _from_record(rec))
            elif rec["type"] == "ack":
                self._pending.pop(rec["token"], None)
            good += len(line)
        if good < len(data):
            log.warning("journal %s ends in a torn record; cutting %d bytes", self.path, len(data) - good)
            self._f.truncate(good)
            os.fsync(self._f.fileno())
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def pending(self) -> List[Report]:
        return [self._pending[k] for k in sorted(self._pending)]

    def pending_count(self) -> int:
        return len(self._pending)

    def append(self, report: Report) -> None:
        """Durable once this returns; a second report for the same token keeps the first."""
        if report.lease_token in self._pending:
            return
        self._write(_to_record(report))
        self._pending[report.lease_token] = report

    def ack(self, lease_token: int) -> None:
        if self._pending.pop(lease_token, None) is None:
            return
        if not self._pending:
            self._f.truncate(0)
            os.fsync(self._f.fileno())
            return
        self._write({"type": "ack", "token": lease_token})

    def _write(self, rec: dict) -> None:
        self._f.seek(0, os.SEEK_END)
        end = self._f.tell()
        try:
            self._f.write(_encode(rec))
            self._f.flush()
            os.fsync(self._f.fileno())
        except OSError:
            # Cut back whatever reached the file: the next append must not follow a torn record.
            try:
                self._f.truncate(end)
                os.fsync(self._f.fileno())
            except OSError:
                pass
            raise

    def close(self) -> None:
        self._f.close()
        self._lock.close()

"""What a worker reports for an attempt: the types the journal stores and the outbox sends
(the Rust SDK's `worker/report.rs`)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Outcome:
    """What a worker reports for one attempt: `kind` is "success", "failure" or "release"."""

    kind: str
    result: bytes = b""
    exit_code: int = 0
    error: str = ""
    reason: str = ""

    @staticmethod
    def success(result: bytes = b"") -> "Outcome":
        return Outcome("success", result=result)

    @staticmethod
    def failure(exit_code: int = 1, error: str = "", result: bytes = b"") -> "Outcome":
        return Outcome("failure", result=result, exit_code=exit_code, error=error)

    @staticmethod
    def release(reason: str = "") -> "Outcome":
        """Gives the task back without counting an attempt against it (e.g. the worker is
        stopping before the work started or could finish)."""
        return Outcome("release", reason=reason)


@dataclass(frozen=True)
class Report:
    """One final report, as journaled."""

    task_id: str
    lease_token: int
    outcome: Outcome
    # The lease's secret, so that a replayed report still proves itself (b"" in journals
    # written before lease secrets).
    lease_secret: bytes = b""

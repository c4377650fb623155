"""The numbers of the worker protocol, shared with the Rust SDK through docs/WORKER.md's table
(python/tests/test_protocol.py reads it and fails when a constant differs from it). Seconds."""

#: How long a claim long-polls for a task by default.
CLAIM_WAIT = 10.0
CLAIM_ATTEMPT_TIMEOUT = 1.0
CLAIM_RETRY_FOR = 3.0
CLAIM_BACKOFF_INITIAL = 0.05
CLAIM_BACKOFF_MAX = 2.0
REPORT_BACKOFF_INITIAL = 0.05
REPORT_BACKOFF_MAX = 2.0
HEARTBEAT_SILENCE_MIN = 0.2
HEARTBEAT_SILENCE_MAX = 1.5
HEARTBEAT_RECONNECT_BACKOFF_MAX = 0.5
SHUTDOWN_GRACE = 30.0
DRAIN_TIMEOUT = 300.0
#: The exit code recorded when a handler raised instead of returning.
CRASH_EXIT_CODE = -1

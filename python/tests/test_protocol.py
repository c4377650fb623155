"""The Python SDK's protocol constants are docs/WORKER.md's table (the Rust SDK checks the same)."""
import os
import re

from leasekeeper import protocol as P

DOC = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "WORKER.md")

def ours(name: str) -> float:
    """The SDK's value of row `name`, in the table's unit (ms; the exit code as is)."""
    v = getattr(P, name.upper())
    return v if name == "crash_exit_code" else v * 1000


# Every constant of the protocol module is a row of the table, and the other way round.
CONSTANTS = {n.lower() for n in dir(P) if n.isupper()}


def test_the_constants_are_docs_worker_md_table():
    text = open(DOC).read()
    table = text[text.index("<!-- protocol-table") : text.index("<!-- end protocol-table")]
    rows = {}
    for line in table.splitlines():
        m = re.match(r"\|\s*`(\w+)`\s*\|\s*(-?\d+)\s*\|", line)
        if m:
            rows[m.group(1)] = int(m.group(2))
    assert set(rows) == CONSTANTS, (sorted(rows), sorted(CONSTANTS))
    for name in CONSTANTS:
        assert round(ours(name)) == rows[name], name

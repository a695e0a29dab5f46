"""When a fault-suite row passes: the rules the tests, the benchmark table and its exit code share.

A fault row fails when the run raised an error, any process ended unexpectedly (``process_exits``), fewer keys were
produced than planned, any key was lost or applied twice, the system never recovered from the fault, or the fault's
own check says it did not happen as it should (``fault_checks``: e.g. the full-disk device did not stop with its
error, or the new job never saw the last job's retained messages). The
negative control (outbox off) fails when it raised an error or lost nothing: then the checker did not prove it can
see a loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def failures(row: Mapping[str, Any], *, expect_recovery: bool = True) -> list[str]:
    """The reasons ``row`` failed, [] when it passed."""
    out = []
    if row.get("error"):
        out.append(f"error: {row['error']}")
    if row.get("process_exits"):
        out.append(f"process exits: {'; '.join(map(str, row['process_exits']))}")
    planned, produced = row.get("planned"), row.get("produced", 0)
    if planned is not None and produced < planned:
        out.append(f"produced {produced} < planned {planned}")
    if row.get("lost", 0) > 0:
        out.append(f"lost {row['lost']}")
    if row.get("duplicates_applied", 0) > 0:
        out.append(f"{row['duplicates_applied']} duplicates applied")
    if expect_recovery and row.get("recovery_s") is None:
        out.append("never recovered")
    out += [f"fault: {reason}" for reason in row.get("fault_checks") or ()]
    return out


def negative_failures(row: Mapping[str, Any]) -> list[str]:
    """The reasons the negative control failed: an error, nothing produced, or no loss seen."""
    out = []
    if row.get("error"):
        out.append(f"error: {row['error']}")
    if row.get("process_exits"):
        out.append(f"process exits: {'; '.join(map(str, row['process_exits']))}")
    if not row.get("produced"):
        out.append("produced nothing")
    if row.get("lost", 0) <= 0:
        out.append("lost nothing: the checker did not see the loss the missing outbox must cause")
    return out

"""Faults on the real tiers (``hffm edge/fog/cloud run``, tiny backbone, 2 fogs x 1 device, 2 global rounds, every
tier a process on real Mosquitto brokers; hffm_lab/faults/tier_faults.py): kill -9 of the cloud broker, a
fog broker, a fog gateway, the cloud service and a device mid-round, a 15 s cut of a fog's bridge link, a device whose
state folder fills up (it must stop with StorageError's exit code and one error line, and its fog go on without it
after offline_grace_s), and a job started on brokers that hold the last job's retained end. Each fault is injected
once the job is provably under way (read from what the tiers committed), never at a fixed time.

Every planned update and aggregate is produced, applied once, and no process exits other than by the harness's own
SIGKILL; every global round merges both fogs."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from hffm_lab.faults.tier_faults import TIER_FAULTS, run_tier_fault

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("fault", list(TIER_FAULTS))
def test_every_key_is_applied_exactly_once(fault: str, tmp_path: Path, slowdown: float) -> None:
    row = run_tier_fault(fault, tmp_path, slowdown=slowdown)
    if "cannot mount a tmpfs" in str(row.get("error", "")):
        pytest.skip(row["error"])  # the full-disk device needs root for its tmpfs
    report = {k: v for k, v in row.items() if k != "logs"}
    assert row["failed"] == [] and row.get("fault_checks", []) == [], (report, row.get("logs"))
    assert row["produced"] == row["planned"] and row["applied"] == row["produced"], report
    assert (row["lost"], row["duplicates_applied"], row["process_exits"]) == (0, 0, []), report
    assert row["recovery_s"] is not None, report
    with sqlite3.connect(tmp_path / "cloud.sqlite") as db:
        rounds = db.execute("SELECT round, fogs_reported FROM rounds ORDER BY round").fetchall()
    assert rounds == [(1, "fog-1,fog-2"), (2, "fog-1,fog-2")]


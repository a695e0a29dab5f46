"""Fault injection on real Mosquitto processes: every idempotency key a device produced is applied by the cloud
exactly once, through kills, restarts, a link cut, a queue overflow and an oversized payload; with the outbox
disabled the same checker catches the loss (edge_runtime/reliability/faults.py, docs/reliability.md)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edge_runtime.reliability.faults import FAULTS, run_fault

pytestmark = pytest.mark.integration
ROUNDS = 20  # x 2 fogs x 10 devices = 400 keys per fault (50 for the oversized payload)


@pytest.mark.parametrize("fault", list(FAULTS))
def test_every_key_is_applied_exactly_once(fault: str, tmp_path: Path) -> None:
    result = run_fault(fault, tmp_path, rounds=ROUNDS)
    assert result["produced"] >= 20
    assert (result["lost"], result["duplicates_applied"]) == (0, 0), result
    assert result["applied"] == result["produced"]
    assert result["recovery_s"] is not None
    assert "process_exits" not in result, result
    if fault == "burst_above_queue_limit":  # the queue really overflowed, and the restarted fog relay said so
        assert result["broker_dropped"]["fog-0"] > 0, result
        assert "ALERT" in (tmp_path / "fog-fog-0.log").read_text()


def test_the_checker_catches_the_loss_without_the_outbox(tmp_path: Path) -> None:
    result = run_fault("burst_above_queue_limit", tmp_path, rounds=ROUNDS, outbox=False)
    assert result["lost"] > 0, result
    assert result["applied"] + result["lost"] == result["produced"]


def test_oversized_payloads_went_out_in_chunks(tmp_path: Path) -> None:
    result = run_fault("oversized_payload", tmp_path, rounds=ROUNDS)
    assert result["lost"] == 0
    logs = "".join(p.read_text() for p in tmp_path.glob("devices-*.log"))
    chunked = [int(n) for n in re.findall(r"(\d+) chunked\)", logs)]
    assert len(chunked) == 2 and all(n >= ROUNDS // 8 * 10 for n in chunked), logs

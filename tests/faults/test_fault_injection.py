"""The ledger workload at scale (hffm_lab/faults/ledger_faults.py: 2 fogs x 10 devices, 20 rounds, real
Mosquitto): a burst far above a fog broker's queue limit while the fog relay is down, and payloads above the
broker's packet limit. Every key a device produced is applied by the cloud exactly once; with the outbox disabled
the same checker catches the loss. (The kills and the link cut run on the real tiers: test_tier_faults.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hffm_lab.faults.ledger_faults import negative_control, run_fault

pytestmark = pytest.mark.integration
ROUNDS = 20  # x 2 fogs x 10 devices = 400 keys per fault (40 for the oversized payload)


@pytest.mark.parametrize("fault", ["burst_above_queue_limit", "oversized_payload"])
def test_every_key_is_applied_exactly_once(fault: str, tmp_path: Path, slowdown: float) -> None:
    result = run_fault(fault, tmp_path, rounds=ROUNDS, slowdown=slowdown)
    assert result["failed"] == [], result
    assert result["produced"] == result["planned"] == result["applied"], result
    assert (result["lost"], result["duplicates_applied"], result["process_exits"]) == (0, 0, []), result
    assert result["recovery_s"] is not None
    if fault == "burst_above_queue_limit":  # the queue really overflowed, and the restarted fog relay said so
        assert result["broker_dropped"]["fog-0"] > 0, result
        assert "ALERT" in (tmp_path / "fog-fog-0.log").read_text()
    else:
        logs = "".join(p.read_text() for p in tmp_path.glob("devices-*.log"))
        chunked = [int(n) for n in re.findall(r"(\d+) chunked\)", logs)]
        assert len(chunked) == 2 and all(n >= ROUNDS // 8 * 10 for n in chunked), logs


def test_the_checker_catches_the_loss_without_the_outbox(tmp_path: Path, slowdown: float) -> None:
    result = negative_control(tmp_path, rounds=ROUNDS, slowdown=slowdown)
    assert result["failed"] == [] and result["lost"] > 0, result
    assert result["produced"] == result["planned"]
    assert result["applied"] + result["lost"] == result["produced"]

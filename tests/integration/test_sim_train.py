"""``hffm sim --mode train`` end to end with the tiny backbone: M3T-Bench dealt over 8 virtual devices, one model
per simulator process, real fog x 2 and cloud over real Mosquitto; every trained delta is applied, the cloud
evaluates each global round and the local-only baseline is reported beside it."""

from __future__ import annotations

from pathlib import Path

import pytest

from hffm_lab.sim import SimOptions, run_sim

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_train_mode_applies_every_trained_delta_and_reports_both_accuracies(tmp_path: Path, slowdown: float) -> None:
    report = run_sim(SimOptions(devices=8, fogs=2, rounds=2, agg_every=1, mode="train", backbone="tiny",
                                per_process=4, run_dir=tmp_path / "sim", time_limit_s=300.0 * slowdown,
                                backoff_base_s=30.0, backoff_max_s=30.0))
    d, acc = report["deltas"], report["accuracy"]
    assert report["problems"] == []
    assert d["lost"] == 0 and d["queued"] == d["applied_by_fogs"] == d["expected_without_faults"] > 0
    assert [r["round"] for r in acc["per_round"]] == [1, 2]
    assert set(acc["federated"]) == set(acc["local_only"]) and acc["federated"]
    assert all(0.0 <= v <= 1.0 for v in [*acc["federated"].values(), *acc["local_only"].values()])
    assert isinstance(acc["beats_local_only"], bool)

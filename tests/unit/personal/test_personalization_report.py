"""The report contract of hffm bench personalization (issue 20): grouping by alpha, means and spread over seeds,
per-device means, the goals, and rebuilding cases from a report."""

from __future__ import annotations

import pytest

from hffm_lab.bench.personalization_report import VARIANTS, build_report, cases_from_report


def _case(alpha: float, seed: int, shift: float) -> dict:
    devices = []
    for i, name in enumerate(["fog-1-dev-1", "fog-2-dev-1"]):
        acc = {"local_only": 0.70 + i * 0.1, "global": 0.60 + shift, "replace": 0.72 + i * 0.1,
               "replace_distill": 0.75 + i * 0.1 + shift}
        devices.append({"device": name, **acc, "tasks": ["digit"], "per_task": {v: {"digit": acc[v]} for v in acc}})
    mean = {v: sum(d[v] for d in devices) / 2 for v in VARIANTS}
    return {"alpha": alpha, "seed": seed, "devices": devices, "mean": mean,
            "global_test": {"accuracy": {"digit": 0.9}, "mean": 0.9}, "wall_s": 1.0}


def test_contract_keys_means_and_goals() -> None:
    cases = [_case(0.1, s, 0.01 * s) for s in range(3)] + [_case(0.5, 0, 0.0)]
    report = build_report({"rounds": 2}, cases)
    block = report["alpha"]["0.1"]
    assert set(report) >= {"alpha", "mixed_rank"} and set(report["alpha"]) == {"0.1", "0.5"}
    assert set(block["mean"]) == set(VARIANTS) and len(block["per_seed"]) == 3 and len(block["per_device"]) == 2
    assert block["mean"]["global"] == pytest.approx(0.61)
    assert block["spread"]["local_only"] == pytest.approx(0.0)
    assert block["goals"]["gain_met"] and block["goals"]["never_below_local_only_met"]
    assert block["goals"]["gain_over_global_pt"] == pytest.approx(20.0)
    assert report["alpha"]["0.5"]["goals"] == {}


def test_cases_round_trip_through_a_report() -> None:
    cases = [_case(0.1, s, 0.0) for s in range(2)]
    report = build_report({"rounds": 2}, cases)
    again = build_report({"rounds": 2}, cases_from_report(report))
    assert again["alpha"] == report["alpha"]

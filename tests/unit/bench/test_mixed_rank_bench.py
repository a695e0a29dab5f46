"""The mixed_rank section of ``hffm bench personalization``: ranks dealt over the devices, the report, and one tiny
case end to end (tiny backbone, one round)."""

from __future__ import annotations

import pytest

from hffm_lab.bench.personalization import PersonalizationOptions, _report, _todo
from hffm_lab.bench.personalization_ranks import device_ranks, mixed_rank_report, run_rank_case


def _case(ranks: list[int], seed: int, mean: float) -> dict:
    return {"alpha": 0.1, "seed": seed, "ranks": ranks, "device_ranks": {}, "wall_s": 1.0,
            "global_test": {"accuracy": {"t": mean}, "mean": mean},
            "at_rank": {str(r): {"accuracy": {"t": mean}, "mean": mean} for r in ranks}}


def test_each_fog_gets_one_device_of_each_rank() -> None:
    names = [f"fog-{f}-dev-{d}" for f in (1, 2) for d in (1, 2, 3)]
    got = device_ranks(names, [4, 8, 16])
    assert [got[n] for n in names] == [4, 8, 16, 4, 8, 16]


def test_report_means_over_the_seeds_both_fleets_have() -> None:
    cases = [_case([8], 0, 0.60), _case([4, 8, 16], 0, 0.595), _case([8], 1, 0.70)]
    rep = mixed_rank_report(cases)
    assert rep["uniform"] == pytest.approx(0.60) and rep["mixed"] == pytest.approx(0.595)
    assert rep["ranks"] == [4, 8, 16] and rep["seeds"] == [0] and rep["gap_pt"] == pytest.approx(-0.5)
    assert rep["goal_met"] is True
    assert mixed_rank_report([])["mixed"] is None


def test_only_mixed_rank_runs_no_personalization_case() -> None:
    opts = PersonalizationOptions(alphas=(0.1, 0.5), seeds=(0,), only_mixed_rank=True)
    assert _todo(opts) == [([8], 0.1, 0), ([4, 8, 16], 0.1, 0)]
    rep = _report(opts, [_case([8], 0, 0.5), _case([4, 8, 16], 0, 0.5)])
    assert rep["alpha"] == {} and rep["mixed_rank"]["uniform"] == 0.5


def test_a_tiny_mixed_rank_case_runs() -> None:
    opts = PersonalizationOptions(rounds=1, agg_every=1, backbone="tiny", fogs=2, devices_per_fog=3)
    out = run_rank_case(opts, 0.1, 0, [4, 8, 16])
    assert set(out["at_rank"]) == {"4", "8", "16"} and 0.0 <= out["global_test"]["mean"] <= 1.0
    assert sorted(set(out["device_ranks"].values())) == [4, 8, 16]

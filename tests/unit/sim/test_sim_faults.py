"""Failure injection of the simulated fleet: parsing the shares, checking them, and a seeded, repeatable draw."""

from __future__ import annotations

import pytest

from hffm_core.errors import ConfigError
from hffm_lab.sim.faults import Fault, FaultRates, draw_faults

DEVICES = [f"dev-{i:03d}" for i in range(200)]


def test_parse_reads_every_share_and_the_timings() -> None:
    rates = FaultRates.parse("drop=0.02, slow=0.05,crash=0.01,skip=0.03,slow_s=1.5,rejoin_s=4")
    assert (rates.drop, rates.slow, rates.crash, rates.skip) == (0.02, 0.05, 0.01, 0.03)
    assert (rates.slow_s, rates.rejoin_s) == (1.5, 4.0)
    assert rates.any and not FaultRates.parse("").any


@pytest.mark.parametrize("text, needle", [("lag=0.1", "unknown fault 'lag'"), ("drop=x", "'x' is not a number"),
                                          ("drop=0.7,crash=0.5", "sum to at most 1"), ("skip=-0.1", ">= 0"),
                                          ("slow_s=900", "slow_s and rejoin_s")])
def test_bad_shares_are_refused_with_the_value(text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        FaultRates.parse(text)


def test_draw_is_seeded_counts_each_kind_and_spares_the_first_round() -> None:
    rates = FaultRates(drop=0.05, slow=0.1, crash=0.05, skip=0.02)
    faults = draw_faults(DEVICES, rates, rounds=3, agg_every=2, seed=7)
    assert faults == draw_faults(DEVICES, rates, rounds=3, agg_every=2, seed=7)
    assert faults != draw_faults(DEVICES, rates, rounds=3, agg_every=2, seed=8)
    kinds = [f.kind for f in faults.values()]
    assert {k: kinds.count(k) for k in ("drop", "slow", "crash", "skip")} == {"drop": 10, "slow": 20, "crash": 10,
                                                                              "skip": 4}
    assert all((f.g, f.c) != (1, 1) and 1 <= f.g <= 3 and 1 <= f.c <= 2 for f in faults.values())
    assert {f.seconds for f in faults.values() if f.kind == "slow"} == {rates.slow_s}


def test_no_faults_without_shares_or_a_second_round() -> None:
    assert draw_faults(DEVICES, FaultRates(), rounds=3, agg_every=2, seed=0) == {}
    assert draw_faults(DEVICES, FaultRates(drop=0.5), rounds=1, agg_every=1, seed=0) == {}


def test_a_fault_of_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown fault kind"):
        Fault(kind="melt", g=1, c=1)

"""The cross-rank rule (hffm_core/aggregation/ranks.py): HetLoRA zero-padding (a lower-rank delta counts as zeros in
the slices it lacks), truncation on the way down, and plain FedAvg bit for bit when every delta has one rank."""

from __future__ import annotations

import numpy as np
import pytest

from fog_gateway.summed import JournaledFedAvg
from hffm_core.aggregation import FedAvg, make_aggregator
from hffm_core.aggregation.ranks import (
    at_rank,
    fit_rank,
    fits_rank,
    fold_into,
    module_rank,
    rank_of_size,
    trim_rank,
)
from hffm_core.errors import AggregationError

A, B, BIAS = "layer.q.lora_A.weight", "layer.q.lora_B.weight", "head.bias"


def adapter(rank: int, seed: int, *, in_dim: int = 6, out_dim: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {A: rng.normal(size=(rank, in_dim)).astype(np.float32),
            B: rng.normal(size=(out_dim, rank)).astype(np.float32),
            BIAS: rng.normal(size=(5,)).astype(np.float32)}


def test_one_rank_is_plain_fedavg_bit_for_bit() -> None:
    deltas = [(adapter(8, s), w) for s, w in ((1, 3.0), (2, 1.0), (3, 7.5))]
    agg = FedAvg()
    for d, w in deltas:
        agg.add(d, w)
    total = sum(w for _d, w in deltas)
    expected = {n: (sum(d[n].astype(np.float64) * w for d, w in deltas) / total).astype(np.float32)
                for n in deltas[0][0]}
    got = agg.result()
    for n in expected:
        assert got[n].tobytes() == expected[n].tobytes()


def _padded_mean(items: list[tuple[dict[str, np.ndarray], float]], rank: int) -> dict[str, np.ndarray]:
    """The rule written out: every delta zero-padded to ``rank``, then plain FedAvg."""
    layout = {n: a.shape for n, a in adapter(rank, 0).items()}
    padded = [({n: a.astype(np.float64) for n, a in fit_rank(d, layout).items()}, w) for d, w in items]
    total = sum(w for _d, w in items)
    return {n: (sum(d[n] * w for d, w in padded) / total).astype(np.float32) for n in layout}


@pytest.mark.parametrize("first", ["low", "high"])
def test_rank4_and_rank16_is_fedavg_of_the_zero_padded_deltas(first: str) -> None:
    low, high = adapter(4, 1), adapter(16, 2)
    order = [(low, 1.0), (high, 3.0)] if first == "low" else [(high, 3.0), (low, 1.0)]
    agg = FedAvg()
    for d, w in order:
        agg.add(d, w)
    got = agg.result()
    assert got[A].shape == (16, 6) and got[B].shape == (5, 16)
    want = _padded_mean(order, 16)
    for n in want:
        np.testing.assert_allclose(got[n], want[n], rtol=1e-6, atol=1e-7)
    # slices 0-3: both holders; slices 4-15: the rank-4 device counts as zeros (weight 3 of 4)
    np.testing.assert_allclose(got[A][:4], (low[A] + 3 * high[A][:4]) / 4, rtol=1e-6)
    np.testing.assert_allclose(got[A][4:], 3 * high[A][4:] / 4, rtol=1e-6)
    np.testing.assert_allclose(got[B][:, 4:], 3 * high[B][:, 4:] / 4, rtol=1e-6)
    assert agg.total_weight == 4.0 and agg.count == 2


def test_three_ranks_and_the_product_weights() -> None:
    deltas = [(adapter(4, 1), 2.0), (adapter(8, 2), 1.0), (adapter(16, 3), 1.0)]
    agg = FedAvg()
    for d, w in deltas:
        agg.add(d, w)
    got, want = agg.result(), _padded_mean(deltas, 16)
    for n in want:
        np.testing.assert_allclose(got[n], want[n], rtol=1e-6, atol=1e-7)
    # a device's rank-1 components enter B A with its share w_i / sum w, as in FedAvg of the products
    np.testing.assert_allclose(got[A][8:], deltas[2][0][A][8:] / 4, rtol=1e-6)


def test_other_shape_mismatch_is_still_an_error_and_changes_nothing() -> None:
    agg = FedAvg()
    agg.add(adapter(4, 1), 1.0)
    bad = adapter(8, 2, in_dim=7)
    with pytest.raises(AggregationError, match="lora_A"):
        agg.add(bad, 1.0)
    wrong_bias = {**adapter(8, 2), BIAS: np.zeros(6, np.float32)}
    with pytest.raises(AggregationError, match="head.bias"):
        agg.add(wrong_bias, 1.0)
    assert agg.count == 1 and agg.result()[A].shape == (4, 6)


def test_robust_rules_refuse_mixed_ranks_by_name() -> None:
    agg = make_aggregator("median")
    agg.add(adapter(4, 1), 1.0)
    with pytest.raises(AggregationError, match="fedavg"):
        agg.add(adapter(8, 2), 1.0)


def test_truncation_on_the_way_down_is_the_leading_components() -> None:
    full = adapter(16, 5)
    mine = fit_rank(full, at_rank({n: a.shape for n, a in full.items()}, 4))
    assert mine[A].shape == (4, 6) and mine[B].shape == (5, 4)
    np.testing.assert_array_equal(mine[A], full[A][:4])
    np.testing.assert_array_equal(mine[B], full[B][:, :4])
    np.testing.assert_array_equal(mine[BIAS], full[BIAS])
    # B A of the truncated factors is the sum of the global product's first 4 rank-1 components
    np.testing.assert_allclose(mine[B] @ mine[A], sum(np.outer(full[B][:, k], full[A][k]) for k in range(4)),
                               rtol=1e-5, atol=1e-6)
    # padding back up and truncating again gives the same
    back = fit_rank(fit_rank(mine, {n: a.shape for n, a in full.items()}), {n: a.shape for n, a in mine.items()})
    assert all(np.array_equal(back[n], mine[n]) for n in mine)


def test_round_trip_aggregate_then_truncate() -> None:
    """A rank-4 device, after the fog's round, holds the first 4 slices of the rank-16 aggregate."""
    start = {n: np.zeros_like(a) for n, a in adapter(16, 0).items()}
    agg = FedAvg()
    agg.add(adapter(4, 1), 2.0)
    agg.add(adapter(16, 2), 2.0)
    new = {n: start[n] + a for n, a in fit_rank(agg.result(), {n: a.shape for n, a in start.items()}).items()}
    down = fit_rank(new, at_rank({n: a.shape for n, a in new.items()}, 4))
    np.testing.assert_allclose(down[A], (adapter(4, 1)[A] + adapter(16, 2)[A][:4]) / 2, rtol=1e-6)


def test_journaled_sum_round_trips_at_its_grown_rank() -> None:
    agg = JournaledFedAvg()
    agg.add(adapter(4, 1), 1.0)
    agg.add(adapter(16, 2), 2.0)
    sums, weight, count = agg.state()
    assert sums[A].shape == (16, 6)
    again = JournaledFedAvg()
    again.load({n: a.copy() for n, a in sums.items()}, weight, count)
    again.add(adapter(8, 3), 1.0)
    agg.add(adapter(8, 3), 1.0)
    assert all(agg.result()[n].tobytes() == again.result()[n].tobytes() for n in agg.result())


def test_durable_sum_fold_matches_fedavg() -> None:
    deltas = [(adapter(4, 1), 1.0), (adapter(16, 2), 2.0), (adapter(8, 3), 0.5)]
    agg = FedAvg()
    stored: dict[str, np.ndarray] = {n: a.astype(np.float64) * deltas[0][1] for n, a in deltas[0][0].items()}
    for d, w in deltas:
        agg.add(d, w)
    for d, w in deltas[1:]:
        stored = fold_into(stored, d, w)
    total = sum(w for _d, w in deltas)
    for n, a in agg.result().items():
        np.testing.assert_allclose(stored[n] / total, a, rtol=1e-6)


def test_durable_sums_store_mixed_ranks(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from hffm_core.delivery.durable_sum import DurableSums

    sums = DurableSums(tmp_path / "s.sqlite")
    sums.add("b", "k1", adapter(4, 1), 1.0)
    sums.add("b", "k2", adapter(16, 2), 3.0)
    stored, weight, count = sums.result("b")
    assert count == 2 and weight == 4.0 and stored[A].shape == (16, 6)
    np.testing.assert_allclose(stored[A][4:] / weight, 3 * adapter(16, 2)[A][4:] / 4, rtol=1e-6)
    with pytest.raises(AggregationError):
        sums.add("b", "k3", adapter(8, 3, in_dim=9), 1.0)
    sums.close()


def test_layout_helpers() -> None:
    full = adapter(16, 0)
    layout = {n: a.shape for n, a in full.items()}
    assert module_rank(layout) == 16 and module_rank({BIAS: (5,)}) is None
    size4 = sum(int(np.prod(s)) for s in at_rank(layout, 4).values())
    assert rank_of_size(layout, size4) == 4 and rank_of_size(layout, size4 + 1) is None
    assert fits_rank(adapter(4, 1), full) and not fits_rank(adapter(32, 1), full)
    assert not fits_rank(adapter(4, 1, in_dim=3), full)
    with pytest.raises(AggregationError, match="ranks"):
        module_rank({A: (4, 6), B: (5, 8)})


def test_trim_rank_drops_untouched_slices_only() -> None:
    d = fit_rank(adapter(4, 1), {n: a.shape for n, a in adapter(16, 0).items()})
    assert trim_rank(d)[A].shape == (4, 6)
    full = adapter(16, 2)
    assert trim_rank(full)[A].shape == (16, 6)
    zero = {n: np.zeros_like(a) for n, a in full.items()}
    assert trim_rank(zero)[A].shape == (16, 6)

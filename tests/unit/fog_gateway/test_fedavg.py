"""FedAvg: the running weighted sum equals the numpy weighted mean, and bad input is refused."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hffm_core.aggregation import AGGREGATORS, FedAvg, make_aggregator, register
from hffm_core.errors import AggregationError, ConfigError


def _deltas(rng: np.random.Generator, n: int) -> list[dict[str, np.ndarray]]:
    return [{"w": rng.normal(size=(4, 3)).astype(np.float32), "b": rng.normal(size=(3,)).astype(np.float32)}
            for _ in range(n)]


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 12), seed=st.integers(0, 2**31 - 1),
       weights=st.lists(st.floats(0.5, 1000.0), min_size=12, max_size=12))
def test_fedavg_matches_numpy_weighted_mean(n: int, seed: int, weights: list[float]) -> None:
    deltas = _deltas(np.random.default_rng(seed), n)
    agg = FedAvg()
    for d, w in zip(deltas, weights):
        agg.add(d, w)
    out = agg.result()
    for name in ("w", "b"):
        ref = np.average(np.stack([d[name] for d in deltas]), axis=0, weights=weights[:n])
        np.testing.assert_allclose(out[name], ref, rtol=1e-5, atol=1e-6)
    assert agg.count == n
    assert agg.total_weight == pytest.approx(sum(weights[:n]))


def test_fedavg_memory_is_independent_of_device_count() -> None:
    agg = FedAvg()
    for d in _deltas(np.random.default_rng(0), 50):
        agg.add(d, 1.0)
    assert set(agg._sum) == {"w", "b"}  # one accumulator per tensor, whatever the number of devices


@pytest.mark.parametrize("weight", [0, -1.0, float("nan"), float("inf")])
def test_fedavg_rejects_bad_weight(weight: float) -> None:
    with pytest.raises(AggregationError, match="weight"):
        FedAvg().add({"w": np.zeros(2, np.float32)}, weight)


def test_fedavg_rejects_mismatched_names_and_shapes() -> None:
    agg = FedAvg()
    agg.add({"w": np.zeros((2, 2), np.float32)}, 1.0)
    with pytest.raises(AggregationError, match="missing"):
        agg.add({"v": np.zeros((2, 2), np.float32)}, 1.0)
    with pytest.raises(AggregationError, match="shape"):
        agg.add({"w": np.zeros((3, 2), np.float32)}, 1.0)
    assert agg.count == 1  # the accepted delta is untouched
    np.testing.assert_array_equal(agg.result()["w"], np.zeros((2, 2)))


def test_empty_aggregate_has_no_result() -> None:
    with pytest.raises(AggregationError, match="no delta"):
        FedAvg().result()


def test_registry_is_strict() -> None:
    assert isinstance(make_aggregator("fedavg"), FedAvg)
    with pytest.raises(ConfigError, match="unknown aggregator 'median2'"):
        make_aggregator("median2")
    with pytest.raises(ValueError, match="already registered"):
        register(FedAvg)
    assert "fedavg" in AGGREGATORS

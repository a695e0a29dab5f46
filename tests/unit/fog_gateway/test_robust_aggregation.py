"""Robust aggregators (median, trimmed mean, Krum): numpy references, resistance to poisoned deltas that pulls FedAvg
away, refusal outside each rule's tolerance, add() that rejects bad input unchanged, and the registry."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hffm_core.aggregation import (
    AGGREGATORS,
    Aggregator,
    CoordinateMedian,
    FedAvg,
    Krum,
    TrimmedMean,
    make_aggregator,
    register,
)
from hffm_core.aggregation._stack import MAX_UPDATES
from hffm_core.errors import AggregationError, ConfigError

SHAPES = {"w": (4, 3), "b": (3,), "s": ()}
Delta = dict[str, np.ndarray]


def _deltas(rng: np.random.Generator, n: int, shapes: dict[str, tuple[int, ...]] = SHAPES) -> list[Delta]:
    return [{k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()} for _ in range(n)]


def _fill(agg: Aggregator, deltas: list[Delta], weights: list[float] | None = None) -> Aggregator:
    for i, d in enumerate(deltas):
        agg.add(d, 1.0 if weights is None else weights[i])
    return agg


def _stack(deltas: list[Delta], name: str) -> np.ndarray:
    return np.stack([d[name] for d in deltas]).astype(np.float64)


def _flat(d: Delta) -> np.ndarray:
    return np.concatenate([np.asarray(d[k], np.float64).reshape(-1) for k in sorted(d)])


_weights = st.lists(st.floats(0.5, 1e6), min_size=16, max_size=16)


# -- each rule against a plain numpy reference ------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 16), seed=st.integers(0, 2**31 - 1), weights=_weights)
def test_median_matches_numpy(n: int, seed: int, weights: list[float]) -> None:
    deltas = _deltas(np.random.default_rng(seed), n)
    agg = _fill(CoordinateMedian(), deltas, weights)
    out = agg.result()
    for name, shape in SHAPES.items():
        assert out[name].dtype == np.float32 and out[name].shape == shape
        np.testing.assert_allclose(out[name], np.median(_stack(deltas, name), axis=0), rtol=1e-6, atol=1e-7)
    assert agg.count == n
    assert agg.total_weight == pytest.approx(sum(weights[:n]))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 16), seed=st.integers(0, 2**31 - 1), weights=_weights,
       fraction=st.sampled_from([0.0, 0.1, 0.2, 0.25, 0.3, 0.45]))
def test_trimmed_mean_matches_numpy(n: int, seed: int, weights: list[float], fraction: float) -> None:
    t = math.floor(fraction * n)
    if fraction > 0 and t == 0:
        n = math.ceil(1 / fraction) + 1  # the smallest rounds are refused; see the refusal tests
        t = math.floor(fraction * n)
    deltas = _deltas(np.random.default_rng(seed), n)
    agg = _fill(TrimmedMean(trim_fraction=fraction), deltas, weights)
    out = agg.result()
    for name in SHAPES:
        ref = np.sort(_stack(deltas, name), axis=0)[t : n - t].mean(axis=0)
        np.testing.assert_allclose(out[name], ref, rtol=1e-5, atol=1e-6)
    assert agg.total_weight == pytest.approx(sum(weights[:n]))


def _krum_reference_scores(deltas: list[Delta], f: int) -> np.ndarray:
    flat = [_flat(d) for d in deltas]
    n = len(flat)
    scores = []
    for i in range(n):
        dist = sorted(float(np.sum((flat[i] - flat[j]) ** 2)) for j in range(n) if j != i)
        scores.append(sum(dist[: n - f - 2]))
    return np.array(scores)


@settings(max_examples=40, deadline=None)
@given(f=st.integers(0, 3), extra=st.integers(1, 8), m_pick=st.floats(0.0, 1.0), seed=st.integers(0, 2**31 - 1),
       weights=_weights)
def test_krum_matches_reference(f: int, extra: int, m_pick: float, seed: int, weights: list[float]) -> None:
    n = min(2 * f + 2 + extra, 16)
    m = 1 + int(m_pick * (n - f - 1))  # 1 <= m <= n - f
    deltas = _deltas(np.random.default_rng(seed), n)
    agg = _fill(Krum(byzantine=f, multi=m), deltas, weights)
    out = agg.result()
    ref = _krum_reference_scores(deltas, f)
    np.testing.assert_allclose(agg.scores(), ref, rtol=1e-6)
    # The chosen deltas carry the m lowest reference scores (up to rounding in a near-tie).
    assert len(set(agg.selected)) == m
    np.testing.assert_allclose(np.sort(ref[list(agg.selected)]), np.sort(ref)[:m], rtol=1e-6)
    for name in SHAPES:
        expect = _stack(deltas, name)[list(agg.selected)].mean(axis=0)
        np.testing.assert_allclose(out[name], expect, rtol=1e-5, atol=1e-6)
    assert agg.total_weight == pytest.approx(sum(weights[:n]))


def test_krum_picks_the_central_delta() -> None:
    points = [np.array([x], np.float32) for x in (0.0, 1.0, 2.0, 3.0, 500.0)]
    agg = _fill(Krum(byzantine=1), [{"x": p} for p in points])
    np.testing.assert_array_equal(agg.result()["x"], [1.0])  # 1 and 2 tie at score 2; the first to arrive wins
    assert agg.selected == (1,)


# -- poisoned deltas: the robust rule stays near the honest mean, FedAvg does not -------------------------------------
N_HONEST, N_BAD = 8, 3
RULES: dict[str, Callable[[], Aggregator]] = {
    "median": CoordinateMedian,
    "trimmed_mean": lambda: TrimmedMean(trim_fraction=0.3),  # trims floor(0.3 * 11) = 3 per side
    "krum": lambda: Krum(byzantine=N_BAD),  # 11 > 2 * 3 + 2
    "multi_krum": lambda: Krum(byzantine=N_BAD, multi=4),
}
MODULE = {"w": (16, 8), "b": (8,)}


def _attack(kind: str, mu: Delta, honest: Delta, rng: np.random.Generator) -> Delta:
    if kind == "sign_flip":
        return {k: -10 * v for k, v in mu.items()}
    if kind == "scale_x100":
        return {k: 100 * v for k, v in honest.items()}
    return {k: (v + rng.normal(0.0, 10.0, v.shape)).astype(np.float32) for k, v in mu.items()}  # large noise


@pytest.mark.parametrize("attack", ["sign_flip", "scale_x100", "gaussian_noise"])
@pytest.mark.parametrize("rule", sorted(RULES))
def test_rule_resists_poisoned_deltas_that_pull_fedavg_away(rule: str, attack: str) -> None:
    rng = np.random.default_rng(7)
    mu = {k: rng.normal(size=s).astype(np.float32) for k, s in MODULE.items()}
    honest = [{k: (v + rng.normal(0.0, 0.02, v.shape)).astype(np.float32) for k, v in mu.items()}
              for _ in range(N_HONEST)]
    arrivals = [(d, float(rng.integers(50, 100))) for d in honest]
    # Attackers also claim huge sample counts: the robust rules ignore them, FedAvg does not.
    arrivals += [(_attack(attack, mu, honest[i], rng), 1e4) for i in range(N_BAD)]
    order = rng.permutation(len(arrivals))
    robust, fedavg = RULES[rule](), FedAvg()
    for i in order:
        robust.add(*arrivals[i])
        fedavg.add(*arrivals[i])
    norm_mu = np.linalg.norm(_flat(mu))
    err_robust = np.linalg.norm(_flat(robust.result()) - _flat(mu)) / norm_mu
    err_fedavg = np.linalg.norm(_flat(fedavg.result()) - _flat(mu)) / norm_mu
    assert err_robust < 0.05, f"{rule} under {attack}: relative error {err_robust:.3f}"
    assert err_fedavg > 1.0, f"FedAvg under {attack}: relative error {err_fedavg:.3f}"
    assert robust.total_weight == pytest.approx(fedavg.total_weight)
    if isinstance(robust, Krum):
        assert all(order[i] < N_HONEST for i in robust.selected)  # only honest deltas were chosen


def test_sample_weights_do_not_change_a_robust_result() -> None:
    deltas = _deltas(np.random.default_rng(3), 11)
    for make in RULES.values():
        a = _fill(make(), deltas, [1.0] * 11).result()
        b = _fill(make(), deltas, [1.0, 1e6, 2.0, 3.0, 5e5, 1.0, 9.0, 1.0, 7.0, 1e3, 2.0]).result()
        for name in SHAPES:
            np.testing.assert_array_equal(a[name], b[name])


# -- refusal outside each rule's tolerance ----------------------------------------------------------------------------
@pytest.mark.parametrize("make", [CoordinateMedian, TrimmedMean, Krum])
def test_every_rule_refuses_an_empty_round(make: Callable[[], Aggregator]) -> None:
    with pytest.raises(AggregationError, match="no delta was added"):
        make().result()


def test_krum_refuses_unless_n_exceeds_2f_plus_2() -> None:
    deltas = _deltas(np.random.default_rng(1), 7)
    with pytest.raises(AggregationError, match=r"krum: n=6 .*byzantine f=2.*n > 2f \+ 2 = 6"):
        _fill(Krum(byzantine=2), deltas[:6]).result()
    _fill(Krum(byzantine=2), deltas).result()  # n = 7 is enough
    with pytest.raises(AggregationError, match=r"krum: n=2 .*f=0"):
        _fill(Krum(byzantine=0), deltas[:2]).result()


def test_multi_krum_refuses_more_than_n_minus_f() -> None:
    deltas = _deltas(np.random.default_rng(2), 6)
    with pytest.raises(AggregationError, match=r"multi m=6 is more than n - f = 6 - 1 = 5"):
        _fill(Krum(byzantine=1, multi=6), deltas).result()
    agg = _fill(Krum(byzantine=1, multi=5), deltas)
    agg.result()
    assert len(agg.selected) == 5


def test_trimmed_mean_refuses_when_nothing_would_be_trimmed() -> None:
    deltas = _deltas(np.random.default_rng(4), 5)
    with pytest.raises(AggregationError, match=r"trimmed_mean: n=4 .*trim_fraction=0.2.*need n >= 5"):
        _fill(TrimmedMean(trim_fraction=0.2), deltas[:4]).result()
    _fill(TrimmedMean(trim_fraction=0.2), deltas).result()  # n = 5 trims one per side
    plain = _fill(TrimmedMean(trim_fraction=0.0), deltas[:1]).result()  # no tolerance asked, none refused
    np.testing.assert_array_equal(plain["w"], deltas[0]["w"])


def test_trimmed_mean_refuses_when_trimming_leaves_nothing() -> None:
    agg = _fill(TrimmedMean(), _deltas(np.random.default_rng(5), 2))
    # The constructor keeps trim_fraction below 0.5, so 2 * trim < n always; the guard behind it still holds.
    agg.trim_fraction = 0.5
    with pytest.raises(AggregationError, match=r"trimmed_mean: n=2 .*trim 1 per side.*2 \* trim < n"):
        agg.result()


@pytest.mark.parametrize("kwargs", [{"trim_fraction": 0.5}, {"trim_fraction": -0.1}, {"trim_fraction": "0.2"},
                                    {"trim_fraction": True}, {"max_updates": 0}, {"max_updates": MAX_UPDATES + 1}])
def test_trimmed_mean_rejects_bad_parameters(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="trimmed_mean"):
        TrimmedMean(**kwargs)


@pytest.mark.parametrize("kwargs", [{"byzantine": -1}, {"multi": 0}, {"byzantine": 1.0}, {"multi": True}])
def test_krum_rejects_bad_parameters(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="krum"):
        Krum(**kwargs)


# -- add() refuses bad input and leaves the aggregator as it was ------------------------------------------------------
GOOD = {"w": np.ones((4, 3), np.float32), "b": np.ones(3, np.float32), "s": np.ones((), np.float32)}
BAD_ADDS: dict[str, tuple[Any, Any, str]] = {
    "zero weight": (GOOD, 0, "weight"),
    "negative weight": (GOOD, -1.0, "weight"),
    "nan weight": (GOOD, float("nan"), "weight"),
    "inf weight": (GOOD, float("inf"), "weight"),
    "bool weight": (GOOD, True, "weight"),
    "str weight": (GOOD, "3", "weight"),
    "missing tensor": ({"w": GOOD["w"], "b": GOOD["b"]}, 1.0, r"missing \['s'\]"),
    "extra tensor": ({**GOOD, "x": GOOD["b"]}, 1.0, r"extra \['x'\]"),
    "wrong shape": ({**GOOD, "w": np.ones((3, 4), np.float32)}, 1.0, r"'w': shape \(3, 4\)"),
    "nan value": ({**GOOD, "b": np.array([1, np.nan, 1], np.float32)}, 1.0, "NaN or Inf"),
    "inf value": ({**GOOD, "b": np.array([1, np.inf, 1], np.float32)}, 1.0, "NaN or Inf"),
    "float32 overflow": ({**GOOD, "b": np.array([1, 1e300, 1])}, 1.0, "NaN or Inf"),
    "not an array": ({**GOOD, "b": [1.0, 1.0, 1.0]}, 1.0, "numpy array"),
    "text array": ({**GOOD, "b": np.array(["a", "b", "c"])}, 1.0, "numpy array"),
    "empty delta": ({}, 1.0, "non-empty"),
}


@pytest.mark.parametrize("case", sorted(BAD_ADDS))
@pytest.mark.parametrize("rule", sorted(RULES))
def test_add_rejects_bad_input_and_leaves_state_unchanged(rule: str, case: str) -> None:
    deltas = _deltas(np.random.default_rng(6), 11)
    agg = _fill(RULES[rule](), deltas, [float(i + 1) for i in range(11)])
    before, weight = agg.result(), agg.total_weight
    delta, w, message = BAD_ADDS[case]
    with pytest.raises(AggregationError, match=message):
        agg.add(delta, w)
    assert (agg.count, agg.total_weight) == (11, weight)
    after = agg.result()
    for name in SHAPES:
        np.testing.assert_array_equal(after[name], before[name])


@pytest.mark.parametrize("rule", sorted(RULES))
def test_a_rejected_first_delta_fixes_nothing(rule: str) -> None:
    agg = RULES[rule]()
    with pytest.raises(AggregationError, match="NaN or Inf"):
        agg.add({"x": np.array([np.nan], np.float32)}, 1.0)
    with pytest.raises(AggregationError, match="weight"):
        agg.add({"y": np.zeros(2, np.float32)}, -1.0)
    assert (agg.count, agg.total_weight) == (0, 0.0)
    _fill(agg, [{"z": np.full(3, float(i), np.float32)} for i in range(11)])  # any layout is still welcome
    assert agg.result()["z"].shape == (3,)


def test_first_delta_fixes_the_layout_and_ints_are_taken_as_float32() -> None:
    agg = CoordinateMedian()
    agg.add({"w": np.arange(6, dtype=np.int64).reshape(2, 3)}, 2)
    with pytest.raises(AggregationError, match="shape"):
        agg.add({"w": np.zeros(6, np.float32)}, 1.0)
    out = agg.result()["w"]
    assert out.dtype == np.float32 and out.shape == (2, 3)
    np.testing.assert_array_equal(out, np.arange(6).reshape(2, 3))


def test_max_updates_caps_the_round() -> None:
    deltas = _deltas(np.random.default_rng(8), 4)
    agg = _fill(Krum(byzantine=0, max_updates=3), deltas[:3])
    with pytest.raises(AggregationError, match="already holds 3 deltas.*max_updates=3"):
        agg.add(deltas[3], 1.0)
    assert agg.count == 3
    assert make_aggregator("median").max_updates == MAX_UPDATES == 1024  # type: ignore[attr-defined]


def test_default_cap_of_1024_devices() -> None:
    agg = CoordinateMedian()
    tiny = {"x": np.zeros(1, np.float32)}
    for _ in range(MAX_UPDATES):
        agg.add(tiny, 1.0)
    with pytest.raises(AggregationError, match="max_updates=1024"):
        agg.add(tiny, 1.0)
    assert agg.count == 1024 and agg.total_weight == 1024.0


# -- registry ---------------------------------------------------------------------------------------------------------
def test_new_rules_are_registered_and_built_with_defaults() -> None:
    for name, cls in {"median": CoordinateMedian, "trimmed_mean": TrimmedMean, "krum": Krum}.items():
        assert AGGREGATORS[name] is cls
        assert type(make_aggregator(name)) is cls
    assert isinstance(make_aggregator("fedavg"), FedAvg)


def test_make_aggregator_passes_params() -> None:
    krum = make_aggregator("krum", {"byzantine": 2, "multi": 3})
    assert isinstance(krum, Krum) and (krum.byzantine, krum.multi) == (2, 3)
    trimmed = make_aggregator("trimmed_mean", {"trim_fraction": 0})  # an int where a float is expected
    assert isinstance(trimmed, TrimmedMean) and trimmed.trim_fraction == 0.0
    assert isinstance(make_aggregator("median", {}), CoordinateMedian)


@pytest.mark.parametrize(("name", "params", "message"), [
    ("krum", {"f": 1}, r"aggregator 'krum': unknown parameter\(s\) \['f'\]; expected some of \['byzantine', "),
    ("fedavg", {"trim_fraction": 0.1}, r"'fedavg': unknown parameter\(s\) \['trim_fraction'\]; expected some of \['norm_bound'\]"),
    ("krum", {"byzantine": 1.5}, "parameter 'byzantine' must be int, got 1.5"),
    ("krum", {"multi": True}, "parameter 'multi' must be int, got True"),
    ("krum", {"byzantine": "1"}, "parameter 'byzantine' must be int, got '1'"),
    ("trimmed_mean", {"trim_fraction": "0.2"}, "parameter 'trim_fraction' must be float, got '0.2'"),
    ("trimmed_mean", {"trim_fraction": 0.6}, r"must be in \[0, 0.5\), got 0.6"),
    ("krum", {"byzantine": -1}, "must be >= 0, got -1"),
    ("median", {"max_updates": 5000}, r"must be in \[1, 1024\], got 5000"),
    ("median", [("max_updates", 3)], "parameters must be a mapping, got list"),
    ("krum2", None, r"unknown aggregator 'krum2'; expected one of \['fedavg', 'krum', 'median', 'trimmed_mean'\]"),
])
def test_make_aggregator_rejects_bad_params(name: str, params: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_aggregator(name, params)


@pytest.mark.parametrize("cls", [CoordinateMedian, TrimmedMean, Krum])
def test_duplicate_registration_is_rejected(cls: type[Aggregator]) -> None:
    with pytest.raises(ValueError, match=f"aggregator {cls.name!r} is already registered"):
        register(cls)
    assert AGGREGATORS[cls.name] is cls


# -- update-norm bounding ----------------------------------------------------------------------------------------
def test_norm_bound_clips_a_boosted_update_to_the_bound() -> None:
    from hffm_core.aggregation.norm_bound import NormBounded, module_norm

    agg = make_aggregator("fedavg", {"norm_bound": 1.0})
    assert isinstance(agg, NormBounded)
    honest = {"w": np.full(4, 0.25, np.float32)}  # norm 0.5: untouched
    boosted = {"w": np.full(4, 50.0, np.float32)}  # norm 100: scaled to 1
    agg.add(honest, 1.0)
    agg.add(boosted, 1.0)
    assert agg.clipped == 1 and agg.count == 2
    out = agg.result()["w"]
    np.testing.assert_allclose(out, (0.25 + 0.5) / 2, rtol=1e-6)  # the boosted one contributes norm 1 = 0.5 each
    assert module_norm({"w": out}) <= 1.0


def test_norm_bound_wraps_robust_rules_and_rejects_bad_values() -> None:
    agg = make_aggregator("median", {"norm_bound": 2})
    assert agg.name == "median"
    for bad in (-1.0, float("inf"), "x", True):
        with pytest.raises(ConfigError, match="norm_bound"):
            make_aggregator("median", {"norm_bound": bad})
    assert not hasattr(make_aggregator("median", {"norm_bound": 0}), "clipped")  # 0 = off

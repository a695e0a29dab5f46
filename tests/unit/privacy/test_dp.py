"""Client-side DP: the clipping bound, the noise scale (a statistical test that fails for a wrong scale), the
accountant's monotonicity and agreement with Opacus, and the [privacy.<kind>] config tables."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge_runtime.privacy import (
    DpSettings,
    PrivacyLedger,
    delta_norm,
    epsilon,
    parse_dp,
    parse_privacy,
    privatize,
)
from hffm_core.errors import ConfigError, ModelError


def _delta(rng: np.random.Generator, scale: float) -> dict[str, np.ndarray]:
    return {"lora_A": (scale * rng.standard_normal((8, 384))).astype(np.float32),
            "lora_B": (scale * rng.standard_normal((384, 8))).astype(np.float32),
            "bias": (scale * rng.standard_normal(10)).astype(np.float32)}


@pytest.mark.parametrize("scale", [1e-3, 0.1, 10.0, 1e4])
def test_clipping_bounds_the_whole_module_norm(scale: float) -> None:
    rng = np.random.default_rng(0)
    delta = _delta(rng, scale)
    settings = DpSettings(clip=1.5, noise_multiplier=0.0)
    out, norm = privatize(delta, settings, rng)
    assert norm == pytest.approx(delta_norm(delta))
    assert set(out) == set(delta) and all(out[n].dtype == np.float32 and out[n].shape == delta[n].shape for n in out)
    assert delta_norm(out) <= 1.5 * (1 + 1e-6)
    if norm <= 1.5:  # under the bound: untouched
        assert all(np.array_equal(out[n], delta[n]) for n in delta)
    else:  # over it: scaled as one vector, so the direction is kept
        assert delta_norm(out) == pytest.approx(1.5, rel=1e-6)
        ratio = out["lora_A"].ravel()[0] / delta["lora_A"].ravel()[0]
        assert all(np.allclose(out[n], ratio * delta[n], rtol=1e-5) for n in delta)


def test_noise_std_matches_sigma_times_clip() -> None:
    """200k coordinates: the sample std has a relative standard error of ~0.16%, so 1.5% tolerance fails for any
    real mistake (e.g. std = sigma instead of sigma * clip, or noise on only some tensors)."""
    rng = np.random.default_rng(1)
    delta = {"a": np.zeros((400, 250), dtype=np.float32), "b": np.zeros(100_000, dtype=np.float32)}
    settings = DpSettings(clip=2.0, noise_multiplier=0.7)
    out, _norm = privatize(delta, settings, rng)
    for name in delta:
        noise = out[name].astype(np.float64).ravel()
        assert abs(noise.mean()) < 4 * 1.4 / math.sqrt(noise.size)
        assert noise.std() == pytest.approx(0.7 * 2.0, rel=0.015), name
    # the clipped part plus the noise: a unit-norm delta keeps its mean
    signal = {"w": np.full(10_000, 0.01, dtype=np.float32)}  # norm 1 <= clip 2
    out, _ = privatize(signal, settings, np.random.default_rng(2))
    assert out["w"].mean() == pytest.approx(0.01, abs=4 * 1.4 / math.sqrt(10_000))


def test_the_same_seed_draws_the_same_noise_and_the_default_draws_fresh() -> None:
    delta = _delta(np.random.default_rng(3), 1.0)
    settings = DpSettings(clip=1.0, noise_multiplier=1.0)
    one, _ = privatize(delta, settings, np.random.default_rng(7))
    two, _ = privatize(delta, settings, np.random.default_rng(7))
    fresh, _ = privatize(delta, settings)
    assert all(np.array_equal(one[n], two[n]) for n in delta)
    assert not np.array_equal(one["lora_A"], fresh["lora_A"])


def test_non_finite_deltas_are_refused() -> None:
    with pytest.raises(ModelError, match="'w' holds NaN or Inf"):
        privatize({"w": np.array([1.0, np.nan], dtype=np.float32)}, DpSettings(clip=1.0, noise_multiplier=1.0))


def test_epsilon_falls_with_more_noise_and_grows_with_rounds() -> None:
    by_sigma = [epsilon(10, DpSettings(clip=1.0, noise_multiplier=s)) for s in (0.5, 1.0, 2.0, 4.0, 8.0)]
    by_rounds = [epsilon(r, DpSettings(clip=1.0, noise_multiplier=1.0)) for r in (1, 2, 5, 20, 100)]
    assert all(a > b for a, b in zip(by_sigma, by_sigma[1:]))
    assert all(a < b for a, b in zip(by_rounds, by_rounds[1:]))
    assert epsilon(0, DpSettings(clip=1.0, noise_multiplier=1.0)) == 0.0
    assert epsilon(3, DpSettings(clip=1.0, noise_multiplier=0.0)) == math.inf


@pytest.mark.parametrize(("sigma", "rounds", "delta"), [(1.0, 10, 1e-5), (2.0, 50, 1e-6), (0.8, 1, 1e-5)])
def test_epsilon_matches_opacus_stepped_by_hand(sigma: float, rounds: int, delta: float) -> None:
    from opacus.accountants import RDPAccountant

    from edge_runtime.privacy.dp import RDP_ORDERS

    accountant = RDPAccountant()
    for _ in range(rounds):
        accountant.step(noise_multiplier=sigma, sample_rate=1.0)
    expected = accountant.get_epsilon(delta=delta, alphas=list(RDP_ORDERS))
    assert epsilon(rounds, DpSettings(clip=3.0, noise_multiplier=sigma, delta=delta)) == pytest.approx(expected)


def test_epsilon_matches_the_gaussian_mechanisms_closed_form() -> None:
    """Sample rate 1: RDP(a) = rounds * a / (2 sigma^2), converted as in Balle et al. 2020 (Opacus' formula)."""
    sigma, rounds, delta = 1.0, 10, 1e-5
    orders = np.linspace(1.01, 200, 200_000)
    eps = (rounds * orders / (2 * sigma**2) - (math.log(delta) + np.log(orders)) / (orders - 1)
           + np.log((orders - 1) / orders))
    assert epsilon(rounds, DpSettings(clip=1.0, noise_multiplier=sigma, delta=delta)) == pytest.approx(eps.min(),
                                                                                                       rel=2e-3)


def test_ledger_counts_and_reports() -> None:
    ledger = PrivacyLedger({"adapter": DpSettings(clip=1.0, noise_multiplier=1.0),
                            "head": DpSettings(clip=1.0, noise_multiplier=0.0)})
    ledger.record("adapter", 3)
    ledger.record("head")
    assert ledger.spent("adapter") == (pytest.approx(epsilon(3, ledger.settings["adapter"])), 1e-5)
    report = ledger.report()
    assert report["adapter"]["rounds"] == 3 and report["head"]["epsilon"] is None
    with pytest.raises(ConfigError, match="no DP settings for module kind 'encoder'"):
        ledger.record("encoder")


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"clip": 0.0, "noise_multiplier": 1.0}, "clip must be a finite number > 0, got 0.0"),
        ({"clip": math.inf, "noise_multiplier": 1.0}, "clip must be"),
        ({"clip": True, "noise_multiplier": 1.0}, "clip must be"),
        ({"clip": 1.0, "noise_multiplier": -0.1}, "noise_multiplier must be a finite number >= 0, got -0.1"),
        ({"clip": 1.0, "noise_multiplier": math.nan}, "noise_multiplier must be"),
        ({"clip": 1.0, "noise_multiplier": 1.0, "delta": 1.0}, r"delta must be a number in \(0, 1\), got 1.0"),
        ({"clip": 1.0, "noise_multiplier": 1.0, "delta": 0}, "delta must be"),
    ],
)
def test_bad_settings_are_config_errors(fields: dict[str, float], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        DpSettings(**fields)  # type: ignore[arg-type]
    problems: list[str] = []
    assert parse_dp(fields, "d.toml [privacy.adapter]", problems) is None
    assert len(problems) == 1 and problems[0].startswith("d.toml [privacy.adapter]: ")


def test_parse_dp_and_privacy() -> None:
    problems: list[str] = []
    assert parse_dp({"clip": 1, "noise_multiplier": 1.1}, "w", problems) == DpSettings(clip=1, noise_multiplier=1.1)
    assert parse_dp({"clip": 1.0}, "w", problems) is None
    assert parse_dp({"clip": 1.0, "noise_multiplier": 1.0, "sigma": 2}, "w", problems) is None
    assert parse_dp("x", "w", problems) is None
    assert problems == ["w: missing key(s) ['noise_multiplier']",
                        "w: unknown key(s) ['sigma']; expected some of ['clip', 'noise_multiplier', 'delta']",
                        "w: expected a table, got str"]
    problems = []
    table = {"adapter": {"clip": 1.0, "noise_multiplier": 1.0}, "lora": {"clip": 1.0, "noise_multiplier": 1.0}}
    assert set(parse_privacy(table, "d.toml [privacy]", problems)) == {"adapter"}
    assert problems == ["d.toml [privacy]: unknown module kind 'lora'; expected some of ['encoder', 'adapter', 'head']"]

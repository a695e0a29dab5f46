"""Red-team deltas: each attack does what it says, and bad settings are named config errors."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.attacks import check_attack, poison
from edge_runtime.config import DeviceConfig
from hffm_core.config import build
from hffm_core.errors import ConfigError

DELTA = {"a": np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5, "b": np.array([0.5, -0.25], np.float32)}


def test_sign_flip_and_scale() -> None:
    rng = np.random.default_rng(0)
    flipped = poison(DELTA, "sign_flip", 1.0, rng)
    scaled = poison(DELTA, "scale", 100.0, rng)
    for name, arr in DELTA.items():
        np.testing.assert_array_equal(flipped[name], -arr)
        np.testing.assert_allclose(scaled[name], 100.0 * arr)
        assert flipped[name].dtype == scaled[name].dtype == np.float32


def test_noise_has_the_stated_scale_and_is_seeded() -> None:
    big = {"w": np.random.default_rng(1).normal(0, 0.01, 200_000).astype(np.float32)}
    out = poison(big, "noise", 10.0, np.random.default_rng(5))
    noise = out["w"] - big["w"]
    assert noise.std() == pytest.approx(10 * 0.01, rel=0.02)
    np.testing.assert_array_equal(out["w"], poison(big, "noise", 10.0, np.random.default_rng(5))["w"])


def test_none_is_an_exact_copy() -> None:
    out = poison(DELTA, "none", 0.0, np.random.default_rng(0))
    for name, arr in DELTA.items():
        np.testing.assert_array_equal(out[name], arr)
        assert out[name] is not arr


@pytest.mark.parametrize(("kind", "factor", "match"), [
    ("boost", None, "unknown attack 'boost'"), ("scale", -1.0, "positive finite"), ("noise", float("inf"), "finite"),
])
def test_bad_attack_settings(kind: str, factor: float | None, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        check_attack(kind, factor)


def test_device_config_attack_table() -> None:
    base = {"device": {"id": "d1", "fleet": "f", "fog": "g", "modalities": ["image"], "tasks": ["digit"]}}
    assert build(DeviceConfig, base, "dev.toml").attack.kind == "none"
    cfg = build(DeviceConfig, {**base, "attack": {"kind": "scale", "factor": 50}}, "dev.toml")
    assert (cfg.attack.kind, cfg.attack.factor) == ("scale", 50.0)
    with pytest.raises(ConfigError, match=r"dev.toml: attack: unknown attack 'flip'"):
        build(DeviceConfig, {**base, "attack": {"kind": "flip"}}, "dev.toml")

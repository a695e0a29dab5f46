"""Poisoned updates, for testing the defences: what a compromised device would send instead of its honest delta.

A device runs as an attacker only when its config says so (``[attack] kind = ...``); the agent then logs a warning
at start and on every round. Each attack transforms the whole module delta (every tensor of the module):

- ``sign_flip``: ``-factor * delta`` (default factor 1) -- pushes the model back the way it came;
- ``scale``: ``factor * delta`` (default factor 100) -- a boosted update that dominates a plain weighted mean;
- ``noise``: Gaussian noise of ``factor`` times the delta's RMS per coordinate (default factor 10), seeded.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from hffm_core.errors import ConfigError

__all__ = ["ATTACKS", "DEFAULT_FACTOR", "check_attack", "poison"]

ATTACKS = ("none", "sign_flip", "scale", "noise")
DEFAULT_FACTOR = {"none": 0.0, "sign_flip": 1.0, "scale": 100.0, "noise": 10.0}


def check_attack(kind: str, factor: float | None) -> float:
    """The factor to use for ``kind`` (its default when ``factor`` is None).

    Raises:
        ConfigError: an unknown kind or a factor that is not a positive finite number.
    """
    if kind not in ATTACKS:
        raise ConfigError(f"unknown attack {kind!r}; expected one of {list(ATTACKS)}")
    if factor is None:
        return DEFAULT_FACTOR[kind]
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not (0 < factor < float("inf")):
        raise ConfigError(f"attack factor must be a positive finite number, got {factor!r}")
    return float(factor)


def poison(delta: Mapping[str, np.ndarray], kind: str, factor: float, rng: np.random.Generator
           ) -> dict[str, np.ndarray]:
    """The poisoned version of a module delta (float32 arrays, same names and shapes).

    Raises:
        ConfigError: an unknown kind.
    """
    if kind == "none":
        return {n: a.astype(np.float32, copy=True) for n, a in delta.items()}
    if kind == "sign_flip":
        return {n: (-factor * a).astype(np.float32) for n, a in delta.items()}
    if kind == "scale":
        return {n: (factor * a).astype(np.float32) for n, a in delta.items()}
    if kind == "noise":
        total = sum(float(np.square(a, dtype=np.float64).sum()) for a in delta.values())
        count = sum(a.size for a in delta.values())
        rms = (total / count) ** 0.5 if count else 0.0
        return {n: (a + rng.normal(0.0, factor * rms, a.shape)).astype(np.float32) for n, a in delta.items()}
    raise ConfigError(f"unknown attack {kind!r}; expected one of {list(ATTACKS)}")

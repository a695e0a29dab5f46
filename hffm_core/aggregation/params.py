"""The checks every aggregation rule shares: its parameters (a ConfigError naming the rule, the parameter and the
value), the weight of a delta, and a delta's tensors against the first delta's (AggregationErrors)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from hffm_core.aggregation.ranks import rank_axis
from hffm_core.errors import AggregationError, ConfigError


def _type_error(rule: str, key: str, kind: str, value: Any) -> ConfigError:
    return ConfigError(f"aggregator {rule!r}: parameter {key!r} must be {kind}, got {value!r}")


def int_param(rule: str, key: str, value: Any, *, low: int, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]``. Raises ``ConfigError`` quoting it (a bool is not an int here)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(rule, key, "int", value)
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ConfigError(f"aggregator {rule!r}: parameter {key!r} must be {bound}, got {value!r}")
    return value


def float_param(rule: str, key: str, value: Any, *, low: float, below: float | None = None, note: str = "") -> float:
    """``value`` (an int or a float) as a finite float in ``[low, below)``. Raises ``ConfigError`` quoting it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _type_error(rule, key, "float", value)
    if below is not None and not low <= value < below:
        raise ConfigError(f"aggregator {rule!r}: parameter {key!r} must be in [{low:g}, {below:g}), got {value!r}")
    if below is None and not (math.isfinite(value) and value >= low):
        raise ConfigError(f"aggregator {rule!r}: parameter {key!r} must be a finite number >= {low:g}{note}, "
                          f"got {value!r}")
    return float(value)


def like_default(rule: str, key: str, value: Any, default: Any) -> Any:
    """``value`` for a parameter whose default is ``default``: of the same type (an int is taken for a float).

    Raises:
        ConfigError: a value of another type.
    """
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not type(default):
        raise _type_error(rule, key, type(default).__name__, value)
    return value


def check_weight(weight: Any) -> float:
    """``weight`` as a float. Raises ``AggregationError`` unless it is a finite number > 0 (a bool is not one)."""
    if isinstance(weight, bool) or not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight > 0):
        raise AggregationError(f"weight must be a finite number > 0, got {weight!r}")
    return float(weight)


def check_like_first(first: Mapping[str, tuple[int, ...]], delta: Mapping[str, np.ndarray], *,
                     ranked: bool = False) -> None:
    """A later delta has the first delta's tensor names and shapes (``first``: name -> shape; empty = this is the
    first); with ``ranked``, a LoRA factor may differ in its rank (the rule folds mixed ranks: ranks.py). Raises
    ``AggregationError`` naming what is missing, extra or of another shape."""
    if not first:
        return
    if set(delta) != set(first):
        missing, extra = sorted(set(first) - set(delta)), sorted(set(delta) - set(first), key=str)
        raise AggregationError(f"tensor names differ from the first delta: missing {missing}, extra {extra}")
    for name, arr in delta.items():
        if isinstance(arr, np.ndarray) and arr.shape != first[name]:  # other values: the caller's type check
            if ranked and rank_axis(name) is not None:
                continue  # checked where it is folded
            lora = " (LoRA factors of different ranks are aggregated by 'fedavg' only)" if rank_axis(name) is not None \
                else ""
            raise AggregationError(f"tensor {name!r}: shape {arr.shape} differs from the first delta's "
                                   f"{first[name]}{lora}")

"""The aggregation rules' shared checks: parameters, weights, and a delta against the first one."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from hffm_core.aggregation.params import check_like_first, check_weight, float_param, int_param, like_default
from hffm_core.errors import AggregationError, ConfigError


@pytest.mark.parametrize(("call", "message"), [
    (lambda: int_param("krum", "multi", True, low=1), "parameter 'multi' must be int, got True"),
    (lambda: int_param("krum", "multi", 0, low=1), "must be >= 1, got 0"),
    (lambda: int_param("median", "max_updates", 9, low=1, high=8), r"must be in \[1, 8\], got 9"),
    (lambda: float_param("t", "trim_fraction", "0.1", low=0.0, below=0.5), "must be float, got '0.1'"),
    (lambda: float_param("t", "trim_fraction", 0.5, low=0.0, below=0.5), r"must be in \[0, 0.5\), got 0.5"),
    (lambda: float_param("f", "norm_bound", math.inf, low=0.0, note=" (0 = off)"),
     r"must be a finite number >= 0 \(0 = off\), got inf"),
    (lambda: like_default("krum", "byzantine", 1.0, 1), "parameter 'byzantine' must be int, got 1.0"),
    (lambda: like_default("t", "trim_fraction", False, 0.2), "must be float, got False"),
])
def test_bad_parameters_name_the_rule_the_parameter_and_the_value(call: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        call()


def test_good_parameters_come_back_typed() -> None:
    assert int_param("krum", "multi", 3, low=1) == 3
    assert float_param("t", "trim_fraction", 0, low=0.0, below=0.5) == 0.0
    assert like_default("t", "trim_fraction", 0, 0.2) == 0.0 and isinstance(like_default("t", "x", 1, 0.5), float)
    assert check_weight(3) == 3.0


@pytest.mark.parametrize("weight", [0, -1.0, math.nan, math.inf, True, "1"])
def test_bad_weights(weight: Any) -> None:
    with pytest.raises(AggregationError, match="weight must be a finite number > 0"):
        check_weight(weight)


def test_a_delta_must_match_the_first() -> None:
    first = {"w": (2, 3)}
    check_like_first({}, {"anything": np.zeros(1)})
    check_like_first(first, {"w": np.zeros((2, 3))})
    with pytest.raises(AggregationError, match=r"missing \['w'\], extra \['v'\]"):
        check_like_first(first, {"v": np.zeros((2, 3))})
    with pytest.raises(AggregationError, match=r"tensor 'w': shape \(3, 2\) differs"):
        check_like_first(first, {"w": np.zeros((3, 2))})

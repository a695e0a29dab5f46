"""Update-norm bounding: every delta is scaled down to L2 norm at most ``bound`` before the rule sees it.

A boosted update (a poisoned delta scaled by 100, say) then weighs no more than an honest one of norm ``bound``
(Sun et al. 2019, "Can you really backdoor federated learning?"). The norm is taken over the whole module delta, all
its tensors as one vector. It wraps any rule: ``aggregator_params = {norm_bound = 5.0}`` (0 = off, the default).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import numpy as np

from hffm_core.aggregation.base import Aggregator, HeldCounts
from hffm_core.errors import AggregationError

log = logging.getLogger(__name__)


def module_norm(delta: Mapping[str, np.ndarray]) -> float:
    """The L2 norm of a module delta (all tensors together, accumulated in float64)."""
    return math.sqrt(sum(float(np.square(np.asarray(a, dtype=np.float64)).sum()) for a in delta.values()))


class NormBounded(HeldCounts):
    """``inner`` with every added delta clipped to L2 norm ``bound``; ``clipped`` counts the deltas scaled down."""

    def __init__(self, inner: Aggregator, bound: float) -> None:
        if not (isinstance(bound, float) and math.isfinite(bound) and bound > 0):
            raise AggregationError(f"norm_bound must be a finite number > 0, got {bound!r}")
        self.inner = self._tally = inner
        self.bound = bound
        self.name = inner.name
        self.clipped = 0

    def add(self, delta: Mapping[str, np.ndarray], weight: float) -> None:
        norm = module_norm(delta)
        if not math.isfinite(norm):
            raise AggregationError("update holds NaN or Inf; refusing it")
        if norm > self.bound:
            scale = self.bound / norm
            delta = {n: (np.asarray(a, dtype=np.float64) * scale).astype(np.float32) for n, a in delta.items()}
            self.clipped += 1
            log.warning("update norm %.4g above the bound %.4g: scaled down by %.3g", norm, self.bound, scale)
        self.inner.add(delta, weight)

    def result(self) -> dict[str, np.ndarray]:
        return self.inner.result()

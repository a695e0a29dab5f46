"""Coordinate-wise trimmed mean: per coordinate, drop the ``t`` largest and ``t`` smallest values, average the rest.

``t = floor(trim_fraction * n)`` for ``n`` deltas. Memory is O(devices x module size): every delta of the round is
kept until it closes (see :mod:`._stack`).
"""

from __future__ import annotations

import math
import numpy as np

from hffm_core.aggregation._stack import MAX_UPDATES, StackedAggregator
from hffm_core.aggregation.params import float_param
from hffm_core.errors import AggregationError


class TrimmedMean(StackedAggregator):
    """The unweighted coordinate-wise trimmed mean of the round's deltas.

    Tolerance: up to ``t = floor(trim_fraction * n)`` arbitrary deltas, as long as ``2 t < n``. The rule refuses to
    run rather than silently average: when ``trim_fraction > 0`` but ``n`` is too small to trim even one value per
    side, and when ``2 t >= n`` (nothing would be left). ``trim_fraction = 0`` asks for no tolerance and is the
    plain unweighted mean.

    Sample weights are ignored by design (a device must not buy influence with a large claimed count);
    ``total_weight`` still reports their sum, which the fog forwards upward.
    """

    name = "trimmed_mean"

    def __init__(self, *, trim_fraction: float = 0.2, max_updates: int = MAX_UPDATES) -> None:
        """Raises ``ConfigError`` for ``trim_fraction`` outside ``[0, 0.5)`` or ``max_updates`` outside
        ``[1, 1024]``."""
        super().__init__(max_updates=max_updates)
        self.trim_fraction = float_param(self.name, "trim_fraction", trim_fraction, low=0.0, below=0.5)

    def trim_count(self, n: int) -> int:
        """How many values are dropped from each side of each coordinate when ``n`` deltas arrived."""
        return math.floor(self.trim_fraction * n)

    def result(self) -> dict[str, np.ndarray]:
        """The coordinate-wise trimmed mean (float32).

        Raises:
            AggregationError: nothing was added; ``trim_fraction > 0`` but ``n`` deltas are too few to trim one per
                side; or ``2 * trim >= n``.
        """
        n = self._require_some()
        t = self.trim_count(n)
        if self.trim_fraction > 0 and t == 0:
            raise AggregationError(
                f"{self.name}: n={n} deltas are too few to trim any with trim_fraction={self.trim_fraction} "
                f"(floor({self.trim_fraction} * {n}) = 0); need n >= {math.ceil(1 / self.trim_fraction)} "
                "or trim_fraction=0 for a plain mean"
            )
        if 2 * t >= n:
            raise AggregationError(
                f"{self.name}: n={n} deltas with trim_fraction={self.trim_fraction} trim {t} per side, "
                "which leaves nothing to average (needs 2 * trim < n)"
            )
        out: dict[str, np.ndarray] = {}
        for name in self._stack.shapes:
            flat = np.empty(self._stack.matrix(name).shape[1], dtype=np.float64)
            for cols, block in self._stack.column_blocks(name):
                kept = np.partition(block, (t, n - t - 1), axis=0)[t : n - t] if t else block
                flat[cols] = kept.mean(axis=0, dtype=np.float64)
            out[name] = flat
        return self._stack.unflatten(out)


"""Coordinate-wise median: each coordinate of the aggregate is the median of that coordinate over the round's deltas.

Memory is O(devices x module size): every delta of the round is kept until it closes (see :mod:`._stack`).
"""

from __future__ import annotations

import numpy as np

from hffm_core.aggregation._stack import MAX_UPDATES, StackedAggregator


class CoordinateMedian(StackedAggregator):
    """The unweighted coordinate-wise median of the round's deltas.

    Tolerance: with ``n`` deltas, up to ``floor((n - 1) / 2)`` arbitrary (Byzantine) deltas cannot move any
    coordinate outside the range of the honest values.

    Sample weights are ignored by design: a robust rule must not let one device buy influence by claiming a large
    sample count. ``total_weight`` still reports their sum, which the fog forwards upward. The median of an even
    number of values is the mean of the two middle ones, taken in float64 so two huge values cannot overflow.
    """

    name = "median"

    def __init__(self, *, max_updates: int = MAX_UPDATES) -> None:
        """Raises ``ConfigError`` for ``max_updates`` outside ``[1, 1024]``."""
        super().__init__(max_updates=max_updates)

    def result(self) -> dict[str, np.ndarray]:
        """The coordinate-wise median (float32).

        Raises:
            AggregationError: nothing was added.
        """
        n = self._require_some()
        lo, hi = (n - 1) // 2, n // 2
        out: dict[str, np.ndarray] = {}
        for name in self._stack.shapes:
            flat = np.empty(self._stack.matrix(name).shape[1], dtype=np.float64)
            for cols, block in self._stack.column_blocks(name):
                part = np.partition(block, (lo, hi), axis=0)
                flat[cols] = 0.5 * part[lo].astype(np.float64) + 0.5 * part[hi].astype(np.float64)
            out[name] = flat
        return self._stack.unflatten(out)

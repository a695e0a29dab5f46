"""Krum and multi-Krum (Blanchard et al., NeurIPS 2017): keep the delta(s) closest to their nearest neighbours.

Each delta is one vector: the whole module, every tensor flattened and concatenated. With ``n`` deltas and at
most ``f`` Byzantine ones, delta ``i`` scores the sum of its squared distances to its ``n - f - 2`` nearest other
deltas; Krum returns the lowest-scored delta, multi-Krum (``multi = m > 1``) the unweighted mean of the ``m``
lowest-scored. Memory is O(devices x module size) for the kept deltas (see :mod:`._stack`) plus an ``n x n``
float64 distance matrix.
"""

from __future__ import annotations

import numpy as np

from hffm_core.aggregation._stack import MAX_UPDATES, StackedAggregator
from hffm_core.aggregation.params import int_param
from hffm_core.errors import AggregationError


class Krum(StackedAggregator):
    """(Multi-)Krum over the round's deltas.

    Tolerance: up to ``byzantine = f`` arbitrary deltas, provided ``n > 2 f + 2``; the rule refuses to run
    otherwise, and unless ``1 <= multi <= n - f``. Equal scores go to the delta that arrived first.

    Sample weights are ignored by design (a device must not buy influence with a large claimed count);
    ``total_weight`` still reports their sum, which the fog forwards upward. After :meth:`result`, ``selected``
    holds the arrival indices (0-based) of the chosen deltas.
    """

    name = "krum"

    def __init__(self, *, byzantine: int = 1, multi: int = 1, max_updates: int = MAX_UPDATES) -> None:
        """Raises ``ConfigError`` for ``byzantine < 0``, ``multi < 1`` or ``max_updates`` outside ``[1, 1024]``."""
        super().__init__(max_updates=max_updates)
        self.byzantine = int_param(self.name, "byzantine", byzantine, low=0)
        self.multi = int_param(self.name, "multi", multi, low=1)
        self.selected: tuple[int, ...] = ()

    def result(self) -> dict[str, np.ndarray]:
        """The chosen delta, or the mean of the ``multi`` chosen deltas (float32).

        Raises:
            AggregationError: nothing was added; ``n <= 2 * byzantine + 2``; or ``multi > n - byzantine``.
        """
        n = self._require_some()
        f, m = self.byzantine, self.multi
        if n <= 2 * f + 2:
            raise AggregationError(f"{self.name}: n={n} deltas cannot tolerate byzantine f={f}; "
                                   f"Krum needs n > 2f + 2 = {2 * f + 2}")
        if m > n - f:
            raise AggregationError(f"{self.name}: multi m={m} is more than n - f = {n} - {f} = {n - f} deltas")
        scores = self.scores()
        chosen = np.argsort(scores, kind="stable")[:m]
        self.selected = tuple(int(i) for i in chosen)
        out: dict[str, np.ndarray] = {}
        for name in self._stack.shapes:
            rows = self._stack.matrix(name)[chosen]
            out[name] = rows[0] if m == 1 else rows.mean(axis=0, dtype=np.float64)
        return self._stack.unflatten(out)

    def scores(self) -> np.ndarray:
        """Each delta's Krum score: the sum of squared distances to its ``n - f - 2`` nearest other deltas."""
        dist = self.squared_distances()
        n = dist.shape[0]
        k = n - self.byzantine - 2
        np.fill_diagonal(dist, np.inf)  # a delta is not its own neighbour
        nearest = np.partition(dist, k - 1, axis=1)[:, :k]
        return nearest.sum(axis=1)

    def squared_distances(self) -> np.ndarray:
        """The ``n x n`` float64 matrix of squared Euclidean distances between the flattened deltas.

        Built from Gram matrices of column blocks, each block centred on its coordinate-wise median first: distances
        do not move with the centre, and centring where the honest deltas cluster (which far-away poisoned ones
        cannot shift) keeps ``|a|^2 + |b|^2 - 2ab`` from cancelling away the small distances between them.
        """
        n = self._stack.count
        gram = np.zeros((n, n), dtype=np.float64)
        for name in self._stack.shapes:
            for _cols, block in self._stack.column_blocks(name):
                x = block.astype(np.float64)
                x -= np.median(x, axis=0)
                gram += x @ x.T
        sq = np.diag(gram).copy()
        dist = sq[:, None] + sq[None, :] - 2.0 * gram
        np.maximum(dist, 0.0, out=dist)
        np.fill_diagonal(dist, 0.0)
        return dist

"""Shared by the robust rules: a bounded store of one round's deltas (their checks are in :mod:`.params`).

FedAvg folds each delta into a running sum, but a robust rule (median, trimmed mean, Krum) must compare every
device's delta with every other's, so it has to keep them all until the round closes: memory is
O(devices x module size) float32. :class:`DeltaStack` keeps them as one ``(rows, size)`` float32 matrix per tensor
(rows grow by doubling) and refuses more than ``max_updates`` deltas, at most :data:`MAX_UPDATES`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import numpy as np

from hffm_core.aggregation.base import HeldCounts
from hffm_core.aggregation.params import check_like_first, check_weight, int_param
from hffm_core.errors import AggregationError

# 1024 devices x a 1M-parameter module is 4 GiB of float32; the cap keeps a fog's memory bounded by config.
MAX_UPDATES = 1024
_FIRST_ROWS = 8
# Median and trimmed mean partition a copy of the column block they work on; this bounds that copy.
_BLOCK_BYTES = 32 << 20


class DeltaStack:
    """The deltas of one module in one round, row ``i`` of each tensor's matrix being the ``i``-th accepted delta.

    The first delta fixes the tensor names and shapes; later ones must match them. A rejected delta leaves the
    stack exactly as it was.
    """

    def __init__(self, *, max_updates: int = MAX_UPDATES) -> None:
        self.max_updates = max_updates
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._rows: dict[str, np.ndarray] = {}
        self._weights: list[float] = []

    @property
    def count(self) -> int:
        return len(self._weights)

    @property
    def total_weight(self) -> float:
        return math.fsum(self._weights)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self._shapes)

    def add(self, delta: Mapping[str, np.ndarray], weight: float) -> None:
        """Store one delta and its weight.

        Raises:
            AggregationError: the stack already holds ``max_updates`` deltas; a weight that is not a finite number
                > 0; an empty delta, tensor names or shapes that differ from the first delta's, a tensor that is
                not a real-valued array, or a value that is NaN/Inf as float32 (a single Inf would poison every
                rule's arithmetic).
        """
        if self.count >= self.max_updates:
            raise AggregationError(f"this round already holds {self.count} deltas for the module; "
                                   f"max_updates={self.max_updates} refuses more")
        value = check_weight(weight)
        flat = self._checked(delta)
        shapes = self._shapes or {name: tuple(delta[name].shape) for name in flat}
        self._reserve(self.count + 1, shapes)
        self._shapes = shapes
        for name, arr in flat.items():
            self._rows[name][self.count] = arr
        self._weights.append(value)

    def _checked(self, delta: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not isinstance(delta, Mapping) or not delta:
            raise AggregationError("a delta must be a non-empty mapping of tensor names to arrays")
        check_like_first(self._shapes, delta)
        flat: dict[str, np.ndarray] = {}
        for name, arr in delta.items():
            if not isinstance(name, str):
                raise AggregationError(f"tensor name {name!r} is not a string")
            if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu":
                raise AggregationError(f"tensor {name!r}: expected a real-valued numpy array, "
                                       f"got {getattr(arr, 'dtype', type(arr).__name__)}")
            with np.errstate(over="ignore"):
                row = arr.astype(np.float32).reshape(-1)
            if not np.isfinite(row).all():
                raise AggregationError(f"tensor {name!r} holds NaN or Inf (as float32)")
            flat[name] = row
        return flat

    def _reserve(self, rows: int, shapes: Mapping[str, tuple[int, ...]]) -> None:
        have = next(iter(self._rows.values())).shape[0] if self._rows else 0
        if rows <= have:
            return
        new = min(self.max_updates, max(_FIRST_ROWS, 2 * have))
        # Build every grown matrix before swapping any in, so a MemoryError leaves the stack as it was.
        grown = {}
        for name, shape in shapes.items():
            grown[name] = np.empty((new, math.prod(shape)), dtype=np.float32)
            if name in self._rows:
                grown[name][:have] = self._rows[name][:have]
        self._rows = grown

    def matrix(self, name: str) -> np.ndarray:
        """The ``(count, size)`` float32 rows of tensor ``name`` (a view; do not write to it)."""
        return self._rows[name][: self.count]

    def column_blocks(self, name: str) -> Iterator[tuple[slice, np.ndarray]]:
        """``(columns, view)`` pairs covering tensor ``name``'s matrix in blocks of about ``_BLOCK_BYTES``."""
        rows = self.matrix(name)
        step = max(1, _BLOCK_BYTES // (4 * max(1, rows.shape[0])))
        for start in range(0, rows.shape[1], step):
            cols = slice(start, min(start + step, rows.shape[1]))
            yield cols, rows[:, cols]

    def unflatten(self, flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Per-tensor flat vectors back in the stored shapes, as float32."""
        return {name: np.asarray(flat[name], dtype=np.float32).reshape(shape) for name, shape in self._shapes.items()}


class StackedAggregator(HeldCounts):
    """An aggregator that keeps the whole round in a :class:`DeltaStack`; subclasses implement :meth:`result`.

    ``total_weight`` reports the sum of the claimed sample counts (the fog forwards it upward) even though the
    robust rules themselves ignore the weights.
    """

    def __init__(self, *, max_updates: int = MAX_UPDATES) -> None:
        self.max_updates = int_param(self.name, "max_updates", max_updates, low=1, high=MAX_UPDATES)
        self._stack = self._tally = DeltaStack(max_updates=self.max_updates)

    def add(self, delta: Mapping[str, np.ndarray], weight: float) -> None:
        """Keep one delta for the round's end.

        Raises:
            AggregationError: see :meth:`DeltaStack.add`; the aggregator is unchanged.
        """
        self._stack.add(delta, weight)

    def _require_some(self) -> int:
        if self._stack.count == 0:
            raise AggregationError(f"{self.name}: no delta was added to this aggregate")
        return self._stack.count

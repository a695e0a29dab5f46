"""Peer averaging: the sample-weighted mean of a D2D group's module deltas, which its relay sends as one update.

Under FedAvg the fog's result is the same as if every member had sent its own delta: the fog weights the relay's
update by the members' total samples, and ``sum_i n_i d_i = (sum_i n_i) * weighted_mean``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from hffm_core.errors import AggregationError

State = Mapping[str, np.ndarray]


def weighted_mean(parts: Sequence[tuple[State, float]]) -> dict[str, np.ndarray]:
    """``sum_i w_i * delta_i / sum_i w_i`` per tensor, summed in float64, returned as float32.

    Raises:
        AggregationError: no parts, a weight that is not a positive finite number, tensors whose names or shapes
            differ between parts, or a non-finite value.
    """
    if not parts:
        raise AggregationError("peer averaging needs at least one delta")
    names = sorted(parts[0][0])
    total = 0.0
    sums = {n: np.zeros(np.shape(parts[0][0][n]), dtype=np.float64) for n in names}
    for i, (delta, weight) in enumerate(parts):
        if not (isinstance(weight, (int, float)) and np.isfinite(weight) and weight > 0):
            raise AggregationError(f"peer delta {i}: weight must be a positive finite number, got {weight!r}")
        if sorted(delta) != names or any(np.shape(delta[n]) != sums[n].shape for n in names):
            raise AggregationError(f"peer delta {i} does not have the tensors of the others")
        for n in names:
            sums[n] += float(weight) * np.asarray(delta[n], dtype=np.float64)
        total += float(weight)
    out = {n: (s / total).astype(np.float32) for n, s in sums.items()}
    if not all(np.isfinite(a).all() for a in out.values()):
        raise AggregationError("the peer average overflows to NaN or Inf")
    return out

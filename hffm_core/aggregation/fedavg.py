"""FedAvg as a running sample-weighted sum: memory O(model), not O(devices).

Deltas of LoRA adapters may come at different ranks (devices with different ``[model] lora_r``): a LoRA factor's
sum then grows with zeros to the largest rank folded in, and a delta counts as zeros in the rank slices it does not
have (HetLoRA's zero-padding, hffm_core/aggregation/ranks.py). With every delta at one rank nothing of that runs:
plain FedAvg, bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from hffm_core.aggregation.base import Aggregator
from hffm_core.aggregation.params import check_like_first, check_weight
from hffm_core.aggregation.ranks import add_ranked, grow
from hffm_core.errors import AggregationError


class FedAvg(Aggregator):
    """sum_i w_i * delta_i / sum_i w_i, accumulated in float64 as each delta arrives (a LoRA factor of a lower rank
    zero-padded to the sum's)."""

    name = "fedavg"

    def __init__(self) -> None:
        self._sum: dict[str, np.ndarray] = {}
        self._weight = 0.0
        self._count = 0

    def add(self, delta: Mapping[str, np.ndarray], weight: float) -> None:
        weight = check_weight(weight)
        check_like_first({name: acc.shape for name, acc in self._sum.items()}, delta, ranked=True)
        grown = {name: grow(name, acc, delta[name]) for name, acc in self._sum.items()
                 if acc.shape != delta[name].shape}  # raises before anything changed
        for name, arr in delta.items():
            acc = grown.get(name, self._sum.get(name))
            if acc is None:
                self._sum[name] = np.multiply(arr, weight, dtype=np.float64)
            elif acc.shape == arr.shape:
                acc += np.multiply(arr, weight, dtype=np.float64)  # in float64, as astype then multiply, one copy
                self._sum[name] = acc
            else:
                add_ranked(acc, name, arr, weight)
                self._sum[name] = acc
        self._weight += float(weight)
        self._count += 1

    def result(self) -> dict[str, np.ndarray]:
        if self._count == 0:
            raise AggregationError("no delta was added to this aggregate")
        return {name: (acc / self._weight).astype(np.float32) for name, acc in self._sum.items()}

    @property
    def total_weight(self) -> float:
        return self._weight

    @property
    def count(self) -> int:
        return self._count

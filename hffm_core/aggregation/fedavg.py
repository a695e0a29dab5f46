"""FedAvg as a running sample-weighted sum: memory O(model), not O(devices).

Deltas of LoRA adapters may come at different ranks (devices with different ``[model] lora_r``): a LoRA factor's
sum then grows to the largest rank folded in, and each rank slice is divided by the weight of the deltas that have
it (hffm_core/aggregation/ranks.py). With every delta at one rank nothing of that runs: plain FedAvg, bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from hffm_core.aggregation.base import Aggregator
from hffm_core.aggregation.params import check_like_first, check_weight
from hffm_core.aggregation.ranks import divide_ranked, fold_ranked
from hffm_core.errors import AggregationError


class FedAvg(Aggregator):
    """sum_i w_i * delta_i / sum_i w_i, accumulated in float64 as each delta arrives; per LoRA rank slice, the sum
    and the weight are over the deltas that have that slice."""

    name = "fedavg"

    def __init__(self) -> None:
        self._sum: dict[str, np.ndarray] = {}
        self._slice_weight: dict[str, np.ndarray] = {}  # only LoRA factors that saw more than one rank
        self._weight = 0.0
        self._count = 0

    def add(self, delta: Mapping[str, np.ndarray], weight: float) -> None:
        weight = check_weight(weight)
        check_like_first({name: acc.shape for name, acc in self._sum.items()}, delta, ranked=True)
        grown = {}
        for name, arr in delta.items():
            acc = self._sum.get(name)
            if acc is not None and (acc.shape != arr.shape or name in self._slice_weight):
                grown[name] = fold_ranked(acc.copy(), self._slice_weight.get(name), self._weight, name, arr, weight)
        for name, arr in delta.items():  # nothing is changed unless every tensor fits
            acc = self._sum.get(name)
            if name in grown:
                self._sum[name], self._slice_weight[name] = grown[name]
            elif acc is None:
                self._sum[name] = arr.astype(np.float64) * weight
            else:
                acc += arr.astype(np.float64) * weight
        self._weight += float(weight)
        self._count += 1

    def result(self) -> dict[str, np.ndarray]:
        if self._count == 0:
            raise AggregationError("no delta was added to this aggregate")
        return {name: (divide_ranked(acc, self._slice_weight[name], name) if name in self._slice_weight
                       else acc / self._weight).astype(np.float32) for name, acc in self._sum.items()}

    @property
    def total_weight(self) -> float:
        return self._weight

    @property
    def count(self) -> int:
        return self._count


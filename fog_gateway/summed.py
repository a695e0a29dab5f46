"""The fog's aggregators, with the running sum of a linear rule exposed to its journal.

FedAvg needs only ``Σ w_i·Δ_i``, ``Σ w_i`` and the count, so the fog journals that sum (float64, O(model)) instead
of every delta; robust rules (median, trimmed mean, Krum) need the deltas themselves and keep journaling them.
:class:`JournaledFedAvg` is FedAvg whose state can be read out and put back bit for bit, so a restarted gateway
resumes the round with the very sum it had committed. With LoRA deltas of mixed ranks a factor's sum is at the
largest rank folded in so far (hffm_core/aggregation/ranks.py), and the journal keeps that shape with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from hffm_core.aggregation import Aggregator, FedAvg, NormBounded, make_aggregator
from hffm_core.errors import AggregationError

State = dict[str, np.ndarray]


class JournaledFedAvg(FedAvg):
    """FedAvg with :meth:`state` and :meth:`load` (its float64 sum, total weight and count)."""

    def state(self) -> tuple[State, float, int]:
        """The running sum (the arrays themselves, not copies), the total weight and the number of deltas."""
        return self._sum, self._weight, self._count

    def load(self, sums: Mapping[str, np.ndarray], weight: float, count: int) -> None:
        """Put back a state :meth:`state` gave. Raises AggregationError for one that cannot be a FedAvg sum."""
        if count < 0 or weight < 0 or (count == 0) != (weight == 0) or any(a.dtype != np.float64
                                                                          for a in sums.values()):
            raise AggregationError(f"not a FedAvg state: {count} deltas, weight {weight}")
        self._sum = {n: np.array(a, dtype=np.float64) for n, a in sums.items()}
        self._weight, self._count = float(weight), int(count)


def make_round_aggregator(name: str, params: Mapping[str, Any]) -> Aggregator:
    """``make_aggregator(name, params)``, with FedAvg (clipped or not) as a :class:`JournaledFedAvg`.

    Raises:
        ConfigError: what ``make_aggregator`` raises.
    """
    agg = make_aggregator(name, params)
    if type(agg) is FedAvg:
        return JournaledFedAvg()
    if isinstance(agg, NormBounded) and type(agg.inner) is FedAvg:
        agg.inner = JournaledFedAvg()
    return agg


def summed(agg: Aggregator) -> JournaledFedAvg | None:
    """The journaled sum behind ``agg``, or None when its rule needs the individual deltas."""
    inner = agg.inner if isinstance(agg, NormBounded) else agg
    return inner if isinstance(inner, JournaledFedAvg) else None

"""The aggregation interface: fold module deltas in as they arrive, read the aggregate when the round closes."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Protocol

import numpy as np


class Aggregator(ABC):
    """Aggregates the deltas of ONE module within one round."""

    name: str = ""

    @abstractmethod
    def add(self, delta: Mapping[str, np.ndarray], weight: float) -> None:
        """Fold one delta in.

        Raises:
            AggregationError: non-positive or non-finite weight, or tensor names/shapes that differ from the first.
        """

    @abstractmethod
    def result(self) -> dict[str, np.ndarray]:
        """The aggregate delta (float32).

        Raises:
            AggregationError: nothing was added.
        """

    @property
    @abstractmethod
    def total_weight(self) -> float: ...

    @property
    @abstractmethod
    def count(self) -> int: ...


class Tally(Protocol):
    """What a round's counts can be read from: an aggregator, or the robust rules' store of deltas."""

    @property
    def total_weight(self) -> float: ...

    @property
    def count(self) -> int: ...


class HeldCounts(Aggregator):
    """An aggregator whose ``total_weight`` and ``count`` are those of the object it holds the round in (``_tally``):
    the aggregator it wraps, or its store of the round's deltas."""

    _tally: Tally

    @property
    def total_weight(self) -> float:
        return self._tally.total_weight

    @property
    def count(self) -> int:
        return self._tally.count

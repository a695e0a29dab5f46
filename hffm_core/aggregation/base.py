"""The aggregation interface: fold module deltas in as they arrive, read the aggregate when the round closes."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

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

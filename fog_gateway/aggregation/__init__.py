"""Aggregation strategies, one per file behind :class:`Aggregator`, in a strict registry."""

from __future__ import annotations

from edge_runtime.errors import ConfigError
from fog_gateway.aggregation.base import Aggregator
from fog_gateway.aggregation.fedavg import FedAvg

AGGREGATORS: dict[str, type[Aggregator]] = {}


def register(cls: type[Aggregator]) -> type[Aggregator]:
    """Add an aggregator under ``cls.name``. Raises ``ValueError`` for an empty or duplicate name."""
    if not cls.name or not cls.name.isidentifier():
        raise ValueError(f"aggregator name {cls.name!r} is not a valid identifier")
    if cls.name in AGGREGATORS:
        raise ValueError(f"aggregator {cls.name!r} is already registered")
    AGGREGATORS[cls.name] = cls
    return cls


def make_aggregator(name: str) -> Aggregator:
    """A fresh aggregator by name. Raises ``ConfigError`` naming the known ones."""
    try:
        return AGGREGATORS[name]()
    except KeyError:
        raise ConfigError(f"unknown aggregator {name!r}; expected one of {sorted(AGGREGATORS)}") from None


register(FedAvg)

__all__ = ["AGGREGATORS", "Aggregator", "FedAvg", "make_aggregator", "register"]

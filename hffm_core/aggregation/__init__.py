"""Aggregation strategies, one per file behind :class:`Aggregator`, in a strict registry.

``make_aggregator(name, params)`` builds one by name with keyword parameters over its constructor's defaults. Every
rule also takes ``norm_bound`` (float, 0 = off): each delta is then clipped to that L2 norm first (norm_bound.py).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from hffm_core.aggregation.base import Aggregator
from hffm_core.aggregation.fedavg import FedAvg
from hffm_core.aggregation.krum import Krum
from hffm_core.aggregation.median import CoordinateMedian
from hffm_core.aggregation.norm_bound import NormBounded
from hffm_core.aggregation.params import float_param, like_default
from hffm_core.aggregation.trimmed_mean import TrimmedMean
from hffm_core.errors import ConfigError

AGGREGATORS: dict[str, type[Aggregator]] = {}


def register(cls: type[Aggregator]) -> type[Aggregator]:
    """Add an aggregator under ``cls.name``. Raises ``ValueError`` for an empty or duplicate name."""
    if not cls.name or not cls.name.isidentifier():
        raise ValueError(f"aggregator name {cls.name!r} is not a valid identifier")
    if cls.name in AGGREGATORS:
        raise ValueError(f"aggregator {cls.name!r} is already registered")
    AGGREGATORS[cls.name] = cls
    return cls


def _defaults(cls: type[Aggregator]) -> dict[str, Any]:
    """The parameters ``cls`` accepts: its constructor's keyword-only arguments with their defaults."""
    signature = inspect.signature(cls)
    return {p.name: p.default for p in signature.parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty}


def make_aggregator(name: str, params: Mapping[str, Any] | None = None) -> Aggregator:
    """A fresh aggregator by name with ``params`` over its defaults (an int is taken where a float is expected).

    Raises:
        ConfigError: an unknown aggregator (naming the known ones), ``params`` that is not a mapping, an unknown
            parameter, a parameter of the wrong type, or a bad value.
    """
    if not isinstance(name, str) or name not in AGGREGATORS:
        raise ConfigError(f"unknown aggregator {name!r}; expected one of {sorted(AGGREGATORS)}")
    defaults = _defaults(AGGREGATORS[name])
    if params is not None and not isinstance(params, Mapping):
        raise ConfigError(f"aggregator {name!r}: parameters must be a mapping, got {type(params).__name__}")
    kwargs = dict(params or {})
    bound = float_param(name, "norm_bound", kwargs.pop("norm_bound", 0.0), low=0.0, note=" (0 = off)")
    unknown = sorted(set(kwargs) - set(defaults), key=str)
    if unknown:
        raise ConfigError(f"aggregator {name!r}: unknown parameter(s) {unknown}; expected some of "
                          f"{sorted([*defaults, 'norm_bound'])}")
    kwargs = {key: like_default(name, key, value, defaults[key]) for key, value in kwargs.items()}
    rule = AGGREGATORS[name](**kwargs)
    return NormBounded(rule, bound) if bound > 0 else rule


for _cls in (FedAvg, CoordinateMedian, TrimmedMean, Krum):
    register(_cls)

__all__ = [
    "AGGREGATORS",
    "Aggregator",
    "CoordinateMedian",
    "FedAvg",
    "Krum",
    "NormBounded",
    "TrimmedMean",
    "make_aggregator",
    "register",
]

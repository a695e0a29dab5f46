"""Whether a device should train this round, from one telemetry sample and its resource thresholds.

:func:`decide` answers ``train``, ``shorten`` (run a fraction of the local work) or ``skip``; :func:`eligible` is
the same judgement for a fog choosing participants from device adverts. Both read the flat samples that
:func:`edge_runtime.telemetry.sample` produces and never raise on what they find in one: a metric that is absent,
not a number or not finite is treated as absent, and an absent metric never triggers anything.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import partial
from typing import Any, Literal

Action = Literal["train", "shorten", "skip"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ResourceThresholds:
    """Limits a device must stay within to train. A limit of 0 disables its check.

    ``shorten_margin`` is relative: a metric within ``margin`` of its limit (above ``max * (1 - margin)``, or below
    ``min * (1 + margin)``) without crossing it shortens the round to ``shorten_fraction`` of the local work.

    Raises:
        ValueError: a field is not a finite number >= 0, ``min_battery_percent`` is above 100,
            ``shorten_margin`` is not in [0, 1) or ``shorten_fraction`` not in (0, 1]; the message names the field.
    """

    min_mem_available_mb: float = 0.0
    max_cpu_temp_c: float = 0.0
    min_battery_percent: float = 0.0  # ignored while plugged in
    max_load_per_cpu: float = 0.0
    shorten_margin: float = 0.1
    shorten_fraction: float = 0.5

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{f.name} must be a number, got {value!r}")
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{f.name} must be a finite number >= 0, got {value!r}")
        if self.min_battery_percent > 100:
            raise ValueError(f"min_battery_percent must be in [0, 100], got {self.min_battery_percent!r}")
        if not self.shorten_margin < 1:
            raise ValueError(f"shorten_margin must be in [0, 1), got {self.shorten_margin!r}")
        if not 0 < self.shorten_fraction <= 1:
            raise ValueError(f"shorten_fraction must be in (0, 1], got {self.shorten_fraction!r}")


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do this round: ``fraction`` of the local epochs/batches to run, and why (empty for ``train``)."""

    action: Action
    fraction: float
    reasons: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.action not in ("train", "shorten", "skip"):
            raise ValueError(f"action must be 'train', 'shorten' or 'skip', got {self.action!r}")
        if not 0 <= self.fraction <= 1:
            raise ValueError(f"fraction must be in [0, 1], got {self.fraction!r}")


TRAIN = Decision("train", 1.0)


def _value(sample: Mapping[str, Any], key: str) -> float | None:
    value = sample.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _load_per_cpu(sample: Mapping[str, Any]) -> float | None:
    load, cpus = _value(sample, "load_1m"), _value(sample, "cpu_count")
    return None if load is None or cpus is None or cpus <= 0 else load / cpus


def _battery(sample: Mapping[str, Any]) -> float | None:
    # Only a plugged-in report excuses a low battery: an unknown power source counts as running on battery.
    return None if _value(sample, "battery_plugged") == 1.0 else _value(sample, "battery_percent")


def _check(
    name: str, value: float | None, limit: float, *, upper: bool, margin: float, digits: int = 1
) -> tuple[str | None, str | None]:
    """``(crossed, near)`` reasons for one metric against one limit; ``(None, None)`` when absent or disabled."""
    if value is None or limit <= 0:
        return None, None
    v, lim, pct = f"{value:.{digits}f}", f"{limit:.{digits}f}", f"{margin * 100:g}%"
    if upper:
        if value > limit:
            return f"{name} {v} > max {lim}", None
        if value > limit * (1 - margin):
            return None, f"{name} {v} within {pct} of max {lim}"
    else:
        if value < limit:
            return f"{name} {v} < min {lim}", None
        if value < limit * (1 + margin):
            return None, f"{name} {v} within {pct} of min {lim}"
    return None, None


def decide(sample: Mapping[str, float], thresholds: ResourceThresholds) -> Decision:
    """Train, shorten or skip this round, given a telemetry sample.

    ``skip`` (fraction 0.0) when any limit is crossed: available memory below its minimum, CPU temperature above
    its maximum, battery below its minimum while not plugged in (an unknown power source counts as unplugged), or
    the 1-minute load per CPU above its maximum. Otherwise ``shorten`` (``thresholds.shorten_fraction``) when any
    metric is within ``shorten_margin`` of its limit, else ``train`` (1.0). The reasons name each metric with its
    value and limit, e.g. ``"cpu_temp_c 83.0 > max 80.0"``.

    A metric absent from the sample (no sensor, a sensor that failed, a non-finite value) never triggers
    anything and adds no reason. That means an absent sensor cannot protect the device: a board whose
    thermometer psutil cannot read will train however hot it runs. Use
    :func:`edge_runtime.telemetry.describe_absent` to show which sensors are missing.
    """
    t, check = thresholds, partial(_check, margin=thresholds.shorten_margin)
    checks = (
        check("mem_available_mb", _value(sample, "mem_available_mb"), t.min_mem_available_mb, upper=False),
        check("cpu_temp_c", _value(sample, "cpu_temp_c"), t.max_cpu_temp_c, upper=True),
        check("battery_percent", _battery(sample), t.min_battery_percent, upper=False),
        check("load_per_cpu", _load_per_cpu(sample), t.max_load_per_cpu, upper=True, digits=2),
    )
    crossed = tuple(reason for reason, _ in checks if reason)
    if crossed:
        return Decision("skip", 0.0, crossed)
    near = tuple(reason for _, reason in checks if reason)
    if near:
        return Decision("shorten", thresholds.shorten_fraction, near)
    return TRAIN


def eligible(sample: Mapping[str, float] | None, thresholds: ResourceThresholds) -> tuple[bool, tuple[str, ...]]:
    """Whether a device may be chosen as a participant, from the telemetry in its advert.

    ``(False, reasons)`` when :func:`decide` would skip; ``(True, ())`` otherwise, including when ``sample`` is
    ``None`` (no telemetry is no evidence against the device) and when it would merely shorten.
    """
    if sample is None:
        return True, ()
    decision = decide(sample, thresholds)
    return (False, decision.reasons) if decision.action == "skip" else (True, ())

"""Train / shorten / skip decisions from telemetry samples, and fog-side eligibility from adverts."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from hffm_core.resources import Decision, ResourceThresholds, decide, eligible

LIMITS = ResourceThresholds(
    min_mem_available_mb=200.0,
    max_cpu_temp_c=80.0,
    min_battery_percent=20.0,
    max_load_per_cpu=2.0,
    shorten_margin=0.1,
    shorten_fraction=0.25,
)
# Comfortably inside every limit.
HEALTHY = {
    "mem_available_mb": 1500.0,
    "cpu_temp_c": 55.0,
    "battery_percent": 90.0,
    "battery_plugged": 0.0,
    "load_1m": 1.0,
    "cpu_count": 4.0,
}


def _with(**changes: float) -> dict[str, float]:
    return {**HEALTHY, **changes}


@pytest.mark.parametrize(
    ("changes", "action", "reason"),
    [
        # memory: skip below the minimum, shorten below min * 1.1
        ({"mem_available_mb": 180.0}, "skip", "mem_available_mb 180.0 < min 200.0"),
        ({"mem_available_mb": 210.0}, "shorten", "mem_available_mb 210.0 within 10% of min 200.0"),
        ({"mem_available_mb": 200.0}, "shorten", "mem_available_mb 200.0 within 10% of min 200.0"),
        ({"mem_available_mb": 221.0}, "train", None),
        # temperature: skip above the maximum, shorten above max * 0.9
        ({"cpu_temp_c": 83.0}, "skip", "cpu_temp_c 83.0 > max 80.0"),
        ({"cpu_temp_c": 75.0}, "shorten", "cpu_temp_c 75.0 within 10% of max 80.0"),
        ({"cpu_temp_c": 80.0}, "shorten", "cpu_temp_c 80.0 within 10% of max 80.0"),
        ({"cpu_temp_c": 71.5}, "train", None),
        # battery: only while unplugged
        ({"battery_percent": 15.0}, "skip", "battery_percent 15.0 < min 20.0"),
        ({"battery_percent": 21.0}, "shorten", "battery_percent 21.0 within 10% of min 20.0"),
        ({"battery_percent": 15.0, "battery_plugged": 1.0}, "train", None),
        ({"battery_percent": 21.0, "battery_plugged": 1.0}, "train", None),
        ({"battery_percent": 25.0}, "train", None),
        # load per CPU: load_1m / cpu_count
        ({"load_1m": 10.0}, "skip", "load_per_cpu 2.50 > max 2.00"),
        ({"load_1m": 7.6}, "shorten", "load_per_cpu 1.90 within 10% of max 2.00"),
        ({"load_1m": 7.0}, "train", None),
    ],
)
def test_each_threshold(changes: dict[str, float], action: str, reason: str | None) -> None:
    decision = decide(_with(**changes), LIMITS)
    assert decision.action == action
    assert decision.fraction == {"train": 1.0, "shorten": 0.25, "skip": 0.0}[action]
    assert decision.reasons == ((reason,) if reason else ())


def test_battery_with_unknown_power_source_counts_as_unplugged() -> None:
    sample = _with(battery_percent=15.0)
    del sample["battery_plugged"]
    assert decide(sample, LIMITS).action == "skip"


def test_skip_lists_every_crossed_limit_and_wins_over_shorten() -> None:
    decision = decide(_with(cpu_temp_c=90.0, mem_available_mb=100.0, load_1m=7.8), LIMITS)
    assert decision == Decision(
        "skip", 0.0, ("mem_available_mb 100.0 < min 200.0", "cpu_temp_c 90.0 > max 80.0")
    )


def test_shorten_lists_every_near_limit() -> None:
    decision = decide(_with(cpu_temp_c=78.0, battery_percent=20.5), LIMITS)
    assert decision.action == "shorten" and decision.fraction == 0.25
    assert decision.reasons == (
        "cpu_temp_c 78.0 within 10% of max 80.0",
        "battery_percent 20.5 within 10% of min 20.0",
    )


def test_healthy_sample_trains() -> None:
    assert decide(HEALTHY, LIMITS) == Decision("train", 1.0, ())


@pytest.mark.parametrize(
    "absent",
    [
        pytest.param(("cpu_temp_c",), id="no-thermometer"),
        pytest.param(("battery_percent", "battery_plugged"), id="no-battery"),
        pytest.param(("mem_available_mb",), id="no-memory"),
        pytest.param(("load_1m",), id="no-load"),
        pytest.param(("cpu_count",), id="no-cpu-count"),
        pytest.param(tuple(HEALTHY), id="empty-sample"),
    ],
)
def test_absent_metrics_never_trigger(absent: tuple[str, ...]) -> None:
    # Every present metric sits well inside its limit; the absent ones must not count as 0 (which would skip on
    # memory and battery) nor produce a reason.
    sample = {k: v for k, v in HEALTHY.items() if k not in absent}
    assert decide(sample, LIMITS) == Decision("train", 1.0, ())


@pytest.mark.parametrize(
    "junk",
    [float("nan"), float("inf"), "hot", None, True],
)
def test_unusable_values_count_as_absent(junk: Any) -> None:
    sample: dict[str, Any] = _with(cpu_temp_c=junk, mem_available_mb=junk)
    assert decide(sample, LIMITS).action == "train"


def test_zero_cpus_cannot_divide() -> None:
    assert decide(_with(load_1m=50.0, cpu_count=0.0), LIMITS).action == "train"


def test_zero_disables_each_check() -> None:
    awful = {
        "mem_available_mb": 1.0,
        "cpu_temp_c": 120.0,
        "battery_percent": 0.0,
        "battery_plugged": 0.0,
        "load_1m": 64.0,
        "cpu_count": 1.0,
    }
    assert decide(awful, ResourceThresholds()) == Decision("train", 1.0, ())
    one_on = ResourceThresholds(max_cpu_temp_c=80.0)
    assert decide(awful, one_on).reasons == ("cpu_temp_c 120.0 > max 80.0",)


def test_zero_margin_never_shortens() -> None:
    limits = dataclasses.replace(LIMITS, shorten_margin=0.0)
    assert decide(_with(cpu_temp_c=80.0, mem_available_mb=200.0), limits).action == "train"
    assert decide(_with(cpu_temp_c=80.1), limits).action == "skip"


def test_shorten_fraction_one_still_reports_why() -> None:
    decision = decide(_with(cpu_temp_c=79.0), dataclasses.replace(LIMITS, shorten_fraction=1.0))
    assert decision == Decision("shorten", 1.0, ("cpu_temp_c 79.0 within 10% of max 80.0",))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("min_mem_available_mb", -1.0),
        ("max_cpu_temp_c", -0.5),
        ("max_cpu_temp_c", float("nan")),
        ("max_load_per_cpu", float("inf")),
        ("min_battery_percent", -5.0),
        ("min_battery_percent", 101.0),
        ("shorten_margin", -0.1),
        ("shorten_margin", 1.0),
        ("shorten_fraction", 0.0),
        ("shorten_fraction", 1.5),
        ("shorten_fraction", -0.5),
        ("max_cpu_temp_c", "80"),
        ("max_cpu_temp_c", True),
    ],
)
def test_invalid_thresholds_are_rejected_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        ResourceThresholds(**{field: value})


def test_thresholds_are_frozen_and_keyword_only() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        LIMITS.max_cpu_temp_c = 90.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        ResourceThresholds(100.0)  # type: ignore[misc]
    assert ResourceThresholds(max_cpu_temp_c=85, min_mem_available_mb=0).max_cpu_temp_c == 85  # ints are fine


@pytest.mark.parametrize(("action", "fraction"), [("train", 1.5), ("train", -0.1), ("nap", 0.5)])
def test_decision_rejects_nonsense(action: Any, fraction: float) -> None:
    with pytest.raises(ValueError):
        Decision(action, fraction)


def test_eligible() -> None:
    assert eligible(None, LIMITS) == (True, ())
    assert eligible({}, LIMITS) == (True, ())
    assert eligible(HEALTHY, LIMITS) == (True, ())
    assert eligible(_with(cpu_temp_c=78.0), LIMITS) == (True, ())  # shortening still takes part
    assert eligible(_with(cpu_temp_c=83.0, battery_percent=10.0), LIMITS) == (
        False,
        ("cpu_temp_c 83.0 > max 80.0", "battery_percent 10.0 < min 20.0"),
    )
    assert eligible(_with(cpu_temp_c=83.0), ResourceThresholds()) == (True, ())


def test_decide_reads_a_real_telemetry_sample() -> None:
    from edge_runtime.telemetry import sample

    real = sample()
    assert decide(real, ResourceThresholds()).action == "train"
    impossible = ResourceThresholds(min_mem_available_mb=real["mem_total_mb"] * 10)
    decision = decide(real, impossible)
    assert decision.action == "skip" and decision.reasons[0].startswith("mem_available_mb ")

"""Device telemetry: one flat ``{name: float}`` sample of CPU, memory, disk, temperature, battery and process.

A sample is cheap (no blocking intervals; a few sysfs reads) and never raises. Every metric is read on its own: a
sensor that is missing, unsupported on this platform or raising leaves its key out of the sample. An absent
sensor is reported as absent, never as zero, so ``cpu_temp_c = 0.0`` cannot hide a missing thermometer and
consumers (:func:`hffm_core.resources.decide`, status displays) can tell "cool" from "unknown".

Sizes are in MiB (``*_mb``), percentages in 0..100, temperatures in degrees Celsius, times in seconds.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import psutil

logger = logging.getLogger(__name__)

MIB = 1024.0 * 1024.0

#: Optional sensors: many devices lack them (no thermometer exposed, mains powered), so a sample may omit them.
OPTIONAL_SENSORS: tuple[str, ...] = ("cpu_temp_c", "battery_percent")

# Readings outside this range come from disabled or broken sensors (Jetson zones reporting -256 or fixed values).
_PLAUSIBLE_C = (-40.0, 150.0)

Reader = Callable[[], Mapping[str, Any]]


def _is_cpu_sensor(name: str) -> bool:
    # Raspberry Pi 'cpu_thermal'; Jetson Nano/TX2 'CPU-therm'; Jetson Orin 'cpu-thermal'.
    return name in ("cpu_thermal", "cpu_therm")


def _is_x86_package(name: str) -> bool:
    return name in ("coretemp", "k10temp", "zenpower")


def _names_cpu(name: str) -> bool:
    return "cpu" in name


def _is_thermal_zone(name: str) -> bool:
    # Jetson 'thermal_zone*', 'soc0-thermal', 'GPU-therm'; ACPI 'acpitz'.
    return "therm" in name or "tz" in name


def _any(name: str) -> bool:
    return True


# Most relevant first; the first tier with a plausible reading wins, and within it the hottest reading counts.
_TEMP_TIERS: tuple[Callable[[str], bool], ...] = (
    _is_cpu_sensor,
    _is_x86_package,
    _names_cpu,
    _is_thermal_zone,
    _any,
)


def pick_cpu_temp(groups: Mapping[str, Iterable[Any]]) -> float | None:
    """The CPU temperature from ``psutil.sensors_temperatures()`` output, or ``None`` when there is none.

    Takes the maximum ``current`` over the most relevant sensor groups: ``cpu_thermal`` (Raspberry Pi, Jetson
    ``CPU-therm``), then ``coretemp``/``k10temp`` (x86), then any group naming the CPU, then thermal zones
    (``*therm*``, ``*tz*``), else every group. Non-finite and implausible readings are ignored.
    """
    readings: dict[str, list[float]] = {}
    for name, entries in groups.items():
        values = [v for v in (_reading(e) for e in entries) if v is not None]
        if values:
            key = str(name).lower().replace("-", "_")
            readings.setdefault(key, []).extend(values)
    for relevant in _TEMP_TIERS:
        chosen = [v for name, values in readings.items() if relevant(name) for v in values]
        if chosen:
            return max(chosen)
    return None


def _reading(entry: Any) -> float | None:
    try:
        value = float(entry.current)
    except (AttributeError, TypeError, ValueError):
        return None
    low, high = _PLAUSIBLE_C
    return value if math.isfinite(value) and low <= value <= high else None


_own: psutil.Process | None = None


def _own_process() -> psutil.Process:
    global _own
    if _own is None or _own.pid != os.getpid():  # re-create after a fork
        _own = psutil.Process()
    return _own


# psutil's non-blocking cpu_percent measures since its previous call and answers 0.0 over a near-empty window;
# samples closer together than this reuse the last figure so the window keeps growing instead.
_CPU_MIN_WINDOW_S = 0.1
_cpu_last: tuple[float, float | None] = (-math.inf, None)  # (monotonic time of the psutil call, its value)


def _cpu_percent() -> Mapping[str, Any]:
    global _cpu_last
    called, value = _cpu_last
    now = time.monotonic()
    if now - called >= _CPU_MIN_WINDOW_S:
        measured = psutil.cpu_percent(interval=None)
        value = None if math.isinf(called) else measured  # the very first call only starts the measurement
        _cpu_last = (now, value)
    return {"cpu_percent": value}  # None (omitted) until a window has been measured


def _load() -> Mapping[str, Any]:
    return {"load_1m": os.getloadavg()[0]}


def _cpu_count() -> Mapping[str, Any]:
    return {"cpu_count": psutil.cpu_count(logical=True)}  # None when unknown: omitted


def _memory() -> Mapping[str, Any]:
    mem = psutil.virtual_memory()
    out = {"mem_total_mb": mem.total / MIB, "mem_available_mb": mem.available / MIB}
    if mem.total > 0:
        out["mem_free_percent"] = mem.available / mem.total * 100.0
    return out


def _disk(path: str | Path) -> Mapping[str, Any]:
    usage = psutil.disk_usage(str(path))
    out = {"disk_free_mb": usage.free / MIB}
    if usage.total > 0:
        out["disk_free_percent"] = usage.free / usage.total * 100.0
    return out


def _cpu_temp() -> Mapping[str, Any]:
    read = getattr(psutil, "sensors_temperatures", None)  # absent on some platforms
    groups = read() if read is not None else None
    return {"cpu_temp_c": pick_cpu_temp(groups)} if groups else {}


def _battery() -> Mapping[str, Any]:
    read = getattr(psutil, "sensors_battery", None)
    battery = read() if read is not None else None
    if battery is None:
        return {}
    plugged = battery.power_plugged  # None when the OS cannot tell: omitted
    return {
        "battery_percent": battery.percent,
        "battery_plugged": None if plugged is None else (1.0 if plugged else 0.0),
    }


def _rss(process: psutil.Process | None) -> Mapping[str, Any]:
    return {"rss_mb": (process if process is not None else _own_process()).memory_info().rss / MIB}


def _uptime(process: psutil.Process | None) -> Mapping[str, Any]:
    process = process if process is not None else _own_process()
    if not process.is_running():  # psutil caches create_time: it would go on answering for a dead process
        return {}
    return {"uptime_s": max(0.0, time.time() - process.create_time())}


def sample(disk_path: str | Path = "/", *, process: psutil.Process | None = None) -> dict[str, float]:
    """One telemetry sample of this device; a key is omitted when its metric is absent or could not be read.

    Keys: ``cpu_percent`` (since the previous call, see below), ``load_1m``, ``cpu_count``, ``mem_total_mb``,
    ``mem_available_mb``, ``mem_free_percent``, ``disk_free_mb`` and ``disk_free_percent`` (of ``disk_path``),
    ``cpu_temp_c`` (see :func:`pick_cpu_temp`), ``battery_percent`` and ``battery_plugged`` (1.0/0.0; only with
    a battery), ``rss_mb`` and ``uptime_s`` of ``process`` (default: this process).

    ``cpu_percent`` is psutil's non-blocking figure: CPU use since the previous measurement, which this module
    starts on import. Samples less than 0.1 s apart repeat the last figure; before any window has been measured
    (a sample within 0.1 s of import) the key is omitted rather than reported as a meaningless 0.0.

    Never raises: a failing sensor is logged at DEBUG and its keys are left out.
    """
    readers: tuple[Reader, ...] = (
        _cpu_percent,
        _load,
        _cpu_count,
        _memory,
        partial(_disk, disk_path),
        _cpu_temp,
        _battery,
        partial(_rss, process),
        partial(_uptime, process),
    )
    out: dict[str, float] = {}
    for read in readers:
        try:
            values = {k: float(v) for k, v in read().items() if v is not None}
        except Exception as exc:  # noqa: BLE001 - a broken sensor must never stop telemetry or the agent
            name = getattr(read, "func", read).__name__.lstrip("_")
            logger.debug("telemetry: %s unavailable: %r", name, exc)
            continue
        out.update((k, v) for k, v in values.items() if math.isfinite(v))
    return out


def describe_absent(sample: Mapping[str, float]) -> list[str]:
    """Names of the optional sensors (:data:`OPTIONAL_SENSORS`) that ``sample`` lacks, for status displays."""
    return [name for name in OPTIONAL_SENSORS if name not in sample]


try:  # start the CPU measurement now, so the first sample has a window to report
    _cpu_percent()
except Exception:  # noqa: BLE001 - importing telemetry must not fail on an odd platform
    pass

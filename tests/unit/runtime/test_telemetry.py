"""Telemetry samples: real readings on this machine, simulated sensors for a Pi, a Jetson, an x86 box and failures."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path
from typing import Any, cast

import psutil
import pytest

from edge_runtime import telemetry
from edge_runtime.telemetry import describe_absent, pick_cpu_temp, sample

# The same fields as psutil's own named tuples; built here so the tests do not import psutil._common.
Temp = namedtuple("Temp", "label current high critical")
Battery = namedtuple("Battery", "percent secsleft power_plugged")

ALWAYS = {
    "cpu_percent",
    "load_1m",
    "cpu_count",
    "mem_total_mb",
    "mem_available_mb",
    "mem_free_percent",
    "disk_free_mb",
    "disk_free_percent",
    "rss_mb",
    "uptime_s",
}

PI = {"cpu_thermal": [Temp("", 71.5, None, None)], "rp1_adc": [Temp("", 38.0, None, None)]}
JETSON_NANO = {
    "PMIC-Die": [Temp("", 100.0, None, None)],  # a fixed reading on the Nano: must not win
    "GPU-therm": [Temp("", 49.0, None, None)],
    "CPU-therm": [Temp("", 52.5, None, None)],
    "thermal-fan-est": [Temp("", 50.0, None, None)],
}
JETSON_ZONES = {
    "PMIC-Die": [Temp("", 100.0, None, None)],
    "thermal_zone0": [Temp("", 44.0, None, None)],
    "thermal_zone1": [Temp("", 57.0, None, None)],
}
X86 = {
    "acpitz": [Temp("", 27.8, 105.0, 105.0)],
    "nvme": [Temp("Composite", 41.0, 84.0, 89.0)],
    "coretemp": [
        Temp("Package id 0", 66.0, 100.0, 100.0),
        Temp("Core 0", 61.0, 100.0, 100.0),
        Temp("Core 1", 68.0, 100.0, 100.0),
        Temp("Core 2", 59.0, 100.0, 100.0),
    ],
}
AMD = {"k10temp": [Temp("Tctl", 74.25, None, None), Temp("Tccd1", 70.0, None, None)], "amdgpu": [Temp("", 90, 0, 0)]}
OTHER = {"nvme": [Temp("Composite", 38.0, None, None)], "iwlwifi_1": [Temp("", 45.0, None, None)]}


@pytest.fixture
def measured(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make sure a CPU window has been measured, however soon after import the test runs."""
    monkeypatch.setattr(telemetry, "_CPU_MIN_WINDOW_S", 0.0)
    telemetry.sample()


def _patch_sensors(monkeypatch: pytest.MonkeyPatch, temps: Any = None, battery: Any = None) -> None:
    monkeypatch.setattr(psutil, "sensors_temperatures", lambda *a, **k: temps if temps is not None else {})
    monkeypatch.setattr(psutil, "sensors_battery", lambda: battery)


def _raise(exc: BaseException) -> Any:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise exc

    return fail


def test_real_sample_has_the_always_present_keys_in_sane_ranges(measured: None, tmp_path: Path) -> None:
    s = sample(tmp_path)
    assert ALWAYS <= set(s), ALWAYS - set(s)
    assert all(type(v) is float and math.isfinite(v) for v in s.values()), s
    assert 0 <= s["cpu_percent"] <= 100
    assert s["load_1m"] >= 0
    assert s["cpu_count"] >= 1 and s["cpu_count"] == int(s["cpu_count"])
    assert 0 < s["mem_available_mb"] <= s["mem_total_mb"]
    assert 0 < s["mem_free_percent"] <= 100
    assert s["disk_free_mb"] > 0 and 0 < s["disk_free_percent"] <= 100
    assert 1 < s["rss_mb"] < s["mem_total_mb"]
    assert 0 <= s["uptime_s"] < 7 * 24 * 3600


def test_absent_sensors_are_omitted_here_not_zero(measured: None) -> None:
    # FINDINGS: psutil reports no temperatures and no battery on these machines.
    if psutil.sensors_temperatures() or psutil.sensors_battery() is not None:
        pytest.skip("this machine has a thermometer or a battery")
    s = sample()
    assert not {"cpu_temp_c", "battery_percent", "battery_plugged"} & set(s)
    assert describe_absent(s) == ["cpu_temp_c", "battery_percent"]


def test_sample_is_cheap_and_repeatable() -> None:
    samples = [sample() for _ in range(50)]
    assert all({"mem_total_mb", "uptime_s"} <= set(s) for s in samples)


def test_back_to_back_samples_repeat_cpu_percent_instead_of_a_fake_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(telemetry, "_cpu_last", (time.monotonic() - 1.0, 42.0))
    monkeypatch.setattr(psutil, "cpu_percent", lambda interval=None: 7.0)
    assert sample()["cpu_percent"] == 7.0  # a window has passed: measured
    assert sample()["cpu_percent"] == 7.0  # too soon: the last figure, not psutil's 0.0 over nothing
    monkeypatch.setattr(psutil, "cpu_percent", lambda interval=None: 0.0)
    assert sample()["cpu_percent"] == 7.0


def test_cpu_percent_is_omitted_before_any_window_was_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(telemetry, "_cpu_last", (-math.inf, None))
    assert "cpu_percent" not in sample()  # this call only started psutil's measurement
    monkeypatch.setattr(telemetry, "_CPU_MIN_WINDOW_S", 0.0)
    assert 0 <= sample()["cpu_percent"] <= 100


@pytest.mark.parametrize(
    ("temps", "expected"),
    [
        pytest.param(PI, 71.5, id="raspberry-pi-cpu_thermal"),
        pytest.param(JETSON_NANO, 52.5, id="jetson-CPU-therm"),
        pytest.param({"cpu-thermal": [Temp("", 48.2, None, None)], "tj-thermal": [Temp("", 49.0, None, None)]},
                     48.2, id="jetson-orin-cpu-thermal"),
        pytest.param(JETSON_ZONES, 57.0, id="jetson-thermal_zones"),
        pytest.param(X86, 68.0, id="x86-coretemp-hottest-core"),
        pytest.param(AMD, 74.25, id="x86-k10temp"),
        pytest.param(OTHER, 45.0, id="no-known-group-max-of-all"),
    ],
)
def test_cpu_temp_from_the_most_relevant_group(
    monkeypatch: pytest.MonkeyPatch, temps: dict[str, list[Temp]], expected: float
) -> None:
    _patch_sensors(monkeypatch, temps)
    s = sample()
    assert s["cpu_temp_c"] == expected
    assert describe_absent(s) == ["battery_percent"]


def test_implausible_and_missing_readings_are_ignored() -> None:
    groups = {
        "cpu_thermal": [Temp("", float("nan"), None, None), Temp("", -256.0, None, None)],
        "thermal_zone0": [Temp("", None, None, None), Temp("", 51.0, None, None)],
        "broken": [object()],
    }
    assert pick_cpu_temp(groups) == 51.0  # the Pi group had nothing usable: next tier
    assert pick_cpu_temp({"cpu_thermal": [Temp("", float("inf"), None, None)]}) is None
    assert pick_cpu_temp({}) is None


@pytest.mark.parametrize(
    "temps",
    [
        pytest.param(_raise(OSError(5, "Input/output error")), id="sysfs-io-error"),
        pytest.param(_raise(RuntimeError("driver gone")), id="unexpected-error"),
        pytest.param(lambda *a, **k: {"cpu_thermal": [Temp("", float("nan"), None, None)]}, id="nan-reading"),
        pytest.param(lambda *a, **k: {"cpu_thermal": []}, id="empty-group"),
    ],
)
def test_a_failing_thermometer_is_omitted_and_never_raises(monkeypatch: pytest.MonkeyPatch, temps: Any) -> None:
    monkeypatch.setattr(psutil, "sensors_temperatures", temps)
    s = sample()
    assert "cpu_temp_c" not in s and "mem_total_mb" in s


def test_platform_without_sensor_functions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(psutil, "sensors_temperatures", raising=False)
    monkeypatch.delattr(psutil, "sensors_battery", raising=False)
    s = sample()
    assert describe_absent(s) == ["cpu_temp_c", "battery_percent"] and "mem_total_mb" in s


def test_battery_low_and_unplugged(monkeypatch: pytest.MonkeyPatch) -> None:
    _patch_sensors(monkeypatch, PI, Battery(15, 1800, False))
    s = sample()
    assert s["battery_percent"] == 15.0 and s["battery_plugged"] == 0.0
    assert type(s["battery_percent"]) is float
    assert describe_absent(s) == []


def test_battery_plugged_and_unknown_power_source(monkeypatch: pytest.MonkeyPatch) -> None:
    _patch_sensors(monkeypatch, battery=Battery(99.5, psutil.POWER_TIME_UNLIMITED, True))
    assert sample()["battery_plugged"] == 1.0
    _patch_sensors(monkeypatch, battery=Battery(80.0, psutil.POWER_TIME_UNKNOWN, None))
    s = sample()
    assert s["battery_percent"] == 80.0 and "battery_plugged" not in s


def test_a_failing_battery_is_omitted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psutil, "sensors_battery", _raise(FileNotFoundError("/sys/class/power_supply")))
    s = sample()
    assert "battery_percent" not in s and "battery_plugged" not in s and "rss_mb" in s


def test_other_failures_only_drop_their_own_keys(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(os, "getloadavg", _raise(OSError("no load average")))
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: None)
    s = sample(tmp_path / "missing")
    assert not {"load_1m", "cpu_count", "disk_free_mb", "disk_free_percent"} & set(s)
    assert {"mem_total_mb", "rss_mb", "uptime_s"} <= set(s)


def test_memory_failure_is_omitted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psutil, "virtual_memory", _raise(RuntimeError("no /proc/meminfo")))
    s = sample()
    assert not {"mem_total_mb", "mem_available_mb", "mem_free_percent"} & set(s) and "disk_free_mb" in s


def test_another_process_and_a_vanished_one() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        proc = psutil.Process(child.pid)
        s = sample(process=proc)
        assert s["rss_mb"] > 0 and s["uptime_s"] >= 0
    finally:
        child.kill()
        child.wait()
    s = sample(process=proc)  # gone: NoSuchProcess is an absent metric, not an error
    assert "rss_mb" not in s and "uptime_s" not in s and "mem_total_mb" in s


def test_access_denied_process_is_omitted() -> None:
    class Denied:
        pid = 1

        def is_running(self) -> bool:
            return True

        def memory_info(self) -> Any:
            raise psutil.AccessDenied(1)

        def create_time(self) -> float:
            raise psutil.AccessDenied(1)

    s = sample(process=cast(psutil.Process, Denied()))
    assert "rss_mb" not in s and "uptime_s" not in s


def test_describe_absent() -> None:
    assert describe_absent({}) == ["cpu_temp_c", "battery_percent"]
    assert describe_absent({"cpu_temp_c": 50.0}) == ["battery_percent"]
    assert describe_absent({"cpu_temp_c": 50.0, "battery_percent": 0.0}) == []  # an empty battery is present

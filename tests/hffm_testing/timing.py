"""Deadlines that scale with how loaded this machine is, instead of fixed numbers raised until a slow run passes.

``slowdown`` (a fixture in tests/conftest.py) is :func:`hffm_lab.faults.calibrate.cpu_slowdown`: 1.0 on an idle
box, about 1.5-3 beside two CPU busy loops on two cores. The load on a shared box changes while a long suite runs
(a suite that starts idle may end beside somebody's benchmark), so it is measured again when the last measurement
is older than :data:`REMEASURE_S`, and a deadline uses the largest of the session's first figure and the recent ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from hffm_lab.faults.calibrate import cpu_slowdown

REMEASURE_S = 30.0
RECENT = 4  # measurements that count as recent (about two minutes)
_MEASURED: list[float] = []  # every figure of this session, in order
_MEASURED_AT: list[float] = []


def session_slowdown() -> float:
    """The slowdown to scale a deadline by now: max(the session's first figure, the last few), re-measured when the
    last figure is older than :data:`REMEASURE_S` (a measurement costs ~0.2 s idle)."""
    now = time.monotonic()
    if not _MEASURED or now - _MEASURED_AT[-1] > REMEASURE_S:
        _MEASURED.append(cpu_slowdown())
        _MEASURED_AT.append(now)
    return max(_MEASURED[0], *_MEASURED[-RECENT:])


def measured_range() -> tuple[float, float] | None:
    """The smallest and largest figure measured this session (None before the first)."""
    return (min(_MEASURED), max(_MEASURED)) if _MEASURED else None


def wait_until(condition: Callable[[], bool], *, timeout_s: float, what: str, poll_s: float = 0.02) -> float:
    """Poll ``condition`` until it holds; returns the seconds it took. Fails the test with ``what`` after
    ``timeout_s`` (already scaled by the caller)."""
    import pytest

    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"{what}: not within {timeout_s:.1f} s")
        time.sleep(poll_s)
    return time.monotonic() - started

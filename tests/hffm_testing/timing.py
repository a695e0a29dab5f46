"""Deadlines that scale with how loaded this machine is, instead of fixed numbers raised until a slow run passes.

``slowdown`` (a session fixture in tests/conftest.py) is :func:`hffm_lab.faults.calibrate.cpu_slowdown`,
measured once per session: 1.0 on an idle box, about 1.5-3 beside two CPU busy loops on two cores.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from hffm_lab.faults.calibrate import cpu_slowdown

_MEASURED: list[float] = []


def session_slowdown() -> float:
    """The slowdown measured at the first call of the session (then reused)."""
    if not _MEASURED:
        _MEASURED.append(cpu_slowdown())
    return _MEASURED[0]


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

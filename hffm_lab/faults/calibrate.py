"""How much slower this machine runs right now than the reference box: deadlines of fault runs scale with it.

:func:`cpu_slowdown` times a fixed pure-Python workload (a few times, taking the median, so that a single lucky
slice does not hide a loaded CPU) and divides by :data:`REFERENCE_S`, the same workload's median on an idle 2-core
x86-64 box. Waits are then multiplied by the factor instead of being raised blindly.
"""

from __future__ import annotations

import statistics
import time

REFERENCE_S = 0.024  # median of _work() on an idle 2-core x86-64 Debian 12 box, Python 3.11
MAX_SLOWDOWN = 10.0


def _work() -> float:
    started = time.perf_counter()
    total = 0
    for i in range(300_000):
        total += i * i % 7
    return time.perf_counter() - started


def cpu_slowdown(samples: int = 7) -> float:
    """This machine's slowdown against the reference, between 1 and :data:`MAX_SLOWDOWN`."""
    median = statistics.median(_work() for _ in range(max(1, samples)))
    return round(min(MAX_SLOWDOWN, max(1.0, median / REFERENCE_S)), 2)

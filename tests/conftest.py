"""Session-wide fixtures shared by every test folder."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hffm_testing.timing import measured_range, session_slowdown

# Tier processes (hffm_lab/demo/processes.py) fork from a warm launcher that imported torch and peft once per pytest
# worker, instead of paying ~6 CPU-s of imports each (hffm_lab/launcher.py; docs/testing.md). HFFM_LAB_LAUNCHER=exec
# runs the suite with a fresh interpreter per tier process.
os.environ.setdefault("HFFM_LAB_LAUNCHER", "fork")

_WORKER_RANGES: list[tuple[float, float]] = []  # what each pytest-xdist worker measured (sent at its end)


@pytest.fixture
def slowdown() -> float:
    """How much slower this machine runs now than the idle reference box (>= 1): multiply deadlines by it.
    Taken when the test starts (re-measured at most every 30 s), so a suite that ends under load scales too."""
    return session_slowdown()


def pytest_report_header(config: pytest.Config) -> str:
    """Say, at the top of every run, how loaded the machine was (the factor the fault tests' deadlines use)."""
    return f"hffm: CPU slowdown x{session_slowdown()} against the idle reference box (fault-test deadlines scale)"


def pytest_sessionfinish(session: pytest.Session) -> None:
    """A pytest-xdist worker sends the range it measured to the controller."""
    workeroutput: dict[str, Any] | None = getattr(session.config, "workeroutput", None)
    if workeroutput is not None and measured_range() is not None:
        workeroutput["hffm_slowdown"] = list(measured_range() or ())


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    low_high = getattr(node, "workeroutput", {}).get("hffm_slowdown")
    if low_high:
        _WORKER_RANGES.append((float(low_high[0]), float(low_high[1])))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Repeat the factor at the end (``-q`` hides the header): the range measured while the tests ran."""
    ranges = [*_WORKER_RANGES, *([r] if (r := measured_range()) else [])]
    if ranges:
        low, high = min(r[0] for r in ranges), max(r[1] for r in ranges)
        terminalreporter.write_line(f"hffm: deadlines scaled with the measured CPU slowdown, x{low}-x{high} "
                                    "during this run")

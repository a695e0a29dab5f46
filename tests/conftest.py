"""Session-wide fixtures shared by every test folder."""

from __future__ import annotations

import pytest
from hffm_testing.timing import _MEASURED, session_slowdown


@pytest.fixture(scope="session")
def slowdown() -> float:
    """How much slower this machine runs now than the idle reference box (>= 1): multiply deadlines by it."""
    return session_slowdown()


def pytest_report_header(config: pytest.Config) -> str:
    """Say, at the top of every run, how loaded the machine was (the factor the fault tests' deadlines use)."""
    return f"hffm: CPU slowdown x{session_slowdown()} against the idle reference box (fault-test deadlines scale)"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Repeat the factor at the end (``-q`` hides the header), when a test used it."""
    if _MEASURED:
        terminalreporter.write_line(f"hffm: fault-test deadlines were scaled by x{_MEASURED[0]} (measured CPU slowdown)")

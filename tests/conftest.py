"""Session-wide fixtures shared by every test folder."""

from __future__ import annotations

import pytest
from hffm_testing.timing import session_slowdown


@pytest.fixture(scope="session")
def slowdown() -> float:
    """How much slower this machine runs now than the idle reference box (>= 1): multiply deadlines by it."""
    return session_slowdown()


def pytest_report_header(config: pytest.Config) -> str:
    """Say, at the top of every run, how loaded the machine was (the factor the fault tests' deadlines use)."""
    return f"hffm: CPU slowdown x{session_slowdown()} against the idle reference box (fault-test deadlines scale)"

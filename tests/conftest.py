"""Session-wide fixtures shared by every test folder."""

from __future__ import annotations

import pytest
from hffm_testing.timing import session_slowdown


@pytest.fixture(scope="session")
def slowdown() -> float:
    """How much slower this machine runs now than the idle reference box (>= 1): multiply deadlines by it."""
    return session_slowdown()

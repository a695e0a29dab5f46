"""A fault row passes only when nothing was lost, duplicated, left unproduced or unrecovered, and no process ended
unexpectedly; the negative control passes only when it saw a loss (hffm_lab/faults/verdict.py)."""

from __future__ import annotations

import pytest

from hffm_lab.faults.verdict import failures, negative_failures

GOOD = {"planned": 10, "produced": 10, "applied": 10, "lost": 0, "duplicates_applied": 0, "recovery_s": 1.2,
        "process_exits": []}


def test_a_clean_row_passes() -> None:
    assert failures(GOOD) == []
    assert failures({**GOOD, "recovery_s": None}, expect_recovery=False) == []


@pytest.mark.parametrize(("change", "reason"), [
    ({"process_exits": ["fog-1: exited with code 4"]}, "process exits: fog-1: exited with code 4"),
    ({"process_exits": ["cloud: still running at the end"]}, "process exits: cloud: still running at the end"),
    ({"produced": 0, "applied": 0}, "produced 0 < planned 10"),
    ({"lost": 3}, "lost 3"),
    ({"duplicates_applied": 1}, "1 duplicates applied"),
    ({"recovery_s": None}, "never recovered"),
    ({"error": "fog-1 never became ready"}, "error: fog-1 never became ready"),
])
def test_each_problem_fails_the_row(change: dict, reason: str) -> None:  # type: ignore[type-arg]
    assert reason in failures({**GOOD, **change})


def test_a_fault_that_produced_nothing_is_not_a_pass() -> None:
    assert failures({"planned": 400, "produced": 0, "applied": 0, "lost": 0, "recovery_s": 0.0})


def test_the_negative_control_must_lose_and_must_not_err() -> None:
    assert negative_failures({"produced": 400, "lost": 150}) == []
    assert negative_failures({"produced": 400, "lost": 0})
    assert negative_failures({"error": "broker did not start", "lost": 0, "produced": 0})
    assert negative_failures({"produced": 400, "lost": 150, "process_exits": ["devices:fog-0: exited with code 4"]})

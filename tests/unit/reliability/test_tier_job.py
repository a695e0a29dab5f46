"""The fault harness tells a planned kill from an unexpected exit (hffm_lab/faults/tier_job.py)."""

from __future__ import annotations

import sys
from pathlib import Path

from hffm_lab.demo.processes import TierProcess
from hffm_lab.faults.tier_job import Started


def _run(tmp_path: Path, code: str) -> TierProcess:
    proc = TierProcess("t", "edge", tmp_path / "none.toml", tmp_path / "t.log", time_limit_s=5)
    proc.argv = [sys.executable, "-c", code]
    proc.start()
    return proc


def test_exit_codes_and_signals(tmp_path: Path) -> None:
    ok = _run(tmp_path, "pass")
    bad = _run(tmp_path, "raise SystemExit(4)")
    for p in (ok, bad):
        assert p.proc is not None
        p.proc.wait(timeout=30)
    assert Started("a", ok).unexpected_exit() is None
    assert Started("b", bad).unexpected_exit() == "b: exited with code 4"


def test_only_the_harness_sigkill_is_planned(tmp_path: Path) -> None:
    planned, unplanned, alive = (_run(tmp_path, "import time; time.sleep(60)") for _ in range(3))
    try:
        for p in (planned, unplanned):
            assert p.proc is not None
            p.proc.kill()
            p.proc.wait(timeout=10)
        assert Started("p", planned, killed=True).unexpected_exit() is None
        assert Started("u", unplanned).unexpected_exit() == "u: killed by signal 9 (not sent by the harness)"
        assert Started("r", alive).unexpected_exit() == "r: still running at the end"
    finally:
        alive.stop()

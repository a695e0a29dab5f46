"""Tier processes started by the demo (and by integration tests): logs to files, stopped by the PID we started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TypeVar

from hffm_core.errors import HffmError
from hffm_lab import launcher
from hffm_lab.launcher import TIER_ENV, ForkedProcess

_Harness = TypeVar("_Harness", bound=AbstractContextManager)
_HFFM = [sys.executable, "-m", "hffm_cli.main"]


def started(harness: _Harness, start: Callable[[], None]) -> _Harness:
    """``harness.__enter__``'s body: run ``start``; if it fails (or is interrupted), stop what it started with
    ``harness.__exit__()`` and raise again. Returns ``harness``."""
    try:
        start()
    except BaseException:
        harness.__exit__(None, None, None)
        raise
    return harness


class TierProcess:
    """One ``hffm <tier> run --config ...`` child process."""

    def __init__(self, name: str, tier: str, config: Path, log_path: Path, *, time_limit_s: float,
                 log_level: str = "info") -> None:
        self.name = name
        self.log_path = log_path
        self.argv = [*_HFFM, tier, "run", "--config", str(config),
                     "--time-limit", str(time_limit_s), "--log-level", log_level]
        self.proc: subprocess.Popen[bytes] | ForkedProcess | None = None

    def start(self) -> None:
        """A fresh interpreter, or a fork of the warm launcher with ``HFFM_LAB_LAUNCHER=fork``
        (hffm_lab/launcher.py): the same entry point, argv, environment and log either way."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, **TIER_ENV)
        if self.argv[:3] == _HFFM and launcher.wanted():  # the hffm command (not an argv a test put there)
            self.proc = launcher.Launcher.get().spawn(self.argv[3:], self.log_path, env)
            return
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=env)

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM our own child, then SIGKILL if it does not exit in ``timeout`` seconds. Idempotent."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class ProcessGroup:
    """Every process of a run; stops them all on exit, whatever happened."""

    def __init__(self) -> None:
        self.procs: list[TierProcess] = []

    def add(self, proc: TierProcess) -> TierProcess:
        self.procs.append(proc)
        proc.start()
        return proc

    def failed(self) -> TierProcess | None:
        """The first process that exited with a non-zero code, if any."""
        return next((p for p in self.procs if p.returncode not in (None, 0)), None)

    def all_exited(self) -> bool:
        return all(p.returncode is not None for p in self.procs)

    def wait(self, timeout_s: float) -> None:
        """Wait (bounded) for every process to exit cleanly.

        Raises:
            HffmError: a process failed (its log tail is in the message) or the time ran out.
        """
        end = time.monotonic() + timeout_s
        while not self.all_exited():
            bad = self.failed()
            if bad is not None:
                raise HffmError(f"{bad.name} exited with code {bad.returncode}; log {bad.log_path}:\n"
                                f"{bad.log_tail()}")
            if time.monotonic() > end:
                alive = [p.name for p in self.procs if p.returncode is None]
                raise HffmError(f"processes still running after {timeout_s:.0f} s: {alive}")
            time.sleep(0.2)
        bad = self.failed()
        if bad is not None:
            raise HffmError(f"{bad.name} exited with code {bad.returncode}; log {bad.log_path}:\n{bad.log_tail()}")

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

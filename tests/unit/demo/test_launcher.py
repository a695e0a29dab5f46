"""The warm launcher (hffm_lab/launcher.py): a forked tier process behaves as the exec'd ``hffm`` does (exit code,
error line, log), is this process's own child (waited for, killed by PID), and bad settings are named."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from broker_config.process import free_port
from hffm_core.errors import HffmError
from hffm_lab import launcher
from hffm_lab.launcher import TIER_ENV, Launcher

HFFM = Path(sys.executable).parent / "hffm"
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the fork launcher needs Linux")


def _spawn(argv: list[str], log: Path) -> launcher.ForkedProcess:
    return Launcher.get().spawn(argv, log, dict(os.environ, **TIER_ENV))


def test_a_bad_config_gives_the_same_exit_code_and_error_line_as_the_execd_command(tmp_path: Path) -> None:
    argv = ["edge", "run", "--config", str(tmp_path / "missing.toml")]
    execd = subprocess.run([str(HFFM), *argv], capture_output=True, text=True, timeout=120, check=False)
    forked = _spawn(argv, tmp_path / "forked.log")
    assert forked.wait(timeout=120) == execd.returncode != 0
    error = [line for line in execd.stderr.splitlines() if line.startswith("hffm: error:")]
    assert error and error[0] in (tmp_path / "forked.log").read_text()


def test_help_exits_zero_and_lands_in_the_log(tmp_path: Path) -> None:
    proc = _spawn(["fog", "run", "--help"], tmp_path / "help.log")
    assert proc.wait(timeout=120) == 0
    assert "Usage: hffm fog run" in (tmp_path / "help.log").read_text()


def test_the_process_is_our_own_child_and_dies_by_its_pid(tmp_path: Path) -> None:
    # A dashboard whose broker is not there keeps retrying its first connect (15 s): alive long enough to kill.
    proc = _spawn(["dashboard", "--port", str(free_port()), "--listen", f"127.0.0.1:{free_port()}"],
                  tmp_path / "dash.log")
    assert psutil.Process(proc.pid).ppid() == os.getpid()
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=0.2)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert proc.poll() == -signal.SIGKILL  # stays reaped


@pytest.mark.parametrize("value", ["spawn", "forkserver", "1"])
def test_an_unknown_launcher_setting_is_named(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(launcher.ENV_VAR, value)
    with pytest.raises(HffmError, match="HFFM_LAB_LAUNCHER must be 'exec' or 'fork'"):
        launcher.wanted()


@pytest.mark.parametrize(("value", "fork"), [("fork", True), ("FORK", True), ("exec", False), ("", False)])
def test_known_settings(monkeypatch: pytest.MonkeyPatch, value: str, fork: bool) -> None:
    monkeypatch.setenv(launcher.ENV_VAR, value)
    assert launcher.wanted() is fork

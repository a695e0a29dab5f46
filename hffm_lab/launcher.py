"""A warm launcher for the lab's tier processes: ``HFFM_LAB_LAUNCHER=fork`` (the test suite sets it).

Every ``hffm edge|cloud run`` process starts by importing torch, transformers and peft: about 6 CPU-seconds on the
2-core dev box, two thirds of what a tiny-backbone device spends in a whole test job. With this launcher one
process per harness (a pytest worker, a demo) imports them once and forks each tier process from there: the child
is a process of its own (its own PID, log file, environment and exit code; killed, stopped and waited for like any
other child) that runs the very entry point of the ``hffm`` command (its console script) with the same argv.
Only the ``exec`` of a fresh interpreter is skipped; the tests that exec the installed ``hffm`` binary (the CLI,
``hffm edge run`` SIGTERM, the Ansible deploy) keep covering that path. The default (unset or ``exec``) starts a
fresh interpreter per process, as ``make demo`` and the benches do, so their memory and start-up figures are real.

How a child becomes the harness's own: the launcher forks an intermediate process, which forks the tier process and
exits at once. The harness has made itself a child subreaper (``prctl(PR_SET_CHILD_SUBREAPER)``, Linux), so the
orphaned tier process is re-parented to it: the harness waits for it with ``waitpid`` and reads its exit status
exactly as :class:`subprocess.Popen` does.

Fork safety: the launcher starts with ``OMP_NUM_THREADS=1`` (every tier process runs with it anyway), so after its
imports it runs one thread only (no OpenBLAS or OpenMP pool to lose in the fork), and it touches no tensor.
"""

from __future__ import annotations

import atexit
import ctypes
import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

from hffm_core.errors import HffmError

ENV_VAR = "HFFM_LAB_LAUNCHER"
# What every tier process runs with (hffm_lab/demo/processes.py); the launcher imports under the same values, since
# torch and huggingface_hub read some of them at import time.
TIER_ENV = {"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
# Imported once in the launcher: the command line with every tier, and what a device and the cloud build.
# The command line itself is loaded as the ``hffm`` console script (:func:`_entry_point`).
PRELOAD = ("torch", "transformers", "peft", "hffm_model.factory", "hffm_model.training", "edge_runtime.agent",
           "cloud.service", "fog_gateway.service")
_PR_SET_CHILD_SUBREAPER = 36
log = logging.getLogger(__name__)


def wanted() -> bool:
    """Whether ``HFFM_LAB_LAUNCHER`` asks for the fork launcher (``fork``); ``exec`` or unset: a fresh interpreter.

    Raises:
        HffmError: another value, or ``fork`` where it cannot work (not Linux).
    """
    mode = os.environ.get(ENV_VAR, "exec").strip().lower() or "exec"
    if mode not in ("exec", "fork"):
        raise HffmError(f"{ENV_VAR} must be 'exec' or 'fork', got {mode!r}")
    if mode == "fork" and not sys.platform.startswith("linux"):
        raise HffmError(f"{ENV_VAR}=fork needs Linux (a child subreaper); unset it on {sys.platform}")
    return mode == "fork"


class ForkedProcess:
    """A tier process forked by the launcher and re-parented to this process: the part of
    :class:`subprocess.Popen`'s interface the lab uses (``pid``, ``returncode``, ``poll``, ``wait``,
    ``send_signal``, ``terminate``, ``kill``)."""

    def __init__(self, pid: int, argv: list[str]) -> None:
        self.pid = pid
        self.args = argv
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: report it as gone, not as running forever
                self.returncode = -1
                return self.returncode
            if pid == self.pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        end = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if end is not None and time.monotonic() >= end:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            time.sleep(0.02)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Launcher:
    """The harness's side: starts the launcher process once and asks it for tier processes."""

    _instance: Launcher | None = None
    _guard = threading.Lock()

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise HffmError(f"prctl(PR_SET_CHILD_SUBREAPER) failed: errno {ctypes.get_errno()}")
        env = dict(os.environ, **TIER_ENV)
        env.pop(ENV_VAR, None)
        self.proc = subprocess.Popen([sys.executable, "-m", "hffm_lab.launcher"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env)
        self.lock = threading.Lock()
        self.owner = os.getpid()
        ready = self._read()
        if ready.get("ready") is not True:
            raise HffmError(f"the tier launcher did not start: {ready}")
        atexit.register(self.close)

    @classmethod
    def get(cls) -> Launcher:
        """This process's launcher, started on first use (a forked harness starts its own)."""
        with cls._guard:
            if cls._instance is None or cls._instance.owner != os.getpid() or cls._instance.proc.poll() is not None:
                cls._instance = Launcher()
            return cls._instance

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise HffmError(f"the tier launcher exited (code {self.proc.wait()})")
        return json.loads(line)

    def spawn(self, argv: list[str], log_path: Path, env: dict[str, str]) -> ForkedProcess:
        """Fork ``hffm <argv>`` with stdout and stderr to ``log_path`` and ``env`` as its whole environment.

        Raises:
            HffmError: the launcher is gone or could not fork.
        """
        request = {"argv": argv, "log": str(log_path), "env": env, "cwd": os.getcwd()}
        with self.lock:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write(json.dumps(request).encode() + b"\n")
                self.proc.stdin.flush()
            except OSError as e:
                raise HffmError(f"the tier launcher is gone: {e}") from e
            reply = self._read()
        if "pid" not in reply:
            raise HffmError(f"the tier launcher could not start {argv[:2]}: {reply.get('error')}")
        return ForkedProcess(int(reply["pid"]), argv)

    def close(self) -> None:
        if self.owner != os.getpid() or self.proc.poll() is not None:
            return
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.close()
            self.proc.wait(10.0)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(10.0)


# --- the launcher process ------------------------------------------------------------------------------------


def _entry_point() -> Any:
    """The function the installed ``hffm`` script calls (its console-scripts entry point), loaded."""
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name="hffm")
    return script.load()


def _child(request: dict[str, Any]) -> NoReturn:
    """The tier process: its own stdio, environment and argv, then the ``hffm`` entry point; never returns."""
    code = 1
    try:
        fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        os.close(null)
        # PYTHONUNBUFFERED=1, as a fresh interpreter would honour it.
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True,
                                      errors="backslashreplace")
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        sys.argv = ["hffm", *request["argv"]]
        main_module = sys.modules["__main__"]  # click names the program after argv[0] ("hffm") for a script,
        main_module.__spec__ = main_module.__package__ = None  # and "python -m <package>" for a module
        _entry_point()()
        code = 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 -- as an interpreter does: print the uncaught error, exit 1
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _spawn(request: dict[str, Any], protocol_fds: tuple[int, int]) -> int:
    """Fork an intermediate that forks the tier process and exits: the tier process is re-parented to the
    harness (the child subreaper). Returns its PID."""
    r, w = os.pipe()
    mid = os.fork()
    if mid == 0:
        try:
            os.close(r)
            for fd in protocol_fds:
                os.close(fd)
            pid = os.fork()
            if pid == 0:
                os.close(w)
                _child(request)
            os.write(w, str(pid).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(mid, 0)
    if not data:
        raise OSError("the intermediate process exited without a PID")
    return int(data)


def serve() -> None:
    """The launcher process: import :data:`PRELOAD`, then one fork per request line on stdin until EOF. The
    protocol moves to descriptors of its own, so that whatever an import prints cannot corrupt it."""
    import importlib

    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    for name in PRELOAD:
        importlib.import_module(name)
    _entry_point()
    fds = (proto_in.fileno(), proto_out.fileno())

    def reply(obj: dict[str, Any]) -> None:
        proto_out.write(json.dumps(obj).encode() + b"\n")
        proto_out.flush()

    reply({"ready": True, "pid": os.getpid()})
    for line in proto_in:
        try:
            reply({"pid": _spawn(json.loads(line), fds)})
        except (OSError, ValueError, KeyError) as e:
            reply({"error": f"{type(e).__name__}: {e}"})


if __name__ == "__main__":
    serve()

"""Run a command beside CPU busy loops: ``python tests/hffm_testing/stress.py [--loops N] -- CMD ...``.

Starts ``N`` (default 2) ``python -c "while True: pass"`` processes, runs ``CMD`` and returns its exit code; the
busy loops are stopped by the PIDs this script started, whatever happens (``make test-stress``). stress-ng is not
needed: on a 2-core box two loops make every test process share the CPU with them.
"""

from __future__ import annotations

import argparse
import subprocess
import sys


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loops", type=int, default=2, help="CPU busy loops to run beside the command")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.loops)]
    print(f"stress: {len(loops)} busy loop(s), pids {[p.pid for p in loops]}", flush=True)
    try:
        return subprocess.call(command)
    finally:
        for proc in loops:
            proc.kill()
        for proc in loops:
            proc.wait(timeout=10)
        print(f"stress: stopped busy loop(s) {[p.pid for p in loops]}", flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

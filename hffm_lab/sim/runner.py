"""``hffm sim``: run a simulated fleet against the real tiers and report what happened.

It starts a cloud Mosquitto and one bridged Mosquitto per fog (:class:`~broker_config.process.MosquittoProcess`),
a round clock and a resource sampler (``observer.py``), the real ``hffm fog run`` and ``hffm cloud run`` processes,
and ``ceil(K / per_process)`` simulator processes (``python -m hffm_lab.sim.worker``), then waits, bounded, for
every process to exit. The report says, per fog and cluster round, how long it took and how many deltas it
applied (the fog's own metrics file), the global round times (the clock), what the devices queued, had acked and
had dropped (the workers' results), the RSS and CPU of every process and the peak size of each fog's round journal.

``problems`` in the report lists what went wrong: a process that exited non-zero, a device still unfinished,
fewer deltas applied than the devices queued, an update neither applied nor answered (``lost``). Without faults,
every queued delta must be applied.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from broker_config.process import MosquittoProcess, free_port, wait_for_bridge
from broker_config.render import BridgeSpec
from hffm_lab.demo.processes import TierProcess, started
from hffm_lab.sim.observer import RoundClock, Sampler
from hffm_lab.sim.plan import FLEET, SimFleet, SimOptions, write_sim
from hffm_lab.sim.report import summarize


class SimRun:
    """Brokers, tiers and simulator processes of one run; everything we started is stopped on exit."""

    def __init__(self, opts: SimOptions, run_dir: Path) -> None:
        self.opts = opts
        self.run_dir = run_dir
        self.brokers: dict[str, MosquittoProcess] = {}
        self.tiers: dict[str, TierProcess] = {}
        self.workers: list[tuple[subprocess.Popen[bytes], Path]] = []
        self.clock: RoundClock | None = None
        self.sampler = Sampler()
        self.fleet: SimFleet | None = None

    def __enter__(self) -> SimRun:
        if self.run_dir.exists():  # an old run's journals and retained messages would be resumed, not measured
            shutil.rmtree(self.run_dir)
        self.run_dir.mkdir(parents=True)
        return started(self, self._start)

    def _start(self) -> None:
        fogs = [f"fog-{i}" for i in range(1, self.opts.fogs + 1)]
        cloud_port = free_port()
        self.brokers["cloud"] = MosquittoProcess(name="cloud", role="cloud", port=cloud_port, fleet=FLEET,
                                                 data_dir=self.run_dir / "brokers" / "cloud")
        self.brokers["cloud"].start()
        for fog in fogs:
            bridge = BridgeSpec(fleet=FLEET, fog=fog, cloud_host="127.0.0.1", cloud_port=cloud_port)
            self.brokers[fog] = MosquittoProcess(name=fog, role="fog", fleet=FLEET, bridge=bridge,
                                                 data_dir=self.run_dir / "brokers" / fog)
            self.brokers[fog].start()
        for fog in fogs:
            wait_for_bridge(self.brokers[fog], timeout=60.0)
        fog_ports = {f: self.brokers[f].port for f in fogs}
        self.fleet = write_sim(self.opts, self.run_dir, cloud_port=cloud_port, fog_ports=fog_ports)
        self.clock = RoundClock(FLEET, cloud_port, fog_ports)
        for name, broker in self.brokers.items():
            self.sampler.watch(f"broker-{name}", broker.pid)
        for fog in fogs:
            self.sampler.watch_file(fog, self.fleet.state_dir / f"{fog}-round.sqlite")
        limit = self.opts.time_limit_s
        for fog, config in self.fleet.fog_configs.items():
            self._tier(fog, "fog", config, limit)
        self._tier("cloud", "cloud", self.fleet.cloud_config, limit)
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
        for spec in self.fleet.worker_specs:
            log_path = self.run_dir / "logs" / f"{spec.stem}.log"
            with open(log_path, "wb") as log:
                proc = subprocess.Popen([sys.executable, "-m", "hffm_lab.sim.worker", str(spec)], stdout=log,
                                        stderr=subprocess.STDOUT, env=env)
            self.workers.append((proc, log_path))
            self.sampler.watch("workers", proc.pid)
        self.sampler.start()

    def _tier(self, name: str, tier: str, config: Path, limit: float) -> None:
        proc = TierProcess(name, tier, config, self.run_dir / "logs" / f"{name}.log", time_limit_s=limit)
        proc.start()
        self.tiers[name] = proc
        assert proc.proc is not None
        self.sampler.watch(name, proc.proc.pid)

    def failed(self) -> list[str]:
        out = [f"{n} exited with code {p.returncode} (log {p.log_path}):\n{p.log_tail(8)}"
               for n, p in self.tiers.items() if p.returncode not in (None, 0)]
        out += [f"simulator process {i} exited with code {p.returncode} (log {log})"
                for i, (p, log) in enumerate(self.workers) if p.poll() not in (None, 0)]
        return out

    def wait(self, timeout_s: float) -> list[str]:
        """Wait until every process exited; returns the problems (an early failure stops the wait)."""
        end = time.monotonic() + timeout_s
        while any(p.returncode is None for p in self.tiers.values()) or any(p.poll() is None for p, _ in self.workers):
            bad = self.failed()
            if bad:
                return bad
            if time.monotonic() > end:
                alive = [n for n, p in self.tiers.items() if p.returncode is None]
                alive += [f"sim-worker-{i}" for i, (p, _) in enumerate(self.workers) if p.poll() is None]
                return [f"still running after {timeout_s:.0f} s: {alive}"]
            time.sleep(0.2)
        return self.failed()

    def __exit__(self, *exc: object) -> None:
        self.sampler.stop()
        for proc, _log in self.workers:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10.0)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10.0)
        for proc in reversed(list(self.tiers.values())):
            proc.stop()
        if self.clock is not None:
            self.clock.close()
        for broker in reversed(list(self.brokers.values())):
            broker.stop()


def run_sim(opts: SimOptions, *, after: Callable[[SimRun], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Run the simulated fleet once; returns the report (``problems`` empty when everything was applied).
    ``after``: called once every process has exited, while the brokers still run (a benchmark measures the same
    broker there); what it returns is the report's ``after``.

    Raises:
        HffmError: the brokers or tiers could not be started.
    """
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = (opts.run_dir or Path("runs") / f"sim-{stamp}").resolve()
    started = time.monotonic()
    with SimRun(opts, run_dir) as run:
        problems = run.wait(opts.time_limit_s + 60.0)
        run.sampler.stop()
        assert run.fleet is not None and run.clock is not None
        report = summarize(opts, run.fleet, clock=run.clock, usage=run.sampler.report(), problems=problems)
        if after is not None:
            report["after"] = after(run)
    report["wall_s"] = round(time.monotonic() - started, 1)
    return report

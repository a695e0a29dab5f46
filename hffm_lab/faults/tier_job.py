"""One job of the real tiers for fault injection: Mosquitto brokers, a link proxy per fog bridge, and ``hffm edge|fog|
cloud run`` processes, with probes that read what each tier committed to disk.

:class:`TierJob` lays out a small fleet (:func:`hffm_lab.demo.plan.write_fleet`, tiny backbone), starts a cloud
broker, one :class:`~hffm_lab.faults.proxy.LinkProxy` per fog in front of it (the fog broker's bridge goes
through it, so the link can be cut), one bridged broker per fog, then the fog gateways, the devices and the cloud.

What was produced is recorded by the tiers' own storage: before a device or fog gateway starts, its outbox file is
created (by :class:`~hffm_core.delivery.outbox.Outbox` itself) and given a ledger table and an ``AFTER INSERT``
trigger, so every update or aggregate the process queues is written to the ledger in the same transaction, and the
ledger keeps it after the ack deletes the outbox row. What was applied is read from the fog's round journal
(``applied``, fog_gateway/round_journal.py) and the cloud's round state (``applied``, cloud/round_state.py).

Only processes this module started are signalled, by PID. Every wait is bounded.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import tomli_w
import tomllib

from broker_config.process import (
    MosquittoProcess,
    free_port,
    wait_for_bridge,
)
from broker_config.render import (
    BridgeSpec,
    BrokerLimits,
)
from hffm_core.delivery.outbox import Outbox
from hffm_core.errors import HffmError
from hffm_lab.demo.plan import FLEET, DemoOptions, FleetPlan, write_fleet
from hffm_lab.demo.processes import ProcessGroup, TierProcess, started
from hffm_lab.faults.proxy import LinkProxy

log = logging.getLogger(__name__)
_LEDGER = """
CREATE TABLE IF NOT EXISTS hffm_fault_ledger (key TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE TRIGGER IF NOT EXISTS hffm_fault_ledger_put AFTER INSERT ON outbox BEGIN
    INSERT OR IGNORE INTO hffm_fault_ledger (key, at) VALUES (NEW.key, (julianday('now') - 2440587.5) * 86400.0);
END;
"""


def rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows of a read-only query on a tier's SQLite file; [] while it does not exist (or is being created)."""
    if not path.exists():
        return []
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2.0) as db:
            return db.execute(sql).fetchall()
    except sqlite3.Error:
        return []


# The fleet of a tier job: the demo's plan, small (one device per fog, two rounds, the tiny backbone, one local
# epoch), with no baseline and no tables.
JOB_FLEET = DemoOptions(devices_per_fog=1, rounds=2, agg_every=1, local_epochs=1, backbone="tiny", time_limit_s=300.0,
                        round_deadline_s=120.0, baseline=False, show_tables=False)


@dataclass(frozen=True, kw_only=True)
class JobShape:
    """A tier job: the demo options its fleet is planned from (``fleet``; the job sets its run_dir), whether the
    tiers keep an outbox, the brokers' limits."""

    fleet: DemoOptions = JOB_FLEET
    outbox: bool = True
    limits: BrokerLimits | None = None
    # How long a fog waits for a device whose last will said offline (``[fog] offline_grace_s``, where the config
    # has it): long enough for a killed device to be restarted and reconnect on this machine.
    offline_grace_s: float = 30.0
    # Before this job's tiers start, run a whole job on the same brokers (its own state folders): the brokers then
    # hold that job's retained end (final announcements, versions, adverts) when this one starts.
    prior_job: bool = False
    # Nodes whose state folder is a small tmpfs of their own (mounted by the job; needs root), to fill up.
    tmpfs_state: tuple[str, ...] = ()


@dataclass
class Started:
    """One start of one tier process, and whether the harness killed it (a planned SIGKILL)."""

    name: str
    proc: TierProcess
    killed: bool = False
    expected_code: int | None = None  # the exit code a fault makes it end with (a full disk: StorageError's)

    def unexpected_exit(self) -> str | None:
        """None when the process ended as planned: exit 0, the SIGKILL the harness sent, or the code the fault
        calls for."""
        code = self.proc.returncode
        if code == 0 or (self.killed and code == -9) or (code is not None and code == self.expected_code):
            return None
        if code is None:
            return f"{self.name}: still running at the end"
        if code < 0:
            return f"{self.name}: killed by signal {-code} (not sent by the harness)"
        return f"{self.name}: exited with code {code}"


class TierJob:
    """Brokers, proxies and tier processes of one job; everything is stopped on exit (see the module docstring)."""

    def __init__(self, run_dir: Path, shape: JobShape) -> None:
        self.run_dir = run_dir
        self.shape = shape
        self.fogs = [f"fog-{i}" for i in range(1, shape.fleet.fogs + 1)]
        self.state = run_dir / "state"
        self.brokers: dict[str, MosquittoProcess] = {}
        self.proxies: dict[str, LinkProxy] = {}
        self.started: list[Started] = []
        self.plan: FleetPlan | None = None
        self.mounted: list[Path] = []
        # device -> the last (global, cluster) round it takes part in (a fault ended it there): planned counts
        self.gone_after: dict[str, tuple[int, int]] = {}

    # -- setup -----------------------------------------------------------------------------------------------------
    def __enter__(self) -> TierJob:
        return started(self, self._start)

    def _start(self) -> None:
        s = self.shape
        opts = replace(s.fleet, run_dir=self.run_dir)
        cloud_port, fog_ports = free_port(), {f: free_port() for f in self.fogs}
        tables = {} if s.outbox else {n: {"reliability": {"outbox": False}} for n in
                                      [*self.fogs, *(f"{f}-dev-{d}" for f in self.fogs
                                                     for d in range(1, opts.devices_per_fog + 1))]}
        for node in s.tmpfs_state:
            tables[node] = {**tables.get(node, {}), "state_dir": str(self._mount_tmpfs(self.state_of(node)))}
        self.plan = write_fleet(opts, self.run_dir, cloud_port=cloud_port, fog_ports=fog_ports, node_tables=tables)
        self._set_offline_grace()
        self.brokers["cloud"] = MosquittoProcess(name="cloud", role="cloud", port=cloud_port, fleet=FLEET,
                                                 data_dir=self.run_dir / "brokers" / "cloud", limits=s.limits)
        self.brokers["cloud"].start()
        for fog in self.fogs:
            self.proxies[fog] = LinkProxy(cloud_port).start()
            bridge = BridgeSpec(fleet=FLEET, fog=fog, cloud_host="127.0.0.1", cloud_port=self.proxies[fog].port)
            self.brokers[fog] = MosquittoProcess(name=fog, role="fog", port=fog_ports[fog], fleet=FLEET,
                                                 data_dir=self.run_dir / "brokers" / fog, bridge=bridge,
                                                 limits=s.limits)
            self.brokers[fog].start()
        for fog in self.fogs:
            wait_for_bridge(self.brokers[fog], timeout=30.0)
        if s.prior_job:
            self._run_prior_job(replace(opts, run_dir=self.run_dir / "prior-job"), cloud_port, fog_ports)
        if s.outbox:
            for node in [*self.fogs, *self.devices]:
                self._install_ledger(self.state_of(node) / f"{node}-outbox.sqlite")
        for fog in self.fogs:
            self.start_tier(fog)
        for dev in self.devices:
            self.start_tier(dev)
        self.start_tier("cloud")

    def _set_offline_grace(self) -> None:
        from fog_gateway.config import FogSection

        if "offline_grace_s" not in {f.name for f in fields(FogSection)}:
            return
        assert self.plan is not None
        for path in self.plan.fog_configs.values():
            cfg = tomllib.loads(path.read_text())
            cfg["fog"]["offline_grace_s"] = float(self.shape.offline_grace_s)
            path.write_bytes(tomli_w.dumps(cfg).encode())

    def _run_prior_job(self, opts: DemoOptions, cloud_port: int, fog_ports: dict[str, int]) -> None:
        """A whole job of the same fleet shape on these brokers, run to its end (see ``JobShape.prior_job``).

        Raises:
            HffmError: a tier of that job failed or it did not end in time.
        """
        assert opts.run_dir is not None
        plan = write_fleet(opts, opts.run_dir, cloud_port=cloud_port, fog_ports=fog_ports)
        with ProcessGroup() as group:
            for name, tier, cfg in [*((f, "fog", c) for f, c in plan.fog_configs.items()),
                                    *((d, "edge", c) for d, c in plan.device_configs.items()),
                                    ("cloud", "cloud", plan.cloud_config)]:
                group.add(TierProcess(name, tier, cfg, opts.run_dir / "logs" / f"{name}.log",
                                      time_limit_s=opts.time_limit_s))
            group.wait(timeout_s=opts.time_limit_s)

    def state_of(self, node: str) -> Path:
        """The state folder of ``node``: the job's shared one, or its own tmpfs (``JobShape.tmpfs_state``)."""
        return self.run_dir / f"{node}-state" if node in self.shape.tmpfs_state else self.state

    def _mount_tmpfs(self, path: Path, size: str = "8m") -> Path:
        """Mount a ``size`` tmpfs on ``path`` (unmounted on exit).

        Raises:
            HffmError: it cannot be mounted here (not root, or no mount permission), saying why.
        """
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, text=True, check=False, timeout=30)
        if done.returncode != 0:
            raise HffmError(f"cannot mount a tmpfs for a full-disk state folder at {path} (needs root): "
                            f"{(done.stderr or done.stdout).strip()}")
        self.mounted.append(path)
        return path

    def _install_ledger(self, path: Path) -> None:
        Outbox(path).close()  # the product's own schema, so that the tier opens the file as its outbox
        with sqlite3.connect(path) as db:
            db.executescript(_LEDGER)

    def __exit__(self, *exc: object) -> None:
        for st in reversed(self.started):
            st.proc.stop()
        for name in [*self.fogs, "cloud"]:
            if name in self.brokers:
                self.brokers[name].stop()
            if name in self.proxies:
                self.proxies[name].stop()
        for path in reversed(self.mounted):
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False, timeout=30)
        self.mounted.clear()

    # -- processes -------------------------------------------------------------------------------------------------
    @property
    def devices(self) -> list[str]:
        assert self.plan is not None
        return sorted(self.plan.device_configs)

    def config_of(self, name: str) -> tuple[str, Path]:
        assert self.plan is not None
        if name == "cloud":
            return "cloud", self.plan.cloud_config
        if name in self.plan.fog_configs:
            return "fog", self.plan.fog_configs[name]
        return "edge", self.plan.device_configs[name]

    def start_tier(self, name: str) -> TierProcess:
        tier, config = self.config_of(name)
        starts = sum(st.name == name for st in self.started)
        log_path = self.run_dir / "logs" / (f"{name}.log" if not starts else f"{name}-{starts + 1}.log")
        proc = TierProcess(name, tier, config, log_path, time_limit_s=self.shape.fleet.time_limit_s)
        proc.start()
        self.started.append(Started(name, proc))
        return proc

    def current(self, name: str) -> Started:
        return next(st for st in reversed(self.started) if st.name == name)

    def kill9(self, name: str) -> None:
        """SIGKILL the running process of ``name`` (ours, by PID) and wait for it."""
        st = self.current(name)
        if st.proc.proc is not None and st.proc.proc.poll() is None:
            st.killed = True
            st.proc.proc.kill()
            st.proc.proc.wait(timeout=10.0)

    def running(self) -> list[str]:
        return [st.name for st in self.started if st.proc.returncode is None]

    def failed(self) -> str | None:
        """The first unexpected exit so far (a process still running is not one yet)."""
        return next((msg for st in self.started if st.proc.returncode is not None
                     and (msg := st.unexpected_exit()) is not None), None)

    def process_exits(self) -> list[str]:
        return [msg for st in self.started if (msg := st.unexpected_exit()) is not None]

    def log_tail(self, name: str) -> str:
        return self.current(name).proc.log_tail(20)

    # -- probes ----------------------------------------------------------------------------------------------------
    def ledger(self, node: str) -> dict[str, float]:
        """Key -> wall time of every message ``node`` queued in its outbox (empty with the outbox off)."""
        return {str(k): float(t) for k, t in rows(self.state_of(node) / f"{node}-outbox.sqlite",
                                                   "SELECT key, at FROM hffm_fault_ledger")}

    def fog_applied(self, fog: str) -> set[str]:
        return {str(k) for (k,) in rows(self.state / f"{fog}-round.sqlite", "SELECT key FROM applied")}

    def cloud_reported(self) -> set[tuple[str, int]]:
        """(fog, global round) of every fog round report the cloud counted: closed rounds and the open one."""
        closed = rows(self.run_dir / "cloud.sqlite", "SELECT round, fogs_reported FROM rounds")
        out = {(str(f), int(g)) for g, fogs in closed for f in str(fogs).split(",") if f}
        try:
            raw = json.loads((self.state / "cloud-round.json").read_text())
            out |= {(str(f), int(raw["round"])) for f in raw["reported"]}
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return out

    def cloud_applied(self) -> dict[str, float]:
        return {str(k): float(t) for k, t in rows(self.state / "cloud-round.sqlite", "SELECT key, at FROM applied")}

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float) -> None:
        """Poll ``condition`` until it holds.

        Raises:
            HffmError: a process exited unexpectedly first, or ``timeout`` seconds passed.
        """
        end = time.monotonic() + timeout
        while not condition():
            bad = self.failed()
            if bad is not None:
                raise HffmError(f"waiting for {what}: {bad}")
            if time.monotonic() > end:
                raise HffmError(f"{what} did not happen within {timeout:.0f} s")
            time.sleep(0.02)

    def wait_done(self, timeout: float, *, on_poll: Callable[[], None] | None = None) -> str:
        """Wait (bounded) until every tier process has exited: ``"done"``; ``"failed"`` as soon as one exits
        unexpectedly (the job cannot complete); ``"timeout"`` when some still run at the deadline."""
        end = time.monotonic() + timeout
        while self.running():
            if on_poll is not None:
                on_poll()
            if self.failed() is not None:
                return "failed"
            if time.monotonic() > end:
                return "timeout"
            time.sleep(0.2)
        if on_poll is not None:
            on_poll()
        return "failed" if self.failed() is not None else "done"

"""Fault injection over real Mosquitto processes: run the ledger workload, break something, count what arrived.

:func:`run_fault` starts a cloud broker, a :class:`~hffm_lab.faults.proxy.LinkProxy` in front of it, one
bridged broker per fog (its bridge goes through the proxy), then the cloud, fog and device processes of
:mod:`hffm_lab.faults.workload`. It injects one fault from :data:`FAULTS` while the devices upload, waits
until the cloud has applied every key in the devices' ledgers (or a bounded wait ends), and returns
``{"fault", "produced", "applied", "lost", "duplicates_applied", "recovery_s", ...}``. Only processes this module
started are signalled, by PID.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from broker_config.process import (
    MosquittoProcess,
    wait_for_bridge,
)
from broker_config.render import (
    BridgeSpec,
    BrokerLimits,
)
from hffm_core.delivery.durable_sum import DurableSums
from hffm_core.errors import ConfigError, HffmError
from hffm_lab.demo.processes import started
from hffm_lab.faults.proxy import LinkProxy
from hffm_lab.faults.tier_job import rows
from hffm_lab.faults.verdict import failures, negative_failures
from hffm_lab.faults.workload import WorkloadSpec, aggregate_key

log = logging.getLogger(__name__)
FLEET = "rel"
READY_TIMEOUT_S = 120.0  # bounded wait for a readiness condition (times the measured slowdown)


class Cluster:
    """Brokers, proxy and workload processes of one fault run; everything is stopped on exit."""

    def __init__(self, run_dir: Path, spec: WorkloadSpec, limits: BrokerLimits | None) -> None:
        self.run_dir = run_dir
        self.spec = spec
        self.limits = limits
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.killed: set[int] = set()  # PIDs the harness sent SIGKILL to
        self.timeout_s = READY_TIMEOUT_S
        self.cloud_broker = MosquittoProcess(name="cloud", role="cloud", data_dir=run_dir / "brokers" / "cloud",
                                             fleet=FLEET, limits=limits)
        self.proxy: LinkProxy | None = None
        self.fog_brokers: dict[str, MosquittoProcess] = {}
        self.spec_path = run_dir / "spec.json"

    def __enter__(self) -> Cluster:
        return started(self, self._start)

    def _start(self) -> None:
        self.cloud_broker.start()
        self.proxy = LinkProxy(self.cloud_broker.port).start()
        for fog in self.spec.fogs:
            bridge = BridgeSpec(fleet=FLEET, fog=fog, cloud_host="127.0.0.1", cloud_port=self.proxy.port)
            broker = MosquittoProcess(name=fog, role="fog", data_dir=self.run_dir / "brokers" / fog, fleet=FLEET,
                                      bridge=bridge, limits=self.limits)
            broker.start()
            self.fog_brokers[fog] = broker
        for broker in self.fog_brokers.values():
            wait_for_bridge(broker, timeout=15.0)
        self.spec = replace(self.spec, cloud_port=self.cloud_broker.port,
                            fog_ports={f: b.port for f, b in self.fog_brokers.items()})
        self.spec.save(self.spec_path)

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                log.warning("workload process %s (pid %d) ignored SIGTERM; killing it", name, proc.pid)
                proc.kill()
                proc.wait(timeout=5.0)
        for broker in self.fog_brokers.values():
            broker.stop()
        if self.proxy is not None:
            self.proxy.stop()
        self.cloud_broker.stop()

    def start_role(self, name: str) -> None:
        """Start ``cloud``, ``fog:<id>`` or ``devices:<fog>`` (again, after a kill)."""
        role, _, fog = name.partition(":")
        args = [sys.executable, "-m", "hffm_lab.faults.workload", str(self.spec_path), role]
        out = open(self.run_dir / f"{name.replace(':', '-')}.log", "ab")  # noqa: SIM115 - the child holds it
        with out:
            self.procs[name] = subprocess.Popen(args + ([fog] if fog else []), stdout=out, stderr=out)

    def kill9(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            self.killed.add(proc.pid)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=5.0)

    def ready(self, client_id: str) -> bool:
        """The workload process with ``client_id`` is connected and subscribed (its marker file exists)."""
        return (Path(self.spec.state_dir) / f"ready-{client_id}").exists()

    def produced(self, fog: str) -> int:
        path = Path(self.spec.state_dir) / f"ledger-{fog}.jsonl"
        return len(path.read_text(encoding="utf-8").splitlines()) if path.exists() else 0

    def cloud_applied_any(self) -> bool:
        return bool(rows(Path(self.spec.state_dir) / "cloud-agg.sqlite", "SELECT key FROM applied LIMIT 1"))

    def unexpected_exit(self) -> str | None:
        """The first process that ended other than with 0 or the harness's SIGKILL (None while all are fine)."""
        for name, proc in self.procs.items():
            code = proc.poll()
            if code not in (None, 0) and not (code == -9 and proc.pid in self.killed):
                return f"{name}: exited with code {code}" if code > 0 else f"{name}: killed by signal {-code}"
        return None

    def exits(self) -> list[str]:
        """Every process that ended unexpectedly or is still running (call when all should have finished)."""
        out = []
        for name, proc in self.procs.items():
            code = proc.poll()
            if code is None:
                out.append(f"{name}: still running at the end")
            elif code != 0 and not (code == -9 and proc.pid in self.killed):
                out.append(f"{name}: exited with code {code}" if code > 0 else f"{name}: killed by signal {-code}")
        return out

    def wait_until(self, condition: Callable[[], bool], what: str) -> None:
        """Poll ``condition``. Raises: HffmError: a process ended unexpectedly first, or the bounded wait ran out."""
        end = time.monotonic() + self.timeout_s
        while not condition():
            if (bad := self.unexpected_exit()) is not None:
                raise HffmError(f"waiting for {what}: {bad}")
            if time.monotonic() > end:
                raise HffmError(f"{what} did not happen within {self.timeout_s:.0f} s")
            time.sleep(0.05)

    def devices_done(self) -> bool:
        return all(p.poll() is not None for n, p in self.procs.items() if n.startswith("devices:"))


@dataclass(frozen=True)
class FaultPlan:
    name: str
    action: Callable[[Cluster], float]  # injects the fault once the workload is ready; returns when it ended
    before_devices: Callable[[Cluster], None] | None = None
    limits: BrokerLimits | None = None
    round_interval_s: float = 0.2
    pad_floats: int = 0
    rounds_scale: float = 1.0
    outage_s: float = 0.0  # added to the processes' time limit


def _outage(kill: Callable[[Cluster], None], restore: Callable[[Cluster], None],
            seconds: float) -> Callable[[Cluster], float]:
    def act(cluster: Cluster) -> float:
        cluster.wait_until(cluster.cloud_applied_any, "the cloud applied an aggregate")
        kill(cluster)
        time.sleep(seconds)
        restore(cluster)
        return time.monotonic()
    return act


def _kill_fog_gateway_first(cluster: Cluster) -> None:
    fog = cluster.spec.fogs[0]
    # Its persistent session (with its subscriptions) must exist on the broker, or nothing is queued for it.
    cluster.wait_until(lambda: cluster.ready(f"hffm-rel-fog-{fog}"), f"fog relay {fog} subscribed")
    cluster.kill9(f"fog:{fog}")


def _restart_fog_gateway_later(cluster: Cluster) -> float:
    fog = cluster.spec.fogs[0]
    # Every delta of the burst went to the broker while the relay was down: its queue limit was exceeded.
    cluster.wait_until(lambda: cluster.produced(fog) >= cluster.spec.rounds * cluster.spec.devices_per_fog,
                       f"devices of {fog} produced every round")
    cluster.start_role(f"fog:{fog}")
    return time.monotonic()


def _nothing(cluster: Cluster) -> float:
    return time.monotonic()


FOG0 = "fog-0"
def _cloud_broker_outage(seconds: int) -> FaultPlan:
    return FaultPlan(f"cloud_broker_kill9_{seconds}s", _outage(lambda c: c.cloud_broker.kill9(),
                                                              lambda c: c.cloud_broker.start(), seconds),
                     outage_s=seconds)


FAULTS: dict[str, FaultPlan] = {p.name: p for p in (
    _cloud_broker_outage(10),
    FaultPlan("fog_broker_kill9", _outage(lambda c: c.fog_brokers[FOG0].kill9(),
                                          lambda c: c.fog_brokers[FOG0].start(), 5)),
    FaultPlan("fog_gateway_kill9", _outage(lambda c: c.kill9(f"fog:{FOG0}"), lambda c: c.start_role(f"fog:{FOG0}"), 3)),
    FaultPlan("cloud_service_kill9", _outage(lambda c: c.kill9("cloud"), lambda c: c.start_role("cloud"), 3)),
    FaultPlan("link_cut_15s", _outage(lambda c: c.proxy.cut(), lambda c: c.proxy.restore(), 15)),  # type: ignore[union-attr]
    FaultPlan("burst_above_queue_limit", _restart_fog_gateway_later, before_devices=_kill_fog_gateway_first,
              limits=BrokerLimits(max_queued_messages=50), round_interval_s=0.0),
    FaultPlan("oversized_payload", _nothing, limits=BrokerLimits(message_size_limit=65_536, max_packet_size=65_536),
              pad_floats=40_000, rounds_scale=0.125),
)}


# Longer cloud-broker outages for the benchmark (``hffm bench reliability --long-outages``), not the test suite.
LONG_FAULTS: dict[str, FaultPlan] = {p.name: p for p in (_cloud_broker_outage(60), _cloud_broker_outage(300))}


def check(spec: WorkloadSpec, state_dir: Path, fault_end: float | None = None,
          wall_of_monotonic: float = 0.0) -> dict[str, Any]:
    """Compare the devices' ledgers with the cloud's sums: produced, applied, lost, duplicates, recovery."""
    produced = []
    for fog in spec.fogs:
        path = state_dir / f"ledger-{fog}.jsonl"
        if path.exists():
            produced += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    sums = DurableSums(state_dir / "cloud-agg.sqlite")
    try:
        counts = {int(b[1:]): sums.result(b)[0].get("ind") for b in sums.buckets()}
        applied_at = {}
        for fog in spec.fogs:
            for r in counts:
                rows = sums._query("SELECT at FROM applied WHERE key = ?", (aggregate_key(spec.fleet, fog, r),))  # noqa: SLF001
                if rows:
                    applied_at[(fog, r)] = float(rows[0][0])
    finally:
        sums.close()
    applied = lost = dupes = 0
    seen = set()
    for entry in produced:
        vec = counts.get(entry["round"])
        n = int(round(float(vec[entry["index"]]))) if vec is not None else 0
        entry["applied"] = n
        seen.add((entry["round"], entry["index"]))
        applied += n >= 1
        lost += n == 0
        dupes += max(0, n - 1)
    phantom = sum(int(round(float(v))) for r, vec in counts.items() if vec is not None
                  for i, v in enumerate(vec) if (r, i) not in seen)
    out: dict[str, Any] = {"produced": len(produced), "applied": applied, "lost": lost,
                           "duplicates_applied": dupes + phantom}
    if fault_end is not None:
        end_wall = fault_end + wall_of_monotonic
        before = [e for e in produced if e["t"] <= end_wall]
        times = [applied_at.get((e["device"].rsplit("-d", 1)[0], e["round"])) if e["applied"] else None
                 for e in before]
        done = [t for t in times if t is not None]
        if len(done) < len(times):
            out["recovery_s"] = None  # not everything produced before the fault ended was applied
        else:
            out["recovery_s"] = round(max(0.0, max(done, default=end_wall) - end_wall), 2)
    return out


def _dropped(cluster: Cluster, *, wait_s: float) -> dict[str, int | None]:
    """Each fog broker's $SYS dropped-messages counter; with ``wait_s``, read again (bounded) while it is still 0,
    since a loaded broker may not have published its latest $SYS figures yet."""
    end = time.monotonic() + wait_s
    while True:
        counts = {f: b.dropped_messages() for f, b in cluster.fog_brokers.items()}
        if time.monotonic() >= end or any(c for c in counts.values()):
            return counts
        time.sleep(0.5)


def run_fault(name: str, run_dir: Path, *, rounds: int = 30, devices_per_fog: int = 10, fogs: int = 2,
              outbox: bool = True, settle_s: float = 60.0, slowdown: float = 1.0) -> dict[str, Any]:
    """Run one fault from :data:`FAULTS` and return its ledger check, with ``planned``, ``process_exits`` (every
    process that ended other than with 0 or the harness's SIGKILL, or still ran at the end), ``error`` (a
    readiness wait that failed) and ``failed`` (:func:`~hffm_lab.faults.verdict.failures`; for the
    negative control, ``outbox=False``, :func:`~hffm_lab.faults.verdict.negative_failures`).

    Raises:
        ConfigError: an unknown fault name.
        BrokerError: a broker could not be started.
    """
    plans = FAULTS | LONG_FAULTS
    if name not in plans:
        raise ConfigError(f"unknown fault {name!r}; expected one of {list(plans)}")
    plan = plans[name]
    run_dir.mkdir(parents=True, exist_ok=True)
    state = run_dir / "state"
    state.mkdir(exist_ok=True)
    spec = WorkloadSpec(fleet=FLEET, fogs=tuple(f"fog-{i}" for i in range(fogs)), devices_per_fog=devices_per_fog,
                        rounds=max(1, int(rounds * plan.rounds_scale)), state_dir=str(state), cloud_port=0,
                        fog_ports={}, round_interval_s=plan.round_interval_s, pad_floats=plan.pad_floats,
                        outbox=outbox, fog_deadline_s=20.0 if outbox else 6.0,
                        time_limit_s=(300.0 + plan.outage_s) * slowdown)
    started = time.monotonic()
    result: dict[str, Any] = {}
    fault_end: float | None = None
    with Cluster(run_dir, spec, plan.limits) as cluster:
        cluster.timeout_s = READY_TIMEOUT_S * slowdown
        offset = time.time() - time.monotonic()
        try:
            cluster.start_role("cloud")
            for fog in cluster.spec.fogs:
                cluster.start_role(f"fog:{fog}")
            if plan.before_devices is not None:
                plan.before_devices(cluster)
            for fog in cluster.spec.fogs:
                cluster.start_role(f"devices:{fog}")
            fault_end = plan.action(cluster)
            cluster.wait_until(cluster.devices_done, "every device process finished")
        except HffmError as exc:
            result["error"] = str(exc)
        # Outbox on: wait for the cloud to hold every key. Negative control: past the fog deadline, then check.
        settle_end = time.monotonic() + (settle_s * slowdown if outbox else spec.fog_deadline_s + 8.0 * slowdown)
        result |= check(cluster.spec, state, fault_end, offset)
        while (time.monotonic() < settle_end and (result["lost"] > 0 or not outbox)
               and cluster.unexpected_exit() is None):
            time.sleep(0.5)
            result |= check(cluster.spec, state, fault_end, offset)
        # The relays and the cloud serve until stopped: only a device process must have ended by itself (and after
        # an error the harness stops the devices too).
        result["process_exits"] = [e for e in cluster.exits() if not e.endswith("still running at the end")
                                   or (e.startswith("devices") and "error" not in result)]
        result["broker_dropped"] = _dropped(cluster, wait_s=(5.0 * slowdown) if plan.limits is not None else 0.0)
    result = {"fault": name, "planned": spec.rounds * spec.devices_per_fog * len(spec.fogs), **result,
              "wall_s": round(time.monotonic() - started, 1)}
    result["failed"] = failures(result) if outbox else negative_failures(result)
    log.info("fault %s: %s", name, result)
    return result


def run_all(run_dir: Path, *, rounds: int = 30, names: list[str] | None = None, slowdown: float = 1.0,
            on_result: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every fault in ``names`` (default: :data:`FAULTS`), then the negative control (the burst with outboxes
    disabled). ``on_result`` sees each fault's result as it finishes. An error in the negative control is a
    failure of it (``failed``), never "lost 0"."""
    faults = []
    for name in names or list(FAULTS):
        try:
            faults.append(run_fault(name, run_dir / name, rounds=rounds, slowdown=slowdown))
        except HffmError as exc:
            faults.append({"fault": name, "error": str(exc), "failed": [f"error: {exc}"]})
        if on_result is not None:
            on_result(faults[-1])
    return {"faults": faults, "negative_control": negative_control(run_dir / "negative_control", rounds=rounds,
                                                                   slowdown=slowdown)}


def negative_control(run_dir: Path, *, rounds: int = 30, slowdown: float = 1.0) -> dict[str, Any]:
    """The burst above the queue limit with every outbox disabled: the checker must see a loss."""
    label = "burst_above_queue_limit, outbox disabled"
    try:
        neg = run_fault("burst_above_queue_limit", run_dir, rounds=rounds, outbox=False, slowdown=slowdown)
    except HffmError as exc:
        return {"fault": label, "error": str(exc), "failed": [f"error: {exc}"]}
    return {**neg, "fault": label}

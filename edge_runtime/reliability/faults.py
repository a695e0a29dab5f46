"""Fault injection over real Mosquitto processes: run the ledger workload, break something, count what arrived.

:func:`run_fault` starts a cloud broker, a :class:`~edge_runtime.reliability.proxy.LinkProxy` in front of it, one
bridged broker per fog (its bridge goes through the proxy), then the cloud, fog and device processes of
:mod:`edge_runtime.reliability.workload`. It injects one fault from :data:`FAULTS` while the devices upload, waits
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

from edge_runtime.broker_process import BridgeSpec, BrokerLimits, MosquittoProcess, wait_for_bridge
from edge_runtime.errors import ConfigError, HffmError
from edge_runtime.reliability.durable_sum import DurableSums
from edge_runtime.reliability.proxy import LinkProxy
from edge_runtime.reliability.workload import WorkloadSpec, aggregate_key

log = logging.getLogger(__name__)
FLEET = "rel"
FAULT_AT_S = 1.5  # after the devices start: uploads are under way


class Cluster:
    """Brokers, proxy and workload processes of one fault run; everything is stopped on exit."""

    def __init__(self, run_dir: Path, spec: WorkloadSpec, limits: BrokerLimits | None) -> None:
        self.run_dir = run_dir
        self.spec = spec
        self.limits = limits
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.cloud_broker = MosquittoProcess(name="cloud", role="cloud", data_dir=run_dir / "brokers" / "cloud",
                                             fleet=FLEET, limits=limits)
        self.proxy: LinkProxy | None = None
        self.fog_brokers: dict[str, MosquittoProcess] = {}
        self.spec_path = run_dir / "spec.json"

    def __enter__(self) -> Cluster:
        try:
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
        except BaseException:
            self.__exit__()
            raise
        return self

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
        args = [sys.executable, "-m", "edge_runtime.reliability.workload", str(self.spec_path), role]
        out = open(self.run_dir / f"{name.replace(':', '-')}.log", "ab")  # noqa: SIM115 - the child holds it
        with out:
            self.procs[name] = subprocess.Popen(args + ([fog] if fog else []), stdout=out, stderr=out)

    def kill9(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=5.0)

    def devices_done(self) -> bool:
        return all(p.poll() is not None for n, p in self.procs.items() if n.startswith("devices:"))


@dataclass(frozen=True)
class FaultPlan:
    name: str
    action: Callable[[Cluster], float]  # injects the fault; returns the monotonic time it ended
    before_devices: Callable[[Cluster], None] | None = None
    limits: BrokerLimits | None = None
    round_interval_s: float = 0.2
    pad_floats: int = 0
    rounds_scale: float = 1.0
    outage_s: float = 0.0  # added to the processes' time limit


def _outage(kill: Callable[[Cluster], None], restore: Callable[[Cluster], None], seconds: float) -> Callable[[Cluster], float]:
    def act(cluster: Cluster) -> float:
        time.sleep(FAULT_AT_S)
        kill(cluster)
        time.sleep(seconds)
        restore(cluster)
        return time.monotonic()
    return act


def _kill_fog_gateway_first(cluster: Cluster) -> None:
    time.sleep(1.0)  # its persistent session (with its subscriptions) exists on the broker now
    cluster.kill9(f"fog:{cluster.spec.fogs[0]}")


def _restart_fog_gateway_later(cluster: Cluster) -> float:
    time.sleep(3.0)
    cluster.start_role(f"fog:{cluster.spec.fogs[0]}")
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
    FaultPlan("fog_broker_kill9", _outage(lambda c: c.fog_brokers[FOG0].kill9(), lambda c: c.fog_brokers[FOG0].start(), 5)),
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


def run_fault(name: str, run_dir: Path, *, rounds: int = 30, devices_per_fog: int = 10, fogs: int = 2,
              outbox: bool = True, settle_s: float = 60.0) -> dict[str, Any]:
    """Run one fault from :data:`FAULTS` and return its ledger check.

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
                        outbox=outbox, fog_deadline_s=20.0 if outbox else 6.0, time_limit_s=300.0 + plan.outage_s)
    started = time.monotonic()
    with Cluster(run_dir, spec, plan.limits) as cluster:
        cluster.start_role("cloud")
        for fog in cluster.spec.fogs:
            cluster.start_role(f"fog:{fog}")
        if plan.before_devices is not None:
            plan.before_devices(cluster)
        for fog in cluster.spec.fogs:
            cluster.start_role(f"devices:{fog}")
        fault_end = plan.action(cluster)
        offset = time.time() - time.monotonic()
        deadline = time.monotonic() + cluster.spec.time_limit_s
        while not cluster.devices_done() and time.monotonic() < deadline:
            time.sleep(0.2)
        # Outbox on: wait for the cloud to hold every key. Negative control: past the fog deadline, then check.
        settle_end = time.monotonic() + (settle_s if outbox else spec.fog_deadline_s + 8.0)
        result = check(cluster.spec, state, fault_end, offset)
        while time.monotonic() < settle_end and (result["lost"] > 0 or not outbox):
            time.sleep(0.5)
            result = check(cluster.spec, state, fault_end, offset)
        exits = {n: p.poll() for n, p in cluster.procs.items()}
        result["broker_dropped"] = {f: b.dropped_messages() for f, b in cluster.fog_brokers.items()}
    result = {"fault": name, **result, "wall_s": round(time.monotonic() - started, 1)}
    if any(code not in (0, None, -9) for code in exits.values()):
        result["process_exits"] = exits
    log.info("fault %s: %s", name, result)
    return result


def run_all(run_dir: Path, *, rounds: int = 30, names: list[str] | None = None,
            on_result: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every fault in ``names`` (default: :data:`FAULTS`), then the negative control (the burst with outboxes
    disabled). ``on_result`` sees each fault's result as it finishes."""
    faults = []
    for name in names or list(FAULTS):
        faults.append(run_fault(name, run_dir / name, rounds=rounds))
        if on_result is not None:
            on_result(faults[-1])
    try:
        negative = run_fault("burst_above_queue_limit", run_dir / "negative_control", rounds=rounds, outbox=False)
    except HffmError as exc:
        negative = {"error": str(exc), "lost": 0}
    return {"faults": faults, "negative_control": {"fault": "burst_above_queue_limit, outbox disabled",
                                                    "lost": negative["lost"], "produced": negative.get("produced", 0)}}

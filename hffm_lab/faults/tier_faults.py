"""Fault injection on the real tiers: run a small job of ``hffm edge|fog|cloud run`` processes, break something once
the job is provably under way, and count every update and aggregate end to end.

Each fault in :data:`TIER_FAULTS` waits for its readiness condition (read from what the tiers committed to disk: a
device queued an update, a fog queued an aggregate, a fog applied an update, the cloud applied an aggregate), then
injects the fault (kill -9 of a broker or tier process, a cut of a fog's bridge link, or a device's state folder
filled up) and restores it after ``outage_s``. ``stale_retained_job`` runs a whole job on the brokers first, so the
measured job starts on brokers that hold that job's retained end. Nothing is timed from the start of the processes.

The unit of delivery is a key: a device update (``{fleet}/{device}/{g}.{c}/{module}``, applied by the fog's round
journal) or a fog aggregate (``{fleet}/{fog}/{g}/{module}``, applied by the cloud's round state). Per fault:

- ``planned``: devices x their modules x global rounds x cluster rounds, plus fogs x their devices' modules x global
  rounds (a device a fault ends, the full disk, counts up to its last round);
- ``produced``: keys the devices and fogs queued in their outboxes (a ledger the outbox's own transaction writes,
  see :mod:`hffm_lab.faults.tier_job`);
- ``applied`` / ``lost``: produced keys found / not found in the receivers' ``applied`` tables;
- ``duplicates_applied``: updates a fog aggregated beyond the distinct keys it applied for that cluster round (from
  its metrics, followed across restarts), plus aggregates the cloud folded in beyond the keys it recorded;
- ``recovery_s``: from the end of the fault until every key produced before that end was applied (None: never);
- ``process_exits``: every tier process that ended other than with code 0 or the harness's own SIGKILL, or was
  still running when the job should have finished.

:func:`hffm_lab.faults.verdict.failures` turns a row into the reasons it failed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edge_runtime.config import DeviceConfig
from hffm_core.config import load_config
from hffm_core.errors import ConfigError, HffmError
from hffm_lab.faults.tier_job import JobShape, TierJob, rows
from hffm_lab.faults.verdict import failures

log = logging.getLogger(__name__)
FOG, DEVICE = "fog-1", "fog-1-dev-1"


@dataclass(frozen=True)
class TierFault:
    name: str
    ready: str  # what must have happened before the fault, in words (for the row and errors)
    is_ready: Callable[[TierJob], bool]
    kill: Callable[[TierJob], None]
    restore: Callable[[TierJob], None]
    outage_s: float
    shape: Callable[[JobShape], JobShape] | None = None  # the job this fault needs, from the row's shape
    check: Callable[[TierJob], list[str]] | None = None  # why the fault did not happen as it should, [] if it did


def _nothing(job: TierJob) -> None:
    return None


def _device_queued(job: TierJob) -> bool:
    return bool(job.ledger(DEVICE))


def _fog_queued(job: TierJob) -> bool:
    return any(job.ledger(fog) for fog in job.fogs)


def _fog_applied(job: TierJob) -> bool:
    return bool(job.fog_applied(FOG))


def _cloud_applied(job: TierJob) -> bool:
    return bool(job.cloud_applied())


def _broker(name: str, seconds: float, ready: tuple[str, Callable[[TierJob], bool]]) -> TierFault:
    label = "cloud_broker" if name == "cloud" else "fog_broker"
    return TierFault(f"{label}_kill9_{seconds:.0f}s", ready[0], ready[1], lambda j: j.brokers[name].kill9(),
                     lambda j: j.brokers[name].start(), seconds)


def _process(label: str, name: str, seconds: float, ready: tuple[str, Callable[[TierJob], bool]]) -> TierFault:
    def restart(job: TierJob) -> None:
        job.start_tier(name)

    return TierFault(label, ready[0], ready[1], lambda j: j.kill9(name), restart, seconds)


def _metrics(job: TierJob, node: str, run_dir: Path | None = None) -> dict[str, Any]:
    try:
        return dict(json.loads(((run_dir or job.run_dir) / "metrics" / f"{node}.json").read_text()))
    except (OSError, ValueError, TypeError):
        return {}


def _stale_job_seen(job: TierJob) -> list[str]:
    """The new job set the last job's retained messages aside (every fog counted some), and has its own id."""
    out = [f"{fog} never saw the last job's retained messages: the fault did not happen"
           for fog in job.fogs if not _metrics(job, fog).get("rejected", {}).get("other_job")]
    ids = (_metrics(job, "cloud", job.run_dir / "prior-job").get("job"), _metrics(job, "cloud").get("job"))
    if not all(ids) or ids[0] == ids[1]:
        out.append(f"the two jobs do not have two ids: {ids}")
    return out


DISK_FULL = "fog-1-dev-2"  # the second device of fog-1: its fog goes on with fog-1-dev-1


def _disk_ready(job: TierJob) -> bool:
    try:
        state = json.loads((job.state_of(DISK_FULL) / f"{DISK_FULL}-status.json").read_text())["state"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return str(state).startswith("sent round (1,1)")


def _fill_disk(job: TierJob) -> None:
    """Fill the device's tmpfs state folder: its next write fails with ENOSPC (StorageError, exit code 11)."""
    from hffm_core.errors import StorageError

    job.current(DISK_FULL).expected_code = StorageError.exit_code
    job.gone_after[DISK_FULL] = (1, 1)
    block = b"\0" * 65536
    with open(job.state_of(DISK_FULL) / "filler", "wb", buffering=0) as out:
        for _ in range(1 << 16):  # bounded: 4 GiB at most
            try:
                out.write(block)
            except OSError:
                return
    raise HffmError(f"{job.state_of(DISK_FULL)} never filled up")


def _disk_full_stopped_loudly(job: TierJob) -> list[str]:
    """The device ended with StorageError's code and one ``hffm: error:`` line naming the full disk, no
    traceback."""
    from hffm_core.errors import StorageError

    st = job.current(DISK_FULL)
    text = st.proc.log_path.read_text(errors="replace") if st.proc.log_path.exists() else ""
    errors = [line for line in text.splitlines() if line.startswith("hffm: error:")]
    out = []
    if st.proc.returncode != StorageError.exit_code:
        out.append(f"{DISK_FULL} exited with {st.proc.returncode}, not {StorageError.exit_code} (StorageError)")
    if len(errors) != 1 or not ("disk full" in errors[0] or "disk is full" in errors[0]):
        out.append(f"{DISK_FULL} did not say once that its disk is full: {errors}")
    if "Traceback" in text:
        out.append(f"{DISK_FULL} printed a traceback")
    return out


def _disk_full_shape(shape: JobShape) -> JobShape:
    # Two devices on fog-1; a round deadline past the processes' time limit, so a fog that waited it out for the
    # dead device (instead of offline_grace_s after its last will) would end the row in a timeout.
    fleet = replace(shape.fleet, devices_per_fog=max(2, shape.fleet.devices_per_fog),
                    round_deadline_s=max(600.0, 2 * shape.fleet.time_limit_s))
    # The device does not come back, so its fog need not hold the round for a restart (the 30 s other rows give).
    return replace(shape, fleet=fleet, tmpfs_state=(*shape.tmpfs_state, DISK_FULL),
                   offline_grace_s=min(shape.offline_grace_s, 5.0))


_AGG = ("a fog queued an aggregate", _fog_queued)
TIER_FAULTS: dict[str, TierFault] = {f.name: f for f in (
    _broker("cloud", 10, _AGG),
    _broker(FOG, 5, ("a device queued an update", _device_queued)),
    _process("fog_gateway_kill9", FOG, 3, ("the fog applied an update", _fog_applied)),
    _process("cloud_service_kill9", "cloud", 3, ("the cloud applied an aggregate", _cloud_applied)),
    _process("device_kill9_mid_round", DEVICE, 2, ("the device queued an update", _device_queued)),
    TierFault("link_cut_15s", _AGG[0], _AGG[1], lambda j: j.proxies[FOG].cut(), lambda j: j.proxies[FOG].restore(),
              15),
    TierFault("device_disk_full", f"{DISK_FULL} sent round (1,1)", _disk_ready, _fill_disk, _nothing, 0,
              shape=_disk_full_shape, check=_disk_full_stopped_loudly),
    TierFault("stale_retained_job", "the new job started on brokers that hold the last job's retained end",
              lambda _j: True, _nothing, _nothing, 0, shape=lambda s: replace(s, prior_job=True),
              check=_stale_job_seen),
)}
# Longer outages for the benchmark (``hffm bench reliability --long-outages``), not the test suite.
LONG_TIER_FAULTS: dict[str, TierFault] = {f.name: f for f in (_broker("cloud", 60, _AGG), _broker("cloud", 300, _AGG))}


def _modules(config: Path) -> set[str]:
    from hffm_core.protocol import modules_for
    from hffm_model.spec import TASKS

    dev = load_config(config, DeviceConfig).device
    by_modality: dict[str, list[str]] = {}
    for task in dev.tasks:
        by_modality.setdefault(TASKS[task].modality, []).append(task)
    return {str(k) for k in modules_for(by_modality)}


def _round_of(key: str) -> tuple[int, int] | None:
    """(g, c) of a device update key: the first ``g.c`` path segment (the layout may grow a job segment)."""
    for part in key.split("/"):
        g, dot, c = part.partition(".")
        if dot and g.isdigit() and c.isdigit():
            return int(g), int(c)
    return None


def _report_keys(keys: Any, reported: set[tuple[str, int]]) -> set[str]:
    """The fog round report keys (``.../{fog}/{g}/fogdone``) among ``keys`` whose report the cloud counted."""
    out = set()
    for key in keys:
        parts = key.split("/")
        if len(parts) >= 3 and parts[-1] == "fogdone" and parts[-2].isdigit() \
                and (parts[-3], int(parts[-2])) in reported:
            out.add(key)
    return out


class Counter:
    """Follows the fogs' per-round update counts across restarts (each restart starts a new metrics file)."""

    def __init__(self, job: TierJob) -> None:
        self.job = job
        self.updates: dict[tuple[str, int, int], int] = {}

    def poll(self) -> None:
        for fog in self.job.fogs:
            path = self.job.run_dir / "metrics" / f"{fog}.json"
            try:
                rounds = json.loads(path.read_text())["rounds"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            for r in rounds:
                self.updates[(fog, int(r["global_round"]), int(r["cluster_round"]))] = int(r["updates"])

    def planned(self) -> int:
        assert self.job.plan is not None
        shape, plan = self.job.shape, self.job.plan
        mods = {dev: _modules(cfg) for dev, cfg in plan.device_configs.items()}
        rounds = [(g, c) for g in range(1, shape.fleet.rounds + 1) for c in range(1, shape.fleet.agg_every + 1)]
        last = {dev: self.job.gone_after.get(dev, rounds[-1]) for dev in mods}  # a fault may end a device early
        updates = sum(len(m) * sum(rc <= last[dev] for rc in rounds) for dev, m in mods.items())
        # A fog aggregates, per global round, the modules of the devices that took part in it; plus one
        # FogRoundReport per fog and global round.
        aggregates = sum(len(set().union(*(m for d, m in mods.items() if plan.fog_of[d] == fog and last[d][0] >= g)))
                         for fog in self.job.fogs for g in range(1, shape.fleet.rounds + 1))
        return updates + aggregates + len(self.job.fogs) * shape.fleet.rounds

    def count(self, fault_end_wall: float | None, recovered_at: float | None) -> dict[str, Any]:
        job = self.job
        produced: dict[str, float] = {}
        applied: set[str] = set()
        dupes = 0
        for fog in job.fogs:
            fog_keys = job.fog_applied(fog)
            applied |= fog_keys
            per_round: dict[tuple[int, int], int] = {}
            for key in fog_keys:
                if (rc := _round_of(key)) is not None:
                    per_round[rc] = per_round.get(rc, 0) + 1
            dupes += sum(max(0, n - per_round.get((g, c), 0)) for (f, g, c), n in self.updates.items() if f == fog)
            produced |= job.ledger(fog)
        for dev in job.devices:
            produced |= job.ledger(dev)
        cloud = job.cloud_applied()
        applied |= set(cloud) | _report_keys(produced, job.cloud_reported())
        folded = rows(job.state / "cloud-round.sqlite", "SELECT COALESCE(SUM(count), 0) FROM buckets")
        dupes += max(0, int(folded[0][0]) - len(cloud)) if folded else 0
        got = [k for k in produced if k in applied]
        out: dict[str, Any] = {"planned": self.planned(), "produced": len(produced), "applied": len(got),
                               "lost": len(produced) - len(got), "duplicates_applied": dupes}
        if fault_end_wall is not None:
            out["recovery_s"] = (None if recovered_at is None else round(max(0.0, recovered_at - fault_end_wall), 2))
        return out

    def recovered(self, fault_end_wall: float) -> bool:
        """Every key produced before the fault ended is applied."""
        job = self.job
        before = {k for node in [*job.fogs, *job.devices] for k, t in job.ledger(node).items() if t <= fault_end_wall}
        applied = set(job.cloud_applied()).union(*(job.fog_applied(f) for f in job.fogs))
        return before <= applied | _report_keys(before, job.cloud_reported())


def run_tier_fault(name: str, run_dir: Path, *, shape: JobShape | None = None, slowdown: float = 1.0,
                   on_progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run one fault of :data:`TIER_FAULTS` (or :data:`LONG_TIER_FAULTS`, or ``"none"``) on a fresh job and
    return its row (see the module docstring), with ``failed``: the reasons it failed, [] if it passed.

    ``slowdown`` (>= 1, measured by :func:`hffm_lab.faults.calibrate.cpu_slowdown`) stretches every wait.

    Raises:
        ConfigError: an unknown fault name.
        BrokerError: a broker could not be started.
    """
    faults = TIER_FAULTS | LONG_TIER_FAULTS
    if name not in faults and name != "none":
        raise ConfigError(f"unknown fault {name!r}; expected one of {['none', *faults]}")
    fault = faults.get(name)
    shape = shape or JobShape()
    if fault is not None and fault.shape is not None:
        shape = fault.shape(shape)
    shape = replace(shape, offline_grace_s=shape.offline_grace_s * slowdown)
    if fault is not None:  # the processes' own time limit must outlast the outage
        shape = replace(shape, fleet=replace(shape.fleet, time_limit_s=shape.fleet.time_limit_s + fault.outage_s))
    say = on_progress or (lambda _m: None)
    started = time.monotonic()
    row: dict[str, Any] = {"fault": name}
    fault_end: float | None = None
    recovered_at: float | None = None
    with TierJob(run_dir, shape) as job:
        counter = Counter(job)

        def poll() -> None:
            nonlocal recovered_at
            counter.poll()
            if fault_end is not None and recovered_at is None and counter.recovered(fault_end):
                recovered_at = time.time()

        try:
            if fault is not None:
                def ready() -> bool:
                    counter.poll()
                    return fault.is_ready(job)

                job.wait_for(ready, fault.ready, 180 * slowdown)
                say(f"{name}: ready ({fault.ready}); injecting")
                fault.kill(job)
                time.sleep(fault.outage_s)
                fault.restore(job)
                fault_end = time.time()
                say(f"{name}: restored after {fault.outage_s:.0f} s")
            outcome = job.wait_done(shape.fleet.time_limit_s * slowdown, on_poll=poll)
        except HffmError as exc:
            outcome, row["error"] = "error", str(exc)
        exits = job.process_exits()
        if outcome != "timeout":  # after a failure the others are stopped by the harness, not "still running"
            exits = [e for e in exits if not e.endswith("still running at the end")]
        row |= counter.count(fault_end, recovered_at)
        row["process_exits"] = exits
        if fault is not None and fault.check is not None and "error" not in row:
            row["fault_checks"] = fault.check(job)
        if exits:
            row["logs"] = {e.split(":")[0]: job.log_tail(e.split(":")[0]) for e in exits}
    row["wall_s"] = round(time.monotonic() - started, 1)
    row["failed"] = failures(row, expect_recovery=fault is not None)
    log.info("tier fault %s: %s", name, {k: v for k, v in row.items() if k != "logs"})
    return row

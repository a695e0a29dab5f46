"""Lay out a simulated fleet: K virtual devices over F fogs, what each one senses and holds, the real fog and cloud
configs, and one spec file per simulator process (at most ``per_process`` devices each).

Devices get 2 of the 4 M3T-Bench modalities (the demo's balanced seeded draw) and every task on them, so each holds
the real module set (encoders, adapters, heads); in ``noop`` mode its per-task sample counts are drawn from a seed.
The fog and cloud configs are those of ``hffm fog run`` / ``hffm cloud run``; the cloud evaluates nothing in
``noop`` mode (the deltas are synthetic).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from hffm_core.errors import ConfigError
from hffm_lab.sim.faults import FaultRates, draw_faults

FLEET = "sim"
MODES = ("noop", "train")
# Virtual devices per simulator process. paho's network loop uses select(), which fails on descriptors >= 1024, and
# each device holds about six (its socket, paho's wake-up pair, its outbox's SQLite file, WAL and shared memory).
MAX_PER_PROCESS = 150


@dataclass(frozen=True, kw_only=True)
class SimOptions:
    devices: int = 20
    fogs: int = 2
    rounds: int = 3
    agg_every: int = 2
    mode: str = "noop"
    backbone: str = "minilm"
    adapter: str = "lora"  # the cloud's [model] adapter: lora, ffa_lora or lora-sb (fixes the adapters' layouts)
    seed: int = 0
    per_process: int = 100
    faults: FaultRates = field(default_factory=FaultRates)
    uplink_codec: str = "fp32"
    run_dir: Path | None = None
    report: Path | None = None
    time_limit_s: float = 3600.0
    round_deadline_s: float = 600.0
    offline_grace_s: float = 10.0
    telemetry_interval_s: float = 60.0
    # The devices' outbox resend backoff ([reliability] backoff_base_s / backoff_max_s); 0: the real defaults.
    backoff_base_s: float = 0.0
    backoff_max_s: float = 0.0
    outbox_sync: str = "FULL"  # the devices' outbox: FULL (a real device's) or NORMAL (no fsync per commit)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"--mode must be one of {list(MODES)}, got {self.mode!r}")
        if self.devices < 1 or self.fogs < 1 or self.devices < self.fogs:
            raise ConfigError(f"need at least one device per fog, got {self.devices} devices over {self.fogs} fogs")
        if not 1 <= self.per_process <= MAX_PER_PROCESS:
            raise ConfigError(f"--per-process must be in 1..{MAX_PER_PROCESS} (descriptors below 1024 per "
                              f"process), got {self.per_process}")
        if self.outbox_sync not in ("FULL", "NORMAL"):
            raise ConfigError(f"outbox sync must be FULL or NORMAL, got {self.outbox_sync!r}")
        if self.rounds < 1 or self.agg_every < 1:
            raise ConfigError("rounds and agg_every must be >= 1")


@dataclass(frozen=True)
class SimFleet:
    """Where everything of one simulated run is: configs, state, the worker specs, and each device's holdings."""

    run_dir: Path
    fogs: list[str]
    fog_of: dict[str, str]
    device_tasks: dict[str, list[str]]
    fog_configs: dict[str, Path]
    cloud_config: Path
    worker_specs: list[Path]

    @property
    def state_dir(self) -> Path:
        return self.run_dir / "state"

    def metrics_file(self, node: str) -> Path:
        return self.run_dir / "metrics" / f"{node}.json"


def device_ids(opts: SimOptions) -> dict[str, str]:
    """device -> fog, dealt round-robin: ``fog-1-dev-0001``, ``fog-2-dev-0002``, ..."""
    fogs = [f"fog-{i}" for i in range(1, opts.fogs + 1)]
    return {f"{fogs[i % opts.fogs]}-dev-{i + 1:04d}": fogs[i % opts.fogs] for i in range(opts.devices)}


def holdings(devices: list[str], seed: int) -> tuple[dict[str, list[str]], dict[str, str]]:
    """(device -> its tasks, task -> modality): 2 modalities per device, every task on them."""
    from hffm_lab.data.partition import assign_modalities
    from hffm_model.spec import MODALITIES, TASKS

    assignment = assign_modalities(devices, modalities=sorted(MODALITIES), per_device=2, seed=seed)
    modality_of = {t: spec.modality for t, spec in TASKS.items()}
    return {d: sorted(t for t, m in modality_of.items() if m in assignment[d]) for d in devices}, modality_of


def write_sim(opts: SimOptions, run_dir: Path, *, cloud_port: int, fog_ports: dict[str, int]) -> SimFleet:
    """Write the fog, cloud and worker spec files of a run; return where they are."""
    fog_of = device_ids(opts)
    devices = sorted(fog_of)
    device_tasks, modality_of = holdings(devices, opts.seed)
    data_dir = run_dir / "data"
    samples: dict[str, dict[str, int]] = {}
    if opts.mode == "train":  # real shards: a device holds the tasks it got samples of
        from hffm_lab.sim.train import write_train_data

        samples = write_train_data(devices, seed=opts.seed, alpha=0.5, data_dir=data_dir)
        device_tasks = {d: sorted(samples[d]) for d in devices}
    tasks = sorted({t for ts in device_tasks.values() for t in ts})
    modalities = sorted({modality_of[t] for t in tasks})
    fogs = sorted(fog_ports)
    faults = draw_faults(devices, opts.faults, rounds=opts.rounds, agg_every=opts.agg_every, seed=opts.seed)
    rng = random.Random(f"hffm-sim-samples/{opts.seed}")
    configs = run_dir / "configs"
    fog_configs = {}
    for fog in fogs:
        cfg = {"fog": {"id": fog, "fleet": FLEET, "devices": sorted(d for d, f in fog_of.items() if f == fog),
                       "round_deadline_s": opts.round_deadline_s, "startup_timeout_s": opts.round_deadline_s,
                       "offline_grace_s": opts.offline_grace_s},
               "broker": {"host": "127.0.0.1", "port": fog_ports[fog]},
               "state_dir": str(run_dir / "state"), "metrics_file": str(run_dir / "metrics" / f"{fog}.json")}
        fog_configs[fog] = _write_toml(configs / f"{fog}.toml", cfg)
    cloud = {"cloud": {"fleet": FLEET, "fogs": fogs, "modalities": modalities, "tasks": tasks, "rounds": opts.rounds,
                       "agg_every": opts.agg_every, "local_epochs": 1, "round_deadline_s": opts.round_deadline_s,
                       "startup_timeout_s": opts.round_deadline_s, "db": str(run_dir / "cloud.sqlite")},
             "broker": {"host": "127.0.0.1", "port": cloud_port},
             "model": {"backbone": opts.backbone, "seed": opts.seed, "adapter": opts.adapter},
             "eval": {t: str(data_dir / "test" / f"{t}.npz") for t in tasks} if opts.mode == "train" else {},
             "state_dir": str(run_dir / "state"), "metrics_file": str(run_dir / "metrics" / "cloud.json")}
    cloud_config = _write_toml(configs / "cloud.toml", cloud)
    specs = []
    for w, start in enumerate(range(0, len(devices), opts.per_process)):
        chunk = devices[start:start + opts.per_process]
        spec: dict[str, Any] = {
            "worker": w, "fleet": FLEET, "mode": opts.mode, "seed": opts.seed, "codec": opts.uplink_codec,
            "state_dir": str(run_dir / "state"), "result": str(run_dir / "metrics" / f"sim-worker-{w}.json"),
            "time_limit_s": opts.time_limit_s, "telemetry_interval_s": opts.telemetry_interval_s,
            "modality_of": {t: modality_of[t] for t in tasks}, "backbone": opts.backbone, "adapter": opts.adapter,
            "data_dir": str(data_dir), "rounds": opts.rounds, "agg_every": opts.agg_every,
            "backoff": {"backoff_base_s": opts.backoff_base_s, "backoff_max_s": max(opts.backoff_max_s,
                                                                                    opts.backoff_base_s)}
            if opts.backoff_base_s else None, "outbox_sync": opts.outbox_sync,
            "devices": [{"id": d, "fog": fog_of[d], "port": fog_ports[fog_of[d]], "tasks": device_tasks[d],
                         "modalities": sorted({modality_of[t] for t in device_tasks[d]}),
                         "samples": samples.get(d) or {t: rng.randint(20, 400) for t in device_tasks[d]},
                         "fault": faults[d].to_json() if d in faults else None} for d in chunk]}
        path = configs / f"sim-worker-{w}.json"
        path.write_text(json.dumps(spec, indent=1))
        specs.append(path)
    (run_dir / "metrics").mkdir(parents=True, exist_ok=True)
    (configs / "options.json").write_text(json.dumps(asdict(opts), default=str, indent=1))
    return SimFleet(run_dir=run_dir, fogs=fogs, fog_of=fog_of, device_tasks=device_tasks, fog_configs=fog_configs,
                    cloud_config=cloud_config, worker_specs=specs)


def _write_toml(path: Path, table: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tomli_w.dumps(table).encode())
    return path

"""Lay out a demo fleet on disk: each device's data files and every tier's TOML config.

The devices get a seeded non-IID share of M3T-Bench (which modalities they sense, Dirichlet label skew within each
task); the held-out test split of every task goes to ``data/test`` where the cloud (and each device, for its own
tasks) evaluates. Nothing trains on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from hffm_core.errors import ConfigError

FLEET = "demo"


@dataclass(frozen=True, kw_only=True)
class DemoOptions:
    fogs: int = 2
    devices_per_fog: int = 3
    rounds: int = 4
    local_epochs: int = 1
    agg_every: int = 2
    backbone: str = "minilm"
    seed: int = 0
    alpha: float = 0.5
    modalities_per_device: int = 2
    report: Path | None = None
    run_dir: Path | None = None
    time_limit_s: float = 1800.0
    round_deadline_s: float = 600.0
    baseline_workers: int = 2
    baseline: bool = True
    show_tables: bool = True
    # Codec per module kind, e.g. {"adapter": {"codec": "topk", "params": {"fraction": 0.01}}}; fp32 if absent.
    uplink: dict[str, dict[str, object]] = field(default_factory=dict)  # devices -> fogs
    fog_uplink: dict[str, dict[str, object]] = field(default_factory=dict)  # fogs -> cloud
    downlink: dict[str, dict[str, object]] = field(default_factory=dict)  # cloud -> fogs and fogs -> devices
    # Poisoning runs (hffm bench security): the last `attackers_per_fog` devices of each fog send `attack`-poisoned
    # deltas ([attack] table of the device config); each fog aggregates with `aggregator`.
    # Secured fleet (hffm demo --secure): mutual TLS on every broker, generated access control, signed envelopes.
    secure: bool = False
    # Extra [model] keys for devices and cloud, e.g. {"adapter": "ffa_lora", "lora_r": 4} (hffm bench compression).
    model: dict[str, object] = field(default_factory=dict)
    # Per-device [model] keys over those, e.g. {"fog-1-dev-1": {"lora_r": 4, "lora_alpha": 8}} (mixed LoRA ranks).
    device_model: dict[str, dict[str, object]] = field(default_factory=dict)
    # Extra top-level device config keys, e.g. {"telemetry_interval_s": 600} (hffm bench compression's advert cadence).
    device: dict[str, object] = field(default_factory=dict)
    attackers_per_fog: int = 0
    attack: dict[str, object] = field(default_factory=dict)
    aggregator: str = "fedavg"
    aggregator_params: dict[str, object] = field(default_factory=dict)
    # Topology (docs/topology.md): "star", "hierarchical" or "hierarchical_d2d". With a layout other than plain
    # "hierarchical", or with a topology file, every link runs through a counting proxy (hffm_lab/demo/layout.py);
    # without a file the topology is generated from fogs x devices_per_fog (one D2D group per fog, fogs in a ring).
    layout: str = "hierarchical"
    topology: Path | None = None
    # The live page (cloud/dashboard/): served on a free loopback port while the job runs; its URL and the
    # brokers' ports go to stderr and to <run_dir>/endpoints.json.
    dashboard: bool = True


@dataclass(frozen=True)
class FleetPlan:
    run_dir: Path
    fog_of: dict[str, str]  # device -> fog
    modalities: list[str]
    tasks: list[str]
    device_tasks: dict[str, list[str]]
    device_configs: dict[str, Path] = field(default_factory=dict)
    fog_configs: dict[str, Path] = field(default_factory=dict)
    cloud_config: Path = Path()

    def metrics_file(self, node: str) -> Path:
        return self.run_dir / "metrics" / f"{node}.json"


def fleet_ids(opts: DemoOptions) -> dict[str, str]:
    """device id -> fog id, e.g. ``fog-1-dev-2`` -> ``fog-1``."""
    return {f"fog-{f}-dev-{d}": f"fog-{f}" for f in range(1, opts.fogs + 1) for d in range(1, opts.devices_per_fog + 1)}


def attacker_ids(opts: DemoOptions) -> list[str]:
    """The devices that run in red-team mode: the last ``attackers_per_fog`` of each fog."""
    n = opts.devices_per_fog
    return sorted(f"fog-{f}-dev-{d}" for f in range(1, opts.fogs + 1)
                  for d in range(n - opts.attackers_per_fog + 1, n + 1))


def write_fleet(opts: DemoOptions, run_dir: Path, *, cloud_port: int, fog_ports: dict[str, int],
                node_tables: Mapping[str, Mapping[str, object]] | None = None,
                fog_of: Mapping[str, str] | None = None, device_ports: Mapping[str, int] | None = None) -> FleetPlan:
    """Partition the benchmark over the fleet, write data files and configs, return where everything is.

    ``node_tables`` adds tables to a node's config (node id -> {table: value}), e.g. ``[tls]`` and ``[signing]``.
    ``fog_of`` (device -> fog) replaces the demo's layout; ``device_ports`` is the port each device connects to
    (its link's proxy) instead of its fog broker's.

    Raises:
        DataError: the benchmark cannot be loaded or partitioned for this many devices.
    """
    from hffm_lab.data import (
        MODALITIES,
        TASKS,
        assign_modalities,
        load_m3t_bench,
        partition,
        save_task_file,
    )
    from hffm_lab.data.partition import own_test_splits

    fog_of = dict(fog_of) if fog_of is not None else fleet_ids(opts)
    devices = sorted(fog_of)
    bench = load_m3t_bench(seed=opts.seed)
    modalities = sorted(MODALITIES)
    assignment = assign_modalities(devices, modalities=modalities, per_device=opts.modalities_per_device,
                                   seed=opts.seed)
    shards = partition(bench, assignment, alpha=opts.alpha, seed=opts.seed)
    own_test = own_test_splits(bench, shards, seed=opts.seed)  # per-device evaluation (docs/personalization.md)
    tasks = sorted(t for t in bench if any(t in s.data for s in shards.values()))
    if not tasks:
        raise ConfigError("no task has a device holding it; use more devices")
    data_dir = run_dir / "data"
    for task in tasks:
        td = bench[task]
        save_task_file(data_dir / "test" / f"{task}.npz", modality=td.modality, task=task, x=td.x_test, y=td.y_test)
    plan = FleetPlan(run_dir=run_dir, fog_of=fog_of, modalities=sorted({TASKS[t].modality for t in tasks}),
                     tasks=tasks, device_tasks={})
    model = {"backbone": opts.backbone, "seed": opts.seed, **opts.model}
    attackers = set(attacker_ids(opts))
    for dev in devices:
        shard = shards[dev]
        dev_tasks = sorted(shard.data)
        plan.device_tasks[dev] = dev_tasks
        entries = {}
        for task in dev_tasks:
            x, y = shard.data[task]
            path = data_dir / dev / f"{task}.npz"
            save_task_file(path, modality=TASKS[task].modality, task=task, x=x, y=y)
            own = data_dir / dev / f"{task}-own-test.npz"
            save_task_file(own, modality=TASKS[task].modality, task=task, x=own_test[dev][task][0],
                           y=own_test[dev][task][1])
            entries[task] = {"train": str(path), "test": str(data_dir / "test" / f"{task}.npz"),
                             "own_test": str(own)}
        cfg = {
            "device": {"id": dev, "fleet": FLEET, "fog": fog_of[dev],
                       "modalities": sorted({TASKS[t].modality for t in dev_tasks}), "tasks": dev_tasks},
            "broker": {"host": "127.0.0.1", "port": (device_ports or {}).get(dev, fog_ports[fog_of[dev]])},
            "model": {**model, **opts.device_model.get(dev, {})},
            "training": {"batch_size": 32, "lr": 2e-3, "threads": 1, "seed": opts.seed},
            "data": entries,
            "uplink": opts.uplink,
            "state_dir": str(run_dir / "state"),
            "metrics_file": str(plan.metrics_file(dev)),
        }
        cfg.update(opts.device)
        if dev in attackers:
            cfg["attack"] = dict(opts.attack)
        cfg.update((node_tables or {}).get(dev, {}))
        plan.device_configs[dev] = _write(run_dir / "configs" / f"{dev}.toml", cfg)
    for fog in sorted(set(fog_of.values())):
        cfg = {
            "fog": {"id": fog, "fleet": FLEET, "devices": sorted(d for d, f in fog_of.items() if f == fog),
                    "round_deadline_s": opts.round_deadline_s, "startup_timeout_s": opts.round_deadline_s,
                    "aggregator": opts.aggregator, "aggregator_params": dict(opts.aggregator_params)},
            "broker": {"host": "127.0.0.1", "port": fog_ports[fog]},
            "uplink": opts.fog_uplink,
            "downlink": opts.downlink,
            "state_dir": str(run_dir / "state"),
            "metrics_file": str(plan.metrics_file(fog)),
        }
        cfg.update((node_tables or {}).get(fog, {}))
        plan.fog_configs[fog] = _write(run_dir / "configs" / f"{fog}.toml", cfg)
    cloud = {
        "cloud": {"fleet": FLEET, "fogs": sorted(fog_ports), "modalities": plan.modalities, "tasks": tasks,
                  "rounds": opts.rounds, "agg_every": opts.agg_every, "local_epochs": opts.local_epochs,
                  "round_deadline_s": opts.round_deadline_s, "db": str(run_dir / "cloud.sqlite")},
        "broker": {"host": "127.0.0.1", "port": cloud_port},
        "model": model,
        "eval": {t: str(data_dir / "test" / f"{t}.npz") for t in tasks},
        "downlink": opts.downlink,
        "state_dir": str(run_dir / "state"),
        "metrics_file": str(plan.metrics_file("cloud")),
    }
    cloud.update((node_tables or {}).get("cloud", {}))
    object.__setattr__(plan, "cloud_config", _write(run_dir / "configs" / "cloud.toml", cloud))
    return plan


def _write(path: Path, table: dict[str, object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tomli_w.dumps(table).encode())
    return path

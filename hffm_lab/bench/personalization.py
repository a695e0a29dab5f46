"""``hffm bench personalization``: personal modules (edge_runtime/personal.py) against the global model and local
training, per device, on strongly skewed M3T-Bench partitions (docs/personalization.md).

Each (alpha, seed) case runs the demo's fleet and schedule in one process: the real backbone and modules, the
demo's partition (2 modalities per device, Dirichlet(alpha) label skew), FedAvg of each module among its holders
in each fog (E_agg cluster rounds), then the sample-weighted merge of the fogs' aggregates at the cloud, as the
gateways and the cloud service compute them. It leaves out MQTT and the processes (``hffm demo`` measures those):
the figures here are about what each device ends up holding. Every device holds out ``val_fraction`` of its
training data as the validation slice of the personal modules; all four variants train on the rest:

* ``local_only``: the device alone, the same number of sessions, epochs and seeds;
* ``global``: the final global model;
* ``replace``: the personal modules with selective replacement during federation (and at the final version);
* ``replace_distill``: the same, then the final global model distilled into them.

Each is evaluated on the device's own test split (hffm_lab/data/partition.py: drawn from the held-out test split in
the device's own label mix), averaged over the device's tasks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from edge_runtime.config import PersonalizationConfig
from edge_runtime.local_data import round_seed
from edge_runtime.personal import PersonalModules, split_validation
from hffm_core.protocol import ModuleKey, modules_for

log = logging.getLogger(__name__)
State = dict[str, np.ndarray]
VARIANTS = ("local_only", "global", "replace", "replace_distill")


@dataclass(frozen=True, kw_only=True)
class PersonalizationOptions:
    alphas: tuple[float, ...] = (0.1, 0.5)
    seeds: tuple[int, ...] = (0, 1, 2)
    fogs: int = 2
    devices_per_fog: int = 3
    rounds: int = 4
    agg_every: int = 2
    local_epochs: int = 1
    backbone: str = "minilm"
    batch_size: int = 32
    lr: float = 2e-3
    modalities_per_device: int = 2
    mixed_rank: bool = True  # also the mixed-rank fleet vs the uniform one (personalization_ranks.py)
    only_mixed_rank: bool = False  # only that comparison
    personalization: PersonalizationConfig = field(
        default_factory=lambda: PersonalizationConfig(mode="replace+distill"))


@dataclass
class _Device:
    name: str
    fog: str
    keys: list[ModuleKey]
    modality_of: dict[str, str]
    fit: dict[str, tuple[np.ndarray, np.ndarray]]
    own_test: dict[str, tuple[np.ndarray, np.ndarray]]
    personal: PersonalModules


def _train_tasks(model: Any, dev: _Device, opts: PersonalizationOptions, seed: int) -> Callable[..., float]:
    from hffm_model.training import train_task

    def train(task: str, x: np.ndarray, y: np.ndarray) -> float:
        return train_task(model, modality=dev.modality_of[task], task=task, x=x, y=y, epochs=opts.local_epochs,
                          batch_size=opts.batch_size, lr=opts.lr, seed=seed)
    return train


def _samples(key: ModuleKey, dev: _Device) -> int:
    used = {t: len(y) for t, (_x, y) in dev.fit.items()}
    if key.kind == "encoder":
        return max(1, sum(n for t, n in used.items() if dev.modality_of[t] == key.modality))
    return max(1, used.get(key.task, 0))


def _accuracy(model: Any, dev: _Device, states: Mapping[ModuleKey, State]) -> dict[str, float]:
    from hffm_model.training import evaluate

    for k in dev.keys:
        model.load_module_state(k, states[k])
    return {t: float(evaluate(model, modality=dev.modality_of[t], task=t, x=x, y=y))
            for t, (x, y) in sorted(dev.own_test.items())}


def _mean_state(items: list[tuple[State, float]]) -> State:
    total = sum(w for _s, w in items)
    return {n: (sum(s[n].astype(np.float64) * w for s, w in items) / total).astype(np.float32) for n in items[0][0]}


def run_schedule(opts: Any, glob: dict[ModuleKey, State], fogs: Sequence[str],
                 fog_round: Callable[[str, dict[ModuleKey, State], tuple[int, int], int], None],
                 merge: Callable[[dict[str, dict[ModuleKey, State]]], None], what: str) -> None:
    """The demo's hierarchical schedule in one process, as every case of the bench runs it: ``opts.rounds`` global
    rounds of ``opts.agg_every`` cluster rounds. Each global round every fog starts from a copy of ``glob``; in each
    cluster round ``fog_round(fog, its_copy, (g, c), session)`` updates that copy in place; at the global round's
    end ``merge(copies by fog)`` updates ``glob`` in place."""
    for g in range(1, opts.rounds + 1):
        fog_state = {f: dict(glob) for f in fogs}
        for c in range(1, opts.agg_every + 1):
            session = (g - 1) * opts.agg_every + (c - 1)
            for fog in fogs:
                fog_round(fog, fog_state[fog], (g, c), session)
            log.info("%s round (%d,%d) done", what, g, c)
        merge(fog_state)


def _federate(model: Any, devices: list[_Device], initial: dict[ModuleKey, State], opts: PersonalizationOptions,
              seed: int) -> dict[ModuleKey, State]:
    """The hierarchical schedule; the personal modules of every device follow along. Returns the final global
    modules."""
    glob = dict(initial)
    fogs = sorted({d.fog for d in devices})

    def fog_round(fog: str, state: dict[ModuleKey, State], at: tuple[int, int], session: int) -> None:
        deltas: dict[ModuleKey, list[tuple[State, float]]] = {}
        for dev in (d for d in devices if d.fog == fog):
            versions = {k: state[k] for k in dev.keys}
            dev.personal.select(versions, at)
            train = _train_tasks(model, dev, opts, round_seed(seed, dev.name, 0, session))
            for k in dev.keys:
                model.load_module_state(k, versions[k])
            for task, (x, y) in sorted(dev.fit.items()):
                train(task, x, y)
            trained = {k: model.get_module_state(k) for k in dev.keys}
            for k in dev.keys:
                delta = {n: trained[k][n] - versions[k][n] for n in versions[k]}
                deltas.setdefault(k, []).append((delta, float(_samples(k, dev))))
            dev.personal.train_round(versions, trained, train)
        for k, items in deltas.items():
            mean = _mean_state(items)
            state[k] = {n: state[k][n] + mean[n] for n in mean}

    def merge(fog_state: dict[str, dict[ModuleKey, State]]) -> None:
        for k in glob:
            items = [(fog_state[f][k], float(sum(_samples(k, d) for d in devices if d.fog == f and k in d.keys)))
                     for f in fogs if any(k in d.keys for d in devices if d.fog == f)]
            if items:
                glob[k] = _mean_state(items)

    run_schedule(opts, glob, fogs, fog_round, merge, f"personalization bench: seed {seed}")
    return glob


def _local_only(model: Any, dev: _Device, initial: Mapping[ModuleKey, State], opts: PersonalizationOptions,
                seed: int) -> dict[ModuleKey, State]:
    for k in dev.keys:
        model.load_module_state(k, initial[k])
    for s in range(opts.rounds * opts.agg_every):
        train = _train_tasks(model, dev, opts, round_seed(seed, dev.name, 0, s))
        for task, (x, y) in sorted(dev.fit.items()):
            train(task, x, y)
    return {k: model.get_module_state(k) for k in dev.keys}


def bench_fleet(opts: Any, alpha: float, seed: int) -> tuple[Any, list[str], dict[str, Any], list[str]]:
    """The demo's partition for one (alpha, seed), as every case of the bench deals it: M3T-Bench, the device
    names (fog by fog), each device's shard (``opts.modalities_per_device`` modalities, Dirichlet(alpha) label
    skew) and the tasks some device holds."""
    from hffm_lab.data import MODALITIES, assign_modalities, load_m3t_bench, partition

    bench = load_m3t_bench(seed=seed)
    names = [f"fog-{f}-dev-{d}" for f in range(1, opts.fogs + 1) for d in range(1, opts.devices_per_fog + 1)]
    assignment = assign_modalities(names, modalities=sorted(MODALITIES), per_device=opts.modalities_per_device,
                                   seed=seed)
    shards = partition(bench, assignment, alpha=alpha, seed=seed)
    return bench, names, shards, sorted({t for s in shards.values() for t in s.data})


def run_case(opts: PersonalizationOptions, alpha: float, seed: int) -> dict[str, Any]:
    """One (alpha, seed): per device, the accuracy of the four variants on its own test split."""
    import torch

    from hffm_core.config import ModelConfig
    from hffm_lab.data import TASKS
    from hffm_lab.data.partition import own_test_splits
    from hffm_model.factory import build_m3t
    from hffm_model.training import evaluate

    torch.manual_seed(seed)
    started = time.monotonic()
    bench, names, shards, tasks = bench_fleet(opts, alpha, seed)
    own = own_test_splits(bench, shards, seed=seed)
    model = build_m3t(ModelConfig(backbone=opts.backbone, seed=seed), sorted({TASKS[t].modality for t in tasks}),
                      tasks)
    initial = {k: model.get_module_state(k) for k in model.module_keys()}
    devices = []
    for name in names:
        data = shards[name].data
        modality_of = {t: TASKS[t].modality for t in data}
        keys = modules_for({m: sorted(t for t in data if modality_of[t] == m)
                            for m in sorted(set(modality_of.values()))})
        fit, val = split_validation(data, opts.personalization.val_fraction, seed)
        personal = PersonalModules(model=model, keys=keys, modality_of=modality_of, train=fit, val=val,
                                   cfg=opts.personalization)
        devices.append(_Device(name=name, fog=name.rsplit("-dev-", 1)[0], keys=keys, modality_of=modality_of,
                               fit=fit, own_test=own[name], personal=personal))
    glob = _federate(model, devices, initial, opts, seed)
    rows = []
    for dev in devices:
        acc: dict[str, dict[str, float]] = {"global": _accuracy(model, dev, glob)}
        acc["local_only"] = _accuracy(model, dev, _local_only(model, dev, initial, opts, seed))
        dev.personal.select({k: glob[k] for k in dev.keys}, (opts.rounds + 1, 0))
        acc["replace"] = dev.personal.evaluate(dev.own_test)
        dev.personal.distill({k: glob[k] for k in dev.keys}, seed=seed, batch_size=opts.batch_size)
        acc["replace_distill"] = dev.personal.evaluate(dev.own_test)
        rows.append({"device": dev.name, "tasks": sorted(dev.fit), "per_task": acc,
                     **{v: float(np.mean(list(acc[v].values()))) for v in VARIANTS},
                     "own_test_samples": {t: int(len(y)) for t, (_x, y) in dev.own_test.items()},
                     "personal": dev.personal.report()})
    for k in glob:
        model.load_module_state(k, glob[k])
    global_test = {t: float(evaluate(model, modality=TASKS[t].modality, task=t, x=bench[t].x_test,
                                     y=bench[t].y_test)) for t in tasks}
    return {"alpha": alpha, "seed": seed, "devices": rows,
            "mean": {v: float(np.mean([r[v] for r in rows])) for v in VARIANTS},
            "global_test": {"accuracy": global_test, "mean": float(np.mean(list(global_test.values())))},
            "wall_s": round(time.monotonic() - started, 1)}


def _run(opts: PersonalizationOptions, case: tuple[Any, float, int]) -> dict[str, Any]:
    """A personalization case ``(None, alpha, seed)`` or a rank case ``(ranks, alpha, seed)``."""
    from hffm_lab.bench.personalization_ranks import run_rank_case

    ranks, alpha, seed = case
    return run_case(opts, alpha, seed) if ranks is None else run_rank_case(opts, alpha, seed, ranks)


def _case_worker(opts: PersonalizationOptions, case: tuple[Any, float, int]) -> dict[str, Any]:
    import os

    import torch

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    return _run(opts, case)


def _todo(opts: PersonalizationOptions) -> list[tuple[Any, float, int]]:
    from hffm_lab.bench.personalization_ranks import RANKS, UNIFORM_RANK

    todo: list[tuple[Any, float, int]] = []
    if opts.mixed_rank or opts.only_mixed_rank:  # at the first alpha, on the same data
        todo += [(ranks, opts.alphas[0], s) for s in opts.seeds for ranks in ([UNIFORM_RANK], list(RANKS))]
    if not opts.only_mixed_rank:
        todo += [(None, a, s) for a in opts.alphas for s in opts.seeds]
    return todo


def _report(opts: PersonalizationOptions, cases: list[dict[str, Any]]) -> dict[str, Any]:
    from hffm_lab.bench.personalization_ranks import mixed_rank_report
    from hffm_lab.bench.personalization_report import build_report

    ranked = [c for c in cases if "ranks" in c]
    return build_report(opts, [c for c in cases if "ranks" not in c],
                        mixed_rank=mixed_rank_report(ranked) if ranked else None)


def run_personalization(opts: PersonalizationOptions, *, on_case: Callable[[dict[str, Any]], None] | None = None,
                        workers: int = 1) -> dict[str, Any]:
    """Every (alpha, seed) case (``workers`` at a time, each in its own process, one torch thread each), then the
    report (hffm_lab/bench/personalization_report.py)."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    todo = _todo(opts)
    cases: list[dict[str, Any]] = []
    if workers <= 1:
        for case in todo:
            cases.append(_run(opts, case))
            if on_case is not None:
                on_case(cases[-1])
        return _report(opts, cases)
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_case_worker, opts, case) for case in todo]
        for fut in as_completed(futures):
            cases.append(fut.result())
            if on_case is not None:
                on_case(cases[-1])
    return _report(opts, cases)


def run_personalization_bench(opts: PersonalizationOptions, *, report: Path | None, workers: int = 1,
                              console: Console | None = None) -> dict[str, Any]:
    """Run the bench, print one line per case and the tables, write the JSON report (with the command's wall
    time and the commit) to ``report`` when given; after each case, the report of the cases so far goes to
    ``<report>.partial.json``."""
    import json
    import subprocess

    from hffm_lab.bench.personalization_report import print_table

    console = console or Console(stderr=True)
    started = time.monotonic()
    done: list[dict[str, Any]] = []

    def on_case(c: dict[str, Any]) -> None:
        done.append(c)
        what = (f"ranks {c['ranks']}: global test {c['global_test']['mean']:.3f}" if "ranks" in c else
                ", ".join(f"{v} {c['mean'][v]:.3f}" for v in VARIANTS))
        console.print(f"alpha {c['alpha']} seed {c['seed']}: {what} ({c['wall_s']:.0f} s)")
        if report is not None:
            report.parent.mkdir(parents=True, exist_ok=True)
            partial = {**_report(opts, done), "wall_s": round(time.monotonic() - started, 1)}
            report.with_suffix(".partial.json").write_text(json.dumps(partial, indent=1))

    out = run_personalization(opts, on_case=on_case, workers=workers)
    out["wall_s"] = round(time.monotonic() - started, 1)
    try:
        out["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                       check=False).stdout.strip()
    except OSError:
        out["commit"] = ""
    print_table(out, Console())
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(out, indent=1))
    return out


def parse_floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())


def parse_ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def describe(cases: Sequence[Mapping[str, Any]]) -> str:
    return ", ".join(f"alpha {c['alpha']} seed {c['seed']}: {c['wall_s']} s" for c in cases)

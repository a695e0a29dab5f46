"""The ``mixed_rank`` section of ``hffm bench personalization``: a fleet whose devices hold LoRA adapters of
different ranks (4/8/16, by capability) against the same fleet at one rank (8), same data, same schedule.

Each case runs the bench's fleet (2 fogs x 3 devices, the demo's partition at the first alpha) and hierarchical
schedule in one process, with the cross-rank rule exactly as the gateways and the cloud compute it
(hffm_core/aggregation/ranks.py): every device trains its own-rank truncation of the version it received and sends
its delta at its own rank; each fog folds its devices' deltas with FedAvg (a lower-rank delta zero-padded) and adds
the aggregate at the module's served rank; the cloud merges the fogs' aggregates, each trimmed to the rank slices it
changed, with the same rule. Every device keeps ``lora_alpha / lora_r = 2`` (the default 16/8), so a truncated
adapter is the leading components of the global one. The figure is the accuracy of the final global model on the
global held-out test split of every task, averaged over tasks; for the mixed fleet also that of the global model
truncated to each rank (what a rank-4 device ends up holding).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edge_runtime.local_data import round_seed
from hffm_core.aggregation import FedAvg
from hffm_core.aggregation.ranks import fit_rank, trim_rank
from hffm_core.protocol import ModuleKey, modules_for

log = logging.getLogger(__name__)
State = dict[str, np.ndarray]
RANKS = (4, 8, 16)
UNIFORM_RANK = 8
SLACK_PT = 1.0  # issue 20: the mixed-rank fleet within 1 pt of the uniform rank-8 fleet


def device_ranks(names: Sequence[str], ranks: Sequence[int]) -> dict[str, int]:
    """Ranks dealt round-robin over the devices in order: with 3 devices a fog, each fog has one of each."""
    return {n: int(ranks[i % len(ranks)]) for i, n in enumerate(names)}


def _layout(state: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    return {n: a.shape for n, a in state.items()}


def _aggregate(items: list[tuple[State, float]], layout: Mapping[str, tuple[int, ...]]) -> State:
    """The cross-rank FedAvg (hffm_core/aggregation/ranks.py), zero-filled to ``layout`` (the served rank)."""
    agg = FedAvg()
    for delta, weight in items:
        agg.add(delta, weight)
    return fit_rank(agg.result(), layout)


def _samples(key: ModuleKey, data: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> float:
    """The sample weight of a device's delta of ``key``: its samples of the task, or of the modality's tasks."""
    from hffm_lab.data import TASKS

    return float(sum(len(y) for t, (_x, y) in data.items()
                     if (key.task == t if key.kind != "encoder" else TASKS[t].modality == key.modality)))


def _global_test(model: Any, bench: Any, tasks: list[str], glob: Mapping[ModuleKey, State]) -> dict[str, float]:
    from hffm_lab.data import TASKS
    from hffm_model.training import evaluate

    for k, state in glob.items():
        model.load_module_state(k, fit_rank(state, _layout(model.get_module_state(k))))
    return {t: float(evaluate(model, modality=TASKS[t].modality, task=t, x=bench[t].x_test, y=bench[t].y_test))
            for t in tasks}


def run_rank_case(opts: Any, alpha: float, seed: int, ranks: Sequence[int]) -> dict[str, Any]:
    """One fleet (``ranks`` dealt over its devices; one rank = the uniform fleet): the final global model's
    accuracy on the global test splits, at the served (largest) rank and truncated to each rank."""
    import torch

    from hffm_core.config import ModelConfig
    from hffm_lab.bench.personalization import bench_fleet, run_schedule
    from hffm_lab.data import TASKS
    from hffm_model.factory import build_m3t
    from hffm_model.training import train_task

    torch.manual_seed(seed)
    started = time.monotonic()
    bench, names, shards, tasks = bench_fleet(opts, alpha, seed)
    modalities = sorted({TASKS[t].modality for t in tasks})
    rank_of = device_ranks(names, ranks)
    models = {r: build_m3t(ModelConfig(backbone=opts.backbone, seed=seed, lora_r=r, lora_alpha=2 * r), modalities,
                           tasks) for r in sorted(set(ranks))}
    served = models[max(ranks)]
    glob = {k: served.get_module_state(k) for k in served.module_keys()}
    holdings = {}
    for name in names:
        data = shards[name].data
        holdings[name] = modules_for({m: sorted(t for t in data if TASKS[t].modality == m)
                                      for m in sorted({TASKS[t].modality for t in data})})
    fogs = sorted({n.rsplit("-dev-", 1)[0] for n in names})

    def fog_round(fog: str, state: dict[ModuleKey, State], _at: tuple[int, int], session: int) -> None:
        deltas: dict[ModuleKey, list[tuple[State, float]]] = {}
        for name in (n for n in names if n.startswith(fog + "-dev-")):
            model, data = models[rank_of[name]], shards[name].data
            versions = {k: fit_rank(state[k], _layout(model.get_module_state(k))) for k in holdings[name]}
            for k in holdings[name]:
                model.load_module_state(k, versions[k])
            for task, (x, y) in sorted(data.items()):
                train_task(model, modality=TASKS[task].modality, task=task, x=x, y=y, epochs=opts.local_epochs,
                           batch_size=opts.batch_size, lr=opts.lr, seed=round_seed(seed, name, 0, session))
            for k in holdings[name]:
                trained = model.get_module_state(k)
                deltas.setdefault(k, []).append(({n: trained[n] - versions[k][n] for n in trained},
                                                 max(1.0, _samples(k, data))))
        for k, items in deltas.items():
            mean = _aggregate(items, _layout(state[k]))
            state[k] = {n: (a + mean[n]).astype(np.float32) for n, a in state[k].items()}

    def merge(fog_state: dict[str, dict[ModuleKey, State]]) -> None:
        for k in glob:
            items = [(trim_rank({n: fog_state[f][k][n] - glob[k][n] for n in glob[k]}),
                      sum(max(1.0, _samples(k, shards[n].data)) for n in names
                          if n.startswith(f + "-dev-") and k in holdings[n])) for f in fogs]
            items = [(d, w) for d, w in items if w > 0]
            if items:
                merged = _aggregate(items, _layout(glob[k]))
                glob[k] = {n: (a + merged[n]).astype(np.float32) for n, a in glob[k].items()}

    run_schedule(opts, glob, fogs, fog_round, merge, f"mixed-rank bench: ranks {list(ranks)} seed {seed}")
    at_rank_acc = {}
    for r in sorted(set(ranks)):
        acc = _global_test(models[r], bench, tasks, glob)
        at_rank_acc[str(r)] = {"accuracy": acc, "mean": float(np.mean(list(acc.values())))}
    top = at_rank_acc[str(max(ranks))]
    return {"alpha": alpha, "seed": seed, "ranks": list(ranks), "device_ranks": rank_of,
            "global_test": top, "at_rank": at_rank_acc, "wall_s": round(time.monotonic() - started, 1)}


def mixed_rank_report(cases: Sequence[Mapping[str, Any]], ranks: Sequence[int] = RANKS,
                      uniform_rank: int = UNIFORM_RANK) -> dict[str, Any]:
    """The report's ``mixed_rank`` section from the uniform and the mixed cases (means over the seeds both have)."""
    uniform = {c["seed"]: c for c in cases if c["ranks"] == [uniform_rank]}
    mixed = {c["seed"]: c for c in cases if c["ranks"] == list(ranks)}
    seeds = sorted(set(uniform) & set(mixed))
    if not seeds:
        return {"uniform": None, "mixed": None, "ranks": list(ranks), "note": "not measured in this run"}
    u = float(np.mean([uniform[s]["global_test"]["mean"] for s in seeds]))
    m = float(np.mean([mixed[s]["global_test"]["mean"] for s in seeds]))
    gap = (m - u) * 100
    return {"uniform": u, "mixed": m, "ranks": list(ranks), "uniform_rank": uniform_rank, "seeds": seeds,
            "alpha": mixed[seeds[0]]["alpha"],
            "mixed_at_rank": {r: float(np.mean([mixed[s]["at_rank"][r]["mean"] for s in seeds]))
                              for r in mixed[seeds[0]]["at_rank"]},
            "gap_pt": round(gap, 2), "goal_pt": SLACK_PT, "goal_met": gap >= -SLACK_PT,
            "per_seed": [{"seed": s, "uniform": uniform[s]["global_test"], "mixed": mixed[s]["global_test"],
                          "mixed_at_rank": mixed[s]["at_rank"], "device_ranks": mixed[s]["device_ranks"],
                          "wall_s": {"uniform": uniform[s]["wall_s"], "mixed": mixed[s]["wall_s"]}}
                         for s in seeds]}

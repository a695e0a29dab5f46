"""``hffm sim --mode train``: real learning at fleet scale with one frozen backbone per simulator process.

:func:`write_train_data` deals M3T-Bench over the virtual devices as the demo does (2 modalities each, per-class
Dirichlet(alpha) shares of every task on them; ``hffm_lab.data``), writes each device's task files and the held-out
test files the cloud evaluates on. :class:`SharedTrainer` holds one M3T model (the backbone and every module) per
process: for a device's round it loads that device's module versions into the model, trains the device's tasks
in turn (``hffm_model.training.train_task``, seeded by device and session, as a real device does) and returns each
module's delta; the devices of a process therefore train one after another. After the job,
:meth:`SharedTrainer.local_only` gives the local-only baseline (each device alone, the same sessions from the
same seeded initial modules) on the same test files.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np

from hffm_core.protocol import ModuleKey, RoundControl, modules_for

State = dict[str, np.ndarray]
BATCH, LR = 32, 2e-3  # the demo's device [training]


def write_train_data(devices: list[str], *, seed: int, alpha: float, data_dir: Path) -> dict[str, dict[str, int]]:
    """Partition M3T-Bench over ``devices``; write ``data_dir/<device>/<task>.npz`` and ``data_dir/test/<task>.npz``;
    returns device -> {task: train samples}.

    Raises:
        DataError: the benchmark cannot be loaded or dealt over this many devices.
    """
    from hffm_lab.data import MODALITIES, assign_modalities, load_m3t_bench, partition, save_task_file

    bench = load_m3t_bench(seed=seed)
    assignment = assign_modalities(devices, modalities=sorted(MODALITIES), per_device=2, seed=seed)
    holders = {t: sum(td.modality in assignment[d] for d in devices) for t, td in bench.items()}
    floor = min(8, min(len(td.y_train) // max(1, holders[t]) for t, td in bench.items()))
    shards = partition(bench, assignment, alpha=alpha, seed=seed, min_samples=max(1, floor))
    for task, td in bench.items():
        save_task_file(data_dir / "test" / f"{task}.npz", modality=td.modality, task=task, x=td.x_test, y=td.y_test)
    out = {}
    for dev, shard in shards.items():
        for task, (x, y) in shard.data.items():
            save_task_file(data_dir / dev / f"{task}.npz", modality=bench[task].modality, task=task, x=x, y=y)
        out[dev] = {t: len(y) for t, (_x, y) in sorted(shard.data.items())}
    return out


def session_seed(seed: int, device: str, session: int) -> int:
    """The seed of a device's n-th training session (as ``edge_runtime.local_data.round_seed(seed, dev, 0, n)``)."""
    return zlib.crc32(f"{seed}/{device}/0/{session}".encode()) & 0x7FFFFFFF


class SharedTrainer:
    """One frozen backbone and every module, shared by a process's devices (see the module docstring)."""

    def __init__(self, *, backbone: str, seed: int, modality_of: dict[str, str], data_dir: Path,
                 adapter: str = "lora") -> None:
        import torch

        from hffm_core.config import ModelConfig
        from hffm_model.factory import build_m3t

        torch.set_num_threads(1)
        self.seed, self.modality_of, self.data_dir = seed, modality_of, data_dir
        tasks = sorted(modality_of)
        modalities = sorted(set(modality_of.values()))
        self.model = build_m3t(ModelConfig(backbone=backbone, seed=seed, adapter=adapter), modalities, tasks)
        keys = modules_for({m: [t for t in tasks if modality_of[t] == m] for m in modalities})
        self.initial = {k: self.model.get_module_state(k) for k in keys}  # version 0 (seeded, as the cloud's)
        self._data: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}

    def data(self, split: str, task: str) -> tuple[np.ndarray, np.ndarray]:
        """``split``: a device id (its training shard) or ``test``."""
        from hffm_model.files import load_task_file

        if (split, task) not in self._data:
            self._data[(split, task)] = load_task_file(self.data_dir / split / f"{task}.npz",
                                                       modality=self.modality_of[task], task=task)
        return self._data[(split, task)]

    def _train(self, device: str, tasks: list[str], session: int, epochs: int) -> dict[str, float]:
        from hffm_model.training import train_task

        losses = {}
        for task in sorted(tasks):
            x, y = self.data(device, task)
            losses[task] = train_task(self.model, modality=self.modality_of[task], task=task, x=x, y=y,
                                      epochs=epochs, batch_size=BATCH, lr=LR,
                                      seed=session_seed(self.seed, device, session))
        return losses

    def deltas(self, device: str, tasks: list[str], ctl: RoundControl, selected: list[ModuleKey],
               states: dict[ModuleKey, State]) -> dict[ModuleKey, tuple[State, float]]:
        """Train ``device``'s tasks that have a selected module, from ``states``; key -> (delta, loss)."""
        for key, state in states.items():
            self.model.load_module_state(key, state)
        chosen = [t for t in tasks if any(k.task in (t, "_") and k.modality in (self.modality_of[t], "_")
                                          for k in selected)]
        session = (ctl.global_round - 1) * ctl.agg_every + (ctl.cluster_round - 1)
        losses = self._train(device, chosen, session, ctl.local_epochs)
        out = {}
        for key in selected:
            new = self.model.get_module_state(key)
            related = [v for t, v in losses.items() if key.task in (t, "_") and key.modality in
                       (self.modality_of[t], "_")]
            out[key] = ({n: (a - states[key][n]).astype(np.float32) for n, a in new.items()},
                        float(np.mean(related)) if related else 0.0)
        return out

    def evaluate(self, tasks: list[str], states: dict[ModuleKey, State]) -> dict[str, float]:
        """Accuracy on each task's held-out test file with ``states`` loaded."""
        from hffm_model.training import evaluate

        for key, state in states.items():
            self.model.load_module_state(key, state)
        return {t: float(evaluate(self.model, modality=self.modality_of[t], task=t, x=self.data("test", t)[0],
                                  y=self.data("test", t)[1])) for t in sorted(tasks)}

    def local_only(self, device: str, tasks: list[str], keys: list[ModuleKey], sessions: int,
                   epochs: int) -> dict[str, Any]:
        """The device alone: ``sessions`` sessions from the initial modules; its accuracy per task on the test
        files."""
        for key in keys:
            self.model.load_module_state(key, self.initial[key])
        for s in range(sessions):
            self._train(device, tasks, s, epochs)
        return self.evaluate(tasks, {})

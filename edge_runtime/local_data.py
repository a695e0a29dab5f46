"""A device's local data (train and test files per task), the seed of a training session, the final evaluation,
and the local-only baseline (the same schedule without federation)."""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_runtime.config import DeviceConfig
from hffm_core.config import load_config, resolve
from hffm_core.errors import ConfigError


@dataclass(frozen=True)
class LocalData:
    """A device's data: task -> (x, y) for training and, where given, for testing (``own``: the test split drawn
    from the device's own label mix, for per-device evaluation)."""

    modality_of: dict[str, str]
    train: dict[str, tuple[np.ndarray, np.ndarray]]
    test: dict[str, tuple[np.ndarray, np.ndarray]]
    own: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


def load_local_data(cfg: DeviceConfig) -> LocalData:
    """Load the train (and optional test) file of every task in the config.

    Raises:
        ConfigError: a task without a data entry, or a data entry for a task the device does not run.
        DataError: a file that is missing or malformed.
    """
    from hffm_model.factory import check_modalities_tasks
    from hffm_model.files import load_task_file
    from hffm_model.spec import TASKS

    dev = cfg.device
    check_modalities_tasks(dev.modalities, dev.tasks)
    extra = sorted(set(cfg.data) - set(dev.tasks))
    if extra:
        raise ConfigError(f"[data] has entries for tasks {extra} that device {dev.id!r} does not run")
    modality_of = {t: TASKS[t].modality for t in dev.tasks}
    train, test, own = {}, {}, {}
    for task in dev.tasks:
        if task not in cfg.data:
            raise ConfigError(f"device {dev.id!r}: no [data.{task}] entry with a train file")
        entry = cfg.data[task]
        train[task] = load_task_file(resolve(cfg.base_dir, entry.train), modality=modality_of[task], task=task)
        if entry.test:
            test[task] = load_task_file(resolve(cfg.base_dir, entry.test), modality=modality_of[task], task=task)
        if entry.own_test:
            own[task] = load_task_file(resolve(cfg.base_dir, entry.own_test), modality=modality_of[task], task=task)
    return LocalData(modality_of=modality_of, train=train, test=test, own=own)


def round_seed(seed: int, device: str, g: int, c: int) -> int:
    return zlib.crc32(f"{seed}/{device}/{g}/{c}".encode()) & 0x7FFFFFFF


def evaluate_tasks(model: Any, data: LocalData, split: str = "test") -> dict[str, float]:
    """The accuracy of ``model`` on each task's test file (``split="own"``: the device's own test split); tasks
    without one are left out."""
    from hffm_model.training import evaluate

    return {task: float(evaluate(model, modality=data.modality_of[task], task=task, x=x, y=y))
            for task, (x, y) in sorted((data.own if split == "own" else data.test).items())}


def train_local_only(cfg: DeviceConfig, *, sessions: int, local_epochs: int) -> dict[str, float]:
    """Local-only baseline: ``sessions`` training sessions of ``local_epochs`` epochs each, no federation.

    Mirrors the federated schedule (one session per cluster round, a fresh optimiser each), starts from the same
    seeded initial modules, and returns the accuracy per task on the device's test files (and, as ``own:<task>``,
    on its own test split where it has one).
    """
    import torch

    from hffm_model.factory import build_m3t
    from hffm_model.training import train_task

    torch.set_num_threads(cfg.training.threads)
    data = load_local_data(cfg)
    model = build_m3t(cfg.model, cfg.device.modalities, cfg.device.tasks)
    t = cfg.training
    for s in range(sessions):
        for task, (x, y) in sorted(data.train.items()):
            train_task(model, modality=data.modality_of[task], task=task, x=x, y=y, epochs=local_epochs,
                       batch_size=t.batch_size, lr=t.lr, seed=round_seed(t.seed, cfg.device.id, 0, s))
    own = {f"own:{task}": acc for task, acc in evaluate_tasks(model, data, split="own").items()}
    return {**evaluate_tasks(model, data), **own}


def baseline_from_config(config_path: str, sessions: int, local_epochs: int) -> dict[str, float]:
    """Picklable entry point for worker processes: :func:`train_local_only` on a device config file."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    return train_local_only(load_config(config_path, DeviceConfig), sessions=sessions, local_epochs=local_epochs)

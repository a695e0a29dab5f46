"""The agent's side of personal modules (edge_runtime/personal.py): the validation split of the device's data, the
replacement and personal training in each round, the distillation and evaluation at the end of the job, and the
personal module snapshot that ``hffm edge export --model personal`` reads."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.config import DeviceConfig
from edge_runtime.local_data import LocalData, round_seed
from edge_runtime.personal import PersonalModules, split_validation
from hffm_core.protocol import ModuleKey

log = logging.getLogger(__name__)
State = dict[str, np.ndarray]


def personal_path(state_dir: Path, node: str) -> Path:
    """Where a device keeps its personal modules (``hffm edge export --model personal``)."""
    return state_dir / f"{node}-personal-modules.npz"


class DevicePersonal:
    """Personal modules of one agent; built by :func:`make_personal` (None with ``mode = "none"``)."""

    def __init__(self, cfg: DeviceConfig, *, model: Any, keys: list[ModuleKey], data: LocalData, val: Any,
                 state_dir: Path) -> None:
        self.cfg = cfg
        self.model = model
        self.data = data
        self.path = personal_path(state_dir, cfg.device.id)
        self.modules = PersonalModules(model=model, keys=keys, modality_of=data.modality_of, train=data.train,
                                       val=val, cfg=cfg.personalization)
        self.accuracy: dict[str, dict[str, float]] = {}
        self.own_global: dict[str, float] = {}

    def before_training(self, versions: Mapping[ModuleKey, State], g: int, c: int) -> None:
        """Selective replacement against the round's versions (the federated trainer loads them next)."""
        self.modules.select(versions, (g, c))

    def after_training(self, versions: Mapping[ModuleKey, State], session: int, epochs: int) -> None:
        """Train the personal modules for the round (after the deltas were computed), then put the federated
        result back on the model and save the personal snapshot."""
        from hffm_model.training import train_task

        keys = self.modules.keys
        trained = {k: self.model.get_module_state(k) for k in keys}
        t = self.cfg.training
        seed = round_seed(t.seed, self.cfg.device.id, 0, session)

        def train(task: str, x: np.ndarray, y: np.ndarray) -> float:
            return train_task(self.model, modality=self.data.modality_of[task], task=task, x=x, y=y, epochs=epochs,
                              batch_size=t.batch_size, lr=t.lr, seed=seed)

        own = self.modules.train_round(versions, trained, train)
        for k, state in trained.items():
            self.model.load_module_state(k, state)
        self._save(versions)
        log.info("device %s: personal modules trained on their own for %s", self.cfg.device.id, own or "none")

    def finish(self, final: Mapping[ModuleKey, State], final_round: int) -> dict[str, float]:
        """At the end of the job (the model holds the final global modules): the global model's accuracy on the
        device's own test split (returned); then replacement against the final version, distillation
        (``replace+distill``), and the personal model's accuracy on the test files (``test``) and on the own test
        split (``own``), in :meth:`report`."""
        from edge_runtime.local_data import evaluate_tasks

        self.own_global = evaluate_tasks(self.model, self.data, split="own")
        self.modules.select(final, (final_round, 0))
        if self.cfg.personalization.mode == "replace+distill":
            self.modules.distill(final, seed=self.cfg.training.seed, batch_size=self.cfg.training.batch_size)
        self.modules._load(self.modules.states)
        self.accuracy = {"test": evaluate_tasks(self.model, self.data),
                         "own": evaluate_tasks(self.model, self.data, split="own")}
        self._save(final)
        return self.own_global

    def _save(self, versions: Mapping[ModuleKey, State]) -> None:  # stamps: personal modules have no version
        from hffm_model.snapshot import save_modules

        save_modules(self.path, self.modules.states, {k: (0, 0) for k in self.modules.states})

    def metrics(self) -> dict[str, Any]:
        """``own_accuracy`` (the global model on the own test split) and ``personal`` for the metrics file."""
        return {"own_accuracy": self.own_global, "personal": {**self.modules.report(), "accuracy": self.accuracy}}


class NoPersonal:
    """``mode = "none"``: the device ends with the global model only; it still evaluates it on its own test
    split."""

    def __init__(self, model: Any, data: LocalData) -> None:
        self.model, self.data = model, data
        self.own_global: dict[str, float] = {}

    def before_training(self, versions: Mapping[ModuleKey, State], g: int, c: int) -> None:
        return None

    def after_training(self, versions: Mapping[ModuleKey, State], session: int, epochs: int) -> None:
        return None

    def finish(self, final: Mapping[ModuleKey, State], final_round: int) -> dict[str, float]:
        from edge_runtime.local_data import evaluate_tasks

        self.own_global = evaluate_tasks(self.model, self.data, split="own")
        return self.own_global

    def metrics(self) -> dict[str, Any]:
        return {"own_accuracy": self.own_global, "personal": None}


def make_personal(cfg: DeviceConfig, model: Any, keys: list[ModuleKey], data: LocalData, state_dir: Path
                  ) -> tuple[LocalData, DevicePersonal | NoPersonal]:
    """``(the data the device trains on, its personal modules)``: with ``mode = "none"``, all of its data and
    :class:`NoPersonal`; otherwise the training data less the validation slice, and the personal modules
    (starting from the same seeded modules as the fleet)."""
    p = cfg.personalization
    if p.mode == "none":
        return data, NoPersonal(model, data)
    fit, val = split_validation(data.train, p.val_fraction, cfg.training.seed)
    trimmed = LocalData(modality_of=data.modality_of, train=fit, test=data.test, own=data.own)
    log.info("device %s: personalization %s; validation samples %s", cfg.device.id, p.mode,
             {t: len(y) for t, (_x, y) in val.items()})
    return trimmed, DevicePersonal(cfg, model=model, keys=keys, data=trimmed, val=val, state_dir=state_dir)

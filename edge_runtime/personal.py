"""A device's personal modules (TAP, arXiv 2509.26524, adapted to hffm's modules; docs/personalization.md).

The device keeps a personal copy of every module it holds, next to the versions the fleet sends it:

* *selective replacement*: when a round's versions arrive, a personal module is replaced by the arriving version only
  if that raises the accuracy on a held-out validation slice of the device's own training data by more than the
  margin of its kind; otherwise the device keeps (and keeps training) its own. Modules are compared in composition,
  since an encoder, an adapter and a head only work together: first a modality's whole subtree (its encoder with
  the adapters and heads of its tasks, margin of ``encoder``), else each task's adapter with its head (margin of
  ``adapter``), else the head alone (margin of ``head``).
* *post-federation distillation*: after the last round, the final global model is distilled into the personal one
  (cross-entropy on the device's own labels plus KL to the global model's soft predictions; labels alone on a task
  where the global model is more than ``teacher_floor`` below the personal one on validation), kept per modality
  only where it does not lower the validation accuracy.

The federated path is untouched: the device still trains from the version it received and sends that delta.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from edge_runtime.config import PersonalizationConfig
from hffm_core.protocol import ModuleKey

log = logging.getLogger(__name__)
State = dict[str, np.ndarray]
Split = dict[str, tuple[np.ndarray, np.ndarray]]


def split_validation(train: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """``(train, validation)``: per task and class, a seeded ``fraction`` of the samples held out (a class with too
    few samples keeps all of them for training).

    Raises:
        ValueError: ``fraction`` outside (0, 0.5).
    """
    if not 0.0 < fraction < 0.5:
        raise ValueError(f"validation fraction must lie in (0, 0.5), got {fraction!r}")
    fit: Split = {}
    val: Split = {}
    for task, (x, y) in sorted(train.items()):
        rng = np.random.default_rng([seed, len(task), *task.encode()])
        held: list[int] = []
        for label in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == label))
            held.extend(idx[: int(np.floor(fraction * len(idx) + 0.5))].tolist())
        mask = np.zeros(len(y), dtype=bool)
        mask[held] = True
        if mask.all():
            mask[:] = False
        fit[task] = (x[~mask], y[~mask])
        if mask.any():
            val[task] = (x[mask], y[mask])
    return fit, val


def subtree(keys: list[ModuleKey], modality: str) -> list[ModuleKey]:
    """A modality's modules among ``keys``: its encoder, its adapters and the heads of its tasks."""
    tasks = {k.task for k in keys if k.kind == "adapter" and k.modality == modality}
    return [k for k in keys if k.modality == modality or (k.kind == "head" and k.task in tasks)]


def pair_keys(modality: str, task: str) -> list[ModuleKey]:
    return [ModuleKey.encoder(modality), ModuleKey.adapter(modality, task), ModuleKey.head(task)]


def _same(a: State, b: State) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[n], b[n]) for n in a)


class PersonalModules:
    """The personal copy of a device's modules, on the device's model (shared with the federated trainer: every
    method loads the states it needs and leaves the model holding the personal modules it last touched).

    ``train``/``val``: the device's training data, split by :func:`split_validation`; ``modality_of``: task ->
    modality. ``counts``: per module, how often an arriving version replaced it and how often it was kept.
    """

    def __init__(self, *, model: Any, keys: list[ModuleKey], modality_of: Mapping[str, str], train: Split,
                 val: Split, cfg: PersonalizationConfig) -> None:
        self.model = model
        self.keys = list(keys)
        self.modality_of = dict(modality_of)
        self.train, self.val = train, val
        self.cfg = cfg
        self.states: dict[ModuleKey, State] = {k: model.get_module_state(k) for k in self.keys}
        self.counts: dict[str, dict[str, int]] = {str(k): {"replaced": 0, "kept": 0} for k in self.keys}
        self.log: list[dict[str, Any]] = []
        self.distilled: dict[str, bool] = {}
        self.taught: dict[str, list[str]] = {}  # per modality, the tasks distilled with the KL term

    # -- evaluation --------------------------------------------------------------------------------------------
    def _load(self, states: Mapping[ModuleKey, State]) -> None:
        for key, state in states.items():
            self.model.load_module_state(key, state)

    def _val_acc(self, composed: Mapping[ModuleKey, State], task: str) -> float | None:
        from hffm_model.training import evaluate

        if task not in self.val:
            return None
        modality = self.modality_of[task]
        self._load({k: composed[k] for k in pair_keys(modality, task)})
        x, y = self.val[task]
        return float(evaluate(self.model, modality=modality, task=task, x=x, y=y))

    def _gain(self, candidate: Mapping[ModuleKey, State], tasks: list[str], base: Mapping[str, float | None]
              ) -> float:
        """Mean validation gain of ``candidate`` over the personal modules on ``tasks`` (no validation data: +inf,
        so that the device follows the fleet where it cannot tell)."""
        gains = []
        for task in tasks:
            acc, before = self._val_acc(candidate, task), base[task]
            if acc is None or before is None:
                return float("inf")
            gains.append(acc - before)
        return float(np.mean(gains)) if gains else 0.0

    def evaluate(self, test: Split) -> dict[str, float]:
        """Accuracy of the personal modules on each task of ``test``."""
        from hffm_model.training import evaluate

        self._load(self.states)
        return {t: float(evaluate(self.model, modality=self.modality_of[t], task=t, x=x, y=y))
                for t, (x, y) in sorted(test.items())}

    # -- stage 1: selective replacement ---------------------------------------------------------------------------
    def select(self, versions: Mapping[ModuleKey, State], round_id: tuple[int, int]) -> dict[str, list[str]]:
        """Replace personal modules by the arriving ``versions`` where that helps on validation (see the module
        docstring). Returns ``{"replaced": [...], "kept": [...]}`` (module names) and logs it."""
        replaced: set[ModuleKey] = set()
        for modality in sorted({self.modality_of[t] for t in self.train}):
            tree = [k for k in subtree(self.keys, modality) if k in versions]
            tasks = sorted(t for t in self.train if self.modality_of[t] == modality)
            if not tree or all(_same(self.states[k], versions[k]) for k in tree):
                continue
            base = {t: self._val_acc(self.states, t) for t in tasks}
            whole = {**self.states, **{k: versions[k] for k in tree}}
            if self._gain(whole, tasks, base) > self.cfg.margin_of("encoder"):
                replaced.update(tree)
                continue
            for task in tasks:
                pair = [k for k in (ModuleKey.adapter(modality, task), ModuleKey.head(task)) if k in versions]
                if self._gain({**self.states, **{k: versions[k] for k in pair}}, [task], base) \
                        > self.cfg.margin_of("adapter"):
                    replaced.update(pair)
                elif ModuleKey.head(task) in versions and self._gain(
                        {**self.states, ModuleKey.head(task): versions[ModuleKey.head(task)]}, [task], base) \
                        > self.cfg.margin_of("head"):
                    replaced.add(ModuleKey.head(task))
        for key in self.keys:
            if key in replaced:
                self.states[key] = {n: a.copy() for n, a in versions[key].items()}
            self.counts[str(key)]["replaced" if key in replaced else "kept"] += 1
        record = {"round": list(round_id), "replaced": sorted(str(k) for k in replaced),
                  "kept": sorted(str(k) for k in self.keys if k not in replaced)}
        self.log.append(record)
        log.info("personal modules, round %s: replaced %d, kept %d", round_id, len(record["replaced"]),
                 len(record["kept"]))
        return {"replaced": record["replaced"], "kept": record["kept"]}

    def train_round(self, versions: Mapping[ModuleKey, State], trained: Mapping[ModuleKey, State],
                    train_fn: Callable[[str, np.ndarray, np.ndarray], float]) -> list[str]:
        """Train the personal modules for one round after :meth:`select`. A modality whose personal subtree equals
        the versions the federated step started from takes the federated step's result (``trained``: it is the
        same training); the others are trained here with ``train_fn(task, x, y)`` (the federated session's
        settings and seed). Returns the modalities trained here."""
        own = []
        for modality in sorted({self.modality_of[t] for t in self.train}):
            tree = subtree(self.keys, modality)
            if all(k in versions and k in trained and _same(self.states[k], versions[k]) for k in tree):
                for k in tree:
                    self.states[k] = {n: a.copy() for n, a in trained[k].items()}
                continue
            own.append(modality)
            self._load({k: self.states[k] for k in tree})
            for task in sorted(t for t in self.train if self.modality_of[t] == modality):
                x, y = self.train[task]
                train_fn(task, x, y)
            for k in tree:
                self.states[k] = self.model.get_module_state(k)
        return own

    # -- stage 2: post-federation distillation --------------------------------------------------------------------
    def distill(self, final: Mapping[ModuleKey, State], *, seed: int, batch_size: int) -> dict[str, bool]:
        """Distil the final global model ``final`` into the personal modules, per modality, and keep the result
        where the validation accuracy does not drop. A task on which the global model is more than
        ``teacher_floor`` below the personal modules on validation is trained on its labels alone (a teacher that
        bad on the device's own data would pull the personal modules toward its mistakes). Returns modality ->
        kept; ``self.taught`` names the tasks that had the KL term."""
        from hffm_model.training import distill_task, predict_logits

        cfg = self.cfg
        for modality in sorted({self.modality_of[t] for t in self.train}):
            tree = subtree(self.keys, modality)
            tasks = sorted(t for t in self.train if self.modality_of[t] == modality)
            before = {t: self._val_acc(self.states, t) for t in tasks}
            teacher_state = {**self.states, **{k: final[k] for k in tree if k in final}}
            taught = [t for t in tasks if self._gain(teacher_state, [t], before) >= -cfg.teacher_floor]
            self.taught[modality] = taught
            self._load({k: final[k] for k in tree if k in final})
            teacher = {t: predict_logits(self.model, modality=modality, task=t, x=self.train[t][0]) for t in tasks}
            self._load({k: self.states[k] for k in tree})
            for i, task in enumerate(tasks):
                x, y = self.train[task]
                distill_task(self.model, modality=modality, task=task, x=x, y=y, teacher_logits=teacher[task],
                             epochs=cfg.distill_epochs, weight=cfg.distill_weight if task in taught else 0.0,
                             temperature=cfg.temperature, batch_size=batch_size, lr=cfg.distill_lr, seed=seed + i)
            student = {k: self.model.get_module_state(k) for k in tree}
            keep = self._gain({**self.states, **student}, tasks, before) >= 0.0
            if keep:
                self.states.update(student)
            self.distilled[modality] = keep
        log.info("personal modules: distilled the final global model (KL on %s); kept per modality %s", self.taught,
                 self.distilled)
        self._load(self.states)
        return dict(self.distilled)

    def report(self) -> dict[str, Any]:
        """The personalization section of the device's metrics file."""
        return {"mode": self.cfg.mode, "counts": self.counts, "rounds": self.log, "distilled": self.distilled,
                "taught": self.taught,
                "validation_samples": {t: int(len(y)) for t, (_x, y) in sorted(self.val.items())}}

"""The training step of a device's round: train the tasks whose modules the round selected, from the versions the
device applied, and turn each module's change into the delta it sends (red-team poisoning and differential privacy
applied here, before coding). Coding and sending are the :class:`~edge_runtime.uplink.Uplink`'s."""

from __future__ import annotations

import json
import logging
import math
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.config import AttackConfig, TrainingConfig
from edge_runtime.local_data import LocalData, round_seed
from edge_runtime.privacy.dp import DpSettings, PrivacyLedger
from hffm_core.atomic import write_json
from hffm_core.errors import ConfigError
from hffm_core.protocol import ModuleKey, RoundControl

log = logging.getLogger(__name__)
State = dict[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class TrainedRound:
    """What one round's training left: the modules it started from, the last-epoch loss and the samples used per
    task, and how long it took."""

    base: dict[ModuleKey, State]
    losses: dict[str, float]
    used: dict[str, int]
    train_s: float


def load_privacy_ledger(settings: Mapping[str, DpSettings], path: Path) -> PrivacyLedger:
    """The DP ledger, with the participations counted before a restart (they stay spent).

    Raises:
        ConfigError: the ledger file exists but cannot be read.
    """
    counts: dict[str, int] = {}
    if path.exists():
        try:
            raw = json.loads(path.read_text())
            counts = {str(k): int(v) for k, v in raw["counts"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"privacy ledger {str(path)!r} is unreadable ({exc}); refusing to "
                              "start, since the privacy spent so far would be forgotten") from None
    return PrivacyLedger(settings, counts=counts)


@dataclass(eq=False, kw_only=True)
class RoundTrainer:
    """Trains one device's modules round by round. ``dp``: module kind -> DP settings (noise is drawn from OS
    entropy, never a seed); ``privacy``: the ledger of privacy spent (:func:`load_privacy_ledger`), saved to
    ``privacy_path`` after every noised delta."""

    node: str
    model: Any
    data: LocalData
    keys: list[ModuleKey]
    training: TrainingConfig
    attack: AttackConfig
    dp: Mapping[str, DpSettings]
    privacy: PrivacyLedger | None
    privacy_path: Path
    dp_rng: np.random.Generator = field(init=False, default_factory=np.random.default_rng)

    def __post_init__(self) -> None:
        self.dp = dict(self.dp)

    def train(self, ctl: RoundControl, selected: list[ModuleKey], fraction: float,
              states: Mapping[ModuleKey, State]) -> TrainedRound:
        """Load ``states`` (the published versions, not last round's weights) and train for round ``ctl``."""
        started = time.monotonic()
        for key, state in states.items():
            self.model.load_module_state(key, state)
        base = {k: self.model.get_module_state(k) for k in self.keys}
        losses, used = self._train(ctl, selected, fraction)
        return TrainedRound(base=base, losses=losses, used=used, train_s=time.monotonic() - started)

    def delta(self, key: ModuleKey, trained: TrainedRound, g: int, c: int) -> tuple[State, int, float]:
        """(delta, samples, loss) of module ``key`` after ``trained``: poisoned in red-team mode, clipped and noised
        under DP (then the loss, computed on private data, is not sent: 0.0)."""
        new = self.model.get_module_state(key)
        delta = {n: (a - trained.base[key][n]).astype(np.float32) for n, a in new.items()}
        if self.attack.kind != "none":
            delta = self._poison(delta, key, g, c)
        if key.kind in self.dp:  # clip + noise before coding: error feedback only ever sees the noised delta
            from edge_runtime.privacy.dp import privatize

            assert self.privacy is not None
            delta, _norm = privatize(delta, self.dp[key.kind], self.dp_rng)
            self.privacy.record(key.kind)
            write_json(self.privacy_path, {"counts": dict(self.privacy.counts)})
        related = [v for t, v in trained.losses.items() if key.task in (t, "_") and
                   (key.modality in ("_", self.data.modality_of[t]))]
        loss = float(np.mean(related)) if related and key.kind not in self.dp else 0.0
        return delta, self._samples(key, trained.used), loss

    def _poison(self, delta: State, key: ModuleKey, g: int, c: int) -> State:
        from edge_runtime.attacks import check_attack, poison

        attack = self.attack
        log.warning("device %s: RED-TEAM MODE: sending a %s-poisoned delta for %s in round (%d,%d)", self.node,
                    attack.kind, key, g, c)
        rng = np.random.default_rng(zlib.crc32(f"{attack.seed}/{self.node}/{g}.{c}/{key}".encode()))
        return poison(delta, attack.kind, check_attack(attack.kind, attack.factor or None), rng)

    def _train(self, ctl: RoundControl, selected: list[ModuleKey], fraction: float
               ) -> tuple[dict[str, float], dict[str, int]]:
        """Train every task one of whose modules is selected; with ``fraction`` < 1 (resources short), on a seeded
        subset of that share of the samples. Returns the last-epoch loss and the samples used per task."""
        from hffm_model.training import train_task

        g, c = ctl.global_round, ctl.cluster_round
        t = self.training
        losses, used = {}, {}
        for task, (x, y) in sorted(self.data.train.items()):
            modality = self.data.modality_of[task]
            if not any(k.task in (task, "_") and k.modality in (modality, "_") for k in selected):
                continue
            # Seeded by the training session's index, as the local-only baseline is: every schedule (star,
            # hierarchical, any E_agg) shuffles the same way in its n-th session, so comparing schedules compares
            # the schedules, not the shuffles.
            seed = round_seed(t.seed, self.node, 0, (g - 1) * ctl.agg_every + (c - 1))
            if fraction < 1.0:
                keep = np.random.default_rng(seed).permutation(len(y))[: max(1, math.ceil(fraction * len(y)))]
                x, y = x[np.sort(keep)], y[np.sort(keep)]
            losses[task] = train_task(self.model, modality=modality, task=task, x=x, y=y, epochs=ctl.local_epochs,
                                      batch_size=t.batch_size, lr=t.lr, seed=seed)
            used[task] = len(y)
        return losses, used

    def _samples(self, key: ModuleKey, used: dict[str, int]) -> int:
        if key.kind == "encoder":
            return max(1, sum(n for t, n in used.items() if self.data.modality_of[t] == key.modality))
        return max(1, used.get(key.task, 0))

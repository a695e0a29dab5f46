"""The fog round's rules as small objects that :class:`~fog_gateway.round_engine.FogRound` is given, the way a
Flower ``Strategy`` is given to its server: the round engine asks them, and knows nothing of MQTT.

- :class:`SelectionPolicy` (Flower's ``configure_fit``): which holders of a module take part in a cluster round.
  :class:`ResourceSelection` is the fog's rule: advertised resources within ``[selection]``, at most
  ``max_participants_per_module`` of them (those with the most samples). The round engine then takes none when
  fewer than ``min_participants`` were chosen.
- :class:`LateUpdates` (staleness): whether an update for the cluster round that just closed is folded into the open
  one, and with what weight (``num_samples * staleness_decay ** lag``).
- ``min_participants`` (:class:`FogRules`): fewer contributors than this leave a module as it was.
- The E_agg schedule (:class:`AggSchedule`; fog_gateway/schedule.py is the fog's): cluster rounds per global round.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from fog_gateway.config import FogConfig
from fog_gateway.round_journal import staleness_weight
from hffm_core.protocol import ModuleKey, NodeState
from hffm_core.resources import ResourceThresholds, eligible


@dataclass(frozen=True, slots=True)
class Selection:
    """What a selection policy chose for one module: the participants, and the holders it passed over with the
    reasons."""

    chosen: frozenset[str]
    passed_over: tuple[tuple[str, str], ...] = ()


class SelectionPolicy(Protocol):
    def select(self, key: ModuleKey, holders: Iterable[str], adverts: Mapping[str, NodeState]) -> Selection:
        """The participants of ``key`` among its ``holders``, from their ``adverts``."""


class AggSchedule(Protocol):
    """E_agg per global round (fog_gateway/schedule.py): never above ``cap``, the cloud's ``agg_every``."""

    def pick(self, cap: int) -> int: ...

    def observe_cluster(self, seconds: float) -> None: ...

    def observe_sync(self, seconds: float) -> None: ...

    def report(self) -> dict[str, object]: ...


def samples_of(advert: NodeState | None, key: ModuleKey) -> int:
    """A device's training samples behind ``key``, from its advert: a task's count for a head or an adapter, the
    sum over the tasks of that modality (the adapters it advertises for it) for an encoder."""
    if advert is None:
        return 0
    counts = advert.num_samples
    if key.kind == "head" or key.kind == "adapter":
        return counts.get(key.task, 0)
    tasks = {k.task for k in advert.modules if k.kind == "adapter" and k.modality == key.modality}
    return sum(counts.get(t, 0) for t in tasks)


@dataclass(frozen=True, slots=True, kw_only=True)
class ResourceSelection:
    """The fog's selection rule (see the module docstring)."""

    thresholds: ResourceThresholds = field(default_factory=ResourceThresholds)
    max_per_module: int = 0  # 0: every eligible holder

    def select(self, key: ModuleKey, holders: Iterable[str], adverts: Mapping[str, NodeState]) -> Selection:
        chosen: list[str] = []
        passed_over: list[tuple[str, str]] = []
        for dev in sorted(holders):
            advert = adverts.get(dev)
            ok, reasons = eligible(advert.telemetry if advert and advert.telemetry else None, self.thresholds)
            if ok:
                chosen.append(dev)
            else:
                passed_over.append((dev, "; ".join(reasons)))
        cap = self.max_per_module
        if cap > 0 and len(chosen) > cap:
            chosen.sort(key=lambda d: -samples_of(adverts.get(d), key))
            chosen = chosen[:cap]
        return Selection(frozenset(chosen), tuple(passed_over))


@dataclass(frozen=True, slots=True, kw_only=True)
class LateUpdates:
    """What a fog does with an update for a closed cluster round: ``reject`` (it hears expired) or ``next_round``
    (one round late, folded into the open round with a staleness weight)."""

    mode: str = "reject"
    decay: float = 0.5

    def folds(self, lag: int) -> bool:
        """Whether an update ``lag`` cluster rounds late is folded into the open round."""
        return lag == 1 and self.mode == "next_round"

    def weight(self, num_samples: int, lag: int) -> float:
        return staleness_weight(num_samples, self.decay, lag)

    def why_not(self, lag: int, key: ModuleKey) -> str:
        """The detail an expired update's refusal carries (empty when late updates are rejected anyway)."""
        if self.mode != "next_round":
            return ""
        return (f"; {lag} cluster rounds late (at most 1 is folded in)" if lag > 1 else
                f"; {key} is not in the open round" if lag == 1 else
                "; its global round's aggregate has already left for the cloud")


@dataclass(frozen=True, slots=True, kw_only=True)
class FogRules:
    """Every rule of a fog round in one value: selection, staleness, quorum, aggregation rule, deadline."""

    selection: SelectionPolicy = field(default_factory=ResourceSelection)
    late: LateUpdates = field(default_factory=LateUpdates)
    min_participants: int = 1  # fewer chosen or contributing devices than this: the module is left as it was
    aggregator: str = "fedavg"
    aggregator_params: Mapping[str, object] = field(default_factory=dict)
    round_deadline_s: float = 600.0  # a cluster round's deadline: this or the cloud's, whichever is shorter

    @classmethod
    def from_config(cls, cfg: FogConfig) -> FogRules:
        f = cfg.fog
        return cls(selection=ResourceSelection(thresholds=cfg.selection, max_per_module=f.max_participants_per_module),
                   late=LateUpdates(mode=f.late_updates, decay=f.staleness_decay),
                   min_participants=f.min_participants, aggregator=f.aggregator,
                   aggregator_params=dict(f.aggregator_params), round_deadline_s=f.round_deadline_s)

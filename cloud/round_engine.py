"""The cloud's round rules without MQTT: :class:`CloudRound` takes the fogs' aggregates (applied / duplicate /
stale / rejected) and round reports, says when a global round may close, merges it into new global states, and
names the version they go out as.

Its durable side is the :class:`~cloud.round_state.CloudRoundState` it is handed (an aggregate is committed
before :meth:`CloudRound.accept` returns APPLIED); the merge rule is that state's aggregator (``[cloud]
aggregator``), and the job's shape and deadlines are a :class:`CloudSchedule` value. The cloud service
(cloud/service.py) decodes, acks, stores, evaluates and publishes around it; tests drive it without a broker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from cloud.config import CloudSection
from cloud.round_state import CloudRoundState
from hffm_core.aggregation.ranks import fit_rank
from hffm_core.errors import AggregationError, DecodeError, HffmError
from hffm_core.protocol import FogAggregate, FogRoundReport, ModuleKey

log = logging.getLogger(__name__)
State = dict[str, np.ndarray]
APPLIED, DUPLICATE, STALE, REJECTED = "applied", "duplicate", "stale", "rejected"


@dataclass(frozen=True, slots=True, kw_only=True)
class CloudSchedule:
    """The job's shape: global rounds, E_agg and local epochs announced to the fogs, and the deadlines."""

    rounds: int = 5
    agg_every: int = 2
    local_epochs: int = 1
    round_deadline_s: float = 600.0  # one cluster round at the fogs
    startup_timeout_s: float = 300.0  # the fogs' wait for their devices before round 1

    @classmethod
    def from_section(cls, c: CloudSection) -> CloudSchedule:
        return cls(rounds=c.rounds, agg_every=c.agg_every, local_epochs=c.local_epochs,
                   round_deadline_s=c.round_deadline_s, startup_timeout_s=c.startup_timeout_s)

    def allowance(self, g: int) -> float:
        """How long global round ``g`` waits for the fogs: ``agg_every`` cluster-round deadlines plus one for the
        upward hop, and the fogs' start-up wait for devices in round 1."""
        return self.round_deadline_s * (self.agg_every + 1) + (self.startup_timeout_s if g == 1 else 0.0)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one aggregate or report: its status, the ack it hears (``""``: none) and, when refused, the
    error the service raises after the ack."""

    status: str
    ack: str = ""
    error: HffmError | None = None


@dataclass(frozen=True, slots=True)
class Merge:
    """A closed global round: the new global states (of the modules merged), how many modules the rule or an
    overflow refused, how many got a merged delta, and the version the states go out as."""

    states: dict[ModuleKey, State]
    refused: int
    modules_updated: int
    version: int
    last: bool  # the job's last round: its versions go out as full state


class CloudRound:
    def __init__(self, *, fogs: Iterable[str], keys: list[ModuleKey], schedule: CloudSchedule,
                 state: CloudRoundState) -> None:
        self.expected_fogs = set(fogs)
        self.keys = keys
        self.schedule = schedule
        self.state = state
        self.round_g = 0
        self.deadline = 0.0
        self.closed_reports: dict[int, frozenset[str]] = {}  # the last closed rounds' counted fogs (in memory)

    @property
    def reported(self) -> set[str]:
        """The fogs whose report counted in the open round."""
        return self.state.reported

    def open(self, g: int, now: float, *, resume: bool = False) -> bool:
        """Open global round ``g`` (``resume``: with the aggregates and reports the state already holds); returns
        whether it is the job's end (after the last round)."""
        if not resume and self.round_g and g > self.round_g:
            self.closed_reports = {self.round_g: frozenset(self.state.reported)}
        self.round_g = g
        if not resume:  # keys of this round only; older rounds are refused as stale anyway
            self.state.open(g)
        self.deadline = now + self.schedule.allowance(g)
        return g > self.schedule.rounds

    def _admit(self, fog: str, g: int, what: str, unexpected: str) -> Outcome | None:
        """None for a message of an expected fog in the open round; else REJECTED (``unexpected`` says why) for
        another fog, or STALE (an older round's also hears expired: the fog drops it) for another round."""
        if fog not in self.expected_fogs:
            return Outcome(REJECTED, error=DecodeError(unexpected))
        if g == self.round_g:
            return None
        return Outcome(STALE, ack="expired" if g < self.round_g else "",
                       error=DecodeError(f"stale {what} for round {g}; open round is {self.round_g}"))

    def _late_copy(self, fog: str, g: int, applied: bool, what: str) -> Outcome | None:
        """DUPLICATE (acked applied again) for a resent copy, from an expected fog, of what counted in a round
        now closed: its first ack came late (a slow cloud, a fog's resend on its backoff), so the copy arrives
        after the round it belongs to. It is not stale: it was applied, and the fog must hear so."""
        if g < self.round_g and fog in self.expected_fogs and applied:
            log.info("cloud: late copy of %s from %s for closed round %d ignored", what, fog, g)
            return Outcome(DUPLICATE, ack="applied")
        return None

    def accept(self, msg: FogAggregate, decode: Callable[[], State]) -> Outcome:
        """Fold a fog's aggregate into the open round, committed before APPLIED is returned. ``decode`` gives its
        delta, raising DecodeError or AggregationError when it does not fit the module (then it is refused, so
        that a report naming it need not wait for it)."""
        late = self._late_copy(msg.fog, msg.global_round, msg.global_round < self.round_g
                               and self.state.seen(msg.idempotency_key), f"aggregate {msg.idempotency_key}")
        if late is not None:
            return late
        refused = self._admit(msg.fog, msg.global_round, "aggregate",
                              f"fog {msg.fog!r} is not one of {sorted(self.expected_fogs)}")
        if refused is not None:
            return refused
        if self.state.seen(msg.idempotency_key):
            log.info("cloud: duplicate aggregate %s ignored", msg.idempotency_key)
            return Outcome(DUPLICATE, ack="applied")  # its first ack was lost: say so again
        try:
            if msg.key not in self.keys:
                raise DecodeError(f"unknown module {msg.key}")
            self.state.add(msg.key, msg.idempotency_key, decode(), msg.total_weight, fog=msg.fog)
        except (DecodeError, AggregationError) as exc:
            self.state.refuse(msg.idempotency_key)
            return Outcome(REJECTED, ack="rejected", error=exc)
        return Outcome(APPLIED, ack="applied")

    def report(self, msg: FogRoundReport, fleet: str) -> Outcome:
        """A fog's round report: it counts once every aggregate it names is here or refused (with retransmissions
        an aggregate may arrive after the report that names it)."""
        late = self._late_copy(msg.fog, msg.global_round,
                               msg.fog in self.closed_reports.get(msg.global_round, ()), "round report")
        if late is not None:
            return late
        refused = self._admit(msg.fog, msg.global_round, "round report",
                              f"round report from unexpected fog {msg.fog!r}")
        if refused is not None:
            return refused
        self.state.report(msg.fog, {f"{fleet}/{msg.fog}/{msg.global_round}/{k}" for k in msg.modules})
        return Outcome(APPLIED, ack="applied")

    def counted(self, fog: str) -> bool:
        """Count ``fog``'s report if all it names is in; returns whether the round is now complete."""
        return self.state.check_reported(fog) and self.complete()

    def complete(self) -> bool:
        return self.reported >= self.expected_fogs

    def resume(self) -> set[str]:
        """After a restart: count the saved reports whose aggregates are all in; returns those fogs."""
        return self.state.settle_promised()

    def merge(self, true: Mapping[ModuleKey, State]) -> Merge:
        """The open round merged into the global states ``true``: each module's merged delta added, unless the
        rule refused it or the sum overflows to NaN/Inf (the module then stays as it was)."""
        g = self.round_g
        deltas = self.state.results(self.keys)
        refused = len(self.state.merge_refused)  # logged by the round state
        states: dict[ModuleKey, State] = {}
        for key, delta in sorted(deltas.items()):
            delta = fit_rank(delta, {n: a.shape for n, a in true[key].items()})  # mixed LoRA ranks: ranks.py
            new = {n: (a + delta[n]).astype(np.float32) for n, a in true[key].items()}
            if not all(np.isfinite(a).all() for a in new.values()):
                refused += 1
                log.warning("cloud: %s not updated in round %d: the merge overflows to NaN/Inf", key, g)
                continue
            states[key] = new
        return Merge(states, refused, len(deltas), version=g, last=g >= self.schedule.rounds)

    def close(self) -> None:
        """Drop the closed round's sums."""
        self.state.close(self.keys)

"""The fog's round rules without MQTT: :class:`FogRound` selects a cluster round's participants from the devices'
adverts, classifies each update (applied / duplicate / stale / conflict / refused), decides when a round may
close and what the close yields, and says what goes upward after E_agg cluster rounds.

The rules themselves are policy objects (fog_gateway/policies.py), given like a Flower strategy; the durable side
is the journal it is handed (the ``RoundLog`` hooks: an update that :meth:`FogRound.accept` calls "applied" is
staged and committed by :meth:`FogRound.flush`, several per transaction, and acked by the gateway only after that;
a position is committed by :meth:`FogRound.commit`). Times are passed in. The gateway
(fog_gateway/service.py) decodes, acks, publishes and calls this; tests drive it without a broker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from fog_gateway.policies import AggSchedule, FogRules
from fog_gateway.round_book import RoundBook, RoundLog
from fog_gateway.round_journal import Position, Snapshot, Stamp, State, StoredDelta, job_of
from fog_gateway.schedule import Schedule
from hffm_core.protocol import ModuleKey, ModuleUpdate, NodeState, RoundControl

log = logging.getLogger(__name__)
GLOBALS_GRACE_S = 60.0  # how long a new global round waits for the global versions of the modules it sent up

APPLIED, DUPLICATE, CONFLICT, STALE, PARTIAL, REFUSED = \
    "applied", "duplicate", "conflict", "stale", "partial", "refused"


@dataclass(frozen=True, slots=True, order=True)
class RoundPosition:
    """Where a fog is in the schedule: global round ``g``, cluster round ``c`` (0 before the first)."""

    g: int = 0
    c: int = 0

    def __post_init__(self) -> None:
        if self.g < 0 or self.c < 0:
            raise ValueError(f"a round position needs g >= 0 and c >= 0, got ({self.g},{self.c})")

    def __str__(self) -> str:
        return f"({self.g},{self.c})"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one update: ``status`` (one of the constants above), the ack it hears (``""``: none) and,
    for a refused one, why (the gateway raises it as a DecodeError after the ack)."""

    status: str
    ack: str = ""
    reason: str = ""
    stored: StoredDelta | None = None


class FogRound:
    """One fog's round state and rules (see the module docstring)."""

    def __init__(self, *, fleet: str, node: str, rules: FogRules, journal: RoundLog,
                 schedule: AggSchedule | None = None) -> None:
        self.fleet, self.node, self.rules, self.journal = fleet, node, rules, journal
        self.schedule: AggSchedule = schedule if schedule is not None else Schedule()
        self.e_agg = 0  # this global round's E_agg (0: the plan's)
        self.sync_started: float | None = None  # when the last aggregates went upward
        self.cluster_started = 0.0
        self.late_folded = 0
        self.reset()

    def reset(self) -> None:
        """No round state (a job from scratch); the E_agg schedule and its measurements stay."""
        self.at = RoundPosition()
        self.in_round = False
        self.modules: list[ModuleKey] = []
        self.participants: dict[ModuleKey, set[str]] = {}
        self.previous: dict[ModuleKey, set[str]] = {}  # the participants of cluster round c - 1
        self.round_updated: set[ModuleKey] = set()  # modules updated in this global round
        self.sent_last: set[ModuleKey] = set()  # modules sent upward last time
        self.plan: RoundControl | None = None  # the cloud's
        self.plan_seen_at = 0.0
        self.start: dict[ModuleKey, State] = {}  # the global versions this global round started from
        # The accepted updates: aggregators, who reported, weights, and the keys applied in recent rounds (a
        # retransmission whose first ack was lost may arrive after its round closed: it must hear "applied").
        self.book = RoundBook(self.journal, (self.rules.aggregator, dict(self.rules.aggregator_params)))
        self.skipped: set[str] = set()  # devices sitting out the open cluster round
        self.deadline = 0.0
        self.settle_until = 0.0  # a resumed round does not close early before its participants' adverts are back
        self.round_via: set[str] = set()  # devices whose update reached this round through a D2D relay

    def agg_every(self) -> int:
        """This global round's E_agg (the plan's after a restart, which does not journal the choice)."""
        return self.e_agg or (self.plan.agg_every if self.plan is not None else 1)

    # -- the plan and a new global round -------------------------------------------------------------------------
    def take_plan(self, plan: RoundControl, now: float) -> bool:
        """Keep the cloud's ``plan`` if it is newer than the one held; returns whether it was."""
        if self.plan is not None and plan.global_round <= self.plan.global_round:
            return False
        self.plan, self.plan_seen_at = plan, now
        return True

    def due(self) -> bool:
        """Whether the plan names a global round this fog has not started."""
        return self.plan is not None and self.plan.global_round > self.at.g

    def ready_modules(self, held: set[ModuleKey], stamps: Mapping[ModuleKey, Stamp], now: float
                      ) -> set[ModuleKey] | None:
        """The modules of ``held`` the plan's global round starts with, or None to wait: modules this fog sent
        upward wait (bounded) for the version merged from them, and in round 1 every module waits for its initial
        version; after that a module without a global version (``stamps``) is left out."""
        assert self.plan is not None
        g = self.plan.global_round
        waiting = {k for k in held & self.sent_last if stamps.get(k, (-1, -1))[0] < g - 1}
        if g == 1:
            waiting |= {k for k in held if k not in stamps}
        if waiting and now < self.plan_seen_at + GLOBALS_GRACE_S:
            return None
        return {k for k in held if k in stamps} - waiting

    def start_global(self, modules: Collection[ModuleKey], states: Mapping[ModuleKey, State], now: float) -> None:
        """Enter the plan's global round with ``modules``, from the global versions ``states``; picks E_agg."""
        assert self.plan is not None
        self.at = RoundPosition(self.plan.global_round, self.at.c)
        if self.sync_started is not None:
            self.schedule.observe_sync(now - self.sync_started)
            self.sync_started = None
        self.e_agg = self.schedule.pick(self.plan.agg_every)
        self.modules = sorted(modules)
        self.start = {k: states[k] for k in self.modules}
        self.book.round_weight = {k: {} for k in self.modules}
        self.round_updated = set()

    def open_cluster(self, c: int, *, holders: Callable[[ModuleKey], set[str]], adverts: Mapping[str, NodeState],
                     now: float) -> None:
        """Open cluster round ``c``: fresh aggregators and the participants the selection policy picks."""
        assert self.plan is not None
        self.at = RoundPosition(self.at.g, c)
        self.book.open(self.modules)
        self.skipped = set()
        self.previous = self.participants if c > 1 else {}
        self.participants = {k: self._select(k, holders(k), adverts) for k in self.modules}
        self.round_via = set()
        self.cluster_started = now
        self.deadline = now + min(self.plan.deadline_s, self.rules.round_deadline_s)
        self.in_round = True

    def _select(self, key: ModuleKey, holders: set[str], adverts: Mapping[str, NodeState]) -> set[str]:
        """The selection policy's choice; none when it is below min_participants."""
        picked = self.rules.selection.select(key, holders, adverts)
        for dev, why in picked.passed_over:
            log.info("fog %s: %s not selected for %s: %s", self.node, dev, key, why)
        if 0 < len(picked.chosen) < self.rules.min_participants:
            log.warning("fog %s: %s left out of round %s: %d eligible holder(s), min_participants is %d",
                        self.node, key, self.at, len(picked.chosen), self.rules.min_participants)
            return set()
        return set(picked.chosen)

    def sit_out(self, device: str, skip: tuple[int, int] | None) -> bool:
        """A device's advert says it sits out ``skip``; returns True when that is the open round (news)."""
        if not self.in_round or skip != (self.at.g, self.at.c) or device in self.skipped:
            return False
        self.skipped.add(device)
        return True

    # -- updates -------------------------------------------------------------------------------------------------
    def accept(self, msg: ModuleUpdate, reporters: tuple[str, ...], *, holders: Collection[str],
               decode: Callable[[], State]) -> Outcome:
        """Classify ``msg`` (counting for ``reporters``: its sender, or the devices a D2D relay covers) and fold a
        new one in, staged for the journal: its ``applied`` ack (and any ack while updates are staged) must wait for
        :meth:`flush`. ``decode`` gives its delta (only a new update is decoded).

        Raises:
            AggregationError: the delta does not fit the module or the rule refused it (nothing was stored).
        """
        idem, key, book = msg.idempotency_key, msg.key, self.book
        lag = self.at.c - msg.cluster_round if self.in_round and msg.global_round == self.at.g else -1
        if idem not in book.applied:
            if lag != 0 and not (self.rules.late.folds(lag) and key in book.aggs):
                return self._stale(msg, lag)
            if key not in book.aggs:
                return Outcome(REFUSED, reason=f"module {key} is not aggregated in this round")
            chosen = (self.participants if lag == 0 else self.previous).get(key, set())
            for dev in (d for d in reporters if d not in chosen):
                if dev not in holders:
                    return Outcome(REFUSED, reason=f"device {dev!r} is not an advertised holder of {key}")
                return Outcome(REFUSED, reason=f"device {dev!r} was not selected for {key} in round "
                                              f"({msg.global_round},{msg.cluster_round})")
        seen = (book.late if lag else book.reported).get(key, set()) & set(reporters)
        if seen and idem not in book.applied and seen != set(reporters):
            return Outcome(PARTIAL, ack="rejected", reason=f"update {idem} covers {sorted(reporters)}, of which "
                                                           f"{sorted(seen)} already reported on their own: it cannot "
                                                           "be applied in part")
        applied_digest = book.applied.get(idem)
        if applied_digest is not None and msg.sha256 and msg.sha256.encode() != applied_digest:
            # Same key, other content: whoever sent first, this copy was not applied, and "applied" would be a lie.
            log.warning("fog %s: update %s conflicts with the update already applied under that key (other "
                        "content): answered conflict; was a client publishing as %s?", self.node, idem, msg.sender)
            return Outcome(CONFLICT, ack="conflict")
        if idem in book.applied or seen:
            log.info("fog %s: duplicate update %s ignored", self.node, idem)
            return Outcome(DUPLICATE, ack="applied")  # its first ack was lost: say so again
        stored = StoredDelta(key=idem, module=key, sender=msg.sender, num_samples=msg.num_samples, lag=lag,
                             weight=self.rules.late.weight(msg.num_samples, lag), delta=decode(), covers=msg.covers,
                             digest=msg.sha256.encode())
        book.accept(stored, global_round=self.at.g, cluster_round=self.at.c)
        self.round_via.update(d for d in reporters if d != msg.sender)
        if lag:
            self.late_folded += 1
            log.info("fog %s: late update %s folded into round %s with lag %d, weight %.4g", self.node, idem,
                     self.at, lag, stored.weight)
        return Outcome(APPLIED, ack="applied", stored=stored)

    def _stale(self, msg: ModuleUpdate, lag: int) -> Outcome:
        """An update outside the open round; one for a closed round also hears expired."""
        closed = (msg.global_round, msg.cluster_round) < (self.at.g, self.at.c + (not self.in_round))
        why = self.rules.late.why_not(lag, msg.key) if closed else ""
        return Outcome(STALE, ack="expired" if closed else "",
                       reason=f"stale update {msg.idempotency_key} for round ({msg.global_round},{msg.cluster_round}); "
                              f"open round is ({self.at.g},{self.at.c}) in_round={self.in_round}{why}")

    # -- closing -------------------------------------------------------------------------------------------------
    def expected(self, key: ModuleKey, reachable: Callable[[str], bool], surely: Collection[str] = ()) -> set[str]:
        """Who must still report ``key``: selected, not sitting the round out, and ``reachable`` (``surely``: devices
        known to be reachable, which need not be asked one by one)."""
        chosen = self.participants.get(key, set()) - self.skipped
        sure = chosen.intersection(surely)
        return sure | {d for d in chosen - sure if reachable(d)}

    def complete(self, *, expected: Callable[[ModuleKey], set[str]], gone: Callable[[], set[str]],
                 advertised: Collection[str], now: float, first: ModuleKey | None = None) -> bool:
        """Whether the open round may close before its deadline: every module's ``expected`` devices reported and
        none is held below min_participants by a selected device that is not ``gone``. A resumed round first waits
        (until ``settle_until``) for its participants' adverts. ``first``: the module to judge first (the one an
        update just reached: the answer is then usually "no" after one module, not after all)."""
        if not self.in_round:
            return False
        if now < self.settle_until and not set().union(*self.participants.values()) <= set(advertised):
            return False
        order = self.modules if first is None or first not in self.modules else \
            [first, *(k for k in self.modules if k != first)]
        left: set[str] | None = None  # gone(), asked once, and only when some module got all its expected reports
        for k in order:
            want = expected(k)
            if not want <= self.book.reported[k]:
                return False
            left = gone() if left is None else left
            if not self.book.done(k, expected=want, selected=self.participants.get(k, set()) - self.skipped - left,
                                  minimum=self.rules.min_participants):
                return False
        return True

    def close(self, true: Mapping[ModuleKey, State], now: float) -> tuple[dict[ModuleKey, State],
                                                                          list[tuple[ModuleKey, str, str]]]:
        """The new cluster states and the refused modules (module, counter, reason) of the closing round."""
        new_states, refused = self.book.results(true, self.rules.min_participants)
        for key, _counter, why in refused:
            log.warning("fog %s: %s not updated in round %s: %s", self.node, key, self.at, why)
        self.schedule.observe_cluster(now - self.cluster_started)
        return new_states, refused

    def settle(self, new_states: Mapping[ModuleKey, State]) -> bool:
        """Record the closed round's updated modules; returns whether another cluster round of g follows."""
        self.round_updated.update(new_states)
        if self.at.c < self.agg_every():
            return True
        self.in_round = False
        return False

    def summary(self, new_states: Mapping[ModuleKey, State], refused: list[tuple[ModuleKey, str, str]], *,
                seconds: float, mixed: int) -> dict[str, Any]:
        """The closed cluster round as one entry of the gateway's round log."""
        return {"global_round": self.at.g, "cluster_round": self.at.c, "seconds": round(seconds, 3),
                "modules_updated": len(new_states), "updates": self.book.updates(),
                "too_few_participants": [str(k) for k, c, _ in refused if c == "too_few_participants"],
                "reporters": sorted(set().union(*self.book.reported.values())),
                "via_relay": sorted(self.round_via), "mixed": mixed}

    def own_weight(self, key: ModuleKey) -> float:
        """The sample weight behind this fog's own aggregate of ``key`` in the open round."""
        got = self.book.contributors(key)
        return float(sum(n for d, n in self.book.round_weight.get(key, {}).items() if d in got))

    def upward(self) -> list[tuple[ModuleKey, dict[str, float]]]:
        """At the end of a global round: each updated module with the weight behind each device's latest update."""
        return [(k, self.book.round_weight[k]) for k in self.modules
                if self.book.round_weight[k] and k in self.round_updated]

    def sent_upward(self, keys: Collection[ModuleKey], now: float) -> None:
        self.sent_last = set(keys)
        self.sync_started = now

    # -- the journal ---------------------------------------------------------------------------------------------
    def flush(self) -> int:
        """Commit the updates accepted since the last flush in one transaction (group commit); returns how many.

        Raises:
            RoundJournalError: the commit failed (the book keeps it as ``fatal``).
        """
        return self.book.flush()

    def position(self) -> Position:
        return Position(round_g=self.at.g, cluster_c=self.at.c, in_round=self.in_round, modules=self.modules,
                        participants=self.participants, previous=self.previous, round_weight=self.book.round_weight,
                        round_updated=self.round_updated, sent_last=self.sent_last, plan=self.plan)

    def commit(self, keys: Collection[ModuleKey], *, true: Mapping[ModuleKey, State],
               published: Mapping[ModuleKey, State], stamps: Mapping[ModuleKey, Stamp], start: bool = False) -> None:
        """Journal the position and the states of ``keys`` in one transaction; the closed round's deltas go. With
        ``start`` (a new global round) also the job and the states the round starts from."""
        assert self.plan is not None
        self.book.flush()  # the accepted updates first: the position below drops the round's rows
        states = {"true": true, "published": published, **({"start": self.start} if start else {})}
        self.book.write(self.journal.advance, self.position(), {r: {k: v[k] for k in keys} for r, v in states.items()},
                        stamps, job=job_of(self.fleet, self.node, self.plan) if start else None)

    def restore(self, snap: Snapshot, now: float, *, settle_s: float) -> None:
        """Carry on from a journal a previous run left: its position and accepted updates, a fresh deadline, and
        ``settle_s`` (at most) to wait for the participants' adverts before closing early."""
        p = snap.position
        assert p.plan is not None
        self.at, self.in_round, self.modules, self.plan = RoundPosition(p.round_g, p.cluster_c), p.in_round, \
            p.modules, p.plan
        self.participants, self.previous, self.round_updated, self.sent_last = p.participants, p.previous, \
            p.round_updated, p.sent_last
        self.plan_seen_at = now
        self.start = {k: snap.states["start"][k] for k in self.modules}
        self.book.restore(snap)
        self.deadline = now + min(p.plan.deadline_s, self.rules.round_deadline_s)
        self.settle_until = min(self.deadline, now + settle_s)

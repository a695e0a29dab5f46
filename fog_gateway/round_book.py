"""The fog gateway's open round in memory, kept in step with its journal (round_journal.py).

:class:`RoundBook` holds the updates accepted into the open cluster round: an update is folded into its module's
aggregator, committed to the journal, counted, and only then acked by the gateway. It also decides, at the close,
which modules are updated (min_participants, refusing robust rules) and, for an early close, whether a module is
done.

:class:`JournaledRounds` is the part of :class:`~fog_gateway.service.FogGateway` that goes to and from the
journal: start from scratch, resume what a previous run left, let the cloud's first plan confirm the journal's job,
commit a new position, and publish what a position announces. It works on the gateway's attributes (the names in
``round_journal.SCHEDULE`` and those declared below) and its publishers (``_publish``, ``_publish_ctl``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from fog_gateway.config import FogConfig
from fog_gateway.round_journal import (
    SCHEDULE,
    Position,
    RoundJournal,
    RoundJournalError,
    Snapshot,
    State,
    StoredDelta,
    job_of,
    same_job,
)
from hffm_core.aggregation import make_aggregator
from hffm_core.config import make_codecs
from hffm_core.downlink import JobWatch, VersionPublisher
from hffm_core.errors import AggregationError
from hffm_core.protocol import ModuleKey, ModuleVersion, RoundControl
from hffm_core.transport import TrafficMeter

log = logging.getLogger(__name__)


class RoundBook:
    """The updates accepted into the open cluster round, kept in step in memory and in the journal.

    Per module: the aggregator (``aggs``), the devices that reported on time (``reported``) or were folded in late
    (``late``), and over the global round the sample weight behind each device's latest update (``round_weight``);
    plus the idempotency keys applied recently (``applied``, insertion-ordered, the last ``journal.kept``). A failed
    journal write is kept in ``fatal``: the gateway must then stop, since its memory is ahead of the disk.
    """

    def __init__(self, journal: RoundJournal, rule: tuple[str, Mapping[str, Any]]) -> None:
        self.journal = journal
        self.rule = rule
        self.fatal: RoundJournalError | None = None
        self.applied: dict[str, bytes | None] = {}  # key -> the applied update's digest (None: not known)
        self.round_weight: dict[ModuleKey, dict[str, int]] = {}
        self.open([])

    def open(self, modules: list[ModuleKey]) -> None:
        """Fresh aggregators for a new cluster round of ``modules``."""
        self.aggs = {k: make_aggregator(*self.rule) for k in modules}
        self.reported: dict[ModuleKey, set[str]] = {k: set() for k in modules}
        self.late: dict[ModuleKey, set[str]] = {k: set() for k in modules}

    def restore(self, snap: Snapshot) -> None:
        """The state a previous run journaled: its applied keys, and its open round rebuilt by adding the stored
        deltas again in the order they were accepted (so every rule, robust ones too, gives the same result)."""
        self.applied = {k: snap.digests.get(k) for k in snap.applied}
        self.round_weight = {k: dict(v) for k, v in snap.position.round_weight.items()}
        self.open(snap.position.modules if snap.position.in_round else [])
        for stored in snap.deltas:
            self.aggs[stored.module].add(stored.delta, stored.weight)
            self._count(stored)

    def accept(self, stored: StoredDelta, *, global_round: int, cluster_round: int) -> None:
        """Fold ``stored`` into its module's aggregator, commit it to the journal, then count it (the caller acks
        after this returns).

        Raises:
            AggregationError: the aggregator refused the delta (nothing was stored).
            RoundJournalError: the commit failed (also kept in ``fatal``).
        """
        self.aggs[stored.module].add(stored.delta, stored.weight)
        self.write(self.journal.add, stored, global_round=global_round, cluster_round=cluster_round)
        self._count(stored)

    def _count(self, stored: StoredDelta) -> None:
        reporters = stored.reporters  # a D2D relay's update counts for each device it covers
        (self.late if stored.lag else self.reported)[stored.module].update(reporters)
        weights = self.round_weight.setdefault(stored.module, {})
        share = stored.num_samples / len(reporters) if stored.covers else stored.num_samples
        for dev in reporters:
            if stored.lag:
                weights.setdefault(dev, share)
            else:
                weights[dev] = share
        self.applied[stored.key] = stored.digest or self.applied.get(stored.key)  # a replayed delta keeps its digest
        while len(self.applied) > self.journal.kept:
            del self.applied[next(iter(self.applied))]

    def write(self, method: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        """Call a journal write; a failure is kept in ``fatal`` and raised."""
        try:
            method(*args, **kwargs)
        except RoundJournalError as exc:
            self.fatal = exc
            raise

    def contributors(self, key: ModuleKey) -> set[str]:
        """The devices whose deltas are in ``key``'s aggregate this round, on time or late."""
        return self.reported[key] | self.late[key]

    def done(self, key: ModuleKey, *, expected: set[str], selected: set[str], minimum: int) -> bool:
        """Whether ``key`` lets its cluster round close early: every ``expected`` device reported, and it is not
        below ``minimum`` contributors while ``selected`` devices (that went offline) could still bring it there."""
        if not expected <= self.reported[key]:
            return False
        got = self.contributors(key)
        return not (0 < len(got) < minimum <= len(got | selected))

    def updates(self) -> int:
        return sum(agg.count for agg in self.aggs.values())

    def results(self, true: Mapping[ModuleKey, State], minimum: int) -> tuple[dict[ModuleKey, State],
                                                                               list[tuple[ModuleKey, str, str]]]:
        """At the close: the new cluster state (``true`` + the aggregate) of each module that got updates, and the
        modules left as they were, as (module, counter, reason): fewer than ``minimum`` contributors
        (``too_few_participants``), or a robust rule outside its tolerance or an aggregate that overflows to
        NaN/Inf (``aggregation_refused``; a refusing rule never falls back to a plain mean)."""
        new_states: dict[ModuleKey, State] = {}
        refused: list[tuple[ModuleKey, str, str]] = []
        for key, agg in self.aggs.items():
            got = len(self.contributors(key))
            if agg.count == 0:
                continue
            if got < minimum:
                why = f"{got} device(s) reported, min_participants is {minimum}"
                refused.append((key, "too_few_participants", why))
                continue
            try:
                delta = agg.result()
            except AggregationError as exc:
                refused.append((key, "aggregation_refused", str(exc)))
                continue
            new = {n: (a + delta[n]).astype(np.float32) for n, a in true[key].items()}
            if not all(np.isfinite(a).all() for a in new.values()):
                refused.append((key, "aggregation_refused", "the aggregate overflows to NaN/Inf"))
                continue
            new_states[key] = new
        return new_states, refused


class JournaledRounds:
    """The gateway's side of the journal (see the module docstring)."""

    cfg: FogConfig
    fleet: str
    node: str
    meter: TrafficMeter
    journal: RoundJournal
    jobs: JobWatch
    plan: RoundControl | None
    round_g: int
    cluster_c: int
    in_round: bool
    modules: list[ModuleKey]

    def _publish(self, version: ModuleVersion) -> None:
        raise NotImplementedError

    def _publish_ctl(self, c: int, *, final: bool) -> None:
        raise NotImplementedError

    def _forget(self) -> None:
        """No round state: a gateway that starts a job from scratch (it stays in the job it is in, if any)."""
        self.pub = VersionPublisher(fleet=self.fleet, sender=self.node, codecs=make_codecs(self.cfg.downlink,
                                                                                           "downlink"),
                                    job=self.jobs.job or "")
        blank = Position()  # the schedule: round_g, cluster_c, in_round, modules, participants, previous, ...
        for name in SCHEDULE:
            setattr(self, name, getattr(blank, name))
        self.plan_seen_at = 0.0
        self.job: dict[str, Any] | None = None  # the job of a resumed journal, until the cloud's plan confirms it
        self.start_state: dict[ModuleKey, State] = {}
        # The accepted updates: aggregators, who reported, weights, and the keys applied in recent rounds (a
        # retransmission whose first ack was lost may arrive after its round closed: it must hear "applied").
        self.book = RoundBook(self.journal, (self.cfg.fog.aggregator, self.cfg.fog.aggregator_params))
        self.skipped: set[str] = set()
        self.deadline = 0.0
        self.settle_until = 0.0  # a resumed round does not close early before its participants' adverts are back
        self.announce_pending = False

    def _resume(self, snap: Snapshot | None) -> None:
        """Carry on from the journal a previous run left: its position, states and accepted updates, with a fresh
        deadline. What it may not have published yet is published again by ``start()`` (``announce_pending``)."""
        if snap is None:
            return
        if (snap.job.get("fleet"), snap.job.get("fog")) != (self.fleet, self.node):
            log.warning("fog %s: the round journal belongs to %s; starting from scratch", self.node, snap.job)
            self.journal.reset()
            return
        for name in SCHEDULE:
            setattr(self, name, getattr(snap.position, name))
        assert self.plan is not None
        self.plan_seen_at, self.job, self.meter.round = time.monotonic(), snap.job, self.round_g
        self.jobs.job = self.pub.job = str(snap.job.get("job", ""))  # a journal from before job ids: job ""
        self.start_state = {k: snap.states["start"][k] for k in self.modules}
        self.pub.true, self.pub.published, self.pub.stamps = snap.states["true"], snap.states["published"], snap.stamps
        self.book.restore(snap)
        now = time.monotonic()
        self.deadline = now + min(self.plan.deadline_s, self.cfg.fog.round_deadline_s)
        self.settle_until = min(self.deadline, now + self.cfg.fog.startup_timeout_s)
        self.announce_pending = not snap.announced
        log.warning("fog %s: resuming after a restart at round (%d,%d)%s with %d update(s) from the journal",
                    self.node, self.round_g, self.cluster_c, "" if self.in_round else " (closed)", len(snap.deltas))

    def _check_job(self, plan: RoundControl) -> None:
        """The first cloud plan after resuming decides whether the journal is this job's (round_journal.same_job);
        when it is not, the journal is cleared and the gateway starts from scratch."""
        job, self.job = self.job, None
        if job is None or same_job(job, self.round_g, fleet=self.fleet, fog=self.node, plan=plan):
            return
        log.warning("fog %s: the cloud's plan (round %d of %d) is not the job of the round journal (%s at round "
                    "%d); starting from scratch", self.node, plan.global_round, plan.total_rounds, job, self.round_g)
        self.book.write(self.journal.reset)
        self._forget()

    def _commit(self, keys: list[ModuleKey], *, start: bool = False) -> None:
        """Journal the position and the states of ``keys`` in one transaction; the closed round's deltas go. With
        ``start`` (a new global round) also the job and the states the round starts from."""
        assert self.plan is not None
        states = {"true": self.pub.true, "published": self.pub.published, **({"start": self.start_state} if start
                                                                              else {})}
        position = Position(round_weight=self.book.round_weight, **{name: getattr(self, name) for name in SCHEDULE})
        self.book.write(self.journal.advance, position, {r: {k: v[k] for k in keys} for r, v in states.items()},
                        self.pub.stamps, job=job_of(self.fleet, self.node, self.plan) if start else None)

    def _announce(self, versions: list[ModuleVersion]) -> None:
        """Publish the versions and (in a round) the round's announcement, then record that in the journal."""
        for version in versions:
            self._publish(version)
        if self.in_round:
            self._publish_ctl(self.cluster_c, final=False)
        self.announce_pending = False
        self.book.write(self.journal.mark_announced)

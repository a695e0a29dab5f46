"""The fog gateway's open round in memory, kept in step with its journal (round_journal.py).

:class:`RoundBook` holds the updates accepted into the open cluster round: an update is folded into its module's
aggregator, counted and staged; :meth:`RoundBook.flush` commits the staged updates to the journal in one
transaction (group commit), and the gateway acks them only after that. A FedAvg module journals its running sum
(summed.py), a robust rule's module every delta. It also decides, at the close,
which modules are updated (min_participants, refusing robust rules) and, for an early close, whether a module is
done. The round engine (fog_gateway/round_engine.py) holds one per job.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np

from fog_gateway.round_journal import Position, RoundJournalError, RoundSum, Snapshot, Stamp, State, StoredDelta
from fog_gateway.summed import make_round_aggregator, summed
from hffm_core.aggregation.ranks import fit_rank
from hffm_core.errors import AggregationError
from hffm_core.protocol import ModuleKey


class RoundLog(Protocol):
    """The journal hooks a fog round writes through (round_journal.RoundJournal is the real one; tests may pass an
    in-memory one). Each call is one transaction; a failure raises RoundJournalError."""

    kept: int  # how many applied keys are remembered

    def add_batch(self, deltas: list[StoredDelta], *, global_round: int, cluster_round: int,
                  sums: Mapping[ModuleKey, RoundSum] | None = None) -> None: ...

    def advance(self, position: Position, states: Mapping[str, Mapping[ModuleKey, State]],
                stamps: Mapping[ModuleKey, Stamp], *, job: Mapping[str, Any] | None = None) -> None: ...

    def mark_announced(self) -> None: ...

    def reset(self) -> None: ...


class RoundBook:
    """The updates accepted into the open cluster round, kept in step in memory and in the journal.

    Per module: the aggregator (``aggs``), the devices that reported on time (``reported``) or were folded in late
    (``late``), and over the global round the sample weight behind each device's latest update (``round_weight``);
    plus the idempotency keys applied recently (``applied``, insertion-ordered, the last ``journal.kept``). A failed
    journal write is kept in ``fatal``: the gateway must then stop, since its memory is ahead of the disk.
    """

    def __init__(self, journal: RoundLog, rule: tuple[str, Mapping[str, Any]]) -> None:
        self.journal = journal
        self.rule = rule
        self.fatal: RoundJournalError | None = None
        self.applied: dict[str, bytes | None] = {}  # key -> the applied update's digest (None: not known)
        self.round_weight: dict[ModuleKey, dict[str, int]] = {}
        self.pending: list[StoredDelta] = []  # accepted, not yet committed (nor acked)
        self.commits = self.committed = 0  # group commits made and the updates they held (since start)
        self.at = (0, 0)  # the cluster round the pending updates belong to
        self.aggs: dict[ModuleKey, Any] = {}
        self.open([])

    def open(self, modules: list[ModuleKey]) -> None:
        """Fresh aggregators for a new cluster round of ``modules``; what is staged is committed first.

        Raises:
            RoundJournalError: that commit failed.
        """
        self.flush()
        self.aggs = {k: make_round_aggregator(*self.rule) for k in modules}
        self.reported: dict[ModuleKey, set[str]] = {k: set() for k in modules}
        self.late: dict[ModuleKey, set[str]] = {k: set() for k in modules}

    def restore(self, snap: Snapshot) -> None:
        """The state a previous run journaled: its applied keys, and its open round rebuilt by adding the stored
        deltas again in the order they were accepted (so every rule, robust ones too, gives the same result)."""
        self.applied = {k: snap.digests.get(k) for k in snap.applied}
        self.round_weight = {k: dict(v) for k, v in snap.position.round_weight.items()}
        self.pending = []
        self.open(snap.position.modules if snap.position.in_round else [])
        for key, got in snap.sums.items():
            running = summed(self.aggs[key])
            if running is None:
                raise RoundJournalError(f"the journal holds a running sum of {key}, but rule {self.rule[0]!r} needs "
                                        "every delta; move the journal away to start the job from scratch")
            running.load(got.sums, got.weight, got.count)
        for stored in snap.deltas:
            if stored.delta:
                self.aggs[stored.module].add(stored.delta, stored.weight)
            elif stored.module not in snap.sums:
                raise RoundJournalError(f"update {stored.key} was journaled without its delta or a sum")
            self._count(stored)

    def accept(self, stored: StoredDelta, *, global_round: int, cluster_round: int) -> None:
        """Fold ``stored`` into its module's aggregator, count it and stage it for the next :meth:`flush`; the
        caller acks it only after that commit.

        Raises:
            AggregationError: the aggregator refused the delta (nothing was staged).
        """
        self.aggs[stored.module].add(stored.delta, stored.weight)
        if summed(self.aggs[stored.module]) is not None:  # the sum is journaled, not the delta
            stored = StoredDelta(key=stored.key, module=stored.module, sender=stored.sender,
                                 num_samples=stored.num_samples, weight=stored.weight, lag=stored.lag, delta={},
                                 covers=stored.covers, digest=stored.digest)
        self.at = (global_round, cluster_round)
        self.pending.append(stored)
        self._count(stored)

    def flush(self) -> int:
        """Commit the staged updates, with the running sums of the modules they touched, in one transaction;
        returns how many were committed.

        Raises:
            RoundJournalError: the commit failed (also kept in ``fatal``: memory is ahead of the disk).
        """
        if not self.pending:
            return 0
        batch, sums = self.pending, {}
        for key in {d.module for d in batch}:
            running = summed(self.aggs[key])
            if running is not None:
                total, weight, count = running.state()
                sums[key] = RoundSum(sums=total, weight=weight, count=count)
        self.write(self.journal.add_batch, batch, global_round=self.at[0], cluster_round=self.at[1], sums=sums)
        self.pending = []
        self.commits += 1
        self.committed += len(batch)
        return len(batch)

    def commit_stats(self) -> dict[str, float]:
        """Group commits since start: how many, the updates they held, and the mean per commit."""
        return {"commits": self.commits, "updates": self.committed,
                "mean_updates": round(self.committed / self.commits, 2) if self.commits else 0.0}

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
                delta = fit_rank(agg.result(), {n: a.shape for n, a in true[key].items()})  # mixed LoRA ranks
            except AggregationError as exc:
                refused.append((key, "aggregation_refused", str(exc)))
                continue
            new = {n: (a + delta[n]).astype(np.float32) for n, a in true[key].items()}
            if not all(np.isfinite(a).all() for a in new.values()):
                refused.append((key, "aggregation_refused", "the aggregate overflows to NaN/Inf"))
                continue
            new_states[key] = new
        return new_states, refused

"""The gateway's side of its round journal (round_journal.py), an object the gateway holds: start from scratch,
resume what a previous run left, let the cloud's first plan confirm the journal's job, commit a new position, and
publish what a position announces (through the callbacks it was built with), then record that it was published.

It holds the :class:`~hffm_core.downlink.VersionPublisher` of the cluster versions (``pub``: their true and
published states, journaled with the position) and works on the :class:`~fog_gateway.round_engine.FogRound` it
was given.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from fog_gateway.round_engine import FogRound
from fog_gateway.round_journal import RoundJournal, Snapshot, same_job
from hffm_core.config import CodecSpec, make_codecs
from hffm_core.downlink import VersionPublisher
from hffm_core.protocol import ModuleKey, ModuleVersion, RoundControl

log = logging.getLogger(__name__)


class JournalKeeper:
    def __init__(self, journal: RoundJournal, rnd: FogRound, *, downlink: Mapping[str, CodecSpec],
                 publish: Callable[[ModuleVersion], None], publish_ctl: Callable[[int], None]) -> None:
        """``downlink``: the cluster versions' codecs; ``publish``: one cluster version; ``publish_ctl``: the
        announcement of cluster round c."""
        self.journal, self.round, self.downlink = journal, rnd, downlink
        self.publish, self.publish_ctl = publish, publish_ctl
        self.pub = self._publisher(job="")
        self.forget()

    def _publisher(self, *, job: str) -> VersionPublisher:
        return VersionPublisher(fleet=self.round.fleet, sender=self.round.node, job=job,
                                codecs=make_codecs(self.downlink, "downlink"))

    def forget(self) -> None:
        """No round state: a gateway that starts a job from scratch (it stays in the job it is in, if any)."""
        self.pub = self._publisher(job=self.pub.job)
        self.round.reset()
        self.job: dict[str, Any] | None = None  # the job of a resumed journal, until the cloud's plan confirms it
        self.announce_pending = False

    def clear(self) -> None:
        """Empty the journal and forget the round (a new job)."""
        self.round.book.write(self.journal.reset)
        self.forget()

    def resume(self, snap: Snapshot | None, now: float, *, settle_s: float) -> str | None:
        """Carry on from the journal a previous run left: its position, states and accepted updates, with a fresh
        deadline; returns its job id (None: nothing to resume). What it may not have published yet is published
        again by the gateway's ``start()`` (``announce_pending``)."""
        if snap is None:
            return None
        rnd = self.round
        if (snap.job.get("fleet"), snap.job.get("fog")) != (rnd.fleet, rnd.node):
            log.warning("fog %s: the round journal belongs to %s; starting from scratch", rnd.node, snap.job)
            self.journal.reset()
            return None
        rnd.restore(snap, now, settle_s=settle_s)
        self.job = snap.job
        self.pub.job = str(snap.job.get("job", ""))  # a journal from before job ids: job ""
        self.pub.true, self.pub.published, self.pub.stamps = snap.states["true"], snap.states["published"], snap.stamps
        self.announce_pending = not snap.announced
        log.warning("fog %s: resuming after a restart at round %s%s with %d update(s) from the journal", rnd.node,
                    rnd.at, "" if rnd.in_round else " (closed)", len(snap.deltas))
        return self.pub.job

    def check_job(self, plan: RoundControl) -> None:
        """The first cloud plan after resuming decides whether the journal is this job's (round_journal.same_job);
        when it is not, the journal is cleared and the gateway starts from scratch."""
        job, self.job = self.job, None
        rnd = self.round
        if job is None or same_job(job, rnd.at.g, fleet=rnd.fleet, fog=rnd.node, plan=plan):
            return
        log.warning("fog %s: the cloud's plan (round %d of %d) is not the job of the round journal (%s at round "
                    "%d); starting from scratch", rnd.node, plan.global_round, plan.total_rounds, job, rnd.at.g)
        self.clear()

    def commit(self, keys: list[ModuleKey], *, start: bool = False) -> None:
        """Journal the round's position and the cluster states of ``keys`` (FogRound.commit)."""
        self.round.commit(keys, true=self.pub.true, published=self.pub.published, stamps=self.pub.stamps,
                          start=start)

    def announce(self, versions: list[ModuleVersion]) -> None:
        """Publish the versions and (in a round) the round's announcement, then record that in the journal."""
        for version in versions:
            self.publish(version)
        if self.round.in_round:
            self.publish_ctl(self.round.at.c)
        self.announce_pending = False
        self.round.book.write(self.journal.mark_announced)

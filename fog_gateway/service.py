"""The fog gateway: per-module aggregation among the holders of a module, E_agg cluster rounds per global round.

Round schedule (see docs/architecture.md):
1. The cloud announces global round g on ``ctl/cloud`` after publishing the global versions of round g-1.
2. Once every expected device has advertised (or the startup timeout passed) and the global versions are here, the
   gateway publishes them as cluster stage 0 (retained) and announces cluster round 1 on ``ctl/{fog}``.
3. Devices train and send one delta per module. Each delta is folded into the module's running weighted sum as it
   arrives. The cluster round closes when every holder of every module has reported, or at the deadline; updated
   modules are published as cluster stage c (retained) and round c+1 is announced.
4. After E_agg cluster rounds the gateway sends, per module, its delta against the global version with the total
   sample weight behind it (``fogup``), then a round report (``fogdone``).

The round state lives in a journal on disk (round_journal.py): an update is acked only once it is committed there,
and a gateway restarted after a kill -9 resumes the open round from it (docs/reliability.md).
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from fog_gateway.config import FogConfig
from fog_gateway.neighbours import FogTopology
from fog_gateway.round_book import JournaledRounds
from fog_gateway.round_journal import RoundJournal, StoredDelta, staleness_weight
from hffm_core.aggregation import make_aggregator
from hffm_core.compression import ErrorFeedback
from hffm_core.compression.module_codec import layout_of, pack, same_layout, unpack
from hffm_core.config import make_codecs, resolve
from hffm_core.delivery import Outbox, ReliableSender, report_key
from hffm_core.downlink import JobWatch, ResyncNeeded, VersionReceiver
from hffm_core.errors import AggregationError, DecodeError
from hffm_core.observability import Gauge, Histogram, metrics_server_tls
from hffm_core.protocol import (
    FogAggregate,
    FogRoundReport,
    ModuleKey,
    ModuleUpdate,
    ModuleVersion,
    NodeState,
    ResyncRequest,
    RoundControl,
    encode,
    topics,
)
from hffm_core.protocol.topics import Topic
from hffm_core.resources import eligible
from hffm_core.security.wiring import service_security
from hffm_core.service import Service

log = logging.getLogger(__name__)
APPLIED_KEYS_KEPT = 100_000  # ~ a few rounds of a large fog; older retransmissions hear "expired"
GLOBALS_GRACE_S = 60.0


class FogGateway(FogTopology, JournaledRounds, Service):
    role = "fog"
    watch_broker = True

    def __init__(self, cfg: FogConfig) -> None:
        """Raises: RoundJournalError: the round journal in ``state_dir`` cannot be opened or read."""
        self.cfg = cfg
        self.fleet = cfg.fog.fleet
        offline = NodeState(fleet=self.fleet, node=cfg.fog.id, role="fog", fog=cfg.fog.id, online=False)
        metrics = resolve(cfg.base_dir, cfg.metrics_file) if cfg.metrics_file else None
        security = service_security(cfg, cfg.fog.id, resolve(cfg.base_dir, cfg.state_dir))
        super().__init__(node=cfg.fog.id, host=cfg.broker.host, port=cfg.broker.port, metrics_file=metrics,
                         connect_timeout_s=cfg.broker.connect_timeout_s,
                         metrics_listen=cfg.metrics.listen, metrics_insecure=cfg.metrics.insecure,
                         metrics_tls=metrics_server_tls(cfg),
                         will=(topics.state(self.fleet, cfg.fog.id), encode(offline)), **security)
        self.expected = set(cfg.fog.devices)
        self.holdings: dict[str, set[ModuleKey]] = {}
        self.adverts: dict[str, NodeState] = {}
        self.global_rx = VersionReceiver()  # the global versions, as the cloud published them
        self.up_codecs = make_codecs(cfg.uplink, "uplink")
        state_dir = resolve(cfg.base_dir, cfg.state_dir)
        self.residuals_path = state_dir / f"{cfg.fog.id}-residuals.npz"
        self.residuals_path.parent.mkdir(parents=True, exist_ok=True)
        self.feedback = ErrorFeedback.load(self.residuals_path) if self.residuals_path.exists() else ErrorFeedback()
        rel = cfg.reliability
        # Aggregates and round reports wait on disk until the cloud acks them (docs/reliability.md).
        self.outbox = Outbox(state_dir / f"{cfg.fog.id}-outbox.sqlite", base_s=rel.backoff_base_s,
                             max_s=rel.backoff_max_s) if rel.outbox else None
        self.sender = ReliableSender(self.outbox, self.transport, fleet=self.fleet, node=cfg.fog.id, target="cloud",
                                     category="fog_to_cloud") if self.outbox is not None else None
        self.startup_deadline = time.monotonic() + cfg.fog.startup_timeout_s
        self.rounds_log: list[dict[str, Any]] = []
        self.round_opened_at = time.monotonic()  # when the open cluster round was announced (for its duration)
        self.late_folded = 0
        make_aggregator(cfg.fog.aggregator, cfg.fog.aggregator_params)  # bad name/params: config error at start
        self.journal = RoundJournal(state_dir / f"{cfg.fog.id}-round.sqlite", kept=APPLIED_KEYS_KEPT)
        self.jobs = JobWatch(f"fog {cfg.fog.id}", self.rejected)  # the job: from the journal, else the cloud's plan
        self.offline_since: dict[str, float] = {}  # device -> when its advert (or last will) said offline
        self._topology_init()
        self.round_via: set[str] = set()  # devices whose update reached this round through a D2D relay
        self._forget()
        self._resume(self.journal.load())

    # -- service hooks -------------------------------------------------------------------------------------------
    def subscriptions(self) -> list[str]:
        subs = [topics.up_filter(self.fleet, self.node), topics.global_filter(self.fleet),
                topics.ctl(self.fleet, "cloud"), topics.resync_filter(self.fleet, self.node),
                topics.chunk_filter(self.fleet, self.node)]
        if self.sender is not None:
            subs.append(topics.ack_filter(self.fleet, self.node, self.node))
        return subs + [topics.state(self.fleet, d) for d in sorted(self.expected)] + self._topology_subscriptions()

    def start(self) -> None:
        self._advertise(online=True, status="running")
        if self.announce_pending:  # killed between the journal's commit and the publications: publish them again
            self._announce([self.pub.resync(k) for k in self.modules if k in self.pub.stamps])
        log.info("fog %s: waiting for devices %s", self.node, sorted(self.expected))

    def handle(self, topic: Topic, message: Any) -> None:
        if topic.kind == "state":
            self._on_state(message)
        elif topic.kind == "global":
            self._on_global(topic, message)
        elif topic.kind == "resync":
            self._on_resync(topic, message)
        elif topic.kind == "ctl":
            self._on_plan(message)
        elif topic.kind == "up":
            self._on_update(topic, message)
        elif topic.kind == "fogpeer":
            self._on_fogpeer(topic, message)
        elif topic.kind == "ack" and self.sender is not None:
            if message.sender != "cloud" or message.to != self.node:
                raise DecodeError(f"ack from {message.sender!r} to {message.to!r} is not the cloud's to {self.node}")
            self.sender.on_ack(message)
        else:
            raise DecodeError(f"fog {self.node} does not take {topic.kind!r} messages")

    def tick(self) -> None:
        if self.book.fatal is not None:  # memory is ahead of the journal: stop rather than ack what is not on disk
            raise self.book.fatal
        if self.sender is not None:
            self.sender.pump()
        if self.in_round:
            self._close_if_complete()  # e.g. nobody was eligible: no reason to wait for the deadline
        if self.in_round:
            if time.monotonic() > self.deadline:
                missing = {str(k): sorted(self._expected(k) - self.book.reported[k]) for k in self.modules}
                log.warning("fog %s: round (%d,%d) deadline passed; missing %s", self.node, self.round_g,
                            self.cluster_c, {k: v for k, v in missing.items() if v})
                self._close_cluster_round()
        elif self.mixing is not None:
            if self._mix_ready():  # the neighbours' aggregates are in (or their wait is over): finish the close
                self._close_cluster_round()
        else:
            self._maybe_start_round()

    def observe_extra(self) -> list[Gauge | Histogram]:
        logged = list(self.rounds_log)
        expected = set().union(*[set(v) for v in list(self.participants.values())]) if self.in_round else set()
        reporters = set().union(*[set(v) for v in list(self.book.reported.values())]) if self.in_round else set()
        return [
            Gauge(name="round", help="The round this tier is in (scope: global or cluster).",
                  values={(("scope", "global"),): self.round_g, (("scope", "cluster"),): self.cluster_c}),
            Gauge(name="round_expected", help="Devices selected for the open cluster round.",
                  values={(): len(expected)}),
            Gauge(name="round_participants", help="Devices whose update of the open cluster round is in.",
                  values={(): len(reporters)}),
            Gauge(name="rounds_closed", help="Cluster rounds closed.", values={(): len(logged)}, counter=True),
            Gauge(name="updates_aggregated", help="Device updates folded into closed cluster rounds.",
                  values={(): sum(r["updates"] for r in logged)}, counter=True),
            Gauge(name="late_updates_folded", help="Updates of a closed round folded into the next one.",
                  values={(): self.late_folded}, counter=True),
            Histogram(name="cluster_round_seconds", help="Cluster round durations, from announcement to close.",
                      observations=tuple(r["seconds"] for r in logged if "seconds" in r)),
        ]

    def extra_metrics(self) -> dict[str, Any]:
        return {"rounds": self.rounds_log, "late_updates_folded": self.late_folded,
                "schedule": self.schedule.report(),
                "outbox": self.sender.stats() if self.sender is not None else None}

    def finish(self) -> None:
        """On a clean exit the retained advert goes offline (the broker's last will covers crashes)."""
        if self.transport.connected:
            self._advertise(online=False, status="stopped")
        self.journal.close()

    def _advertise(self, *, online: bool, status: str) -> None:
        advert = NodeState(fleet=self.fleet, node=self.node, role="fog", fog=self.node, online=online,
                           status=status, last_seen=time.time(), job=self.jobs.job or "")
        self.transport.publish(topics.state(self.fleet, self.node), encode(advert), category="fog_to_cloud",
                               retain=True)

    # -- handlers ------------------------------------------------------------------------------------------------
    def _on_plan(self, plan: RoundControl) -> None:
        """The cloud's plan. One of another job than this fog's is either the end of a job this fog is not in
        (ignored: brokers keep the last job's final announcement) or the start of a new job (joined)."""
        if plan.sender != "cloud" or plan.global_round > plan.total_rounds + 1:
            raise DecodeError(f"round announcement from {plan.sender!r} for round {plan.global_round} "
                              f"of {plan.total_rounds} is not a valid cloud plan")
        if plan.job != self.jobs.job:
            if plan.final:
                self.jobs.ignore(plan.job, "the final round announcement")
                return
            self._join(plan.job)
        elif self.job is not None:
            self._check_job(plan)
        if self.plan is None or plan.global_round > self.plan.global_round:
            self.plan, self.plan_seen_at = plan, time.monotonic()
            if self.sender is not None:  # the cloud closed every earlier round
                self.sender.expire_rounds_before(plan.global_round)

    def _join(self, job: str) -> None:
        """Be in the cloud's ``job`` from now on: leave any other job's rounds, versions, queued aggregates and
        adverts behind, and apply the job's global versions that arrived before its plan."""
        old = self.jobs.job
        if old is not None:
            log.warning("fog %s: the cloud announces job %r; leaving job %r and starting from scratch", self.node,
                        job, old)
            self.book.write(self.journal.reset)
            self._forget()
            self.global_rx = VersionReceiver()
            if self.sender is not None:
                self.sender.expire_rounds_before(2**62)
        else:
            log.info("fog %s: joining job %r", self.node, job)
        for dev in [d for d, a in self.adverts.items() if a.job not in ("", job)]:
            del self.adverts[dev]
            self.holdings.pop(dev, None)
            self.offline_since.pop(dev, None)
        for version in self.jobs.join(job):
            self._on_global_version(version)
        self.pub.job = job
        self._advertise(online=True, status="running")

    def _on_state(self, msg: NodeState) -> None:
        if msg.role != "device" or msg.node not in self.expected:
            raise DecodeError(f"state of {msg.node!r} (role {msg.role}) is not an expected device of {self.node}")
        if msg.fog != self.node:
            raise DecodeError(f"device {msg.node!r} says its fog is {msg.fog!r}, not {self.node!r}")
        if msg.job and self.jobs.job is not None and msg.job != self.jobs.job:
            self.jobs.ignore(msg.job, f"the advert of {msg.node}")  # e.g. its retained advert from the last job
            return
        self.adverts[msg.node] = msg
        if msg.online:
            self.holdings[msg.node] = set(msg.modules)
            if self.offline_since.pop(msg.node, None) is not None:
                log.info("fog %s: device %s is online again", self.node, msg.node)
            if self.in_round and msg.skip == (self.round_g, self.cluster_c) and msg.node not in self.skipped:
                log.warning("fog %s: device %s sits out round (%d,%d): %s", self.node, msg.node, self.round_g,
                            self.cluster_c, msg.status)
                self.skipped.add(msg.node)
        else:
            self.offline_since.setdefault(msg.node, time.monotonic())
            if self.holdings.pop(msg.node, None) is not None:
                log.warning("fog %s: device %s went offline (%s)", self.node, msg.node, msg.status or "last will")
        self._close_if_complete()  # a skip, an offline participant, or the last advert a resumed round awaited

    def _on_global(self, topic: Topic, msg: ModuleVersion) -> None:
        if topic.module != msg.key or msg.sender != "cloud":
            raise DecodeError(f"global version of {msg.key} from {msg.sender!r} on {topic} is not the cloud's")
        if msg.job != self.jobs.job:  # an earlier job's retained version, or the next job's before its plan
            self.jobs.park(msg)
            return
        self._on_global_version(msg)

    def _on_global_version(self, msg: ModuleVersion) -> None:
        try:
            self.global_rx.apply(msg)
        except ResyncNeeded as exc:
            log.info("fog %s: %s; asking the cloud for the full state", self.node, exc)
            request = ResyncRequest(fleet=self.fleet, sender=self.node, target="cloud", modules=(msg.key,))
            self.transport.publish(topics.resync(self.fleet, "cloud", self.node), encode(request),
                                   category="fog_to_cloud")

    def _on_resync(self, topic: Topic, msg: ResyncRequest) -> None:
        if msg.sender not in self.expected or topic.node != msg.sender or msg.target != self.node:
            raise DecodeError(f"resync request from {msg.sender!r} is not for fog {self.node}")
        for key in msg.modules:
            self.transport.publish(topics.cluster(self.fleet, self.node, key), encode(self.pub.resync(key)),
                                   category="fog_to_device", retain=True)

    def _holders(self, key: ModuleKey) -> set[str]:
        return {d for d, keys in self.holdings.items() if key in keys}

    def _on_update(self, topic: Topic, msg: ModuleUpdate) -> None:
        if (topic.node, topic.module, topic.fog) != (msg.sender, msg.key, msg.fog) or msg.fog != self.node:
            raise DecodeError(f"update header ({msg.sender}, {msg.key}, {msg.fog}) does not match its topic")
        idem = msg.idempotency_key
        reporters = self._reporters(msg)  # the sender, or the devices a D2D relay's update covers
        lag = self.cluster_c - msg.cluster_round if self.in_round and msg.global_round == self.round_g else -1
        if idem not in self.book.applied:
            if lag != 0 and not (lag == 1 and self.cfg.fog.late_updates == "next_round" and msg.key in self.book.aggs):
                self._refuse_stale(msg, lag)
            if msg.key not in self.book.aggs:
                raise DecodeError(f"module {msg.key} is not aggregated in this round")
            chosen = (self.participants if lag == 0 else self.previous).get(msg.key, set())
            for dev in (d for d in reporters if d not in chosen):
                if dev not in self._holders(msg.key):
                    raise DecodeError(f"device {dev!r} is not an advertised holder of {msg.key}")
                raise DecodeError(f"device {dev!r} was not selected for {msg.key} in round "
                                  f"({msg.global_round},{msg.cluster_round})")
        seen = (self.book.late if lag else self.book.reported).get(msg.key, set()) & set(reporters)
        if seen and idem not in self.book.applied and seen != set(reporters):
            self.send_ack(self.node, msg.sender, [idem], "rejected")
            raise DecodeError(f"update {idem} covers {sorted(reporters)}, of which {sorted(seen)} already reported "
                              "on their own: it cannot be applied in part")
        applied_digest = self.book.applied.get(idem)
        if applied_digest is not None and msg.sha256 and msg.sha256.encode() != applied_digest:
            # Same key, other content: whoever sent first, this copy was not applied, and "applied" would be a lie.
            self.rejected["conflict"] += 1
            log.warning("fog %s: update %s conflicts with the update already applied under that key (other "
                        "content): answered conflict; was a client publishing as %s?", self.node, idem, msg.sender)
            self.send_ack(self.node, msg.sender, [idem], "conflict")
            return
        if idem in self.book.applied or seen:
            self.rejected["duplicate"] += 1
            log.info("fog %s: duplicate update %s ignored", self.node, idem)
            self.send_ack(self.node, msg.sender, [idem])  # its first ack was lost: say so again
            return
        delta = unpack(msg, layout_of(self.pub.true[msg.key]))
        if not same_layout(delta, self.pub.true[msg.key]):
            raise AggregationError(f"update of {msg.key} from {msg.sender} does not match the module's tensors")
        stored = StoredDelta(key=idem, module=msg.key, sender=msg.sender, num_samples=msg.num_samples, lag=lag,
                             weight=staleness_weight(msg.num_samples, self.cfg.fog.staleness_decay, lag), delta=delta,
                             covers=msg.covers, digest=msg.sha256.encode())
        self.book.accept(stored, global_round=self.round_g, cluster_round=self.cluster_c)
        self.round_via.update(d for d in reporters if d != msg.sender)
        if lag:
            self.late_folded += 1
            log.info("fog %s: late update %s folded into round (%d,%d) with lag %d, weight %.4g", self.node, idem,
                     self.round_g, self.cluster_c, lag, stored.weight)
        self.send_ack(self.node, msg.sender, [idem])  # only now: the update is on disk
        self._close_if_complete()

    def _refuse_stale(self, msg: ModuleUpdate, lag: int) -> None:
        """Raises DecodeError for an update outside the open round; one for a closed round also hears expired."""
        closed = (msg.global_round, msg.cluster_round) < (self.round_g, self.cluster_c + (not self.in_round))
        why = ""
        if closed:
            self.send_ack(self.node, msg.sender, [msg.idempotency_key], "expired")  # its round closed
            if self.cfg.fog.late_updates == "next_round":
                why = (f"; {lag} cluster rounds late (at most 1 is folded in)" if lag > 1 else
                       f"; {msg.key} is not in the open round" if lag == 1 else
                       "; its global round's aggregate has already left for the cloud")
        raise DecodeError(f"stale update {msg.idempotency_key} for round ({msg.global_round},{msg.cluster_round}); "
                          f"open round is ({self.round_g},{self.cluster_c}) in_round={self.in_round}{why}")

    def _close_if_complete(self) -> None:
        if not self.in_round:
            return
        if time.monotonic() < self.settle_until and not set().union(*self.participants.values()) <= set(self.adverts):
            return
        gone = self._gone()
        if all(self.book.done(k, expected=self._expected(k),
                              selected=self.participants.get(k, set()) - self.skipped - gone,
                              minimum=self.cfg.fog.min_participants) for k in self.modules):
            self._close_cluster_round()

    def _offline(self) -> set[str]:
        """The devices whose advert (or last will) has said offline for longer than ``offline_grace_s``: a new round
        starts without waiting for them. An online advert brings a device back."""
        limit = time.monotonic() - self.cfg.fog.offline_grace_s
        return {d for d, since in self.offline_since.items() if since <= limit}

    def _gone(self) -> set[str]:
        """The offline devices (``_offline``) that no D2D group member may still bring an update of: an open round
        no longer waits for them to reach ``min_participants`` (and ``_expected`` does not wait for them at all)."""
        return {d for d in self._offline() if not self._d2d_reachable(d)}

    def _expected(self, key: ModuleKey) -> set[str]:
        """Who must still report ``key`` this round: selected, not sitting it out, and still online, or offline for
        less than ``offline_grace_s`` (a device killed and restarted at once resends its update), or in a D2D group
        with a member online (its update may come through that neighbour: docs/topology.md)."""
        holders, offline = self._holders(key), self._offline()
        return {d for d in self.participants.get(key, set()) - self.skipped
                if d in holders or self._d2d_reachable(d) or (d in self.offline_since and d not in offline)}

    def _select(self, key: ModuleKey) -> set[str]:
        """The holders of ``key`` whose advertised resources pass the fog's thresholds, at most N of them (those
        with the most samples for the module); none when fewer than min_participants pass."""
        chosen = []
        for dev in sorted(self._holders(key)):
            advert = self.adverts.get(dev)
            ok, reasons = eligible(advert.telemetry if advert and advert.telemetry else None, self.cfg.selection)
            if ok:
                chosen.append(dev)
            else:
                log.info("fog %s: %s not selected for %s: %s", self.node, dev, key, "; ".join(reasons))
        cap = self.cfg.fog.max_participants_per_module
        if cap > 0 and len(chosen) > cap:
            chosen.sort(key=lambda d: -self._samples_of(d, key))
            chosen = chosen[:cap]
        if 0 < len(chosen) < self.cfg.fog.min_participants:
            log.warning("fog %s: %s left out of round (%d,%d): %d eligible holder(s), min_participants is %d",
                        self.node, key, self.round_g, self.cluster_c, len(chosen), self.cfg.fog.min_participants)
            return set()
        return set(chosen)

    def _samples_of(self, dev: str, key: ModuleKey) -> int:
        """The device's training samples behind ``key``, from its advert: a task's count for a head or an adapter,
        the sum over the tasks of that modality (the adapters it advertises for it) for an encoder."""
        advert = self.adverts.get(dev)
        if advert is None:
            return 0
        counts = advert.num_samples
        if key.kind == "head" or key.kind == "adapter":
            return counts.get(key.task, 0)
        tasks = {k.task for k in advert.modules if k.kind == "adapter" and k.modality == key.modality}
        return sum(counts.get(t, 0) for t in tasks)

    # -- the round schedule --------------------------------------------------------------------------------------
    def _maybe_start_round(self) -> None:
        plan = self.plan
        if plan is None or plan.global_round <= self.round_g:
            return
        now = time.monotonic()
        # Wait (up to the start-up timeout) for every device to advertise, but not for one that said it is offline.
        if not self.expected <= set(self.holdings) | self._offline() and now < self.startup_deadline:
            return
        held = set().union(*self.holdings.values()) if self.holdings else set()
        if plan.final:  # the final versions go out for every module a device of this job holds, online or not:
            # they are retained, and a device whose link flapped reads them when it is back
            held |= set().union(*(set(a.modules) for a in self.adverts.values()), set())
        # Modules this fog sent upward wait (bounded) for the version merged from them; in round 1 every module
        # waits for its initial version. A module the cloud never published is left out at once after that.
        stamps = self.global_rx.stamps
        waiting = {k for k in held & self.sent_last if stamps.get(k, (-1, -1))[0] < plan.global_round - 1}
        if plan.global_round == 1:
            waiting |= {k for k in held if k not in stamps}
        if waiting and now < self.plan_seen_at + GLOBALS_GRACE_S:
            return
        ready = {k for k in held if k in stamps} - waiting
        if ready != held:
            log.warning("fog %s: no global version for %s; leaving them out", self.node, sorted(map(str, held - ready)))
        self.round_g = plan.global_round
        self.meter.round = plan.global_round
        self._pick_agg_every(plan.agg_every)
        self.modules = sorted(ready)
        self.start_state = {k: self.global_rx.states[k] for k in self.modules}
        for key in self.modules:
            self.pub.true[key] = {n: a.copy() for n, a in self.start_state[key].items()}
        self.book.round_weight = {k: {} for k in self.modules}
        self.round_updated = set()
        # final: full state, so that nobody needs a resync after this gateway exits
        versions = [self.pub.version(k, (self.round_g, 0), full=plan.final) for k in self.modules]
        if plan.final:
            for version in versions:
                self._publish(version)
            self._publish_ctl(0, final=True)
            log.info("fog %s: job finished after %d global rounds", self.node, plan.global_round - 1)
            self.done = True
            return
        self._open_cluster_round(1)
        self._commit(self.modules, start=True)
        self._announce(versions)

    def _open_cluster_round(self, c: int) -> None:
        assert self.plan is not None
        self.cluster_c = c
        self.book.open(self.modules)
        self.skipped = set()
        self.previous = self.participants if c > 1 else {}
        self.participants = {k: self._select(k) for k in self.modules}
        self._choose_relays()
        self.round_via = set()
        self.cluster_started = time.monotonic()
        self.deadline = time.monotonic() + min(self.plan.deadline_s, self.cfg.fog.round_deadline_s)
        self.in_round = True

    def _close_cluster_round(self) -> None:
        if self.mixing is None:
            new_states, refused = self.book.results(self.pub.true, self.cfg.fog.min_participants)
            for key, counter, why in refused:
                self.rejected[counter] += 1
                log.warning("fog %s: %s not updated in round (%d,%d): %s", self.node, key, self.round_g,
                            self.cluster_c, why)
            self.schedule.observe_cluster(time.monotonic() - self.cluster_started)
            self.mixed_log = []
            if self._wants_mix():  # share with the neighbour fogs first; tick() comes back here once theirs are in
                self.refused_at_close = refused
                self._share(new_states)
                return
        else:
            new_states, refused = self._mixed(self.mixing[1]), self.refused_at_close
            self.mixing = None
        versions = []
        for key, new in new_states.items():
            self.round_updated.add(key)
            self.pub.true[key] = new
            versions.append(self.pub.version(key, (self.round_g, self.cluster_c)))
        self.rounds_log.append({"global_round": self.round_g, "cluster_round": self.cluster_c,
                                "seconds": round(time.monotonic() - self.round_opened_at, 3),
                                "modules_updated": len(new_states), "updates": self.book.updates(),
                                "too_few_participants": [str(k) for k, c, _ in refused if c == "too_few_participants"],
                                "reporters": sorted(set().union(*self.book.reported.values())),
                                "via_relay": sorted(self.round_via), "mixed": len(self.mixed_log)})
        log.info("fog %s: cluster round (%d,%d) closed: %d modules, %d updates, %d B to devices so far",
                 self.node, self.round_g, self.cluster_c, len(new_states), self.rounds_log[-1]["updates"],
                 self.meter.total("fog_to_device"))
        assert self.plan is not None
        if self.cluster_c < self._agg_every_now():
            self._open_cluster_round(self.cluster_c + 1)
        else:
            self.in_round = False
            self._send_upward()  # into the outbox first: a kill before the commit below sends the same keys again
        self._commit(list(new_states))
        if not self.in_round:
            self.feedback.save(self.residuals_path)  # after the commit: a resent aggregate is packed the same way
        self._announce(versions)
        if self.sender is not None:
            self.sender.pump()

    def _send_upward(self) -> None:
        sent: list[ModuleKey] = []
        devices: set[str] = set()
        for key in self.modules:
            weights = self.book.round_weight[key]
            if not weights or key not in self.round_updated:
                continue
            delta = {n: (a - self.start_state[key][n]).astype(np.float32) for n, a in self.pub.true[key].items()}
            packed, _sent = pack(delta, self.up_codecs[key.kind], feedback=self.feedback, stream=str(key),
                                 seed=zlib.crc32(f"{self.node}/{self.round_g}/{key}".encode()))
            agg = FogAggregate(fleet=self.fleet, fog=self.node, key=key, global_round=self.round_g,
                               total_weight=float(sum(weights.values())), num_devices=len(weights),
                               idempotency_key=FogAggregate.default_key(self.fleet, self.node, self.round_g, 0, key),
                               **packed.fields())
            self._send_up(agg.idempotency_key, topics.fogup(self.fleet, self.node, key), encode(agg))
            sent.append(key)
            devices |= set(weights)
        self.sent_last = set(sent)
        self.sync_started = time.monotonic()
        report = FogRoundReport(fleet=self.fleet, fog=self.node, global_round=self.round_g, modules=tuple(sent),
                                devices=tuple(sorted(devices)), cluster_rounds=self.cluster_c)
        self._send_up(report_key(self.fleet, self.node, self.round_g), topics.fogdone(self.fleet, self.node),
                      encode(report))
        log.info("fog %s: global round %d sent upward: %d modules from %d devices, %d B to cloud so far",
                 self.node, self.round_g, len(sent), len(devices), self.meter.total("fog_to_cloud"))

    def _send_up(self, key: str, topic: str, payload: bytes) -> None:
        """Through the outbox (kept until the cloud acks ``key``), or one acknowledged publish without it."""
        if self.sender is not None and self.plan is not None:
            # The cloud allows (agg_every + 1) cluster-round deadlines per global round, plus its start-up wait in
            # round 1: a message still queued after (agg_every + 2) deadlines + 10 min belongs to a closed round.
            self.sender.expiry_s = math.ceil(self.plan.deadline_s * (self.plan.agg_every + 2)) + 600
        if self.outbox is not None:
            self.outbox.put(key, topic, payload, round_=self.round_g)
        else:
            self.transport.publish(topic, payload, category="fog_to_cloud")

    def _publish(self, version: ModuleVersion) -> None:
        self.transport.publish(topics.cluster(self.fleet, self.node, version.key), encode(version),
                               category="fog_to_device", retain=True)

    def _publish_ctl(self, c: int, *, final: bool) -> None:
        assert self.plan is not None
        # Always name the participants: a device trains and sends only the modules it is listed for this round.
        participants = {str(k): tuple(sorted(v)) for k, v in self.participants.items()}
        ctl = RoundControl(fleet=self.fleet, sender=self.node, global_round=self.round_g, cluster_round=c,
                           total_rounds=self.plan.total_rounds, agg_every=self._agg_every_now(),
                           local_epochs=self.plan.local_epochs, deadline_s=self.plan.deadline_s, final=final,
                           participants=participants if not final else {}, relays=self.relays if not final else {},
                           job=self.plan.job)
        self.transport.publish(topics.ctl(self.fleet, self.node), encode(ctl), category="fog_to_device", retain=True)
        self.round_opened_at = time.monotonic()


def run_fog(config_path: Path, *, time_limit_s: float = 24 * 3600.0) -> None:
    """Load a fog config and run the gateway until the cloud finishes the job."""
    from hffm_core.config import load_config

    FogGateway(load_config(config_path, FogConfig)).run(time_limit_s=time_limit_s)

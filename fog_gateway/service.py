"""The fog gateway: per-module aggregation among the holders of a module, E_agg cluster rounds per global round
(the schedule: docs/architecture.md, "Round engines"). The round rules live in ``FogRound`` (round_engine.py, no
MQTT; its policies in policies.py); this module decodes, acks, journals and publishes around it, with the objects
it holds: the device roster (roster.py), the D2D and neighbour-fog part (neighbours.py) and the link to the cloud
(uplink.py). The round state lives in a journal on disk (round_journal.py): a batch's updates are committed
together (FedAvg: the running sum) and acked after that (acks.py); a gateway restarted after a kill -9 resumes the
open round from it (docs/reliability.md). The broker holds any backlog: MQTT 5 Receive Maximum and a bounded inbox.
Devices may differ in LoRA rank: updates are decoded at their sender's rank, and the advert names the ranks served
(hffm_core/aggregation/ranks.py)."""

from __future__ import annotations

import logging
import time
from operator import attrgetter
from pathlib import Path
from typing import Any

from fog_gateway.acks import HeldAcks
from fog_gateway.config import FogConfig
from fog_gateway.journal_keeper import JournalKeeper
from fog_gateway.metrics import round_gauges
from fog_gateway.neighbours import FogNeighbours, State
from fog_gateway.policies import FogRules
from fog_gateway.round_engine import APPLIED, CONFLICT, DUPLICATE, FogRound
from fog_gateway.round_journal import RoundJournal
from fog_gateway.roster import DeviceRoster
from fog_gateway.schedule import Schedule
from fog_gateway.uplink import CloudUplink
from hffm_core.aggregation import make_aggregator
from hffm_core.aggregation.ranks import fits_rank
from hffm_core.compression.module_codec import layout_of
from hffm_core.config import make_codecs, resolve
from hffm_core.downlink import JobWatch, ResyncNeeded, VersionReceiver, unpack_ranked
from hffm_core.errors import AggregationError, DecodeError
from hffm_core.observability import Gauge, Histogram, metrics_server_tls
from hffm_core.protocol import (
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
from hffm_core.security.wiring import service_security
from hffm_core.service import Service

log = logging.getLogger(__name__)
APPLIED_KEYS_KEPT = 100_000  # ~ a few rounds of a large fog; older retransmissions hear "expired"


def _held(part: str, name: str) -> property:
    """A gateway attribute that lives in one of the objects it holds (read by tests and tools)."""
    return property(attrgetter(f"{part}.{name}"), lambda self, value: setattr(attrgetter(part)(self), name, value))


class FogGateway(Service):
    role = "fog"
    watch_broker = True
    # Backpressure (an inbox of 8 + 8 updates however many devices report), group commit, decoding in paho's thread
    receive_maximum, batch_max, decode_on_receive = 8, 64, True
    batch_wait_s = 0.01  # a commit rewrites the running sum of each module it touches: fewer, larger commits
    # Read (and in tests set) on the gateway, held by its parts: the round engine, the journal keeper, the roster.
    round_g, cluster_c = _held("round.at", "g"), _held("round.at", "c")  # the round engine's RoundPosition
    in_round, plan, participants, deadline, book, late_folded = (
        _held("round", n) for n in ("in_round", "plan", "participants", "deadline", "book", "late_folded"))
    start_state, pub, job = _held("round", "start"), _held("keeper", "pub"), _held("keeper", "job")
    holdings, offline_since, adverts = (_held("roster", n) for n in ("holdings", "offline_since", "adverts"))

    def __init__(self, cfg: FogConfig) -> None:
        """Raises: RoundJournalError: the round journal in ``state_dir`` cannot be opened or read."""
        self.cfg = cfg
        self.fleet = cfg.fog.fleet
        offline = NodeState(fleet=self.fleet, node=cfg.fog.id, role="fog", fog=cfg.fog.id, online=False)
        metrics = resolve(cfg.base_dir, cfg.metrics_file) if cfg.metrics_file else None
        state_dir = resolve(cfg.base_dir, cfg.state_dir)
        security = service_security(cfg, cfg.fog.id, state_dir)
        super().__init__(node=cfg.fog.id, host=cfg.broker.host, port=cfg.broker.port, metrics_file=metrics,
                         connect_timeout_s=cfg.broker.connect_timeout_s, metrics_listen=cfg.metrics.listen,
                         metrics_insecure=cfg.metrics.insecure, metrics_tls=metrics_server_tls(cfg),
                         will=(topics.state(self.fleet, cfg.fog.id), encode(offline)), **security)
        self.roster = DeviceRoster(cfg.fog.devices, offline_grace_s=cfg.fog.offline_grace_s)
        self.global_rx = VersionReceiver()  # the global versions, as the cloud published them
        self.up_codecs = make_codecs(cfg.uplink, "uplink")
        # Aggregates and round reports wait on disk until the cloud acks them (docs/reliability.md).
        self.uplink = CloudUplink(fleet=self.fleet, node=self.node, state_dir=state_dir, reliability=cfg.reliability,
                                  codecs=self.up_codecs, transport=self.transport, meter=self.meter)
        self.startup_deadline = time.monotonic() + cfg.fog.startup_timeout_s
        self.rounds_log: list[dict[str, Any]] = []
        self.acks = HeldAcks(lambda dev, keys, status: self.send_ack(self.node, dev, keys, status))
        self.round_opened_at = time.monotonic()  # when the open cluster round was announced (for its duration)
        make_aggregator(cfg.fog.aggregator, cfg.fog.aggregator_params)  # bad name/params: config error at start
        self.journal = RoundJournal(state_dir / f"{cfg.fog.id}-round.sqlite", kept=APPLIED_KEYS_KEPT)
        self.jobs = JobWatch(f"fog {cfg.fog.id}", self.rejected)  # the job: from the journal, else the cloud's plan
        self.neighbours = FogNeighbours(
            fleet=self.fleet, node=self.node, d2d=cfg.d2d, codec_for=self.up_codecs.for_key,
            publish=lambda t, p: self.transport.try_publish(t, p, category="fog_to_fog"), rejected=self.rejected)
        s = cfg.schedule
        self.round = FogRound(fleet=self.fleet, node=self.node, rules=FogRules.from_config(cfg), journal=self.journal,
                              schedule=Schedule(agg_every=s.agg_every, adaptive=s.adaptive, sync_share=s.sync_share))
        self.keeper = JournalKeeper(self.journal, self.round, downlink=cfg.downlink, publish=self._publish,
                                    publish_ctl=lambda c: self._publish_ctl(c, final=False))
        job = self.keeper.resume(self.journal.load(), time.monotonic(), settle_s=cfg.fog.startup_timeout_s)
        if job is not None:
            self.jobs.job, self.meter.round = job, self.round.at.g

    # -- service hooks -------------------------------------------------------------------------------------------
    def subscriptions(self) -> list[str]:
        subs = [topics.up_filter(self.fleet, self.node), topics.global_filter(self.fleet),
                topics.ctl(self.fleet, "cloud"), topics.resync_filter(self.fleet, self.node),
                topics.chunk_filter(self.fleet, self.node)] + self.uplink.subscriptions()
        return subs + [topics.state(self.fleet, d) for d in sorted(self.roster.expected)] + \
            self.neighbours.subscriptions()

    def start(self) -> None:
        self._advertise(online=True, status="running")
        if self.keeper.announce_pending:  # killed between the journal's commit and the publications: again
            self._announce([self.pub.resync(k) for k in self.round.modules if k in self.pub.stamps])
        log.info("fog %s: waiting for devices %s", self.node, sorted(self.roster.expected))

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
            self.neighbours.on_fogpeer(topic, message, self.round)
        elif topic.kind == "ack" and self.uplink.sender is not None:
            self.uplink.on_ack(message)
        else:
            raise DecodeError(f"fog {self.node} does not take {topic.kind!r} messages")

    def tick(self) -> None:
        rnd = self.round
        if rnd.book.fatal is not None:  # memory is ahead of the journal: stop rather than ack what is not on disk
            raise rnd.book.fatal
        self.uplink.pump()
        if rnd.in_round:
            self._close_if_complete()  # e.g. nobody was eligible: no reason to wait for the deadline
        if rnd.in_round:
            if time.monotonic() > rnd.deadline:
                missing = {str(k): sorted(self._expected(k) - rnd.book.reported[k]) for k in rnd.modules}
                log.warning("fog %s: round %s deadline passed; missing %s", self.node, rnd.at,
                            {k: v for k, v in missing.items() if v})
                self._close_cluster_round()
        elif self.neighbours.mixing is not None:
            if self.neighbours.ready(rnd):  # the neighbours' aggregates are in (or their wait is over): close
                self._close_cluster_round()
        else:
            self._maybe_start_round()

    def observe_extra(self) -> list[Gauge | Histogram]:
        return round_gauges(self.round, self.rounds_log)

    def extra_metrics(self) -> dict[str, Any]:
        return {"rounds": self.rounds_log, "late_updates_folded": self.round.late_folded,
                "schedule": self.round.schedule.report(), "outbox": self.uplink.stats(),
                "group_commit": self.round.book.commit_stats()}

    def commit_pending(self) -> bool:
        return bool(self.round.book.pending)

    def flush(self) -> None:
        """After a batch of messages: commit its accepted updates (one transaction), then release their acks."""
        self.round.flush()
        self.acks.release()

    def finish(self) -> None:  # on a clean exit the retained advert goes offline (the last will covers crashes)
        self.flush()
        if self.transport.connected:
            self._advertise(online=False, status="stopped")
        self.journal.close()

    def _advertise(self, *, online: bool, status: str) -> None:
        advert = NodeState(fleet=self.fleet, node=self.node, role="fog", fog=self.node, online=online, status=status,
                           last_seen=time.time(), job=self.jobs.job or "", lora_ranks=self.roster.served(self.pub.true))
        self.transport.publish(topics.state(self.fleet, self.node), encode(advert), category="fog_to_cloud",
                               retain=True)

    # -- the job -------------------------------------------------------------------------------------------------
    def _on_plan(self, plan: RoundControl) -> None:
        """The cloud's plan. One of another job than this fog's is either the end of a job this fog is not in
        (ignored: brokers keep the last job's final announcement) or the start of a new job (joined)."""
        if plan.sender != "cloud" or plan.global_round > plan.total_rounds + 1:
            raise DecodeError(f"round announcement from {plan.sender!r} for round {plan.global_round} "
                              f"of {plan.total_rounds} is not a valid cloud plan")
        self.flush()  # what was accepted is committed and acked before a plan may clear the round
        if plan.job != self.jobs.job:
            if plan.final:
                self.jobs.ignore(plan.job, "the final round announcement")
                return
            self._join(plan.job)
        elif self.keeper.job is not None:
            self.keeper.check_job(plan)
        if self.round.take_plan(plan, time.monotonic()):
            self.uplink.expire_rounds_before(plan.global_round)  # the cloud closed every earlier round

    def _join(self, job: str) -> None:
        """Be in the cloud's ``job`` from now on: leave any other job's rounds, versions, queued aggregates and
        adverts behind, and apply the job's global versions that arrived before its plan."""
        old = self.jobs.job
        if old is not None:
            log.warning("fog %s: the cloud announces job %r; leaving job %r and starting from scratch", self.node,
                        job, old)
            self.keeper.clear()
            self.global_rx = VersionReceiver()
            self.uplink.expire_rounds_before(2**62)
        else:
            log.info("fog %s: joining job %r", self.node, job)
        self.roster.keep_job(job)
        for version in self.jobs.join(job):
            self._on_global_version(version)
        self.pub.job = job
        self._advertise(online=True, status="running")

    def _announce(self, versions: list[ModuleVersion]) -> None:  # publish, then record it
        self.keeper.announce(versions)

    # -- handlers ------------------------------------------------------------------------------------------------
    def _on_state(self, msg: NodeState) -> None:
        if msg.role != "device" or msg.node not in self.roster.expected:
            raise DecodeError(f"state of {msg.node!r} (role {msg.role}) is not an expected device of {self.node}")
        if msg.fog != self.node:
            raise DecodeError(f"device {msg.node!r} says its fog is {msg.fog!r}, not {self.node!r}")
        if msg.job and self.jobs.job is not None and msg.job != self.jobs.job:
            self.jobs.ignore(msg.job, f"the advert of {msg.node}")  # e.g. its retained advert from the last job
            return
        change = self.roster.update(msg, time.monotonic())
        if change == "back":
            log.info("fog %s: device %s is online again", self.node, msg.node)
        elif change == "gone":
            log.warning("fog %s: device %s went offline (%s)", self.node, msg.node, msg.status or "last will")
        if msg.online and self.roster.new_rank(msg):  # the LoRA ranks this fog serves changed: say so
            self._advertise(online=True, status="running")
        if msg.online and self.round.sit_out(msg.node, msg.skip):
            log.warning("fog %s: device %s sits out round %s: %s", self.node, msg.node, self.round.at, msg.status)
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
        if msg.sender not in self.roster.expected or topic.node != msg.sender or msg.target != self.node:
            raise DecodeError(f"resync request from {msg.sender!r} is not for fog {self.node}")
        for key in msg.modules:
            self.transport.publish(topics.cluster(self.fleet, self.node, key), encode(self.pub.resync(key)),
                                   category="fog_to_device", retain=True)

    def _on_update(self, topic: Topic, msg: ModuleUpdate) -> None:
        if (topic.node, topic.module, topic.fog) != (msg.sender, msg.key, msg.fog) or msg.fog != self.node:
            raise DecodeError(f"update header ({msg.sender}, {msg.key}, {msg.fog}) does not match its topic")
        # The update counts for its sender, or for the devices a D2D relay's update covers.
        out = self.round.accept(msg, self.neighbours.reporters(msg), holders=self.roster.holders(msg.key),
                                decode=lambda: self._delta_of(msg))
        if out.status in (DUPLICATE, CONFLICT):
            self.rejected[out.status] += 1
        if out.ack:  # an applied update's only once it is on disk (flush)
            self.acks.put(msg.sender, msg.idempotency_key, out.ack, staged=bool(self.round.book.pending))
        if out.reason:
            raise DecodeError(out.reason)
        if out.status == APPLIED:
            self._close_if_complete(first=msg.key)

    def _delta_of(self, msg: ModuleUpdate) -> State:
        """The update's delta. Raises DecodeError or AggregationError when it does not fit the module."""
        delta = unpack_ranked(msg, layout_of(self.pub.true[msg.key]))  # the sender's own LoRA rank
        if not fits_rank(delta, self.pub.true[msg.key]):
            raise AggregationError(f"update of {msg.key} from {msg.sender} does not match the module's tensors")
        return delta

    # -- the round schedule --------------------------------------------------------------------------------------
    def _close_if_complete(self, first: ModuleKey | None = None) -> None:
        if self.round.in_round and self.round.complete(expected=self._expected, gone=self._gone,
                                                       advertised=self.roster.adverts, now=time.monotonic(),
                                                       first=first):
            self._close_cluster_round()

    def _gone(self) -> set[str]:
        """The devices offline for longer than ``offline_grace_s`` that no D2D group member may still bring an
        update of: an open round no longer waits for them to reach ``min_participants``."""
        online = self.roster.holdings
        return {d for d in self.roster.offline(time.monotonic()) if not self.neighbours.reachable(d, online)}

    def _expected(self, key: ModuleKey) -> set[str]:
        """Who must still report ``key`` this round: selected, not sitting it out, and still online, or offline for
        less than ``offline_grace_s`` (a device killed and restarted at once resends its update), or in a D2D group
        with a member online (its update may come through that neighbour: docs/topology.md)."""
        roster = self.roster
        holders, offline, since = roster.holders(key), roster.offline(time.monotonic()), roster.offline_since
        return self.round.expected(key, lambda d: d in holders or self.neighbours.reachable(d, roster.holdings)
                                   or (d in since and d not in offline), surely=holders)

    def _maybe_start_round(self) -> None:
        rnd, now = self.round, time.monotonic()
        if not rnd.due():
            return
        # Wait (up to the start-up timeout) for every device to advertise, but not for one that said it is offline.
        if not self.roster.all_in(now) and now < self.startup_deadline:
            return
        plan = rnd.plan
        assert plan is not None
        # The final versions go out for every module a device of this job holds, online or not: they are retained,
        # and a device whose link flapped reads them when it is back.
        held = self.roster.held(everything=plan.final)
        ready = rnd.ready_modules(held, self.global_rx.stamps, now)
        if ready is None:
            return
        if ready != held:
            log.warning("fog %s: no global version for %s; leaving them out", self.node, sorted(map(str, held - ready)))
        rnd.start_global(ready, self.global_rx.states, now)
        self.meter.round = plan.global_round
        for key in rnd.modules:
            self.pub.true[key] = {n: a.copy() for n, a in rnd.start[key].items()}
        # final: full state, so that nobody needs a resync after this gateway exits
        versions = [self.pub.version(k, (rnd.at.g, 0), full=plan.final) for k in rnd.modules]
        if plan.final:
            for version in versions:
                self._publish(version)
            self._publish_ctl(0, final=True)
            log.info("fog %s: job finished after %d global rounds", self.node, plan.global_round - 1)
            self.done = True
            return
        self._open_cluster_round(1)
        self.keeper.commit(rnd.modules, start=True)
        self._announce(versions)

    def _open_cluster_round(self, c: int) -> None:
        self.round.open_cluster(c, holders=self.roster.holders, adverts=self.roster.adverts, now=time.monotonic())
        self.neighbours.choose_relays(self.round.participants, self.roster.adverts)

    def _close_cluster_round(self) -> None:
        self.flush()  # the round's last updates are committed and acked before its close is announced
        rnd, nb = self.round, self.neighbours
        if nb.mixing is None:
            new_states, refused = rnd.close(self.pub.true, time.monotonic())
            for _key, counter, _why in refused:
                self.rejected[counter] += 1
            nb.mixed_log = []
            if nb.wants_mix(rnd):  # share with the neighbour fogs first; tick() comes back here once theirs are in
                nb.share(new_states, refused, rnd, time.monotonic())
                return
        else:
            new_states, refused = nb.mixed(rnd, self.pub.true)
        versions = []
        for key, new in new_states.items():
            self.pub.true[key] = new
            versions.append(self.pub.version(key, (rnd.at.g, rnd.at.c)))
        self.rounds_log.append(rnd.summary(new_states, refused, seconds=time.monotonic() - self.round_opened_at,
                                           mixed=len(nb.mixed_log)))
        log.info("fog %s: cluster round %s closed: %d modules, %d updates, %d B to devices so far", self.node,
                 rnd.at, len(new_states), self.rounds_log[-1]["updates"], self.meter.total("fog_to_device"))
        if rnd.settle(new_states):
            self._open_cluster_round(rnd.at.c + 1)
        else:  # into the outbox first: a kill before the commit below sends the same keys again
            rnd.sent_upward(self.uplink.send_round(rnd, self.pub.true), time.monotonic())
        self.keeper.commit(list(new_states))
        if not rnd.in_round:
            self.uplink.save_feedback()  # after the commit: a resent aggregate is packed the same way
        self._announce(versions)
        self.uplink.pump()

    def _publish(self, version: ModuleVersion) -> None:
        self.transport.publish(topics.cluster(self.fleet, self.node, version.key), encode(version),
                               category="fog_to_device", retain=True)

    def _publish_ctl(self, c: int, *, final: bool) -> None:
        rnd, plan = self.round, self.round.plan
        assert plan is not None
        # Always name the participants: a device trains and sends only the modules it is listed for this round.
        participants = {str(k): tuple(sorted(v)) for k, v in rnd.participants.items()}
        ctl = RoundControl(fleet=self.fleet, sender=self.node, global_round=rnd.at.g, cluster_round=c,
                           total_rounds=plan.total_rounds, agg_every=rnd.agg_every(), local_epochs=plan.local_epochs,
                           deadline_s=plan.deadline_s, final=final, participants=participants if not final else {},
                           relays=self.neighbours.relays if not final else {}, job=plan.job)
        self.transport.publish(topics.ctl(self.fleet, self.node), encode(ctl), category="fog_to_device", retain=True)
        self.round_opened_at = time.monotonic()


def run_fog(config_path: Path, *, time_limit_s: float = 24 * 3600.0) -> None:
    """Load a fog config and run the gateway until the cloud finishes the job."""
    from hffm_core.config import load_config

    FogGateway(load_config(config_path, FogConfig)).run(time_limit_s=time_limit_s)

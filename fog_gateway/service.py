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
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.compression import ErrorFeedback
from edge_runtime.compression.module_codec import layout_of, pack, same_layout, unpack
from edge_runtime.config import FogConfig, make_codecs, resolve
from edge_runtime.downlink import ResyncNeeded, VersionPublisher, VersionReceiver
from edge_runtime.resources import eligible
from edge_runtime.errors import AggregationError, DecodeError
from edge_runtime.protocol import (
    FogAggregate,
    FogRoundReport,
    ModuleKey,
    ModuleUpdate,
    NodeState,
    ResyncRequest,
    RoundControl,
    encode,
    topics,
)
from edge_runtime.protocol.topics import Topic
from edge_runtime.reliability import Outbox, ReliableSender, report_key
from edge_runtime.security.wiring import service_security
from edge_runtime.service import Service
from fog_gateway.aggregation import Aggregator, make_aggregator

log = logging.getLogger(__name__)
APPLIED_KEYS_KEPT = 100_000  # ~ a few rounds of a large fog; older retransmissions hear "expired"
State = dict[str, np.ndarray]
GLOBALS_GRACE_S = 60.0


class FogGateway(Service):
    role = "fog"
    watch_broker = True

    def __init__(self, cfg: FogConfig) -> None:
        self.cfg = cfg
        self.fleet = cfg.fog.fleet
        offline = NodeState(fleet=self.fleet, node=cfg.fog.id, role="fog", fog=cfg.fog.id, online=False)
        metrics = resolve(cfg.base_dir, cfg.metrics_file) if cfg.metrics_file else None
        security = service_security(cfg, cfg.fog.id, resolve(cfg.base_dir, cfg.state_dir))
        super().__init__(node=cfg.fog.id, host=cfg.broker.host, port=cfg.broker.port, metrics_file=metrics,
                         will=(topics.state(self.fleet, cfg.fog.id), encode(offline)), **security)
        self.expected = set(cfg.fog.devices)
        self.holdings: dict[str, set[ModuleKey]] = {}
        self.adverts: dict[str, NodeState] = {}
        self.participants: dict[ModuleKey, set[str]] = {}
        self.skipped: set[str] = set()
        self.global_rx = VersionReceiver()  # the global versions, as the cloud published them
        self.pub = VersionPublisher(fleet=self.fleet, sender=cfg.fog.id, codecs=make_codecs(cfg.downlink, "downlink"))
        self.up_codecs = make_codecs(cfg.uplink, "uplink")
        self.residuals_path = resolve(cfg.base_dir, cfg.state_dir) / f"{cfg.fog.id}-residuals.npz"
        self.residuals_path.parent.mkdir(parents=True, exist_ok=True)
        self.feedback = ErrorFeedback.load(self.residuals_path) if self.residuals_path.exists() else ErrorFeedback()
        rel = cfg.reliability
        # Aggregates and round reports wait on disk until the cloud acks them (docs/reliability.md).
        self.outbox = Outbox(self.residuals_path.parent / f"{cfg.fog.id}-outbox.sqlite", base_s=rel.backoff_base_s,
                             max_s=rel.backoff_max_s) if rel.outbox else None
        self.sender = ReliableSender(self.outbox, self.transport, fleet=self.fleet, node=cfg.fog.id, target="cloud",
                                     category="fog_to_cloud") if self.outbox is not None else None
        self.plan: RoundControl | None = None
        self.plan_seen_at = 0.0
        self.round_g = 0
        self.cluster_c = 0
        self.in_round = False
        self.modules: list[ModuleKey] = []
        self.start_state: dict[ModuleKey, State] = {}
        self.aggs: dict[ModuleKey, Aggregator] = {}
        self.reported: dict[ModuleKey, set[str]] = {}
        # Idempotency keys applied in recent rounds (insertion-ordered, bounded): a retransmission whose first ack
        # was lost may arrive after its round closed, and must hear "applied", not "expired".
        self.applied_keys: dict[str, None] = {}
        self.round_weight: dict[ModuleKey, dict[str, int]] = {}
        self.round_updated: set[ModuleKey] = set()
        self.deadline = 0.0
        self.startup_deadline = time.monotonic() + cfg.fog.startup_timeout_s
        self.rounds_log: list[dict[str, Any]] = []
        self.sent_last: set[ModuleKey] = set()  # modules whose new global version the next round must wait for
        make_aggregator(cfg.fog.aggregator, cfg.fog.aggregator_params)  # bad name/params: config error at start

    # -- service hooks -------------------------------------------------------------------------------------------
    def subscriptions(self) -> list[str]:
        subs = [topics.up_filter(self.fleet, self.node), topics.global_filter(self.fleet),
                topics.ctl(self.fleet, "cloud"), topics.resync_filter(self.fleet, self.node),
                topics.chunk_filter(self.fleet, self.node)]
        if self.sender is not None:
            subs.append(topics.ack_filter(self.fleet, self.node, self.node))
        return subs + [topics.state(self.fleet, d) for d in sorted(self.expected)]

    def start(self) -> None:
        advert = NodeState(fleet=self.fleet, node=self.node, role="fog", fog=self.node, online=True,
                           status="running", last_seen=time.time())
        self.transport.publish(topics.state(self.fleet, self.node), encode(advert), category="fog_to_cloud",
                               retain=True)
        log.info("fog %s: waiting for devices %s", self.node, sorted(self.expected))

    def handle(self, topic: Topic, message: Any) -> None:
        if topic.kind == "state":
            self._on_state(message)
        elif topic.kind == "global":
            self._on_global(topic, message)
        elif topic.kind == "resync":
            self._on_resync(topic, message)
        elif topic.kind == "ctl":
            if message.sender != "cloud" or message.global_round > message.total_rounds + 1:
                raise DecodeError(f"round announcement from {message.sender!r} for round {message.global_round} "
                                  f"of {message.total_rounds} is not a valid cloud plan")
            if self.plan is None or message.global_round > self.plan.global_round:
                self.plan, self.plan_seen_at = message, time.monotonic()
                if self.outbox is not None:  # the cloud closed every earlier round
                    self.outbox.expire_rounds_before(message.global_round)
        elif topic.kind == "up":
            self._on_update(topic, message)
        elif topic.kind == "ack" and self.sender is not None:
            if message.sender != "cloud" or message.to != self.node:
                raise DecodeError(f"ack from {message.sender!r} to {message.to!r} is not the cloud's to {self.node}")
            self.sender.on_ack(message)
        else:
            raise DecodeError(f"fog {self.node} does not take {topic.kind!r} messages")

    def tick(self) -> None:
        if self.sender is not None:
            self.sender.pump()
        if self.in_round:
            self._close_if_complete()  # e.g. nobody was eligible: no reason to wait for the deadline
        if self.in_round:
            if time.monotonic() > self.deadline:
                missing = {str(k): sorted(self._expected(k) - self.reported[k]) for k in self.modules}
                log.warning("fog %s: round (%d,%d) deadline passed; missing %s", self.node, self.round_g,
                            self.cluster_c, {k: v for k, v in missing.items() if v})
                self._close_cluster_round()
        else:
            self._maybe_start_round()

    def extra_metrics(self) -> dict[str, Any]:
        return {"rounds": self.rounds_log, "outbox": self.sender.stats() if self.sender is not None else None}

    def finish(self) -> None:
        """On a clean exit the retained advert goes offline (the broker's last will covers crashes)."""
        if self.transport.connected:
            advert = NodeState(fleet=self.fleet, node=self.node, role="fog", fog=self.node, online=False,
                               status="stopped", last_seen=time.time())
            self.transport.publish(topics.state(self.fleet, self.node), encode(advert), category="fog_to_cloud",
                                   retain=True)

    # -- handlers ------------------------------------------------------------------------------------------------
    def _on_state(self, msg: NodeState) -> None:
        if msg.role != "device" or msg.node not in self.expected:
            raise DecodeError(f"state of {msg.node!r} (role {msg.role}) is not an expected device of {self.node}")
        if msg.fog != self.node:
            raise DecodeError(f"device {msg.node!r} says its fog is {msg.fog!r}, not {self.node!r}")
        self.adverts[msg.node] = msg
        if msg.online:
            self.holdings[msg.node] = set(msg.modules)
            if self.in_round and msg.skip == (self.round_g, self.cluster_c) and msg.node not in self.skipped:
                log.warning("fog %s: device %s sits out round (%d,%d): %s", self.node, msg.node, self.round_g,
                            self.cluster_c, msg.status)
                self.skipped.add(msg.node)
                self._close_if_complete()
        elif self.holdings.pop(msg.node, None) is not None:
            log.warning("fog %s: device %s went offline", self.node, msg.node)
            self._close_if_complete()

    def _on_global(self, topic: Topic, msg: Any) -> None:
        if topic.module != msg.key or msg.sender != "cloud":
            raise DecodeError(f"global version of {msg.key} from {msg.sender!r} on {topic} is not the cloud's")
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
        if msg.idempotency_key in self.applied_keys:
            self.rejected["duplicate"] += 1
            log.info("fog %s: duplicate update %s ignored", self.node, msg.idempotency_key)
            self.send_ack(self.node, msg.sender, [msg.idempotency_key])  # its first ack was lost: say so again
            return
        if msg.sender not in self._holders(msg.key):
            raise DecodeError(f"device {msg.sender!r} is not an advertised holder of {msg.key}")
        if self.in_round and msg.sender not in self.participants.get(msg.key, set()):
            raise DecodeError(f"device {msg.sender!r} was not selected for {msg.key} this round")
        if not self.in_round or (msg.global_round, msg.cluster_round) != (self.round_g, self.cluster_c):
            if (msg.global_round, msg.cluster_round) < (self.round_g, self.cluster_c + (not self.in_round)):
                self.send_ack(self.node, msg.sender, [msg.idempotency_key], "expired")  # its round closed
            raise DecodeError(f"stale update for round ({msg.global_round},{msg.cluster_round}); "
                              f"open round is ({self.round_g},{self.cluster_c}) in_round={self.in_round}")
        if msg.key not in self.aggs:
            raise DecodeError(f"module {msg.key} is not aggregated in this round")
        if msg.sender in self.reported[msg.key]:
            self.rejected["duplicate"] += 1
            log.info("fog %s: duplicate update %s ignored", self.node, msg.idempotency_key)
            self.send_ack(self.node, msg.sender, [msg.idempotency_key])  # its first ack was lost: say so again
            return
        delta = unpack(msg, layout_of(self.pub.true[msg.key]))
        if not same_layout(delta, self.pub.true[msg.key]):
            raise AggregationError(f"update of {msg.key} from {msg.sender} does not match the module's tensors")
        self.aggs[msg.key].add(delta, msg.num_samples)
        self.applied_keys[msg.idempotency_key] = None
        while len(self.applied_keys) > APPLIED_KEYS_KEPT:
            del self.applied_keys[next(iter(self.applied_keys))]
        self.reported[msg.key].add(msg.sender)
        self.round_weight[msg.key][msg.sender] = msg.num_samples
        self.send_ack(self.node, msg.sender, [msg.idempotency_key])
        self._close_if_complete()

    def _close_if_complete(self) -> None:
        if self.in_round and all(self._expected(k) <= self.reported[k] for k in self.modules):
            self._close_cluster_round()

    def _expected(self, key: ModuleKey) -> set[str]:
        """Who must still report ``key`` this round: selected, still online, not sitting it out."""
        return (self.participants.get(key, set()) & self._holders(key)) - self.skipped

    def _select(self, key: ModuleKey) -> set[str]:
        """The holders of ``key`` whose advertised resources pass the fog's thresholds, at most N of them (those
        with the most samples for the module)."""
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
        return set(chosen)

    def _samples_of(self, dev: str, key: ModuleKey) -> int:
        from edge_runtime.data import TASKS

        counts = self.adverts[dev].num_samples if dev in self.adverts else {}
        if key.kind == "head" or key.kind == "adapter":
            return counts.get(key.task, 0)
        return sum(n for t, n in counts.items() if t in TASKS and TASKS[t].modality == key.modality)

    # -- the round schedule --------------------------------------------------------------------------------------
    def _maybe_start_round(self) -> None:
        plan = self.plan
        if plan is None or plan.global_round <= self.round_g:
            return
        now = time.monotonic()
        if not self.expected <= set(self.holdings) and now < self.startup_deadline:
            return
        held = set().union(*self.holdings.values()) if self.holdings else set()
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
        self.modules = sorted(ready)
        self.start_state = {k: self.global_rx.states[k] for k in self.modules}
        for key in self.modules:
            self.pub.true[key] = {n: a.copy() for n, a in self.start_state[key].items()}
        self.round_weight = {k: {} for k in self.modules}
        self.round_updated: set[ModuleKey] = set()
        for key in self.modules:
            self._publish_cluster(key, stage=0, full=plan.final)  # final: full state, no resync needed after exit
        if plan.final:
            self._publish_ctl(0, final=True)
            log.info("fog %s: job finished after %d global rounds", self.node, plan.global_round - 1)
            self.done = True
            return
        self._open_cluster_round(1)

    def _open_cluster_round(self, c: int) -> None:
        assert self.plan is not None
        self.cluster_c = c
        self.aggs = {k: make_aggregator(self.cfg.fog.aggregator, self.cfg.fog.aggregator_params) for k in self.modules}
        self.reported = {k: set() for k in self.modules}
        self.skipped = set()
        self.participants = {k: self._select(k) for k in self.modules}
        self.deadline = time.monotonic() + min(self.plan.deadline_s, self.cfg.fog.round_deadline_s)
        self.in_round = True
        self._publish_ctl(c, final=False)

    def _close_cluster_round(self) -> None:
        updated = []
        for key in (k for k in self.modules if self.aggs[k].count > 0):
            try:
                delta = self.aggs[key].result()
            except AggregationError as exc:  # a robust rule outside its tolerance refuses; it never averages
                self.rejected["aggregation_refused"] += 1
                log.warning("fog %s: %s not updated in round (%d,%d): %s", self.node, key, self.round_g,
                            self.cluster_c, exc)
                continue
            new = {n: (a + delta[n]).astype(np.float32) for n, a in self.pub.true[key].items()}
            if not all(np.isfinite(a).all() for a in new.values()):
                self.rejected["aggregation_refused"] += 1
                log.warning("fog %s: %s not updated in round (%d,%d): the aggregate overflows to NaN/Inf",
                            self.node, key, self.round_g, self.cluster_c)
                continue
            updated.append(key)
            self.round_updated.add(key)
            self.pub.true[key] = new
            self._publish_cluster(key, stage=self.cluster_c)
        self.rounds_log.append({"global_round": self.round_g, "cluster_round": self.cluster_c,
                                "modules_updated": len(updated),
                                "updates": sum(self.aggs[k].count for k in self.modules)})
        log.info("fog %s: cluster round (%d,%d) closed: %d modules, %d updates, %d B to devices so far",
                 self.node, self.round_g, self.cluster_c, len(updated), self.rounds_log[-1]["updates"],
                 self.meter.total("fog_to_device"))
        assert self.plan is not None
        if self.cluster_c < self.plan.agg_every:
            self._open_cluster_round(self.cluster_c + 1)
            return
        self.in_round = False
        self._send_upward()

    def _send_upward(self) -> None:
        sent: list[ModuleKey] = []
        devices: set[str] = set()
        for key in self.modules:
            weights = self.round_weight[key]
            if not weights or key not in self.round_updated:
                continue
            delta = {n: (a - self.start_state[key][n]).astype(np.float32) for n, a in self.pub.true[key].items()}
            packed, _sent = pack(delta, self.up_codecs[key.kind], feedback=self.feedback, stream=str(key),
                                 seed=zlib.crc32(f"{self.node}/{self.round_g}/{key}".encode()))
            agg = FogAggregate(fleet=self.fleet, fog=self.node, key=key, global_round=self.round_g,
                               total_weight=float(sum(weights.values())), num_devices=len(weights),
                               idempotency_key=f"{self.fleet}/{self.node}/{self.round_g}/{key}", **packed.fields())
            self._send_up(agg.idempotency_key, topics.fogup(self.fleet, self.node, key), encode(agg))
            sent.append(key)
            devices |= set(weights)
        self.sent_last = set(sent)
        self.feedback.save(self.residuals_path)
        report = FogRoundReport(fleet=self.fleet, fog=self.node, global_round=self.round_g, modules=tuple(sent),
                                devices=tuple(sorted(devices)), cluster_rounds=self.cluster_c)
        self._send_up(report_key(self.fleet, self.node, self.round_g), topics.fogdone(self.fleet, self.node),
                      encode(report))
        if self.sender is not None:
            self.sender.pump()
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

    def _publish_cluster(self, key: ModuleKey, *, stage: int, full: bool = False) -> None:
        version = self.pub.version(key, (self.round_g, stage), full=full)
        self.transport.publish(topics.cluster(self.fleet, self.node, key), encode(version),
                               category="fog_to_device", retain=True)

    def _publish_ctl(self, c: int, *, final: bool) -> None:
        assert self.plan is not None
        # Always name the participants: a device trains and sends only the modules it is listed for this round.
        participants = {str(k): tuple(sorted(v)) for k, v in self.participants.items()}
        ctl = RoundControl(fleet=self.fleet, sender=self.node, global_round=self.round_g, cluster_round=c,
                           total_rounds=self.plan.total_rounds, agg_every=self.plan.agg_every,
                           local_epochs=self.plan.local_epochs, deadline_s=self.plan.deadline_s, final=final,
                           participants=participants if not final else {})
        self.transport.publish(topics.ctl(self.fleet, self.node), encode(ctl), category="fog_to_device", retain=True)


def run_fog(config_path: Path, *, time_limit_s: float = 24 * 3600.0) -> None:
    """Load a fog config and run the gateway until the cloud finishes the job."""
    from edge_runtime.config import load_config

    FogGateway(load_config(config_path, FogConfig)).run(time_limit_s=time_limit_s)

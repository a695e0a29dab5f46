"""The fog's link to the cloud, an object the gateway holds: after E_agg cluster rounds it sends, per module, its
delta against the global version with the total sample weight behind it (``fogup``), then a round report
(``fogdone``). Both wait in an outbox on disk until the cloud acks them (docs/reliability.md); the uplink codec's
error-feedback residuals are kept beside it."""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fog_gateway.neighbours import State, delta_from
from fog_gateway.round_engine import FogRound
from hffm_core.aggregation.ranks import trim_rank
from hffm_core.compression import ErrorFeedback
from hffm_core.compression.module_codec import pack
from hffm_core.compression.table import CodecTable
from hffm_core.config import ReliabilityConfig
from hffm_core.delivery import Outbox, ReliableSender, report_key
from hffm_core.errors import DecodeError
from hffm_core.protocol import Ack, FogAggregate, FogRoundReport, ModuleKey, encode, topics
from hffm_core.service import SealingTransport
from hffm_core.transport import MqttTransport, TrafficMeter

log = logging.getLogger(__name__)


class CloudUplink:
    def __init__(self, *, fleet: str, node: str, state_dir: Path, reliability: ReliabilityConfig,
                 codecs: CodecTable, transport: MqttTransport | SealingTransport,
                 meter: TrafficMeter) -> None:
        """``codecs``: the uplink codec of each module (``make_codecs``); ``transport``: the service's."""
        self.fleet, self.node, self.codecs, self.transport, self.meter = fleet, node, codecs, transport, meter
        self.residuals_path = state_dir / f"{node}-residuals.npz"
        self.residuals_path.parent.mkdir(parents=True, exist_ok=True)
        self.feedback = ErrorFeedback.load(self.residuals_path) if self.residuals_path.exists() else ErrorFeedback()
        rel = reliability
        self.outbox = Outbox(state_dir / f"{node}-outbox.sqlite", base_s=rel.backoff_base_s,
                             max_s=rel.backoff_max_s) if rel.outbox else None
        self.sender = ReliableSender(self.outbox, transport, fleet=fleet, node=node, target="cloud",
                                     category="fog_to_cloud") if self.outbox is not None else None

    def subscriptions(self) -> list[str]:
        return [topics.ack_filter(self.fleet, self.node, self.node)] if self.sender is not None else []

    def on_ack(self, message: Ack) -> bool:
        """Take the cloud's ack; False when there is no outbox to take it. Raises DecodeError for another's ack."""
        if self.sender is None:
            return False
        if message.sender != "cloud" or message.to != self.node:
            raise DecodeError(f"ack from {message.sender!r} to {message.to!r} is not the cloud's to {self.node}")
        self.sender.on_ack(message)
        return True

    def pump(self) -> None:
        if self.sender is not None:
            self.sender.pump()

    def expire_rounds_before(self, g: int) -> None:
        if self.sender is not None:
            self.sender.expire_rounds_before(g)

    def stats(self) -> dict[str, Any] | None:
        return self.sender.stats() if self.sender is not None else None

    def send_round(self, rnd: FogRound, true: Mapping[ModuleKey, State]) -> list[ModuleKey]:
        """Queue the global round's aggregates (the states ``true`` against ``rnd.start``) and its report; returns
        the modules sent."""
        g = rnd.at.g
        sent: list[ModuleKey] = []
        devices: set[str] = set()
        for key, weights in rnd.upward():
            packed, _sent = pack(trim_rank(delta_from(true[key], rnd.start[key])), self.codecs.for_key(key),
                                 feedback=self.feedback,
                                 stream=str(key), seed=zlib.crc32(f"{self.node}/{g}/{key}".encode()))
            agg = FogAggregate(fleet=self.fleet, fog=self.node, key=key, global_round=g,
                               total_weight=float(sum(weights.values())), num_devices=len(weights),
                               idempotency_key=FogAggregate.default_key(self.fleet, self.node, g, 0, key),
                               **packed.fields())
            self._send_up(rnd, agg.idempotency_key, topics.fogup(self.fleet, self.node, key), encode(agg))
            sent.append(key)
            devices |= set(weights)
        report = FogRoundReport(fleet=self.fleet, fog=self.node, global_round=g, modules=tuple(sent),
                                devices=tuple(sorted(devices)), cluster_rounds=rnd.at.c)
        self._send_up(rnd, report_key(self.fleet, self.node, g), topics.fogdone(self.fleet, self.node),
                      encode(report))
        log.info("fog %s: global round %d sent upward: %d modules from %d devices, %d B to cloud so far",
                 self.node, g, len(sent), len(devices), self.meter.total("fog_to_cloud"))
        return sent

    def _send_up(self, rnd: FogRound, key: str, topic: str, payload: bytes) -> None:
        """Through the outbox (kept until the cloud acks ``key``), or one acknowledged publish without it."""
        plan = rnd.plan
        if self.sender is not None and plan is not None:
            # The cloud allows (agg_every + 1) cluster-round deadlines per global round, plus its start-up wait in
            # round 1: a message still queued after (agg_every + 2) deadlines + 10 min belongs to a closed round.
            self.sender.expiry_s = math.ceil(plan.deadline_s * (plan.agg_every + 2)) + 600
        if self.outbox is not None:
            self.outbox.put(key, topic, payload, round_=rnd.at.g)
        else:
            self.transport.publish(topic, payload, category="fog_to_cloud")

    def save_feedback(self) -> None:
        """After the journal's commit: a resent aggregate is packed the same way."""
        self.feedback.save(self.residuals_path)

"""The D2D half of the edge agent (a mixin of :class:`~edge_runtime.agent.EdgeAgent`): routing a device's updates
to its relay, a neighbour or its fog, and, as a relay, averaging and forwarding its group's deltas.
See :mod:`edge_runtime.d2d.link` and :mod:`edge_runtime.d2d.relay`; docs/topology.md has the protocol.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from edge_runtime.d2d.peer_average import weighted_mean
from hffm_core.compression.module_codec import layout_of, unpack
from hffm_core.delivery import round_tag
from hffm_core.errors import DecodeError
from hffm_core.protocol import ModuleUpdate, RoundControl, encode, topics
from hffm_core.protocol.topics import Topic

if TYPE_CHECKING:
    from edge_runtime.d2d.link import PeerLink

log = logging.getLogger(__name__)


class D2dDevice:
    """Needs from the agent: ``d2d``, ``ctl``, ``node``, ``fog``, ``fleet``, ``keys``, ``model``, ``transport``,
    ``outbox``, ``feedback``, ``residuals_path``, ``rejected``, ``cfg``, ``_to_fog`` and ``_build_update``."""

    d2d: PeerLink | None
    ctl: RoundControl | None
    node: str
    fog: str
    fleet: str
    keys: list[Any]
    model: Any
    transport: Any
    outbox: Any
    feedback: Any
    residuals_path: Any
    rejected: Any
    cfg: Any

    def _to_fog(self, update: ModuleUpdate, payload: bytes | None = None) -> int:
        raise NotImplementedError

    def _build_update(self, *args: Any, **kwargs: Any) -> ModuleUpdate:
        raise NotImplementedError

    def _route(self, ctl: RoundControl, update: ModuleUpdate) -> int:
        """Send an update of this device: to its relay when the round names one, to a neighbour when the fog link
        is down (module relay), else to the fog. Returns the bytes queued."""
        relay = self.d2d.relay_for(ctl, update.key) if self.d2d is not None else self.node
        if self.d2d is not None and relay == self.node and not self.transport.connected and self.d2d.connected:
            relay = self.d2d.neighbour() or self.node
            if relay != self.node:
                log.warning("device %s: fog link down; handing %s to neighbour %s", self.node, update.key, relay)
        if relay == self.node or self.d2d is None:
            return self._to_fog(update)
        payload = encode(update)
        self.d2d.send_to(relay, update, payload, round_=round_tag(update.global_round, update.cluster_round),
                         fallback_topic=topics.up(self.fleet, self.fog, update.key, self.node))
        return len(payload)

    # -- relay side ----------------------------------------------------------------------------------------------
    def _on_peer(self, topic: Topic, msg: ModuleUpdate) -> None:
        assert self.d2d is not None
        if topic.to != self.node or msg.sender not in self.d2d.peers or msg.fog != self.fog or msg.covers:
            raise DecodeError(f"peer delta of {msg.sender!r} for {topic.to!r} is not from a member of {self.node}'s "
                              f"D2D group {self.cfg.d2d.group}, or it is already an averaged one")
        ctl = self.ctl
        routed = ctl is not None and self.d2d.relay_for_member(ctl, msg.key, msg.sender) == self.node
        delta = None
        if msg.key in self.keys:
            delta = unpack(msg, layout_of(self.model.get_module_state(msg.key)))
        outcome = self.d2d.desk.offer(msg, delta, routed_here=routed)
        if outcome == "included":  # a retransmission: its first ack was lost or late
            self.d2d.ack_members([msg], count=False)
        elif outcome == "duplicate":
            self.rejected["duplicate"] += 1
        elif outcome == "forward":
            self._forward_alone(msg)

    def _forward_alone(self, msg: ModuleUpdate) -> None:
        """Send a member's delta on unchanged under this device's name (``covers`` = the member)."""
        assert self.d2d is not None
        log.info("device %s: forwarding %s of %s to the fog", self.node, msg.key, msg.sender)
        self._to_fog(dataclasses.replace(msg, sender=self.node, covers=(msg.sender,),
                                         idempotency_key=f"{msg.idempotency_key}@{self.node}"))
        self.d2d.desk.mark_included([msg.idempotency_key])
        self.d2d.ack_members([msg])

    def _d2d_tick(self) -> None:
        assert self.d2d is not None
        self.d2d.pump()
        for flush in self.d2d.desk.due():
            g, c, key = flush.bucket
            mean = weighted_mean(flush.parts)
            samples = sum(n for _d, n in flush.parts)
            self._to_fog(self._build_update(key, mean, samples, flush.loss, g, c, covers=flush.covers))
            self.d2d.ack_members(flush.acked)
            self.feedback.save(self.residuals_path)
            log.info("device %s: relayed %s of round (%d,%d) for %s (%d samples)", self.node, key, g, c,
                     list(flush.covers), samples)
        for msg in self.d2d.desk.stale_early():
            self._forward_alone(msg)
        for key, topic, payload, round_ in self.d2d.due_fallbacks():
            log.warning("device %s: relay did not ack %s in time; sending it to fog %s", self.node, key, self.fog)
            if self.outbox is not None:
                self.outbox.put(key, topic, payload, round_=round_)
            else:
                self.transport.try_publish(topic, payload, category="device_to_fog")

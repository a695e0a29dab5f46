"""The D2D side of a device, an object the edge agent holds: routing the device's updates to its relay, a neighbour
or its fog, and, as a relay, averaging and forwarding its group's deltas.

It reaches the fog only through the :class:`FogUplink` it is given (the agent's :class:`~edge_runtime.uplink.Uplink`)
and the D2D broker only through its :class:`~edge_runtime.d2d.link.PeerLink`.
See :mod:`edge_runtime.d2d.link` and :mod:`edge_runtime.d2d.relay`; docs/topology.md has the protocol.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from edge_runtime.d2d.link import PeerLink
from edge_runtime.d2d.peer_average import weighted_mean
from hffm_core.compression.module_codec import unpack
from hffm_core.delivery import round_tag
from hffm_core.errors import DecodeError
from hffm_core.protocol import (
    Ack,
    ModuleKey,
    ModuleUpdate,
    RoundControl,
    encode,
    topics,
)
from hffm_core.protocol.topics import Topic

log = logging.getLogger(__name__)

Layouts = Mapping[ModuleKey, Mapping[str, tuple[int, ...]]]


class FogUplink(Protocol):
    """What the D2D side needs of the device's way to its fog."""

    @property
    def connected(self) -> bool:
        """Whether the device's own link to the fog's broker is up."""
        ...

    def build(self, key: ModuleKey, delta: dict[str, np.ndarray], samples: int, loss: float, g: int, c: int, *,
              covers: tuple[str, ...] = ()) -> ModuleUpdate:
        """Code ``delta`` into this device's update of ``key`` for round (g, c)."""
        ...

    def send(self, update: ModuleUpdate, payload: bytes | None = None) -> int:
        """Queue ``update`` for the fog; returns its size."""
        ...

    def resend(self, key: str, topic: str, payload: bytes, round_: int) -> None:
        """Send an update a relay did not ack, as coded for the fog, to the fog itself."""
        ...

    def save_feedback(self) -> None:
        """Persist the error-feedback residuals (after an averaged update was coded)."""
        ...


class DeviceD2d:
    """One device's D2D role. ``layouts``: the tensor names and shapes of the modules this device holds (a member's
    delta of one of them is decoded and averaged in; of any other module it is forwarded alone). ``rejected``: the
    agent's drop counter (a member's duplicate delta counts as ``duplicate``)."""

    def __init__(self, link: PeerLink, *, uplink: FogUplink, layouts: Layouts, rejected: Counter[str]) -> None:
        self.link = link
        self.uplink = uplink
        self.layouts = layouts
        self.rejected = rejected
        self.node, self.fog, self.fleet = link.node, link.fog, link.fleet
        self.ctl: RoundControl | None = None  # the latest round announcement: who relays for whom

    # -- link ----------------------------------------------------------------------------------------------------
    @property
    def peers(self) -> list[str]:
        return self.link.peers

    def connect(self) -> None:
        self.link.connect()

    def close(self) -> None:
        self.link.close()

    def stats(self) -> dict[str, Any]:
        return self.link.stats()

    def on_ack(self, message: Ack) -> None:
        """A relay acked one of this device's deltas."""
        self.link.on_ack(message)

    def on_round(self, ctl: RoundControl) -> None:
        """The fog announced round ``ctl``: earlier rounds are closed, and its relays are the ones that count."""
        self.link.expire_before(ctl.global_round, ctl.cluster_round)
        self.ctl = ctl

    # -- member side ---------------------------------------------------------------------------------------------
    def members_for(self, ctl: RoundControl, key: ModuleKey) -> set[str]:
        """The devices ``ctl`` routes to this one for ``key`` (empty: this device relays for none)."""
        return self.link.members_for(ctl, key)

    def hold(self, bucket: tuple[int, int, ModuleKey], delta: dict[str, np.ndarray], samples: int, loss: float,
             members: set[str]) -> None:
        """Keep this device's own delta until its members' are in (sent from :meth:`tick`)."""
        self.link.desk.open_bucket(bucket, delta, samples, loss, members)

    def route(self, ctl: RoundControl, update: ModuleUpdate) -> int:
        """Send an update of this device: to its relay when the round names one, to a neighbour when the fog link
        is down (module relay), else to the fog. Returns the bytes queued."""
        relay = self.link.relay_for(ctl, update.key)
        if relay == self.node and not self.uplink.connected and self.link.connected:
            relay = self.link.neighbour() or self.node
            if relay != self.node:
                log.warning("device %s: fog link down; handing %s to neighbour %s", self.node, update.key, relay)
        if relay == self.node:
            return self.uplink.send(update)
        payload = encode(update)
        self.link.send_to(relay, update, payload, round_=round_tag(update.global_round, update.cluster_round),
                          fallback_topic=topics.up(self.fleet, self.fog, update.key, self.node))
        return len(payload)

    # -- relay side ----------------------------------------------------------------------------------------------
    def on_peer(self, topic: Topic, msg: ModuleUpdate) -> None:
        """A member's delta, routed to this device.

        Raises:
            DecodeError: it is not for this device, not from a member of its group, or already an averaged one.
        """
        if topic.to != self.node or msg.sender not in self.link.peers or msg.fog != self.fog or msg.covers:
            raise DecodeError(f"peer delta of {msg.sender!r} for {topic.to!r} is not from a member of {self.node}'s "
                              f"D2D group {self.link.cfg.group}, or it is already an averaged one")
        ctl = self.ctl
        routed = ctl is not None and self.link.relay_for_member(ctl, msg.key, msg.sender) == self.node
        layout = self.layouts.get(msg.key)
        delta = unpack(msg, layout) if layout is not None else None
        outcome = self.link.desk.offer(msg, delta, routed_here=routed)
        if outcome == "included":  # a retransmission: its first ack was lost or late
            self.link.ack_members([msg], count=False)
        elif outcome == "duplicate":
            self.rejected["duplicate"] += 1
        elif outcome == "forward":
            self._forward_alone(msg)

    def _forward_alone(self, msg: ModuleUpdate) -> None:
        """Send a member's delta on unchanged under this device's name (``covers`` = the member)."""
        log.info("device %s: forwarding %s of %s to the fog", self.node, msg.key, msg.sender)
        self.uplink.send(dataclasses.replace(msg, sender=self.node, covers=(msg.sender,),
                                             idempotency_key=f"{msg.idempotency_key}@{self.node}"))
        self.link.desk.mark_included([msg.idempotency_key])
        self.link.ack_members([msg])

    def tick(self) -> None:
        """Reconnect and resend on the D2D link; send the averages that are due, the early deltas that went stale,
        and, to the fog, this device's updates whose relay did not ack in time."""
        self.link.pump()
        for flush in self.link.desk.due():
            g, c, key = flush.bucket
            mean = weighted_mean(flush.parts)
            samples = sum(n for _d, n in flush.parts)
            self.uplink.send(self.uplink.build(key, mean, samples, flush.loss, g, c, covers=flush.covers))
            self.link.ack_members(flush.acked)
            self.uplink.save_feedback()
            log.info("device %s: relayed %s of round (%d,%d) for %s (%d samples)", self.node, key, g, c,
                     list(flush.covers), samples)
        for msg in self.link.desk.stale_early():
            self._forward_alone(msg)
        for key, topic, payload, round_ in self.link.due_fallbacks():
            log.warning("device %s: relay did not ack %s in time; sending it to fog %s", self.node, key, self.fog)
            self.uplink.resend(key, topic, payload, round_)

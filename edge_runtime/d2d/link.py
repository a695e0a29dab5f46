"""A device's D2D link: a second MQTT connection to its group's D2D broker, and what travels on it.

Member side: a delta routed to a relay (``RoundControl.relays``) is queued in a D2D outbox on disk
(``{device}-d2d-outbox.sqlite``) for ``peer/{fog}/{relay}/{device}`` and resent until the relay acks it; if the
relay has not acked within ``[d2d] fallback_s`` the same update (same idempotency key) goes to the fog directly,
and the fog applies one of the two. A device whose fog link is down when it sends hands its update to a neighbour
of its group instead (module relay). Relay side: :class:`~edge_runtime.d2d.relay.RelayDesk` collects the members'
deltas; the agent sends the weighted mean, then acks the members on ``ack/{fog}/{member}/{relay}``.
Traffic on this link is metered as ``device_to_device``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_runtime.config import D2dConfig
from edge_runtime.d2d.relay import RelayDesk
from hffm_core.delivery import Outbox, ReliableSender, round_tag
from hffm_core.errors import TransportError
from hffm_core.protocol import (
    Ack,
    ModuleKey,
    ModuleUpdate,
    RoundControl,
    encode,
    topics,
)
from hffm_core.transport import MqttTransport, TrafficMeter
from hffm_core.transport.mqtt import MessageHandler

if TYPE_CHECKING:
    from hffm_core.security.tls import TlsSettings

log = logging.getLogger(__name__)
CATEGORY = "device_to_device"
RECONNECT_EVERY_S = 10.0


class PeerLink:
    """The D2D side of one device (see the module docstring)."""

    def __init__(self, cfg: D2dConfig, *, fleet: str, fog: str, node: str, state_dir: Path, meter: TrafficMeter,
                 on_message: MessageHandler, wrap: Callable[[MqttTransport], Any] | None = None, outbox: bool = True,
                 backoff: tuple[float, float] = (2.0, 30.0), tls: TlsSettings | None = None) -> None:
        """``wrap``: seals every publish (the agent's SealingTransport around the raw D2D transport), or None.
        ``tls``: mutual TLS to the D2D broker (the device's own ``[tls]`` identity), or None for plain MQTT."""
        self.cfg = cfg
        self.fleet, self.fog, self.node = fleet, fog, node
        self.peers = [d for d in cfg.group if d != node]
        raw = MqttTransport(client_id=f"hffm-d2d-{node}", host=cfg.host, port=cfg.port, on_message=on_message,
                            meter=meter, persistent=True, tls=tls)
        self.transport = wrap(raw) if wrap is not None else raw
        self.outbox = Outbox(state_dir / f"{node}-d2d-outbox.sqlite", base_s=backoff[0], max_s=backoff[1]) \
            if outbox else None
        self.sender = ReliableSender(self.outbox, self.transport, fleet=fleet, node=node, target=fog,
                                     category=CATEGORY) if self.outbox is not None else None
        self.desk = RelayDesk(node, wait_s=cfg.wait_s)
        self.fallback: dict[str, tuple[float, str, bytes, int]] = {}  # key -> (due, fog topic, payload, round tag)
        self.next_connect = 0.0
        self.relayed = 0  # member deltas this device sent on as a relay (averaged or forwarded)
        self.fell_back = 0

    # -- connection ------------------------------------------------------------------------------------------
    def connect(self) -> None:
        """Connect and subscribe; a D2D broker that is down is retried from :meth:`pump`, never fatal."""
        self.next_connect = time.monotonic() + RECONNECT_EVERY_S
        try:
            self.transport.connect()
            self.transport.subscribe([topics.d2d_inbox_filter(self.fleet, "peer", self.fog, self.node),
                                      topics.ack_filter(self.fleet, self.fog, self.node)])
        except TransportError as exc:
            log.warning("device %s: D2D broker %s:%d not reachable (%s); retrying", self.node, self.cfg.host,
                        self.cfg.port, exc)

    @property
    def connected(self) -> bool:
        return bool(self.transport.connected)

    def close(self) -> None:
        self.transport.close()

    # -- routing ---------------------------------------------------------------------------------------------
    def relay_for(self, ctl: RoundControl, key: ModuleKey) -> str:
        """The device this one sends ``key``'s delta to this round: a relay of its group, or itself (the fog)."""
        relay = ctl.relays.get(str(key), {}).get(self.node, self.node)
        return relay if relay in self.peers or relay == self.node else self.node

    def relay_for_member(self, ctl: RoundControl, key: ModuleKey, member: str) -> str | None:
        """The relay the round names for ``member``'s ``key`` (None: it sends to the fog itself)."""
        return ctl.relays.get(str(key), {}).get(member)

    def members_for(self, ctl: RoundControl, key: ModuleKey) -> set[str]:
        """The devices the round routes to this one for ``key``."""
        return {d for d, r in ctl.relays.get(str(key), {}).items() if r == self.node and d != self.node}

    def neighbour(self) -> str | None:
        """A group member to hand an update to when the fog link is down (the first in the group's order)."""
        return self.peers[0] if self.peers else None

    # -- member side -----------------------------------------------------------------------------------------
    def send_to(self, relay: str, update: ModuleUpdate, payload: bytes, *, fallback_topic: str | None,
                round_: int) -> None:
        """Queue ``update`` for ``relay``; with ``fallback_topic``, go to the fog ourselves if the relay never acks."""
        topic = topics.peer(self.fleet, self.fog, relay, self.node)
        if self.outbox is not None:
            self.outbox.put(update.idempotency_key, topic, payload, round_=round_)
        else:
            self.transport.try_publish(topic, payload, category=CATEGORY)
        if fallback_topic is not None:
            self.fallback[update.idempotency_key] = (time.monotonic() + self.cfg.fallback_s, fallback_topic, payload,
                                                     round_)

    def on_ack(self, message: Ack) -> None:
        for key in message.keys:
            self.fallback.pop(key, None)
        if self.sender is not None:
            self.sender.on_ack(message)

    def due_fallbacks(self) -> list[tuple[str, str, bytes, int]]:
        """(key, fog topic, payload, round tag) of updates whose relay has not acked in time; removed here."""
        now = time.monotonic()
        out = [(k, t, p, r) for k, (due, t, p, r) in self.fallback.items() if now >= due]
        for key, *_rest in out:
            del self.fallback[key]
            if self.outbox is not None:  # the fog takes it from here: stop offering it to the relay
                self.outbox.drop(key, "relay did not ack in time; sent to the fog directly")
        self.fell_back += len(out)
        return out

    def expire_before(self, g: int, c: int) -> None:
        if self.outbox is not None:
            self.outbox.expire_rounds_before(round_tag(g, c))
        self.desk.forget_before(g, c)

    def pump(self) -> None:
        if not self.connected and time.monotonic() >= self.next_connect:
            self.connect()
        if self.sender is not None:
            self.sender.pump()

    # -- relay side ------------------------------------------------------------------------------------------
    def ack_members(self, updates: list[ModuleUpdate] | tuple[ModuleUpdate, ...], *, count: bool = True) -> None:
        """Tell each member its delta is on its way to the fog (in this device's outbox)."""
        for msg in updates:
            ack = Ack(fleet=self.fleet, sender=self.node, to=msg.sender, keys=(msg.idempotency_key,),
                      status="applied")
            self.transport.try_publish(topics.ack(self.fleet, self.fog, msg.sender, self.node), encode(ack),
                                       category=CATEGORY)
        if count:
            self.relayed += len(updates)

    def stats(self) -> dict[str, Any]:
        return {"relayed": self.relayed, "fell_back": self.fell_back,
                "outbox": self.sender.stats() if self.sender is not None else None}

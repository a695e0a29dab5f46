"""Drains an :class:`Outbox` into an MQTT connection: send what is due, chunk what is too large, never block.

:meth:`ReliableSender.pump` is called from a service's loop between messages. It sends at most ``window`` due
messages per call, only while the connection is up (a message handed to a disconnected paho client would sit in
paho's memory, not on disk), and never a packet above the broker's limit: a larger payload goes out as
:class:`~hffm_core.protocol.messages.Chunk` pieces (see :mod:`hffm_core.delivery.chunking`). A message
stays in the outbox until :meth:`on_ack` sees the receiver's ``Ack``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import KW_ONLY, dataclass, field
from typing import Protocol

from hffm_core.delivery.chunking import fits, split
from hffm_core.delivery.outbox import Outbox
from hffm_core.protocol.messages import Ack

log = logging.getLogger(__name__)


class Publisher(Protocol):
    @property
    def connected(self) -> bool: ...

    @property
    def max_packet_size(self) -> int: ...

    def try_publish(self, topic: str, payload: bytes, *, category: str, retain: bool = False,
                    expiry_s: int = 0) -> bool: ...


@dataclass(eq=False)
class ReliableSender:
    """Sends an outbox's due messages through a publisher; ``target`` names the receiver for chunk topics. The
    counters after ``expiry_s`` say what became of the messages so far."""

    outbox: Outbox
    publisher: Publisher
    _: KW_ONLY
    fleet: str
    node: str
    target: str
    category: str
    window: int = 200
    expiry_s: int = 0
    sent: int = field(default=0, init=False)
    retransmitted: int = field(default=0, init=False)
    chunked: int = field(default=0, init=False)
    acked: int = field(default=0, init=False)
    # Removed unapplied: stale + rejected. Of those, ``stale``: the ones whose round closed (answered expired, or
    # expired here); ``rejected``: the ones the receiver refused, and of them ``conflicts``: refused because another
    # update was applied under the same key.
    dropped: int = field(default=0, init=False)
    stale: int = field(default=0, init=False)
    rejected: int = field(default=0, init=False)
    conflicts: int = field(default=0, init=False)

    def pump(self, *, now: float | None = None) -> int:
        """Send up to ``window`` due messages; returns how many went out. Never raises for a broker problem."""
        now = time.time() if now is None else now
        if not self.publisher.connected:
            return 0
        went = []
        for entry in self.outbox.due(now=now, limit=self.window):
            if not self.send_now(entry.topic, entry.payload):
                break  # the connection dropped: the rest stays due
            went.append(entry)
        self.outbox.sent(went, now=now)  # one transaction for the batch
        self.sent += len(went)
        self.retransmitted += sum(e.attempts > 0 for e in went)
        return len(went)

    def send_now(self, topic: str, payload: bytes) -> bool:
        """One immediate try (chunked if needed), outside the outbox; False when it could not be handed over."""
        limit = self.publisher.max_packet_size
        if fits(topic, payload, limit):
            return self.publisher.try_publish(topic, payload, category=self.category, expiry_s=self.expiry_s)
        try:
            pieces = split(fleet=self.fleet, sender=self.node, target=self.target, topic=topic, payload=payload,
                           max_packet=limit)
        except ValueError as exc:  # a broker limit too small to chunk into: keep it queued, say why, never crash
            log.error("%s: cannot send %d B on %s: %s; raise the broker's max_packet_size", self.node, len(payload),
                      topic, exc)
            return False
        self.chunked += 1
        return all(self.publisher.try_publish(t, p, category=self.category, expiry_s=self.expiry_s)
                   for t, p in pieces)

    def stats(self) -> dict[str, int]:
        """Counters for a metrics file: sent (tries, with retransmissions), retransmitted, chunked, acked,
        dropped (removed without being applied) = stale (their round closed: answered ``expired``, or expired here
        when a later round was announced) + rejected (refused by the receiver), pending (still on disk). Each
        message counts once, however many acks name it."""
        return {"sent": self.sent, "retransmitted": self.retransmitted, "chunked": self.chunked, "acked": self.acked,
                "dropped": self.dropped, "stale": self.stale, "rejected": self.rejected, "conflicts": self.conflicts,
                "pending": self.outbox.pending()}

    def on_ack(self, ack: Ack) -> None:
        """Apply the receiver's acknowledgement: ``applied`` removes the keys; ``expired``/``rejected`` drop them
        with a logged reason."""
        if ack.status == "applied":
            self.acked += self.outbox.ack(ack.keys)
            return
        gone = sum(self.outbox.drop(key, f"{ack.sender} answered {ack.status}") for key in ack.keys)
        self.dropped += gone
        if ack.status == "expired":
            self.stale += gone
        elif ack.status == "conflict":  # another update was applied under this key: ours never counted
            self.conflicts += gone
            self.rejected += gone
            if gone:
                log.error("%s says another update was already applied under %s: ours was not applied (was a client "
                          "publishing under this node's identity?)", ack.sender, list(ack.keys))
        else:
            self.rejected += gone

    def expire_rounds_before(self, round_: int) -> int:
        """Drop every queued message of a round below ``round_`` (the receiver announced a later round, so those
        closed): counted as dropped and stale. Returns how many went."""
        gone = len(self.outbox.expire_rounds_before(round_))
        self.dropped += gone
        self.stale += gone
        return gone

"""Payloads larger than the broker's packet limit: split into :class:`Chunk` messages, reassemble, verify.

A broker disconnects a client that sends a packet above its limit, and paho resends that packet on every reconnect
(a reconnect storm that blocks everything queued behind it; see FINDINGS.md). So a sender never publishes a packet
the broker would refuse: :func:`split` cuts the payload into pieces that fit, each a ``Chunk`` with its own SHA-256
and the whole payload's, on ``chunk/{target}/{sender}``. :class:`Reassembler` collects pieces per
(sender, payload SHA-256), checks the total against the SHA-256 and returns the payload for its original topic.

Bounds: at most ``max_pending`` partial payloads and ``max_bytes`` held at once (the oldest partial is dropped
first), and a partial untouched for ``timeout_s`` is dropped. Resume: pieces already held are kept while a partial
lives, so a retransmission (the outbox sends the whole payload again when no ack came) only has to fill the gaps;
duplicate pieces are ignored.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field

from hffm_core.errors import DecodeError
from hffm_core.protocol import codec, topics
from hffm_core.protocol.messages import Chunk

log = logging.getLogger(__name__)

# Room for the topic, the MQTT fixed/variable header, properties and the chunk's own msgpack fields.
CHUNK_OVERHEAD = 2048
MIN_PACKET = 4096
# Room in a single PUBLISH beyond the payload and topic: the MQTT fixed and variable headers and properties (message
# expiry), and the signed envelope a sealing transport wraps around the payload (~130 B), with a margin.
PUBLISH_OVERHEAD = 512


def fits(topic: str, payload: bytes, max_packet: int) -> bool:
    """Whether one PUBLISH of ``payload`` on ``topic`` stays within ``max_packet`` (0: no known limit), also when a
    sealing transport wraps it in a signed envelope."""
    return max_packet <= 0 or len(payload) + len(topic.encode()) + PUBLISH_OVERHEAD <= max_packet


def split(*, fleet: str, sender: str, target: str, topic: str, payload: bytes,
          max_packet: int) -> list[tuple[str, bytes]]:
    """The ``(chunk topic, encoded Chunk)`` pieces of ``payload``, each packet within ``max_packet``.

    Raises:
        ValueError: ``max_packet`` below ``MIN_PACKET`` (no useful piece fits).
    """
    if max_packet < MIN_PACKET:
        raise ValueError(f"max packet size {max_packet} is below {MIN_PACKET}: cannot chunk into it")
    piece = max_packet - CHUNK_OVERHEAD - len(topic.encode())
    count = max(1, -(-len(payload) // piece))
    whole = hashlib.sha256(payload).hexdigest()
    chunk_topic = topics.chunk(fleet, target, sender)
    out = []
    for index in range(count):
        data = payload[index * piece:(index + 1) * piece]
        msg = Chunk(fleet=fleet, sender=sender, topic=topic, payload_sha256=whole, index=index, count=count,
                    total_size=len(payload), data=data, sha256=hashlib.sha256(data).hexdigest())
        out.append((chunk_topic, codec.encode(msg)))
    return out


@dataclass
class _Partial:
    topic: str
    count: int
    total_size: int
    pieces: dict[int, bytes] = field(default_factory=dict)
    touched: float = 0.0

    @property
    def held(self) -> int:
        return sum(len(p) for p in self.pieces.values())


class Reassembler:
    """Collects chunks into whole payloads, bounded in count, bytes and time."""

    def __init__(self, *, max_pending: int = 64, max_bytes: int = 512 * 1024 * 1024, timeout_s: float = 300.0) -> None:
        self.max_pending = max_pending
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self._partials: dict[tuple[str, str], _Partial] = {}
        self.dropped = 0

    def add(self, chunk: Chunk, *, now: float | None = None) -> tuple[str, bytes] | None:
        """Take one chunk; returns ``(original topic, payload)`` when it completes a payload, else None.

        Raises:
            DecodeError: a chunk that contradicts the others of its payload (count, size or topic), or pieces
                whose whole does not match ``payload_sha256`` (the partial is dropped).
        """
        now = time.monotonic() if now is None else now
        self._expire(now)
        ident = (chunk.sender, chunk.payload_sha256)
        part = self._partials.get(ident)
        if part is None:
            part = self._partials[ident] = _Partial(topic=chunk.topic, count=chunk.count, total_size=chunk.total_size)
        if (part.topic, part.count, part.total_size) != (chunk.topic, chunk.count, chunk.total_size):
            raise DecodeError(f"chunk {chunk.index} of {chunk.payload_sha256[:12]} from {chunk.sender!r} disagrees "
                              f"with the earlier pieces (topic, count or size)")
        part.pieces.setdefault(chunk.index, chunk.data)
        part.touched = now
        if len(part.pieces) < part.count:
            self._bound()
            return None
        del self._partials[ident]
        payload = b"".join(part.pieces[i] for i in range(part.count))
        if len(payload) != part.total_size or hashlib.sha256(payload).hexdigest() != chunk.payload_sha256:
            raise DecodeError(f"reassembled payload {chunk.payload_sha256[:12]} from {chunk.sender!r} fails its "
                              f"SHA-256 or size check; dropped")
        return part.topic, payload

    def missing(self, sender: str, payload_sha256: str) -> list[int]:
        """Indices still missing from a partial payload (empty when none is held)."""
        part = self._partials.get((sender, payload_sha256))
        return [] if part is None else [i for i in range(part.count) if i not in part.pieces]

    @property
    def pending(self) -> int:
        return len(self._partials)

    def _expire(self, now: float) -> None:
        for ident, part in list(self._partials.items()):
            if now - part.touched > self.timeout_s:
                del self._partials[ident]
                self.dropped += 1
                log.warning("chunks of %s from %s timed out with %d of %d pieces", ident[1][:12], ident[0],
                            len(part.pieces), part.count)

    def _bound(self) -> None:
        while self._partials and (len(self._partials) > self.max_pending
                                  or sum(p.held for p in self._partials.values()) > self.max_bytes):
            oldest = min(self._partials, key=lambda k: self._partials[k].touched)
            del self._partials[oldest]
            self.dropped += 1
            log.warning("reassembly limits reached; dropped the partial payload %s from %s", oldest[1][:12],
                        oldest[0])

"""Chunking: every piece fits the packet limit, pieces reassemble in any order, bad pieces are named errors."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from hffm_core.delivery.chunking import Reassembler, fits, split
from hffm_core.errors import DecodeError
from hffm_core.protocol import codec, topics
from hffm_core.protocol.messages import Chunk

TOPIC = "hffm/v1/f/up/fog-a/imu/activity/adapter/dev-1"


def _pieces(payload: bytes, limit: int = 8192) -> list[Chunk]:
    out = split(fleet="f", sender="dev-1", target="fog-a", topic=TOPIC, payload=payload, max_packet=limit)
    for topic, data in out:
        assert topic == topics.chunk("f", "fog-a", "dev-1") and fits(topic, data, limit)
    return [codec.decode(data, Chunk) for _, data in out]


@pytest.mark.parametrize("size", [0, 1, 6000, 50_000, 123_457])
def test_split_and_reassemble_in_any_order(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    chunks = _pieces(payload)
    got = None
    box = Reassembler()
    for c in reversed(chunks):
        assert got is None
        got = box.add(c)
        if c.index != 0:
            assert box.missing("dev-1", c.payload_sha256)  # still waiting
    assert got == (TOPIC, payload) and box.pending == 0


def test_duplicates_are_ignored_and_retransmission_fills_gaps() -> None:
    payload = b"y" * 40_000
    chunks = _pieces(payload)
    box = Reassembler()
    for c in chunks[:-2]:
        box.add(c)
        box.add(c)
    assert box.missing("dev-1", chunks[0].payload_sha256) == [len(chunks) - 2, len(chunks) - 1]
    for c in _pieces(payload)[-2:]:  # a retransmission of the whole payload only has to fill the gaps
        got = box.add(c)
    assert got == (TOPIC, payload)


def test_inconsistent_or_corrupt_pieces_are_rejected() -> None:
    chunks = _pieces(b"z" * 30_000)
    box = Reassembler()
    box.add(chunks[0])
    liar = dataclasses.replace(chunks[1], count=chunks[1].count + 1)
    with pytest.raises(DecodeError, match="disagrees"):
        box.add(liar)
    fake = b"q" * len(chunks[1].data)
    forged = [dataclasses.replace(c, data=fake, sha256=hashlib.sha256(fake).hexdigest()) for c in chunks]
    box2 = Reassembler()
    with pytest.raises(DecodeError, match="SHA-256"):
        for c in forged:
            box2.add(c)
    with pytest.raises(ValueError, match="sha256 does not match"):
        dataclasses.replace(chunks[0], data=b"other")


def test_bounds_and_timeouts_drop_partials() -> None:
    box = Reassembler(max_pending=2, timeout_s=10.0)
    firsts = [_pieces(bytes([i]) * 20_000)[0] for i in range(3)]
    for n, c in enumerate(firsts):
        box.add(c, now=float(n))
    assert box.pending == 2 and box.dropped == 1
    box.add(_pieces(b"w" * 20_000)[0], now=100.0)  # the two old partials time out
    assert box.pending == 1 and box.dropped == 3


def test_a_limit_too_small_to_chunk_into_is_refused() -> None:
    with pytest.raises(ValueError, match="below"):
        split(fleet="f", sender="d", target="fog-a", topic=TOPIC, payload=b"x", max_packet=1000)
    assert fits(TOPIC, b"x" * 10**6, 0)  # no known limit

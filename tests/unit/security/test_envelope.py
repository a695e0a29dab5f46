"""The SignedEnvelope wire type: strict round trips, invariants, the signed byte string, and who signs each topic."""

from __future__ import annotations

import msgpack
import pytest

from hffm_core.errors import DecodeError
from hffm_core.protocol import (
    ModuleKey,
    NodeState,
    RoundMetrics,
    codec,
    decode,
    encode,
    topics,
)
from hffm_core.protocol.envelope import (
    DOMAIN,
    SignedEnvelope,
    expected_signer,
    message_sender,
    signed_bytes,
)
from hffm_core.protocol.messages import FogRoundReport, ResyncRequest, RoundControl

KEY_ID = "0123456789abcdef" * 2


def envelope(**overrides: object) -> SignedEnvelope:
    fields: dict[str, object] = {"signer": "dev-1", "key_id": KEY_ID, "seq": 7, "payload": b"\x81\xa1a\x01",
                                 "signature": bytes(range(64))}
    fields.update(overrides)
    return SignedEnvelope(**fields)  # type: ignore[arg-type]


def test_round_trip() -> None:
    env = envelope(seq=2**63 - 1)
    data = encode(env)
    assert decode(data, SignedEnvelope) == env
    # On the wire: the positional array [type, schema, signer, key_id, seq, payload, signature].
    assert msgpack.unpackb(data, raw=False) == ["signed_envelope", 1, "dev-1", KEY_ID, 2**63 - 1, b"\x81\xa1a\x01",
                                                bytes(range(64))]
    raw = codec.wire_map(data, SignedEnvelope)
    assert raw["type"] == "signed_envelope" and raw["schema"] == 1
    assert set(raw) == {"type", "schema", "signer", "key_id", "seq", "payload", "signature"}
    assert decode(msgpack.packb(raw, use_bin_type=True), SignedEnvelope) == env  # the map form decodes too


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"signer": "Dev-1"}, "invalid signer"),
        ({"signer": ""}, "invalid signer"),
        ({"signer": "a/b"}, "invalid signer"),
        ({"key_id": "0123"}, "key_id must be 32"),
        ({"key_id": KEY_ID.upper()}, "key_id must be 32"),
        ({"seq": 0}, "seq must be an int"),
        ({"seq": -1}, "seq must be an int"),
        ({"seq": 2**63}, "seq must be an int"),
        ({"seq": True}, "seq must be an int"),
        ({"payload": b""}, "payload must be non-empty"),
        ({"payload": "text"}, "payload must be non-empty"),
        ({"signature": bytes(63)}, "signature must be 64"),
        ({"signature": bytes(65)}, "signature must be 64"),
    ],
)
def test_invariants(overrides: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        envelope(**overrides)


def _wires(**changes: object) -> list[bytes]:
    """The envelope with ``changes`` in the map form, and in the positional form too where the changed map has
    exactly the envelope's fields (a dropped or an extra field has no positional form)."""
    raw = codec.wire_map(encode(envelope()), SignedEnvelope)
    for name, value in changes.items():
        if value is _DROP:
            del raw[name]
        else:
            raw[name] = value
    out = [msgpack.packb(raw, use_bin_type=True)]
    if set(raw) == set(codec.wire_map(encode(envelope()), SignedEnvelope)):
        out.append(msgpack.packb(codec.wire_array(raw, SignedEnvelope), use_bin_type=True))
    return out


_DROP = object()


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"extra": 1}, "unknown field"),
        ({"signature": _DROP}, "missing field"),
        ({"seq": "7"}, "expected int"),
        ({"seq": 0}, "seq must be"),
        ({"payload": "text"}, "expected bytes"),
        ({"signature": b"x" * 64 + b"y"}, "signature must be 64"),
        ({"schema": 2}, "unsupported schema"),
        ({"type": "node_state"}, "expected a 'signed_envelope' message"),
    ],
)
def test_strict_decoding(changes: dict[str, object], match: str) -> None:
    for data in _wires(**changes):
        with pytest.raises(DecodeError, match=match):
            decode(data, SignedEnvelope)


def test_an_envelope_is_not_a_message_and_a_message_is_not_an_envelope() -> None:
    state = NodeState(fleet="f", node="dev-1", role="device", fog="fog-a", online=True)
    with pytest.raises(DecodeError):
        decode(encode(envelope()), NodeState)
    with pytest.raises(DecodeError):
        decode(encode(state), SignedEnvelope)


def test_signed_bytes_start_with_the_domain_and_cover_every_field() -> None:
    base = {"schema": 1, "topic": "hffm/v1/f/state/dev-1", "signer": "dev-1", "key_id": KEY_ID, "seq": 3,
            "payload": b"abc"}
    reference = signed_bytes(**base)  # type: ignore[arg-type]
    assert reference.startswith(DOMAIN)
    for name, value in [("schema", 2), ("topic", "hffm/v1/f/state/dev-2"), ("signer", "dev-2"),
                        ("key_id", "f" * 32), ("seq", 4), ("payload", b"abd")]:
        assert signed_bytes(**{**base, name: value}) != reference, name  # type: ignore[arg-type]


def test_signed_bytes_cannot_shift_bytes_between_fields() -> None:
    """Length prefixes: moving a byte from the topic into the signer changes the signed string."""
    one = signed_bytes(schema=1, topic="ab", signer="c", key_id=KEY_ID, seq=1, payload=b"p")
    two = signed_bytes(schema=1, topic="a", signer="bc", key_id=KEY_ID, seq=1, payload=b"p")
    assert one != two


FLEET, FOG = "fleet-1", "fog-a"
KEY = ModuleKey.adapter("imu", "activity")


@pytest.mark.parametrize(
    ("topic", "signer"),
    [
        (topics.up(FLEET, FOG, KEY, "dev-1"), "dev-1"),
        (topics.cluster(FLEET, FOG, KEY), FOG),
        (topics.fogup(FLEET, FOG, KEY), FOG),
        (topics.fogdone(FLEET, FOG), FOG),
        (topics.global_(FLEET, KEY), "cloud"),
        (topics.ctl(FLEET, "cloud"), "cloud"),
        (topics.ctl(FLEET, FOG), FOG),
        (topics.state(FLEET, "dev-1"), "dev-1"),
        (topics.state(FLEET, FOG), FOG),
        (topics.metrics(FLEET), "cloud"),
        (topics.resync(FLEET, FOG, "dev-1"), "dev-1"),
        (topics.resync(FLEET, "cloud", FOG), FOG),
        (topics.ack(FLEET, FOG, "dev-1", FOG), FOG),
        (topics.ack(FLEET, FOG, FOG, "cloud"), "cloud"),
        (topics.chunk(FLEET, FOG, "dev-1"), "dev-1"),
        (topics.chunk(FLEET, "cloud", FOG), FOG),
        (topics.peer(FLEET, FOG, "dev-2", "dev-1"), "dev-1"),
        (topics.fogpeer(FLEET, FOG, KEY), FOG),
    ],
)
def test_expected_signer_of_every_topic_kind(topic: str, signer: str) -> None:
    assert expected_signer(topics.parse(topic)) == signer


def test_every_topic_kind_has_an_expected_signer() -> None:
    covered = {"up", "cluster", "fogup", "fogdone", "global", "ctl", "state", "metrics", "resync", "ack", "chunk",
               "peer", "fogpeer"}
    from hffm_core.protocol.routing import MESSAGE_FOR_KIND

    assert set(MESSAGE_FOR_KIND) == covered


def test_message_sender() -> None:
    assert message_sender(NodeState(fleet="f", node="dev-1", role="device", fog="fog-a", online=True)) == "dev-1"
    assert message_sender(RoundControl(fleet="f", sender="cloud", global_round=1, cluster_round=0, total_rounds=2,
                                       agg_every=1, local_epochs=1, deadline_s=1.0)) == "cloud"
    assert message_sender(ResyncRequest(fleet="f", sender="dev-1", target="fog-a", modules=(KEY,))) == "dev-1"
    assert message_sender(FogRoundReport(fleet="f", fog="fog-a", global_round=1, modules=(KEY,), devices=("d",),
                                         cluster_rounds=1)) == "fog-a"
    assert message_sender(RoundMetrics(fleet="f", global_round=1, total_rounds=2, accuracy={},
                                       fogs_reported=(), modules_updated=0)) is None

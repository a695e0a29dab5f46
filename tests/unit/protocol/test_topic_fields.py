"""A ModuleUpdate encoded for its ``up`` topic: the fields the topic names (fleet, sender, fog, module key) and the
type name (an ``up`` topic carries nothing else) travel empty and are read back from the topic
(hffm_core/protocol/codec.py ``FROM_TOPIC``, ``TYPE_FROM_TOPIC``)."""

from __future__ import annotations

import dataclasses

import msgpack
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hffm_core.compression import make_codec
from hffm_core.compression.module_codec import pack
from hffm_core.errors import DecodeError, SecurityError
from hffm_core.protocol import ModuleKey, ModuleUpdate, codec, decode, encode, topics
from hffm_core.protocol.routing import decode_message, encode_for
from hffm_core.security.signing import Signer, Verifier

KEY = ModuleKey.adapter("inertial", "activity")
TOPIC = topics.up("demo", "fog-1", KEY, "fog-1-dev-1")


def _update(**overrides: object) -> ModuleUpdate:
    rng = np.random.default_rng(0)
    state = {f"layer.{i}.lora_R.weight": rng.normal(size=(6, 6)).astype(np.float32) for i in range(4)}
    packed, _ = pack(state, make_codec("sign", {}), seed=1)
    fields: dict[str, object] = dict(fleet="demo", sender="fog-1-dev-1", fog="fog-1", key=KEY, global_round=3,
                                     cluster_round=2, base=(3, 1), num_samples=123, train_loss=0.25)
    fields.update(overrides)
    fields["idempotency_key"] = ModuleUpdate.default_key(fields["fleet"], fields["sender"], 3, 2, fields["key"])
    return ModuleUpdate(**fields, **packed.fields())  # type: ignore[arg-type]


def test_the_fields_the_topic_names_travel_empty_and_come_back() -> None:
    update = _update()
    full, compact = encode(update), encode_for(TOPIC, update)
    saved = sum(len(msgpack.packb(v)) - 1 for v in ("module_update", "demo", "fog-1-dev-1", "fog-1", str(KEY)))
    assert len(full) - len(compact) == saved == 58
    items = msgpack.unpackb(compact)
    assert items[0] == "" and items[2:6] == ["", "", "", ""]  # type, fleet, sender, fog, key
    assert decode_message(TOPIC, compact) == (topics.parse(TOPIC), update)
    assert decode(compact, ModuleUpdate, topic=topics.parse(TOPIC)) == update


def test_a_full_payload_decodes_with_or_without_its_topic() -> None:
    update = _update()
    assert decode_message(TOPIC, encode(update))[1] == update
    assert decode(encode(update), ModuleUpdate) == update


@pytest.mark.parametrize("field", ["fleet", "sender", "fog", "key"])
def test_a_compact_payload_without_its_topic_is_a_named_decode_error(field: str) -> None:
    raw = msgpack.unpackb(encode(_update()))
    raw[2 + ["fleet", "sender", "fog", "key"].index(field)] = ""
    with pytest.raises(DecodeError, match=f"module_update.{field}: travelled empty, to be read from its topic, "
                                          "but no topic was given"):
        decode(msgpack.packb(raw, use_bin_type=True), ModuleUpdate)


def test_the_map_form_is_filled_too_and_the_callers_map_is_left_alone() -> None:
    raw = codec.wire_map(encode(_update()), ModuleUpdate)
    raw["sender"] = ""
    before = dict(raw)
    assert codec.from_wire(raw, ModuleUpdate, topic=topics.parse(TOPIC)) == _update()
    assert raw == before


def test_a_field_that_differs_from_the_topic_travels_as_it_is() -> None:
    # The fog refuses an update whose header disagrees with its topic: encoding must not hide the disagreement.
    update = _update(fog="fog-2")
    items = msgpack.unpackb(encode_for(TOPIC, update))
    assert items[2:6] == ["", "", "fog-2", ""]
    assert decode_message(TOPIC, encode_for(TOPIC, update))[1].fog == "fog-2"


def test_the_topic_is_the_source_of_those_fields_and_a_signature_binds_it() -> None:
    # Unsigned, a compact payload put on another device's topic reads as that device's (as a full payload naming
    # that device would: the broker's ACL decides who may publish there). Signed, the envelope covers the topic,
    # so the same bytes moved to another topic fail verification.
    update = _update()
    other = topics.up("demo", "fog-1", KEY, "fog-1-dev-2")
    moved = decode_message(other, encode_for(TOPIC, update))[1]
    assert moved == dataclasses.replace(update, sender="fog-1-dev-2",
                                        idempotency_key=ModuleUpdate.default_key("demo", "fog-1-dev-2", 3, 2, KEY))
    key = Ed25519PrivateKey.generate()
    sealed = Signer(signer_id="fog-1-dev-1", private_key=key).seal(TOPIC, encode_for(TOPIC, update))
    verifier = Verifier(keys={"fog-1-dev-1": key.public_key(), "fog-1-dev-2": key.public_key()})
    signer, inner = verifier.open(TOPIC, sealed)
    assert signer == "fog-1-dev-1" and decode_message(TOPIC, inner)[1] == update
    with pytest.raises(SecurityError):
        Verifier(keys={"fog-1-dev-1": key.public_key(), "fog-1-dev-2": key.public_key()}).open(other, sealed)


def test_a_type_that_travelled_empty_needs_an_up_topic() -> None:
    compact = encode_for(TOPIC, _update())
    with pytest.raises(DecodeError, match="module_update: the type travelled empty, to be read from its topic, but "
                                          "no topic was given"):
        decode(compact, ModuleUpdate)
    ack_topic = topics.parse(topics.ack("demo", "fog-1", "fog-1-dev-1", "fog-1"))
    with pytest.raises(DecodeError, match="the type travelled empty.*is not an 'up' topic"):
        decode(compact, ModuleUpdate, topic=ack_topic)
    # A type with no topic kind of its own never travels empty: an empty type is just a wrong type for it.
    with pytest.raises(DecodeError, match="expected a 'module_version' message, got type ''"):
        decode(compact, codec.message_type("module_version"), topic=topics.parse(TOPIC))


def test_only_a_topic_that_names_the_field_fills_it() -> None:
    raw = msgpack.unpackb(encode_for(TOPIC, _update()))
    raw[0] = "module_update"  # the type in full: the fields are judged against the topic
    ack_topic = topics.parse(topics.ack("demo", "fog-1", "fog-1-dev-1", "fog-1"))  # names no module
    with pytest.raises(DecodeError, match="module_update.key: travelled empty.*has no module"):
        decode(msgpack.packb(raw, use_bin_type=True), ModuleUpdate, topic=ack_topic)

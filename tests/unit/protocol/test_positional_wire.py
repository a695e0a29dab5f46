"""The positional wire form: ``encode`` emits ``[TYPE, schema, <further fields in order>]``; ``decode`` reads it and
the older map form with the same checks, and refuses a malformed array with a DecodeError naming the problem."""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hffm_core.compression import make_codec
from hffm_core.compression.module_codec import pack as pack_module
from hffm_core.errors import DecodeError
from hffm_core.protocol import codec, decode, encode
from hffm_core.protocol.codec import WIRE_TYPES
from hffm_core.protocol.envelope import SignedEnvelope
from hffm_core.protocol.keys import ModuleKey
from hffm_core.protocol.messages import (
    MESSAGE_TYPES,
    ModuleUpdate,
    NodeState,
    RoundControl,
)

Make = Callable[..., Any]


def _type_id(cls: type) -> str:
    return cls.TYPE  # type: ignore[attr-defined, no-any-return]


def _message(make: Make, cls: type) -> Any:
    if cls is SignedEnvelope:
        return SignedEnvelope(signer="dev-01", key_id="0123456789abcdef" * 2, seq=42,
                              payload=encode(make(RoundControl)), signature=bytes(range(64)))
    return make(cls)


def _names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _map_bytes(positional: list[Any], cls: type) -> bytes:
    """The map form, built here with msgpack from the positional items and the field names."""
    return msgpack.packb({"type": positional[0], **dict(zip(_names(cls), positional[1:]))}, use_bin_type=True)


def _rejects(value: Any, cls: type, match: str) -> DecodeError:
    with pytest.raises(DecodeError, match=match) as info:
        decode(msgpack.packb(value, use_bin_type=True), cls)
    assert type(info.value) is DecodeError
    return info.value


def test_every_wire_type_declares_schema_first() -> None:
    assert set(WIRE_TYPES) == {*MESSAGE_TYPES, SignedEnvelope}
    for cls in WIRE_TYPES:
        assert _names(cls)[0] == "schema", cls


@pytest.mark.parametrize("cls", WIRE_TYPES, ids=_type_id)
def test_encode_emits_the_positional_array_and_both_forms_decode(make: Make, cls: type) -> None:
    message = _message(make, cls)
    payload = encode(message)
    items = msgpack.unpackb(payload, raw=False)
    assert isinstance(items, list) and len(items) == len(_names(cls)) + 1
    assert items[0] == cls.TYPE and items[1] == codec.schema_of(cls)  # type: ignore[attr-defined]
    assert decode(payload, cls) == message
    assert codec.from_wire(items, cls) == message
    as_map = _map_bytes(items, cls)
    assert decode(as_map, cls) == message
    # The helpers: the map form of the payload, and back.
    wire = codec.wire_map(payload, cls)
    assert wire == msgpack.unpackb(as_map, raw=False) and set(wire) == {"type", *_names(cls)}
    assert codec.wire_map(items, cls) == wire and codec.wire_map(wire, cls) == wire
    assert codec.wire_array(wire, cls) == items
    assert msgpack.packb(codec.wire_array(wire, cls), use_bin_type=True) == payload


@pytest.mark.parametrize("cls", WIRE_TYPES, ids=_type_id)
def test_the_positional_form_is_smaller(make: Make, cls: type) -> None:
    payload = encode(_message(make, cls))
    as_map = _map_bytes(msgpack.unpackb(payload, raw=False), cls)
    # Each field name costs its length plus a one-byte header; the "type" and "schema" keys go too.
    saved = sum(len(n) + 1 for n in _names(cls)) + len("type") + 1
    assert len(as_map) - len(payload) == saved


def test_a_sign_coded_module_update_loses_most_of_its_header() -> None:
    key = ModuleKey.parse("adapter:power:appliance")
    state = {"w": np.random.default_rng(0).standard_normal((8, 384)).astype(np.float32)}
    packed, _ = pack_module(state, make_codec("sign"), seed=123456789)
    message = ModuleUpdate(fleet="demo", sender="dev-1-2", fog="fog-1", key=key, global_round=3, cluster_round=2,
                           base=(3, 1), num_samples=128, train_loss=0.4375,
                           idempotency_key="demo/dev-1-2/3.2/adapter:power:appliance", **packed.fields())
    payload = encode(message)
    as_map = _map_bytes(msgpack.unpackb(payload, raw=False), ModuleUpdate)
    assert decode(payload, ModuleUpdate) == message == decode(as_map, ModuleUpdate)
    header_map, header_positional = len(as_map) - packed.nbytes, len(payload) - packed.nbytes
    print(f"sign-coded ModuleUpdate: {packed.nbytes} B payload; header {header_map} B as a map, "
          f"{header_positional} B positional ({header_map - header_positional} B saved)")
    assert header_map - header_positional >= 140
    assert header_positional < 0.6 * header_map


def test_sha256_travels_as_32_bytes_and_the_hex_form_still_decodes() -> None:
    state = {"w": np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)}
    packed, _ = pack_module(state, make_codec("lowrank"))
    message = ModuleUpdate(fleet="demo", sender="dev-1", fog="fog-1", key=ModuleKey.parse("head:_:digit"),
                           global_round=1, cluster_round=1, base=(1, 0), num_samples=3, train_loss=0.5,
                           idempotency_key="k", **packed.fields())
    payload = encode(message)
    items = msgpack.unpackb(payload, raw=False)
    at = 1 + [f.name for f in dataclasses.fields(ModuleUpdate)].index("sha256")
    assert items[at] == bytes.fromhex(message.sha256) and len(items[at]) == 32
    hex_form = msgpack.packb([*items[:at], message.sha256, *items[at + 1:]], use_bin_type=True)
    assert len(hex_form) - len(payload) == 32
    assert decode(hex_form, ModuleUpdate) == message == decode(payload, ModuleUpdate)
    for bad, match in ((items[at][:31], "binary SHA-256 has 32 bytes, got 31"),
                       (bytes(32), "sha256 does not match the tensors")):
        tampered = msgpack.packb([*items[:at], bad, *items[at + 1:]], use_bin_type=True)
        with pytest.raises(DecodeError, match=match):
            decode(tampered, ModuleUpdate)


# --- malformed arrays --------------------------------------------------------------------------------------------


def _items(make: Make, cls: type) -> list[Any]:
    items = msgpack.unpackb(encode(_message(make, cls)), raw=False)
    assert isinstance(items, list)
    return items


@pytest.mark.parametrize("cls", WIRE_TYPES, ids=_type_id)
def test_an_array_of_another_type_is_rejected(make: Make, cls: type) -> None:
    other = NodeState if cls is not NodeState else ModuleUpdate
    _rejects(_items(make, other), cls, f"expected a '{cls.TYPE}' message, got type '{other.TYPE}'")
    _rejects(_items(make, cls), other, f"expected a '{other.TYPE}' message, got type '{cls.TYPE}'")


@pytest.mark.parametrize("value", [None, 1, "Module_Update", b"module_update", ["module_update"], {"a": 1}])
def test_a_bad_type_item_is_rejected(make: Make, value: Any) -> None:
    items = _items(make, ModuleUpdate)
    items[0] = value
    _rejects(items, ModuleUpdate, f"expected a 'module_update' message, got type {re.escape(repr(value))}")


def test_an_empty_array_is_rejected() -> None:
    for cls in WIRE_TYPES:
        _rejects([], cls, f"expected a '{cls.TYPE}' message, got an empty array")
        _rejects([{"type": cls.TYPE}], cls, f"expected a '{cls.TYPE}' message, got type ")


@pytest.mark.parametrize("cls", WIRE_TYPES, ids=_type_id)
def test_too_few_or_too_many_items_are_rejected(make: Make, cls: type) -> None:
    items = _items(make, cls)
    n = len(items)
    for bad in (items[:1], items[:2], items[:-1], [*items, None], [*items, *items[2:]]):
        _rejects(bad, cls, f"^{cls.TYPE}: a positional payload has {n} items \\(the type and {n - 1} fields\\), "
                           f"got {len(bad)}$")


@pytest.mark.parametrize("schema", ["other", 0, 4, -1, 2**64 - 1, "1", None, [1], 1.0, True])
@pytest.mark.parametrize("cls", WIRE_TYPES, ids=_type_id)
def test_a_wrong_schema_is_rejected(make: Make, cls: type, schema: Any) -> None:
    items = _items(make, cls)
    version = codec.schema_of(cls)
    if schema == "other":  # another version this build knows of: a type at 1 refuses 2, one at 2 or 3 refuses 1
        schema = 1 if version > 1 else 2
    items[1] = schema
    match = f"^{cls.TYPE}: unsupported schema {re.escape(repr(schema))}; this build reads schema {version}$"
    _rejects(items, cls, match)
    # The schema is judged before the item count: a payload of another schema version may have other fields.
    _rejects(items[:3], cls, match)
    _rejects([*items, 7], cls, match)


@pytest.mark.parametrize(
    ("cls", "field", "value", "match"),
    [
        (ModuleUpdate, "fleet", 5, "module_update.fleet: expected str, got int"),
        (ModuleUpdate, "key", 5, "module_update.key: expected a module key string, got int"),
        (ModuleUpdate, "key", "no-such-kind", "module_update.key: "),
        (ModuleUpdate, "global_round", "3", "module_update.global_round: expected int, got str"),
        (ModuleUpdate, "global_round", True, "module_update.global_round: expected int, got bool"),
        (ModuleUpdate, "train_loss", float("nan"), "module_update.train_loss: NaN or Inf is not allowed"),
        (ModuleUpdate, "base", [1], "module_update.base: expected 2 items, got 1"),
        (ModuleUpdate, "tensors", [["w", "float32"]], "module_update.tensors\\[0\\]: a tensor is"),
        (ModuleUpdate, "sha256", "00" * 32, "module_update: sha256 does not match the tensors"),
        (ModuleUpdate, "num_samples", 0, "module_update: num_samples must be an int > 0"),
        (NodeState, "online", 1, "node_state.online: expected bool, got int"),
        (NodeState, "telemetry", {"cpu": "hot"}, "node_state.telemetry\\['cpu'\\]: expected float, got str"),
        (NodeState, "skip", [1, 2, 3], "node_state.skip: no alternative matched"),
        (RoundControl, "participants", [], "round_control.participants: expected a map, got list"),
        (SignedEnvelope, "signature", bytes(63), "signed_envelope: signature must be 64 bytes"),
        (SignedEnvelope, "payload", "text", "signed_envelope.payload: expected bytes, got str"),
    ],
)
def test_a_wrong_value_in_a_position_is_rejected_naming_the_field(
    make: Make, cls: type, field: str, value: Any, match: str
) -> None:
    items = _items(make, cls)
    items[1 + _names(cls).index(field)] = value
    _rejects(items, cls, match)
    # The map form of the same payload fails the same check with the same message.
    assert str(_rejects({"type": items[0], **dict(zip(_names(cls), items[1:]))}, cls, match)) == \
        str(_rejects(items, cls, match))


def test_wire_map_checks_the_framing_and_wire_array_needs_every_field(make: Make) -> None:
    with pytest.raises(DecodeError, match="not a valid msgpack payload"):
        codec.wire_map(b"\xc1", ModuleUpdate)
    with pytest.raises(DecodeError, match="module_update: payload must be a msgpack array or map, got int"):
        codec.wire_map(msgpack.packb(3), ModuleUpdate)
    with pytest.raises(DecodeError, match="module_update: a positional payload has"):
        codec.wire_map(_items(make, ModuleUpdate)[:-1], ModuleUpdate)
    with pytest.raises(DecodeError, match="expected a 'node_state' message"):
        codec.wire_map(encode(make(ModuleUpdate)), NodeState)
    wire = codec.wire_map(encode(make(NodeState)), NodeState)
    del wire["backbone"]
    assert decode(msgpack.packb(wire, use_bin_type=True), NodeState) == make(NodeState, backbone="")
    with pytest.raises(KeyError):
        codec.wire_array(wire, NodeState)


# --- fuzz: random arrays only ever raise DecodeError -------------------------------------------------------------

_LEAVES = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=8)
           | st.binary(max_size=8) | st.sampled_from([t.TYPE for t in WIRE_TYPES] + ["fp32", "adapter:imu:activity"]))
_VALUES = st.recursive(
    _LEAVES,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=8,
)


_ITEMS_CACHE: dict[type, list[Any]] = {}


def _only_decode_error(payload: bytes, cls: type) -> None:
    try:
        result = decode(payload, cls)
    except DecodeError:
        return
    assert type(result) is cls
    assert decode(encode(result), cls) == result


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=st.lists(_VALUES, max_size=20))
def test_fuzz_random_lists_only_raise_decode_error(value: list[Any]) -> None:
    payload = msgpack.packb(value, use_bin_type=True)
    for cls in WIRE_TYPES:
        _only_decode_error(payload, cls)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cls=st.sampled_from(WIRE_TYPES), data=st.data())
def test_fuzz_well_framed_arrays_with_random_values_only_raise_decode_error(
    make: Make, cls: type, data: st.DataObject
) -> None:
    """Arrays of the right type, schema and length, so that the field checks behind the framing are reached: some
    items of a valid payload replaced, or all of them random."""
    if cls not in _ITEMS_CACHE:
        _ITEMS_CACHE[cls] = _items(make, cls)
    items = copy.deepcopy(_ITEMS_CACHE[cls])
    if data.draw(st.booleans(), label="all random"):
        items[2:] = [data.draw(_VALUES) for _ in items[2:]]
    else:
        for at in data.draw(st.lists(st.integers(2, len(items) - 1), min_size=1, max_size=3, unique=True)):
            items[at] = data.draw(_VALUES)
    _only_decode_error(msgpack.packb(items, use_bin_type=True), cls)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(head=st.sampled_from([0x90 + n for n in range(16)] + [0xDC, 0xDD]), tail=st.binary(max_size=200),
       cls=st.sampled_from(WIRE_TYPES))
def test_fuzz_garbage_behind_an_array_header_only_raises_decode_error(head: int, tail: bytes, cls: type) -> None:
    _only_decode_error(bytes([head]) + tail, cls)

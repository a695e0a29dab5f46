"""The msgpack codec: exact round trips, and every malformed payload rejected with DecodeError naming the problem.

Bad payloads are hand-built with msgpack from a valid message's wire map (``wire_of``: the map form of the positional
array ``encode`` emits; both forms go through the same checks, see test_positional_wire.py) so that each test breaks
one thing only. The fuzz tests at the end check that nothing but DecodeError ever leaves ``decode``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import re
import types
import typing
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hffm_core.errors import DecodeError
from hffm_core.protocol import codec, decode, encode
from hffm_core.protocol.checks import RANKS_SCHEMA_VERSION
from hffm_core.protocol.keys import ModuleKey
from hffm_core.protocol.messages import (
    ALLOWED_DTYPES,
    JOB_SCHEMA_VERSION,
    MESSAGE_TYPES,
    SCHEMA_VERSION,
    EncodedTensor,
    FogAggregate,
    FogRoundReport,
    ModuleUpdate,
    ModuleVersion,
    NodeState,
    RoundControl,
    TensorBlob,
    blobs_from_state,
    state_from_blobs,
    tensors_sha256,
)

Make = Callable[..., Any]
WireOf = Callable[[object], dict[str, Any]]
Pack = Callable[[object], bytes]
TENSOR_TYPES = (ModuleUpdate, ModuleVersion, FogAggregate)


def _type_id(cls: type) -> str:
    return cls.TYPE  # type: ignore[attr-defined, no-any-return]


def _required_fields(cls: type) -> list[str]:
    return [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]


def _rejects(payload: bytes, cls: type, match: str | None = None, **kwargs: Any) -> DecodeError:
    with pytest.raises(DecodeError, match=match) as info:
        decode(payload, cls, **kwargs)
    assert type(info.value) is DecodeError
    return info.value


# --- round trips -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=_type_id)
def test_round_trip_every_message_type(make: Make, cls: type) -> None:
    message = make(cls)
    payload = encode(message)
    assert isinstance(payload, bytes)
    back = decode(payload, cls)
    assert back == message
    assert type(back) is cls
    assert encode(back) == payload, "encoding is deterministic"
    assert decode(bytearray(payload), cls) == message
    assert decode(memoryview(payload), cls) == message


@pytest.mark.parametrize("cls", TENSOR_TYPES, ids=_type_id)
def test_round_trip_preserves_every_tensor(
    make: Make, sample: Callable[[int], dict[str, np.ndarray]], cls: type
) -> None:
    state = sample(7)
    back = decode(encode(make(cls, tensors=blobs_from_state(state))), cls)
    arrays = state_from_blobs(back.tensors)
    assert sorted(arrays) == sorted(state)
    for name, array in state.items():
        assert arrays[name].dtype == array.dtype and arrays[name].shape == array.shape, name
        np.testing.assert_array_equal(arrays[name], array)


@pytest.mark.parametrize("dtype", ALLOWED_DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (5,), (0, 3), (2, 3, 4), (1, 1, 1, 1, 1, 1, 1, 2)], ids=str)
def test_round_trip_dtypes_and_shapes(make: Make, dtype: str, shape: tuple[int, ...]) -> None:
    array = (np.arange(math.prod(shape)) * 3 - 7).astype(dtype).reshape(shape)
    message = make(ModuleVersion, tensors=blobs_from_state({"t": array}))
    back = decode(encode(message), ModuleVersion)
    assert back == message
    (tensor,) = back.tensors
    assert (tensor.dtype, tensor.shape) == (dtype, shape)
    np.testing.assert_array_equal(tensor.to_array(), array)


def test_round_trip_extreme_scalars(make: Make) -> None:
    big = 2**64 - 1  # the largest msgpack uint
    message = make(ModuleUpdate, global_round=big, cluster_round=0, base=(big, 0), num_samples=big, train_loss=-1e308)
    assert decode(encode(message), ModuleUpdate) == message
    control = make(RoundControl, deadline_s=0, final=False, agg_every=1)
    assert decode(encode(control), RoundControl) == control
    state = make(NodeState, modules=(), num_samples={}, backbone="")
    assert decode(encode(state), NodeState) == state


@pytest.mark.parametrize(
    ("cls", "defaults"),
    [
        (ModuleUpdate, {"codec": "fp32"}),
        (RoundControl, {"final": False}),
        (NodeState, {"modules": (), "num_samples": {}, "backbone": ""}),
    ],
    ids=["module_update", "round_control", "node_state"],
)
def test_fields_with_defaults_may_be_left_out(
    make: Make, wire_of: WireOf, pack: Pack, cls: type, defaults: dict[str, Any]
) -> None:
    message = make(cls, **defaults)
    raw = wire_of(message)
    for name in defaults:
        del raw[name]
    assert decode(pack(raw), cls) == message


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=_type_id)
def test_field_order_on_the_wire_does_not_matter(make: Make, wire_of: WireOf, pack: Pack, cls: type) -> None:
    raw = wire_of(make(cls))
    items = list(raw.items())
    random.Random(0).shuffle(items)
    assert decode(pack(dict(reversed(items))), cls) == make(cls)


def test_message_type_registry() -> None:
    for cls in MESSAGE_TYPES:
        assert codec.message_type(cls.TYPE) is cls
    with pytest.raises(DecodeError, match="unknown message type 'nope'"):
        codec.message_type("nope")


@pytest.mark.parametrize("value", [TensorBlob(name="w", dtype="uint8", shape=(1,), data=b"a"), {}, None, 3])
def test_encode_rejects_non_messages(value: object) -> None:
    with pytest.raises(TypeError, match="not an hffm message type"):
        encode(value)


# --- round-trip property -----------------------------------------------------------------------------------------

SEGMENTS = st.from_regex(r"[a-z0-9_-]{1,16}", fullmatch=True)
NAMES = st.from_regex(r"[a-z0-9][a-z0-9-]{0,15}", fullmatch=True)
KEYS = st.one_of(
    st.builds(ModuleKey.encoder, NAMES),
    st.builds(ModuleKey.adapter, NAMES, NAMES),
    st.builds(ModuleKey.head, NAMES),
)
U64 = st.integers(0, 2**64 - 1)
FINITE = st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def finite_arrays(draw: st.DrawFn) -> np.ndarray:
    dtype = np.dtype(draw(st.sampled_from(ALLOWED_DTYPES)))
    kwargs = {"allow_nan": False, "allow_infinity": False} if dtype.kind == "f" else {}
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4))
    return draw(hnp.arrays(dtype, shape, elements=hnp.from_dtype(dtype, **kwargs)))


STATES = st.dictionaries(st.text(st.characters(codec="utf-8"), min_size=1, max_size=12), finite_arrays(),
                         min_size=1, max_size=4)


def _assert_state_equal(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for name, array in want.items():
        assert got[name].dtype == array.dtype and got[name].shape == array.shape
        assert got[name].tobytes() == np.asarray(array, order="C").astype(array.dtype.newbyteorder("<")).tobytes()


@settings(max_examples=150, deadline=None)
@given(state=STATES, fleet=SEGMENTS, sender=SEGMENTS, fog=SEGMENTS, key=KEYS, rounds=st.tuples(U64, U64, U64, U64),
       num_samples=st.integers(1, 2**64 - 1), loss=FINITE,
       idem=st.one_of(st.none(), st.text(min_size=1, max_size=40)))
def test_module_update_round_trip_property(
    state: dict[str, np.ndarray], fleet: str, sender: str, fog: str, key: ModuleKey,
    rounds: tuple[int, int, int, int], num_samples: int, loss: float, idem: str | None,
) -> None:
    """Round trip with any key; the derived key (``idem`` None) travels empty and comes back whole."""
    tensors = blobs_from_state(state)
    derived = ModuleUpdate.default_key(fleet, sender, rounds[0], rounds[1], key)
    message = ModuleUpdate(
        fleet=fleet, sender=sender, fog=fog, key=key, global_round=rounds[0], cluster_round=rounds[1],
        base=(rounds[2], rounds[3]), num_samples=num_samples, train_loss=loss, tensors=tensors,
        sha256=tensors_sha256(tensors), idempotency_key=derived if idem is None else idem,
    )
    payload = encode(message)
    assert codec.wire_map(payload, ModuleUpdate)["idempotency_key"] == ("" if message.idempotency_key == derived else idem)
    back = decode(payload, ModuleUpdate)
    assert back == message
    _assert_state_equal(state_from_blobs(back.tensors), state)


@pytest.mark.parametrize("cluster_round", [0, 3])
def test_fog_aggregate_derived_key_travels_empty(make: Make, cluster_round: int) -> None:
    agg = dataclasses.replace(make(FogAggregate), cluster_round=cluster_round)
    derived = FogAggregate.default_key(agg.fleet, agg.fog, agg.global_round, cluster_round, agg.key)
    assert derived.endswith((f"/{agg.global_round}/{agg.key}" if cluster_round == 0
                             else f"/{agg.global_round}.{cluster_round}/{agg.key}"))
    agg = dataclasses.replace(agg, idempotency_key=derived)
    plain = dataclasses.replace(agg, idempotency_key="some/other/key")
    assert codec.wire_map(encode(agg), FogAggregate)["idempotency_key"] == ""
    assert codec.wire_map(encode(plain), FogAggregate)["idempotency_key"] == "some/other/key"
    assert len(encode(plain)) - len(encode(agg)) == len(msgpack.packb("some/other/key")) - 1
    assert decode(encode(agg), FogAggregate) == agg
    assert decode(encode(plain), FogAggregate) == plain


@pytest.mark.parametrize("cls", [ModuleUpdate, FogAggregate])
def test_an_empty_idempotency_key_is_refused(make: Make, cls: type) -> None:
    with pytest.raises(ValueError, match="idempotency_key must be a non-empty string"):
        dataclasses.replace(make(cls), idempotency_key="")
    with pytest.raises(ValueError, match="idempotency_key must be a non-empty string"):
        dataclasses.replace(make(cls), idempotency_key="k" * 513)


def test_a_relayed_update_keeps_its_own_key(make: Make) -> None:
    """A D2D relay's key (``<member key>@<relay>``) is not the derived one: it travels whole."""
    update = make(ModuleUpdate)
    relayed = dataclasses.replace(update, idempotency_key=f"{update.idempotency_key}@relay-1")
    assert codec.wire_map(encode(relayed), ModuleUpdate)["idempotency_key"] == relayed.idempotency_key
    assert decode(encode(relayed), ModuleUpdate) == relayed


@settings(max_examples=150, deadline=None)
@given(state=STATES, fleet=SEGMENTS, sender=SEGMENTS, key=KEYS, global_round=U64, stage=U64)
def test_module_version_round_trip_property(
    state: dict[str, np.ndarray], fleet: str, sender: str, key: ModuleKey, global_round: int, stage: int
) -> None:
    tensors = blobs_from_state(state)
    message = ModuleVersion(fleet=fleet, sender=sender, key=key, global_round=global_round, stage=stage,
                            tensors=tensors, sha256=tensors_sha256(tensors))
    back = decode(encode(message), ModuleVersion)
    assert back == message and back.stamp == (global_round, stage)
    _assert_state_equal(state_from_blobs(back.tensors), state)


# --- framing: size, msgpack, top level ---------------------------------------------------------------------------


def test_every_truncation_is_rejected(make: Make) -> None:
    for cls in (RoundControl, ModuleVersion):
        tensors = blobs_from_state({"w": np.arange(3, dtype=np.float32)})
        message = make(cls, tensors=tensors) if cls is ModuleVersion else make(cls)
        payload = encode(message)
        for n in range(len(payload)):
            _rejects(payload[:n], cls, "not a valid msgpack payload .*incomplete input")


def test_oversized_payload_is_rejected_before_unpacking(make: Make) -> None:
    payload = encode(make(ModuleUpdate))
    assert decode(payload, ModuleUpdate, max_payload=len(payload)) == make(ModuleUpdate)
    _rejects(payload, ModuleUpdate, f"payload of {len(payload)} bytes exceeds the limit of {len(payload) - 1}",
             max_payload=len(payload) - 1)
    huge = b"\xc0" * (codec.DEFAULT_MAX_PAYLOAD + 1)
    _rejects(huge, RoundControl, "exceeds the limit of 67108864")


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"", "incomplete input"),
        (b"\xc1", "not a valid msgpack payload"),
        (b"\xc1\xc1\xc1\xc1", "not a valid msgpack payload"),
        (b"\x81\xa1", "incomplete input"),
        (b"\xdf\xff\xff\xff\xff", "not a valid msgpack payload"),
        (b"hello world", "trailing bytes"),
        (b'{"type": "round_control", "schema": 1}', "trailing bytes"),
        ("round_control".encode("utf-16"), "not a valid msgpack payload|trailing bytes|must be a msgpack array or map"),
        (b"\x91" * 100_000 + b"\xc0", "not a valid msgpack payload"),
        (b"\x81\x01\x02", "not allowed for map key"),
        (b"\x81\x91\x01\x02", "not allowed for map key"),
        (b"\x81\xa1a\xa2\xff\xfe", "not a valid msgpack payload"),
    ],
    ids=["empty", "never-used", "never-used-x4", "short-map", "huge-map-header", "text", "json", "utf16",
         "deep-nesting", "int-map-key", "array-map-key", "bad-utf8"],
)
def test_not_msgpack_is_rejected(payload: bytes, match: str) -> None:
    _rejects(payload, RoundControl, match)


def test_random_bytes_are_rejected() -> None:
    rng = random.Random(1234)
    for _ in range(200):
        payload = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
        for cls in MESSAGE_TYPES:
            _rejects(payload, cls)


@pytest.mark.parametrize("payload", ["text", None, [1, 2], 3], ids=["str", "none", "list", "int"])
def test_payload_must_be_bytes(payload: object) -> None:
    _rejects(payload, RoundControl, "payload must be bytes")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "got"),
    [(3, "int"), (None, "NoneType"), ("x", "str"), (b"x", "bytes"), (1.5, "float"), (True, "bool")],
)
def test_top_level_must_be_an_array_or_a_map(pack: Pack, value: object, got: str) -> None:
    # Bad arrays (the positional form) are covered in test_positional_wire.py.
    for cls in MESSAGE_TYPES:
        _rejects(pack(value), cls, f"{cls.TYPE}: payload must be a msgpack array or map, got {got}")


def test_trailing_bytes_are_rejected(make: Make) -> None:
    payload = encode(make(RoundControl))
    for extra in (b"\x00", b"\xc0", payload):
        _rejects(payload + extra, RoundControl, "round_control: trailing bytes after the msgpack object")


@pytest.mark.parametrize(
    "ext",
    [msgpack.packb(msgpack.ExtType(5, b"x")), b"\xd6\xff\x00\x00\x00\x01", msgpack.packb(msgpack.Timestamp(1, 0)),
     b"\xc7\x00\x05", b"\xc7\x00\x80", b"\xc7\x00\xff"],
    ids=["fixext1", "timestamp-fixext4", "timestamp", "ext8-empty", "ext8-empty-negative", "ext8-empty-timestamp"],
)
def test_msgpack_ext_types_are_rejected(make: Make, wire_of: WireOf, pack: Pack, ext: bytes) -> None:
    _rejects(ext, RoundControl, "ext|timestamp")
    # An ext value in place of a field: splice it in by hand.
    raw = wire_of(make(RoundControl))
    raw["fleet"] = "\x00MARK"
    payload = pack(raw)
    _rejects(payload.replace(pack("\x00MARK"), ext), RoundControl, "ext|timestamp")


def test_msgpack_container_limits(make: Make, wire_of: WireOf, pack: Pack) -> None:
    raw = wire_of(make(ModuleUpdate))
    raw["idempotency_key"] = "k" * (64 * 1024 + 1)
    _rejects(pack(raw), ModuleUpdate, "not a valid msgpack payload")
    raw = wire_of(make(FogRoundReport))
    raw["devices"] = ["d"] * 100_001
    _rejects(pack(raw), FogRoundReport, "not a valid msgpack payload")
    raw = wire_of(make(NodeState))
    raw["num_samples"] = {f"t{i}": 1 for i in range(10_001)}
    _rejects(pack(raw), NodeState, "not a valid msgpack payload")


# --- type and schema ---------------------------------------------------------------------------------------------


TYPE_PAIRS = [(a, b) for a in MESSAGE_TYPES for b in MESSAGE_TYPES if a is not b]


@pytest.mark.parametrize(("wrong", "expected"), TYPE_PAIRS, ids=[f"{a.TYPE}-as-{b.TYPE}" for a, b in TYPE_PAIRS])
def test_wrong_message_type_is_rejected(make: Make, wrong: type, expected: type) -> None:
    _rejects(encode(make(wrong)), expected, f"expected a '{expected.TYPE}' message, got type '{wrong.TYPE}'")


@pytest.mark.parametrize("value", [None, "Module_Update", "module-update", 1, b"module_update", ["module_update"]])
def test_bad_type_value_is_rejected(make: Make, wire_of: WireOf, pack: Pack, value: object) -> None:
    raw = wire_of(make(ModuleUpdate))
    raw["type"] = value
    _rejects(pack(raw), ModuleUpdate, f"expected a 'module_update' message, got type {re.escape(repr(value))}")
    del raw["type"]
    _rejects(pack(raw), ModuleUpdate, "expected a 'module_update' message, got type None")


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=_type_id)
@pytest.mark.parametrize("schema", ["other", 0, 4, -1, 2**64 - 1, "1", None, [1], 1.0, True, "missing"])
def test_wrong_or_missing_schema_is_rejected(
    make: Make, wire_of: WireOf, pack: Pack, cls: type, schema: object
) -> None:
    raw = wire_of(make(cls))
    if schema == "missing":
        del raw["schema"]
    elif schema == "other":  # another version this build knows of (1, 2 or 3): not this type's
        raw["schema"] = 1 if codec.schema_of(cls) > 1 else 2
    else:
        raw["schema"] = schema
    _rejects(pack(raw), cls, "schema")


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=_type_id)
def test_each_type_is_at_its_schema_version(make: Make, cls: type) -> None:
    """RoundControl, ModuleVersion and NodeState carry a job id since schema 2, NodeState its LoRA ranks since
    schema 3; the others are at schema 1."""
    expected = RANKS_SCHEMA_VERSION if cls is NodeState else \
        JOB_SCHEMA_VERSION if cls in (RoundControl, ModuleVersion) else SCHEMA_VERSION
    assert codec.schema_of(cls) == make(cls).schema == expected
    assert ("job" in [f.name for f in dataclasses.fields(cls)]) is (expected >= JOB_SCHEMA_VERSION)
    assert ("lora_ranks" in [f.name for f in dataclasses.fields(cls)]) is (expected == RANKS_SCHEMA_VERSION)


# --- fields ------------------------------------------------------------------------------------------------------

MISSING_CASES = [(cls, name) for cls in MESSAGE_TYPES for name in _required_fields(cls)]


@pytest.mark.parametrize(("cls", "name"), MISSING_CASES, ids=[f"{c.TYPE}.{n}" for c, n in MISSING_CASES])
def test_missing_field_is_rejected(make: Make, wire_of: WireOf, pack: Pack, cls: type, name: str) -> None:
    raw = wire_of(make(cls))
    del raw[name]
    _rejects(pack(raw), cls, f"{cls.TYPE}: missing field\\(s\\) \\['{name}'\\]")


def test_all_missing_fields_are_named_at_once(pack: Pack) -> None:
    err = _rejects(pack({"type": "round_metrics", "schema": 1}), codec.message_type("round_metrics"))
    assert "['accuracy', 'fleet', 'fogs_reported', 'global_round', 'modules_updated', 'total_rounds']" in str(err)


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=_type_id)
def test_unknown_field_is_rejected(make: Make, wire_of: WireOf, pack: Pack, cls: type) -> None:
    raw = wire_of(make(cls))
    raw["extra"] = 1
    _rejects(pack(raw), cls, f"{cls.TYPE}: unknown field\\(s\\) \\['extra'\\]")
    raw["TYPE"] = cls.TYPE
    _rejects(pack(raw), cls, "unknown field\\(s\\) \\['TYPE', 'extra'\\]")


def test_unknown_bytes_and_str_field_names_together_are_rejected(make: Make, wire_of: WireOf, pack: Pack) -> None:
    raw: dict[Any, Any] = wire_of(make(RoundControl))
    raw[b"fleet"] = "f"
    _rejects(pack(raw), RoundControl, "unknown field\\(s\\) \\[b'fleet'\\]")
    raw["zz"] = 1
    _rejects(pack(raw), RoundControl, "unknown field\\(s\\) \\['zz', b'fleet'\\]")


def _wrong_values(hint: Any) -> list[Any]:
    """Wire values that do not fit ``hint`` (or break the value it describes)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is str:
        return [3, None, b"x", 1.5, ["a"], {"a": "b"}, True]
    if hint is int:
        return ["1", True, False, 1.5, None, b"\x01", [1], {"a": 1}]
    if hint is float:
        return ["1.0", True, None, math.nan, math.inf, -math.inf, [1.0], b"1"]
    if hint is bool:
        return [1, 0, "true", None, 1.0]
    if hint is bytes:
        return ["x", 3, None, [1], {"a": b"x"}]
    if hint is EncodedTensor:
        return [3, "t", None, ["t"], ["t", [1], "x"], ["t", [-1], b""], ["t", [1], b"x" * 100]]
    if origin in (typing.Union, types.UnionType):
        if type(None) in args:  # tuple[int, int] | None
            return ["x", 3, [], [1], [1, 2, 3], ["1", 2], [0, 1.5]]
        return [None, b"x", [1], True, {"a": 1}]  # int | float | str
    if hint is ModuleKey:
        return [3, None, b"encoder:imu:_", ["encoder", "imu", "_"], "", "encoder:imu", "encoder:imu:fall",
                "head:_:_", "decoder:imu:_"]
    if origin is tuple and args[-1] is Ellipsis:
        inner = [v for v in _wrong_values(args[0]) if v is not None][:3] if args[0] not in (TensorBlob, EncodedTensor) else [3, "t"]
        return ["x", 3, None, {"a": 1}, b"", *([v] for v in inner)]
    if origin is tuple:
        return ["x", None, [], [1], [1, 2, 3], ["1", 2], [True, 0], [0, 1.5], [0, None]]
    if origin is dict:
        return [[], "x", None, {"t": None}, {b"t": 1}, *({"t": v} for v in _wrong_values(args[1])[:4])]
    raise AssertionError(f"no wrong values for {hint!r}")


WRONG_CASES = [
    (cls, f.name, value)
    for cls in MESSAGE_TYPES
    for f in dataclasses.fields(cls)
    if f.name != "schema"
    for value in _wrong_values(typing.get_type_hints(cls)[f.name])
]


@pytest.mark.parametrize(
    ("cls", "name", "value"), WRONG_CASES, ids=[f"{c.TYPE}.{n}-{i}" for i, (c, n, _) in enumerate(WRONG_CASES)]
)
def test_field_of_wrong_type_is_rejected(
    make: Make, wire_of: WireOf, pack: Pack, cls: type, name: str, value: Any
) -> None:
    raw = wire_of(make(cls))
    raw[name] = value
    _rejects(pack(raw), cls, re.escape(f"{cls.TYPE}.{name}"))


@pytest.mark.parametrize(
    ("cls", "name", "value", "match"),
    [
        (ModuleUpdate, "global_round", True, "module_update.global_round: expected int, got bool"),
        (ModuleUpdate, "num_samples", "12", "module_update.num_samples: expected int, got str"),
        (ModuleUpdate, "fleet", 7, "module_update.fleet: expected str, got int"),
        (ModuleUpdate, "train_loss", math.nan, "module_update.train_loss: NaN or Inf is not allowed"),
        (ModuleUpdate, "train_loss", math.inf, "module_update.train_loss: NaN or Inf is not allowed"),
        (FogAggregate, "total_weight", -math.inf, "fog_aggregate.total_weight: NaN or Inf is not allowed"),
        (RoundControl, "deadline_s", math.nan, "round_control.deadline_s: NaN or Inf is not allowed"),
        (RoundControl, "final", 1, "round_control.final: expected bool, got int"),
        (NodeState, "num_samples", {"fall": True}, "node_state.num_samples\\['fall'\\]: expected int, got bool"),
        (NodeState, "modules", "encoder:imu:_", "node_state.modules: expected an array, got str"),
        (FogRoundReport, "devices", ["d", 1], "fog_round_report.devices\\[1\\]: expected str, got int"),
        (ModuleUpdate, "base", [1], "module_update.base: expected 2 items, got 1"),
        (ModuleUpdate, "key", "encoder:imu", "module_update.key: invalid module key 'encoder:imu'"),
        (ModuleUpdate, "key", 5, "module_update.key: expected a module key string, got int"),
        (codec.message_type("round_metrics"), "accuracy", {"fall": math.inf}, "accuracy\\['fall'\\]: NaN or Inf"),
    ],
)
def test_wrong_type_messages_name_the_field_and_the_problem(
    make: Make, wire_of: WireOf, pack: Pack, cls: type, name: str, value: Any, match: str
) -> None:
    raw = wire_of(make(cls))
    raw[name] = value
    _rejects(pack(raw), cls, match)


@pytest.mark.parametrize(
    ("cls", "name", "value", "match"),
    [
        (ModuleUpdate, "sender", "Dev-1", "invalid sender 'Dev-1'"),
        (ModuleUpdate, "sender", "dev/1", "invalid sender 'dev/1'"),
        (ModuleUpdate, "sender", "#", "invalid sender '#'"),
        (ModuleUpdate, "sender", "+", "invalid sender '\\+'"),
        (ModuleUpdate, "sender", "dev\n", "invalid sender 'dev\\\\n'"),
        (ModuleUpdate, "sender", "d" * 65, "invalid sender"),
        (ModuleUpdate, "fog", "fog a", "invalid fog 'fog a'"),
        (ModuleVersion, "sender", "Cloud", "invalid sender 'Cloud'"),
        (RoundControl, "sender", "a/b", "invalid sender 'a/b'"),
        (RoundControl, "fleet", "F", "invalid fleet 'F'"),
        (NodeState, "node", "+", "invalid node '\\+'"),
        (NodeState, "role", "gateway", "unknown role 'gateway'"),
        (FogRoundReport, "devices", ["ok", "Not-ok"], "invalid device 'Not-ok'"),
        (ModuleUpdate, "global_round", -1, "global_round must be an int >= 0"),
        (ModuleUpdate, "base", [-1, 0], "base\\[0\\] must be an int >= 0"),
        (ModuleUpdate, "num_samples", 0, "num_samples must be an int > 0"),
        (ModuleUpdate, "codec", "int8", "codec 'int8' carries encoded tensors"),
        (ModuleUpdate, "codec", "Bad Codec", "bad codec name 'Bad Codec'"),
        (FogAggregate, "total_weight", 0.0, "total_weight must be > 0"),
        (RoundControl, "agg_every", 0, "agg_every must be >= 1"),
        (codec.message_type("round_metrics"), "modules_updated", -3, "modules_updated must be an int >= 0"),
        (codec.message_type("round_metrics"), "accuracy", {"fall": 2}, "accuracy\\['fall'\\] must be in \\[0, 1\\]"),
    ],
)
def test_invariant_violations_are_decode_errors(
    make: Make, wire_of: WireOf, pack: Pack, cls: type, name: str, value: Any, match: str
) -> None:
    raw = wire_of(make(cls))
    raw[name] = value
    err = _rejects(pack(raw), cls, match)
    assert str(err).startswith(f"{cls.TYPE}: ")


# --- tensors -----------------------------------------------------------------------------------------------------

GOOD_TENSOR = ["w", "float32", [2, 3], bytes(24)]


@pytest.mark.parametrize(
    ("tensor", "match"),
    [
        ("w", "a tensor is \\[name, dtype, shape, bytes\\]"),
        ({"name": "w"}, "a tensor is \\[name, dtype, shape, bytes\\]"),
        (GOOD_TENSOR[:3], "a tensor is \\[name, dtype, shape, bytes\\]"),
        ([*GOOD_TENSOR, 0], "a tensor is \\[name, dtype, shape, bytes\\]"),
        ([1, "float32", [2, 3], bytes(24)], "a tensor is \\[str name, str dtype, shape, bin data\\]"),
        (["w", b"float32", [2, 3], bytes(24)], "a tensor is \\[str name, str dtype, shape, bin data\\]"),
        (["w", "float32", [2, 3], "\x00" * 24], "a tensor is \\[str name, str dtype, shape, bin data\\]"),
        (["w", "float32", [2, 3], None], "a tensor is \\[str name, str dtype, shape, bin data\\]"),
        (["w", "float32", 6, bytes(24)], "tensor shape must be an array of ints"),
        (["w", "float32", [2, 3.0], bytes(24)], "tensor shape must be an array of ints"),
        (["w", "float32", [True, 6], bytes(24)], "tensor shape must be an array of ints"),
        (["w", "float32", [[2], 3], bytes(24)], "tensor shape must be an array of ints"),
        (["w", "float32", [2, 3], bytes(23)], "23 data bytes, shape \\(2, 3\\) x float32 needs 24"),
        (["w", "float32", [2, 3], bytes(25)], "25 data bytes"),
        (["w", "float32", [], bytes(24)], "needs 4"),
        (["w", "float64", [2, 3], bytes(24)], "needs 48"),
        (["w", "float32", [2**64 - 1, 2**64 - 1], bytes(24)], "needs"),
        (["w", "float128", [2, 3], bytes(24)], "dtype 'float128' not in"),
        (["w", "bool", [24], bytes(24)], "dtype 'bool' not in"),
        (["w", "object", [3], bytes(24)], "dtype 'object' not in"),
        (["w", "<f4", [2, 3], bytes(24)], "dtype '<f4' not in"),
        (["w", "", [2, 3], bytes(24)], "dtype '' not in"),
        (["w", "uint8", [1] * 9, b"\x00"], "more than 8 dims"),
        (["w", "uint8", [-1], b""], "shape entry must be an int >= 0"),
        (["w", "uint8", [4, -2], b""], "shape entry must be an int >= 0"),
        (["", "uint8", [1], b"\x00"], "bad tensor name ''"),
        (["n" * 257, "uint8", [1], b"\x00"], "bad tensor name"),
    ],
)
@pytest.mark.parametrize("cls", TENSOR_TYPES, ids=_type_id)
def test_malformed_tensor_is_rejected(
    make: Make, wire_of: WireOf, pack: Pack, cls: type, tensor: Any, match: str
) -> None:
    raw = wire_of(make(cls))
    raw["tensors"] = [raw["tensors"][0], tensor]
    _rejects(pack(raw), cls, f"{cls.TYPE}.tensors\\[1\\]: .*{match}")


@pytest.mark.parametrize("cls", TENSOR_TYPES, ids=_type_id)
def test_tampered_tensor_bytes_fail_the_sha256(make: Make, cls: type) -> None:
    payload = encode(make(cls))
    for blob in make(cls).tensors:
        if not blob.data:
            continue
        start = payload.index(blob.data)
        for offset in range(len(blob.data)):
            tampered = bytearray(payload)
            tampered[start + offset] ^= 0x01
            _rejects(bytes(tampered), cls, f"{cls.TYPE}: sha256 does not match the tensors")


@pytest.mark.parametrize("cls", TENSOR_TYPES, ids=_type_id)
@pytest.mark.parametrize("change", ["rename", "flatten", "retype", "reorder", "drop", "upper-hex"])
def test_sha256_covers_names_shapes_dtypes_and_order(
    make: Make, wire_of: WireOf, pack: Pack, cls: type, change: str
) -> None:
    """Changes that keep every tensor well-formed (same byte count) but must still fail the hash."""
    raw = wire_of(make(cls))
    tensors = raw["tensors"]
    by_name = {t[0]: t for t in tensors}
    assert by_name["weight"][1:3] == ["float32", [2, 3, 2]] and by_name["codes"][1] == "int8"
    if change == "rename":
        by_name["weight"][0] = "weight2"
    elif change == "flatten":
        by_name["weight"][2] = [12]
    elif change == "retype":
        by_name["codes"][1] = "uint8"
    elif change == "reorder":
        tensors.reverse()
    elif change == "drop":
        tensors.pop()
    else:
        raw["sha256"] = raw["sha256"].upper()
    _rejects(pack(raw), cls, f"{cls.TYPE}: sha256 does not match the tensors")


@pytest.mark.parametrize("cls", TENSOR_TYPES, ids=_type_id)
def test_duplicate_or_no_tensors_are_rejected(make: Make, wire_of: WireOf, pack: Pack, cls: type) -> None:
    raw = wire_of(make(cls))
    one = TensorBlob(name="w", dtype="uint8", shape=(1,), data=b"\x07")
    raw["tensors"] = [["w", "uint8", [1], b"\x07"], ["w", "uint8", [1], b"\x07"]]
    raw["sha256"] = tensors_sha256((one, one))
    _rejects(pack(raw), cls, "duplicate tensor names")
    raw["tensors"], raw["sha256"] = [], tensors_sha256(())
    _rejects(pack(raw), cls, "at least one tensor")


def test_decoded_tensors_may_hold_nan_until_state_from_blobs(make: Make) -> None:
    """The codec checks framing and the hash; NaN/Inf is refused where tensors become arrays."""
    tensors = blobs_from_state({"w": np.array([1.0, np.nan], dtype=np.float32)})
    back = decode(encode(make(ModuleVersion, tensors=tensors)), ModuleVersion)
    with pytest.raises(DecodeError, match="tensor 'w' holds NaN or Inf"):
        state_from_blobs(back.tensors)


# --- fuzz --------------------------------------------------------------------------------------------------------

FIELD_NAMES = sorted({f.name for cls in MESSAGE_TYPES for f in dataclasses.fields(cls)} | {"type"})
LEAVES = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=8)
    | st.binary(max_size=8) | st.sampled_from([c.TYPE for c in MESSAGE_TYPES])
)
STRUCTURES = st.recursive(
    LEAVES,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=6) | st.binary(max_size=3), children,
                      max_size=5),
    max_leaves=8,
)


_WIRE_CACHE: dict[type, dict[str, Any]] = {}


def _cached_wire(make: Make, wire_of: WireOf, cls: type) -> dict[str, Any]:
    """The wire map of ``make(cls)``, built once: the fuzz tests run thousands of examples."""
    if cls not in _WIRE_CACHE:
        _WIRE_CACHE[cls] = wire_of(make(cls))
    return _WIRE_CACHE[cls]


def _decode_or_reject(payload: bytes, cls: type) -> None:
    try:
        result = decode(payload, cls)
    except DecodeError:
        return
    assert type(result) is cls


@settings(max_examples=2500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=st.binary(max_size=300), cls=st.sampled_from(MESSAGE_TYPES))
def test_fuzz_random_bytes_only_raise_decode_error(payload: bytes, cls: type) -> None:
    _decode_or_reject(payload, cls)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=STRUCTURES)
def test_fuzz_random_structures_only_raise_decode_error(pack: Pack, value: Any) -> None:
    payload = pack(value)
    for cls in MESSAGE_TYPES:
        _decode_or_reject(payload, cls)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cls=st.sampled_from(MESSAGE_TYPES), data=st.data())
def test_fuzz_valid_maps_with_random_field_values(
    make: Make, wire_of: WireOf, pack: Pack, cls: type, data: st.DataObject
) -> None:
    raw = copy.deepcopy(_cached_wire(make, wire_of, cls))
    for name in data.draw(st.lists(st.sampled_from(sorted(raw)), min_size=1, max_size=3, unique=True)):
        raw[name] = data.draw(STRUCTURES)
    _decode_or_reject(pack(raw), cls)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cls=st.sampled_from(MESSAGE_TYPES), data=st.data())
def test_fuzz_mutated_payloads_only_raise_decode_error(
    make: Make, wire_of: WireOf, pack: Pack, cls: type, data: st.DataObject
) -> None:
    if data.draw(st.booleans(), label="positional"):  # the positional form encode() emits, or the map form
        payload = bytearray(encode(make(cls)))
    else:
        payload = bytearray(pack(_cached_wire(make, wire_of, cls)))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(payload) - 1))
        op = data.draw(st.sampled_from(["flip", "set", "insert", "delete"]))
        if op == "flip":
            payload[at] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "set":
            payload[at] = data.draw(st.integers(0, 255))
        elif op == "insert":
            payload[at:at] = data.draw(st.binary(min_size=1, max_size=4))
        else:
            del payload[at]
    _decode_or_reject(bytes(payload), cls)

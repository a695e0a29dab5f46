"""The codec: message dataclass <-> msgpack bytes. The only module that calls msgpack.

On the wire a message is a positional msgpack array: ``[TYPE, schema, <value of each further field>]``, the wire
name followed by the value of every dataclass field in ``dataclasses.fields()`` order (``schema`` is the first field
of every wire type, so it is item 1 and is written once). Field names are not sent: the field order of a wire type
is part of its schema version, and changing it, or adding or removing a field, needs a new schema version. Each type
has its version as the default of its ``schema`` field (:func:`schema_of`): 1 (``SCHEMA_VERSION``) for most, 2
(``JOB_SCHEMA_VERSION``) for the types that gained a ``job`` field (RoundControl, ModuleVersion, NodeState). A
payload of another version of its type is refused, by the positional and the map form alike.

Decoding also accepts the older map form ``{"type": ..., "schema": ..., <field name>: <value>, ...}`` (in which
fields with defaults may be left out). An array is first turned into that map, strictly (item 0 must be the expected
wire name, item 1 the supported schema, and the item count exactly 1 + the number of fields), and then both forms
go through the same checks: size limits on every msgpack container, no extension types, the exact field set of the
expected type, each value checked against the field's annotation, then the type's own ``__post_init__`` invariants
(tensor sizes, SHA-256, ranges). Anything wrong raises :class:`DecodeError` naming the field and the problem.
Payloads are never unpickled.

Some values travel in a shorter form than the dataclass holds: SHA-256 digests as 32 raw bytes; the idempotency
key of a ``ModuleUpdate`` or ``FogAggregate`` as an empty string when it is the key that the message's own fields
determine (``default_key``), which decoding derives again (a key that is not the derived one, a D2D relay's,
travels as it is); and, when the message is encoded for its topic (``encode(message, topic=...)``), the fields of
a ``ModuleUpdate`` that its ``up`` topic already names (fleet, sender, fog, module key: 45-50 B of a 120-130 B
header) as empty strings, and so does its type name (13 B: an ``up`` topic carries nothing else), which decoding
with that topic (``decode(..., topic=...)``, as :func:`hffm_core.protocol.routing.decode_message` does) fills in
again. The receivers check those fields against the topic anyway, and a signature covers the topic, so nothing is
lost. Decoding such a payload without its topic raises a :class:`DecodeError` that says so; a full payload decodes
with or without one.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import types
import typing
from typing import Any, TypeVar

import msgpack

from hffm_core.errors import DecodeError
from hffm_core.protocol.envelope import SignedEnvelope
from hffm_core.protocol.keys import ModuleKey
from hffm_core.protocol.messages import (
    MESSAGE_TYPES,
    SCHEMA_VERSION,
    EncodedTensor,
    FogAggregate,
    ModuleUpdate,
    TensorBlob,
)
from hffm_core.protocol.topics import Topic

T = TypeVar("T")

DEFAULT_MAX_PAYLOAD = 64 * 1024 * 1024
_MAX_STR = 64 * 1024
_MAX_ARRAY = 100_000
_MAX_MAP = 10_000
# Every type the codec encodes and decodes: the messages, and the envelope that may carry one of them signed.
WIRE_TYPES: tuple[type, ...] = (*MESSAGE_TYPES, SignedEnvelope)
_TYPES_BY_NAME = {cls.TYPE: cls for cls in WIRE_TYPES}  # type: ignore[attr-defined]
# Every wire type declares ``schema`` first: the positional form relies on it (item 1 is the schema, so a payload of
# another schema version is told apart before its item count is judged).
for _cls in WIRE_TYPES:
    if dataclasses.fields(_cls)[0].name != "schema":  # type: ignore[arg-type]
        raise RuntimeError(f"{_cls.__name__}: a wire type must declare 'schema' as its first field")


def encode(message: object, *, topic: Topic | None = None) -> bytes:
    """Encode a message dataclass to msgpack bytes: the positional array ``[TYPE, schema, <further fields>]``.

    ``topic``: the parsed topic the payload is published on. The fields of the message that this topic names
    (:data:`FROM_TOPIC`) then travel as empty strings where they equal the topic's; only a decode given the same
    topic reads them back. Leave it out for a payload that may travel on more than one topic.

    Raises:
        TypeError: ``message`` is not one of the registered message types.
    """
    cls = type(message)
    if cls not in WIRE_TYPES:
        raise TypeError(f"not an hffm message type: {cls.__name__}")
    body: list[Any] = [cls.TYPE]  # type: ignore[attr-defined]
    body.extend(_digest_to_wire(name, _to_wire(getattr(message, name))) for name in _field_names(cls))
    derive = _DERIVED_KEY.get(cls)
    if derive is not None and message.idempotency_key == derive(functools.partial(getattr, message)):  # type: ignore[attr-defined]
        body[_field_names(cls).index("idempotency_key") + 1] = ""
    if topic is not None:
        for name, part in FROM_TOPIC.get(cls, ()):
            value = getattr(topic, part)
            if value is not None and value == getattr(message, name):
                body[_field_names(cls).index(name) + 1] = ""
        if TYPE_FROM_TOPIC.get(cls) == topic.kind:
            body[0] = ""
    return msgpack.packb(body, use_bin_type=True)


# The fields a message type's topic also names, and the attribute of the parsed topic (hffm_core.protocol.topics.Topic)
# that holds each: encoded for its topic, such a field travels empty when it equals the topic's (the receiver checks
# it against the topic anyway), and decoding with the topic fills it in again.
FROM_TOPIC: dict[type, tuple[tuple[str, str], ...]] = {
    ModuleUpdate: (("fleet", "fleet"), ("sender", "node"), ("fog", "fog"), ("key", "module")),
}
# The message types whose type name travels empty when encoded for a topic of this kind (the kind carries only that
# type: hffm_core.protocol.topic_table); decoding with such a topic names the type again.
TYPE_FROM_TOPIC: dict[type, str] = {ModuleUpdate: "up"}


def _type_from_topic(first: Any, expected: type, name: str, topic: Topic | None) -> Any:
    """The type name of a payload whose first item is ``first``: ``name`` where it travelled empty for ``topic``."""
    if first != "" or TYPE_FROM_TOPIC.get(expected) is None:
        return first
    if topic is None or topic.kind != TYPE_FROM_TOPIC[expected]:
        kind = TYPE_FROM_TOPIC[expected]
        where = "no topic was given" if topic is None else f"topic {str(topic)!r} is not an {kind!r} topic"
        raise DecodeError(f"{name}: the type travelled empty, to be read from its topic, but {where}")
    return name


def _fill_from_topic(raw: dict[Any, Any], expected: type, name: str, topic: Topic | None) -> None:
    """Put the topic's values into the fields of ``raw`` (a map form) that travelled empty for it."""
    for field_name, part in FROM_TOPIC.get(expected, ()):
        if raw.get(field_name) != "":
            continue
        value = None if topic is None else getattr(topic, part)
        if value is None:
            where = "no topic was given" if topic is None else f"topic {str(topic)!r} has no {part}"
            raise DecodeError(f"{name}.{field_name}: travelled empty, to be read from its topic, but {where}")
        raw[field_name] = str(value)


# An idempotency key that the message's own fields determine travels empty (about 40 B less per module message)
# and is derived again on decode; any other key travels as it is. A sent key is never empty (the types check it).
_DERIVED_KEY: dict[type, Any] = {
    ModuleUpdate: lambda get: ModuleUpdate.default_key(get("fleet"), get("sender"), get("global_round"),
                                                       get("cluster_round"), get("key")),
    FogAggregate: lambda get: FogAggregate.default_key(get("fleet"), get("fog"), get("global_round"),
                                                       get("cluster_round"), get("key")),
}


def _derive_key(expected: type, kwargs: dict[str, Any]) -> None:
    """Fill in an empty idempotency key from the other fields of a type that derives it."""
    derive = _DERIVED_KEY.get(expected)
    if derive is not None and kwargs.get("idempotency_key") == "":
        try:
            kwargs["idempotency_key"] = derive(kwargs.__getitem__)
        except KeyError:
            pass  # a field is missing: reported as such by the caller

# SHA-256 fields travel as 32 raw bytes instead of 64 hex characters (32 B less per module message); the message
# types keep them as hex strings, and decoding also reads the hex form.
DIGEST_FIELDS = frozenset({"sha256", "payload_sha256"})
_HEX64 = re.compile(r"[0-9a-f]{64}")


def _digest_to_wire(name: str, value: Any) -> Any:
    if name in DIGEST_FIELDS and isinstance(value, str) and _HEX64.fullmatch(value):
        return bytes.fromhex(value)
    return value


def _digest_from_wire(name: str, value: Any, path: str) -> Any:
    if name not in DIGEST_FIELDS or not isinstance(value, bytes):
        return value
    if len(value) != 32:
        raise DecodeError(f"{path}: a binary SHA-256 has 32 bytes, got {len(value)}")
    return value.hex()


def wire_map(payload: Any, expected: type, *, max_payload: int = DEFAULT_MAX_PAYLOAD) -> dict[Any, Any]:
    """The map form ``{"type": ..., "schema": ..., <field name>: <wire value>, ...}`` of an encoded message.

    ``payload`` is the encoded bytes, or an already unpacked array or map. For tests and tools that inspect or
    tamper with a payload by field name; values stay in their wire forms (a tensor is an array, a key a string).
    The map packed again with :func:`pack_raw` decodes to the same message. Only the framing is checked here.

    Raises:
        DecodeError: not msgpack, not an array or map, or an array that is not ``[TYPE, schema, ...]`` of
            ``expected`` with exactly one item per field.
    """
    name = getattr(expected, "TYPE", expected.__name__)
    raw = _unpack(payload, name, max_payload) if isinstance(payload, (bytes, bytearray, memoryview)) else payload
    if isinstance(raw, list):
        return _array_to_map(raw, expected, name)
    if isinstance(raw, dict):
        return dict(raw)
    raise DecodeError(f"{name}: payload must be a msgpack array or map, got {type(raw).__name__}")


def wire_array(raw_map: dict[Any, Any], expected: type) -> list[Any]:
    """The positional form of a map form (the inverse of :func:`wire_map`): ``[raw_map["type"], <each field of
    expected in order>]``. For tests and tools that tamper with a payload by field name and send it positionally.

    Raises:
        KeyError: ``raw_map`` lacks ``type`` or a field (the positional form has no way to leave one out).
    """
    return [raw_map["type"], *(raw_map[n] for n in _field_names(expected))]


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]


def _array_to_map(items: list[Any], expected: type, name: str, topic: Topic | None = None) -> dict[Any, Any]:
    """The map form of a positional payload, or DecodeError: the type, then the schema, then the item count."""
    if not items:
        raise DecodeError(f"expected a {name!r} message, got an empty array")
    first = _type_from_topic(items[0], expected, name, topic)
    if first != name:
        raise DecodeError(f"expected a {name!r} message, got type {first!r}")
    names = _field_names(expected)
    if len(items) > 1:
        _check_schema(name, items[1], schema_of(expected))
    if len(items) != len(names) + 1:
        raise DecodeError(f"{name}: a positional payload has {len(names) + 1} items (the type and {len(names)} "
                          f"fields), got {len(items)}")
    out: dict[Any, Any] = {"type": first}
    out.update(zip(names, items[1:]))
    return out


@functools.cache
def schema_of(cls: type) -> int:
    """The schema version this build writes and reads for wire type ``cls`` (its ``schema`` field's default)."""
    default = dataclasses.fields(cls)[0].default  # type: ignore[arg-type]
    return default if isinstance(default, int) else SCHEMA_VERSION


def _check_schema(name: str, schema: Any, version: int) -> None:
    if type(schema) is not int or schema != version:
        raise DecodeError(f"{name}: unsupported schema {schema!r}; this build reads schema {version}")


def pack_raw(structure: Any) -> bytes:
    """Any msgpack structure as bytes, bypassing the message types: only for building malformed inputs (fuzzing,
    tamper tests). Raises ``TypeError`` for a value msgpack cannot encode."""
    return msgpack.packb(structure, use_bin_type=True)


def _to_wire(value: Any) -> Any:
    if isinstance(value, ModuleKey):
        return str(value)
    if isinstance(value, TensorBlob):
        return [value.name, value.dtype, list(value.shape), value.data]
    if isinstance(value, EncodedTensor):
        return [value.name, list(value.shape), value.data]
    if isinstance(value, tuple):
        return [_to_wire(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_wire(v) for k, v in value.items()}
    return value


def _reject_ext(code: int, data: bytes) -> Any:
    raise DecodeError(f"msgpack extension type {code} is not allowed")


def decode(payload: bytes, expected: type[T], *, max_payload: int = DEFAULT_MAX_PAYLOAD,
           topic: Topic | None = None) -> T:
    """Decode ``payload`` into an instance of ``expected``; ``topic``: the parsed topic it came on, which fills in
    the fields that travelled empty for it (:func:`encode`).

    Raises:
        DecodeError: oversized, not msgpack, truncated, trailing bytes, neither an array nor a map, wrong
            ``type`` or ``schema``, an array of the wrong length, missing or unknown fields, a value of the wrong
            type, or a violated invariant (e.g. SHA-256 mismatch).
    """
    name = getattr(expected, "TYPE", expected.__name__)
    return from_wire(_unpack(payload, name, max_payload), expected, topic=topic)


def _unpack(payload: Any, name: str, max_payload: int) -> Any:
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise DecodeError(f"{name}: payload must be bytes, got {type(payload).__name__}")
    if len(payload) > max_payload:
        raise DecodeError(f"{name}: payload of {len(payload)} bytes exceeds the limit of {max_payload}")
    try:
        raw = msgpack.unpackb(
            bytes(payload),
            raw=False,
            strict_map_key=True,
            use_list=True,
            ext_hook=_reject_ext,
            max_bin_len=max_payload,
            max_str_len=_MAX_STR,
            max_array_len=_MAX_ARRAY,
            max_map_len=_MAX_MAP,
            max_ext_len=0,
        )
    except DecodeError:
        raise
    except msgpack.ExtraData:
        raise DecodeError(f"{name}: trailing bytes after the msgpack object") from None
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        raise DecodeError(f"{name}: not a valid msgpack payload ({type(exc).__name__}: {exc})") from None
    return raw


def from_wire(raw: Any, expected: type[T], *, topic: Topic | None = None) -> T:
    """Build ``expected`` from an already unpacked msgpack object (a positional array or a map), with every check
    of :func:`decode` (``topic`` as there)."""
    name = getattr(expected, "TYPE", expected.__name__)
    if isinstance(raw, list):
        raw = _array_to_map(raw, expected, name, topic)
    elif isinstance(raw, dict) and expected in FROM_TOPIC:
        raw = dict(raw)  # filled in below: never change the caller's map
    if not isinstance(raw, dict):
        raise DecodeError(f"{name}: payload must be a msgpack array or map, got {type(raw).__name__}")
    got_type = raw.get("type")
    if got_type != name:
        raise DecodeError(f"expected a {name!r} message, got type {got_type!r}")
    _check_schema(name, raw.get("schema"), schema_of(expected))
    _fill_from_topic(raw, expected, name, topic)
    fast = _fast_fields(expected)
    if raw.keys() == fast.names:  # every field present (the positional form): the compiled path, checked below
        try:
            kwargs = {n: conv(raw[n]) for n, conv in fast.converters}
            _derive_key(expected, kwargs)
            return expected(**kwargs)
        except (_Declined, DecodeError, ValueError, TypeError):
            pass  # not well-formed: the field-by-field path below names the problem
    hints = _hints(expected)
    fields = {f.name: f for f in dataclasses.fields(expected)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(fields) - {"type"}, key=repr)
    if unknown:
        raise DecodeError(f"{name}: unknown field(s) {unknown}")
    missing = sorted(n for n, f in fields.items() if n not in raw and _required(f))
    if missing:
        raise DecodeError(f"{name}: missing field(s) {missing}")
    kwargs = {n: _convert(_digest_from_wire(n, raw[n], f"{name}.{n}"), hints[n], f"{name}.{n}")
              for n in fields if n in raw}
    _derive_key(expected, kwargs)
    try:
        return expected(**kwargs)
    except (ValueError, TypeError) as exc:
        raise DecodeError(f"{name}: {exc}") from None


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _convert(value: Any, hint: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in args:
            try:
                return _convert(value, option, path)
            except DecodeError as exc:
                errors.append(str(exc))
        raise DecodeError(f"{path}: no alternative matched ({'; '.join(errors)})")
    if hint is type(None):
        if value is not None:
            raise DecodeError(f"{path}: expected nil")
        return None
    if origin is tuple:
        if not isinstance(value, list):
            raise DecodeError(f"{path}: expected an array, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise DecodeError(f"{path}: expected {len(args)} items, got {len(value)}")
        return tuple(_convert(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise DecodeError(f"{path}: expected a map, got {type(value).__name__}")
        return {_convert(k, args[0], f"{path} key"): _convert(v, args[1], f"{path}[{k!r}]") for k, v in value.items()}
    if hint is ModuleKey:
        if not isinstance(value, str):
            raise DecodeError(f"{path}: expected a module key string, got {type(value).__name__}")
        try:
            return ModuleKey.parse(value)
        except ValueError as exc:
            raise DecodeError(f"{path}: {exc}") from None
    if hint is TensorBlob:
        return _tensor(value, path)
    if hint is EncodedTensor:
        return _encoded(value, path)
    return _scalar(value, hint, path)


# -- the compiled path ---------------------------------------------------------------------------------------------
# Per wire type, one converter per field, built once from the annotations: the same acceptance and the same result
# as ``_convert``, without re-reading the annotations or formatting a path per value. A converter declines
# (``_Declined``) whatever it does not accept, and ``from_wire`` then runs ``_convert``, which names the problem.


class _Declined(Exception):
    """The compiled path does not take a value; ``_convert`` decides and names the problem."""


@dataclasses.dataclass(frozen=True)
class _FastFields:
    names: frozenset[str]  # "type" and every field
    converters: tuple[tuple[str, Any], ...]


@functools.cache
def _fast_fields(cls: type) -> _FastFields:
    hints = _hints(cls)
    names = _field_names(cls)
    convs = tuple((n, _digest_then(_fast(hints[n])) if n in DIGEST_FIELDS else _fast(hints[n])) for n in names)
    return _FastFields(names=frozenset(("type", *names)), converters=convs)


def _digest_then(conv: Any) -> Any:
    def digest(value: Any) -> Any:
        if type(value) is bytes:
            if len(value) != 32:
                raise _Declined
            value = value.hex()
        return conv(value)
    return digest


def _declined(value: Any) -> Any:
    raise _Declined


@functools.cache
def _fast(hint: Any) -> Any:  # noqa: C901 - one branch per annotation form, as _convert
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        others = [a for a in args if a is not type(None)]
        if len(others) == 1 and len(args) == 2:  # X | None
            inner = _fast(others[0])
            return lambda v: None if v is None else inner(v)
        return lambda v: _convert(v, hint, "")  # rare (several types): the checked path
    if hint is type(None):
        return lambda v: None if v is None else _declined(v)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            item = _fast(args[0])
            return lambda v: tuple(map(item, v)) if type(v) is list else _declined(v)
        items = tuple(_fast(a) for a in args)

        def fixed(v: Any) -> Any:
            if type(v) is not list or len(v) != len(items):
                raise _Declined
            return tuple(f(x) for f, x in zip(items, v))
        return fixed
    if origin is dict:
        key, val = _fast(args[0]), _fast(args[1])
        return lambda v: {key(k): val(x) for k, x in v.items()} if type(v) is dict else _declined(v)
    if hint is ModuleKey:
        return lambda v: _module_key(v) if type(v) is str else _declined(v)
    if hint is TensorBlob:
        return _fast_tensor
    if hint is EncodedTensor:
        return _fast_encoded
    return _fast_scalar(hint)


@functools.lru_cache(maxsize=4096)
def _module_key(text: str) -> ModuleKey:
    return ModuleKey.parse(text)


def _fast_scalar(hint: Any) -> Any:
    if hint is int:
        return lambda v: v if type(v) is int else _declined(v)
    if hint is float:
        def real(v: Any) -> float:
            if type(v) is float or type(v) is int:
                v = float(v)
                if math.isfinite(v):
                    return v
            raise _Declined
        return real
    if hint in (bool, str, bytes):
        return lambda v: v if type(v) is hint else _declined(v)
    return lambda v: _convert(v, hint, "")


def _int_list(shape: Any) -> bool:
    return type(shape) is list and all(type(d) is int for d in shape)


def _fast_tensor(v: Any) -> TensorBlob:
    if type(v) is list and len(v) == 4:
        name, dtype, shape, data = v
        if type(name) is str and type(dtype) is str and type(data) is bytes and _int_list(shape):
            return TensorBlob(name=name, dtype=dtype, shape=tuple(shape), data=data)
    raise _Declined


def _fast_encoded(v: Any) -> EncodedTensor:
    if type(v) is list and len(v) == 3:
        name, shape, data = v
        if type(name) is str and type(data) is bytes and _int_list(shape):
            return EncodedTensor(name=name, shape=tuple(shape), data=data)
    raise _Declined


def _scalar(value: Any, hint: Any, path: str) -> Any:
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            value = float(value)
            if not math.isfinite(value):
                raise DecodeError(f"{path}: NaN or Inf is not allowed")
    elif hint is str:
        ok = isinstance(value, str)
    elif hint is bytes:
        ok = isinstance(value, bytes)
    else:
        raise DecodeError(f"{path}: no decoder for {hint!r}")
    if not ok:
        raise DecodeError(f"{path}: expected {hint.__name__}, got {type(value).__name__}")
    return value


def _tensor(value: Any, path: str) -> TensorBlob:
    name, dtype, shape, data = _tensor_items(value, ("name", "dtype", "shape", "bytes"), path)
    try:
        return TensorBlob(name=name, dtype=dtype, shape=tuple(shape), data=data)
    except ValueError as exc:
        raise DecodeError(f"{path}: {exc}") from None


def _encoded(value: Any, path: str) -> EncodedTensor:
    name, shape, data = _tensor_items(value, ("name", "shape", "bytes"), path)
    try:
        return EncodedTensor(name=name, shape=tuple(shape), data=data)
    except ValueError as exc:
        raise DecodeError(f"{path}: {exc}") from None


def _tensor_items(value: Any, items: tuple[str, ...], path: str) -> list[Any]:
    """The items of a wire tensor, ``[name, (dtype,) shape, bytes]``, each type-checked (``value[-3]`` is the dtype
    of a raw tensor and the name of an encoded one: a string either way)."""
    what = "a tensor" if len(items) == 4 else "an encoded tensor"
    if not isinstance(value, list) or len(value) != len(items):
        raise DecodeError(f"{path}: {what} is [{', '.join(items)}]")
    name, shape, data = value[0], value[-2], value[-1]
    if not isinstance(name, str) or not isinstance(data, bytes) or not isinstance(value[-3], str):
        middle = "str dtype, shape" if len(items) == 4 else "shape"
        raise DecodeError(f"{path}: {what} is [str name, {middle}, bin data]")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise DecodeError(f"{path}: tensor shape must be an array of ints")
    return value


def message_type(name: str) -> type:
    """The message class registered under wire name ``name``. Raises ``DecodeError`` if there is none."""
    try:
        return _TYPES_BY_NAME[name]
    except KeyError:
        raise DecodeError(f"unknown message type {name!r}; expected one of {sorted(_TYPES_BY_NAME)}") from None

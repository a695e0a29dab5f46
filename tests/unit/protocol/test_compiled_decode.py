"""The codec's compiled decode path (one converter per field, built once per wire type) takes exactly what the
field-by-field checked path takes and gives the same message; whatever it does not take, the checked path decides,
so a bad payload hears the same named DecodeError either way."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hffm_core.errors import DecodeError
from hffm_core.protocol import codec, decode, encode
from hffm_core.protocol.codec import WIRE_TYPES
from hffm_core.protocol.envelope import SignedEnvelope
from hffm_core.protocol.messages import ModuleUpdate, RoundControl

Make = Callable[..., Any]


def _message(make: Make, cls: type) -> Any:
    if cls is SignedEnvelope:
        return SignedEnvelope(signer="dev-01", key_id="0123456789abcdef" * 2, seq=42,
                              payload=encode(make(RoundControl)), signature=bytes(range(64)))
    return make(cls)


def _checked_only(payload: bytes, cls: type) -> Any:
    """Decode with the compiled path switched off (its field set never matches)."""
    real = codec._fast_fields
    codec._fast_fields = lambda c: codec._FastFields(names=frozenset({"never a field"}), converters=())  # type: ignore[assignment]
    try:
        return decode(payload, cls)
    finally:
        codec._fast_fields = real  # type: ignore[assignment]


def _outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", fn()
    except DecodeError as exc:
        return "error", str(exc)


@pytest.mark.parametrize("cls", WIRE_TYPES, ids=lambda c: c.TYPE)
def test_both_paths_decode_every_type_alike(make: Make, cls: type) -> None:
    payload = encode(_message(make, cls))
    assert decode(payload, cls) == _checked_only(payload, cls) == _message(make, cls)


def test_a_module_update_takes_the_compiled_path(make: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    message = make(ModuleUpdate)
    payload = encode(message)
    calls = []
    real = codec._convert
    monkeypatch.setattr(codec, "_convert", lambda *a: calls.append(a) or real(*a))
    assert decode(payload, ModuleUpdate) == message
    assert calls == []  # not one field went through the checked path


_EDGES = [None, True, False, -1, 0, 1, 2**64 - 1, 0.5, -0.0, math.nan, math.inf, -math.inf, "", "x", "a:b:c",
          b"", b"\0" * 32, [], {}, [0], [-1, 2], {"x": math.nan}, {"x": True}, {"": 1}]
_VALUES = st.recursive(
    st.sampled_from(_EDGES) | st.integers(-2**63, 2**64 - 1) | st.floats(allow_nan=True) | st.text(max_size=8)
    | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12)


@pytest.mark.parametrize("cls", WIRE_TYPES, ids=lambda c: c.TYPE)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_field_replaced_by_anything_gets_the_same_verdict(make: Make, cls: type, data: st.DataObject) -> None:
    items = msgpack.unpackb(encode(_message(make, cls)), raw=False)
    at = data.draw(st.integers(2, len(items) - 1), label="field")
    original = items[at]
    # Anything at all, or the field's own value with one part changed (a tensor's shape, a key's text ...).
    if isinstance(original, (list, dict)) and original:
        changed = list(original) if isinstance(original, list) else dict(original)
        inner = data.draw(st.sampled_from(range(len(original)) if isinstance(original, list) else sorted(original)),
                          label="item")
        changed[inner] = data.draw(_VALUES, label="new item")  # type: ignore[index]
        items[at] = data.draw(st.sampled_from([changed, data.draw(_VALUES, label="value")]))
    else:
        items[at] = data.draw(_VALUES, label="value")
    payload = msgpack.packb(items, use_bin_type=True)
    assert _outcome(lambda: decode(payload, cls)) == _outcome(lambda: _checked_only(payload, cls))

"""Every malformed payload is rejected with DecodeError, and nothing else ever leaves a decoder.

Bad payloads are crafted by hand (each breaks one thing); the fuzz tests at the end throw random bytes, and random
bytes behind a plausible top-k header, at every codec.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest
from compression_cases import CONFIGS, IDS, codec_of
from hypothesis import given, settings
from hypothesis import strategies as st

from hffm_core.compression import TopKCodec, make_codec
from hffm_core.compression.indices import BITMAP, VARINT
from hffm_core.errors import DecodeError

X = np.random.default_rng(7).normal(size=(3, 7)).astype(np.float32)
NAN32, INF32 = struct.pack("<f", float("nan")), struct.pack("<f", float("-inf"))
NAN16, INF16 = np.float16("nan").tobytes(), np.float16("inf").tobytes()


def _topk(mode: int, k: int, index: bytes, values: bytes, *, version: int = 1, n_index: int | None = None) -> bytes:
    length = len(index) if n_index is None else n_index
    return struct.pack("<BBII", version, mode, k, length) + index + values


def _f32(*values: float) -> bytes:
    return np.array(values, dtype="<f4").tobytes()


@pytest.mark.parametrize(("name", "params"), CONFIGS, ids=IDS)
@pytest.mark.parametrize("shape", [(3, 7), (), (0,)])
def test_every_prefix_and_any_trailing_byte_is_rejected(name: str, params: dict[str, Any],
                                                        shape: tuple[int, ...]) -> None:
    codec = codec_of(name, params)
    data = codec.encode(X.reshape(-1)[: int(np.prod(shape))].reshape(shape))
    for end in range(len(data)):
        with pytest.raises(DecodeError):
            codec.decode(data[:end], shape)
    for extra in (b"\x00", b"\x01\x02\x03\x04"):
        with pytest.raises(DecodeError):
            codec.decode(data + extra, shape)


TOPK_BAD = {
    "bad version": (_topk(VARINT, 1, b"\x00", _f32(1.0), version=2), "unknown version 2"),
    "bad mode": (_topk(7, 1, b"\x00", _f32(1.0)), "unknown index mode 7"),
    "k > n": (_topk(VARINT, 11, bytes(11), _f32(*[1.0] * 11)), "k=11 exceeds"),
    "index bytes beyond buffer": (_topk(VARINT, 1, b"\x00", _f32(1.0), n_index=50), "index bytes exceed"),
    "index out of range": (_topk(VARINT, 1, b"\x0a", _f32(1.0)), "index 10 is out of range"),
    "gap sum out of range": (_topk(VARINT, 2, b"\x05\x05", _f32(1.0, 2.0)), "index 10 is out of range"),
    "repeated index": (_topk(VARINT, 2, b"\x03\x00", _f32(1.0, 2.0)), "not strictly increasing"),
    "more varints than k": (_topk(VARINT, 2, b"\x01\x01\x01", _f32(1.0, 2.0)), "hold 3 varints"),
    "fewer varints than k": (_topk(VARINT, 3, b"\x01\x01", _f32(1.0, 2.0, 3.0)), "hold 2 varints"),
    "k=0 with index bytes": (_topk(VARINT, 0, b"\x01", b""), "1 index bytes for k=0"),
    "truncated varint": (_topk(VARINT, 1, b"\x85", _f32(1.0)), "truncated"),
    "overlong varint": (_topk(VARINT, 1, b"\x81\x00", _f32(1.0)), "overlong"),
    "overlong zero": (_topk(VARINT, 1, b"\x80\x80\x00", _f32(1.0)), "overlong"),
    "six-byte varint": (_topk(VARINT, 1, b"\x81\x80\x80\x80\x80\x01", _f32(1.0)), "longer than 5"),
    "varint over u32": (_topk(VARINT, 1, b"\x80\x80\x80\x80\x10", _f32(1.0)), "overflows 32 bits"),
    "bitmap bit beyond n": (_topk(BITMAP, 1, b"\x00\x04", _f32(1.0)), "beyond 10 elements"),
    "bitmap popcount != k": (_topk(BITMAP, 2, b"\x01\x00", _f32(1.0, 2.0)), "holds 1 indices"),
    "bitmap too long": (_topk(BITMAP, 1, b"\x01\x00\x00", _f32(1.0)), "bitmap of 3 bytes"),
    "too few values": (_topk(VARINT, 2, b"\x01\x01", _f32(1.0)), "values"),
    "NaN value": (_topk(VARINT, 2, b"\x01\x01", _f32(1.0) + NAN32), "NaN or Inf"),
    "Inf value": (_topk(VARINT, 1, b"\x01", INF32), "NaN or Inf"),
}


@pytest.mark.parametrize("case", sorted(TOPK_BAD))
def test_topk_rejects_crafted_payloads(case: str) -> None:
    data, message = TOPK_BAD[case]
    with pytest.raises(DecodeError, match=message):
        make_codec("topk").decode(data, (10,))


def test_topk_crafted_payloads_that_are_valid_decode() -> None:
    codec = make_codec("topk")
    out = codec.decode(_topk(BITMAP, 2, b"\x01\x02", _f32(1.0, 2.0)), (10,))
    np.testing.assert_array_equal(out, [1, 0, 0, 0, 0, 0, 0, 0, 0, 2])  # bit 1 of byte 1 is index 9
    out = codec.decode(_topk(VARINT, 2, b"\x81\x01\x02", _f32(1.0, 2.0)), (200,))
    assert out[129] == 1.0 and out[131] == 2.0 and np.count_nonzero(out) == 2


@pytest.mark.parametrize(("values", "payload"), [
    ("fp16", np.float16(1).tobytes() + NAN16), ("fp16", INF16 + np.float16(1).tobytes()),
    ("int8", NAN32 + b"\x01\x01"), ("int8", _f32(-1.0) + b"\x01\x01"), ("int8", INF32 + b"\x01\x01"),
    ("int8", _f32(1.0) + b"\x80\x01"),
])
def test_topk_value_codecs_reject_bad_values(values: str, payload: bytes) -> None:
    with pytest.raises(DecodeError, match="values: "):
        TopKCodec({"values": values}).decode(_topk(VARINT, 2, b"\x01\x01", payload), (10,))


@pytest.mark.parametrize(("name", "payload"), [
    ("fp32", _f32(1.0, 2.0) + NAN32), ("fp32", INF32 + _f32(1.0, 2.0)),
    ("fp16", NAN16 * 3), ("fp16", np.float16(0).tobytes() * 2 + INF16),
])
def test_dense_float_codecs_reject_nan_and_inf(name: str, payload: bytes) -> None:
    with pytest.raises(DecodeError, match="NaN or Inf"):
        make_codec(name).decode(payload, (3,))


@pytest.mark.parametrize(("payload", "message"), [
    (NAN32 + _f32(1.0) + bytes(5), "scale"),
    (_f32(1.0) + INF32 + bytes(5), "scale"),
    (_f32(1.0, -0.5) + bytes(5), "scale"),
    (_f32(1.0, 1.0) + b"\x00\x00\x80\x00\x00", "-128"),
    (_f32(3.0e38, 1.0) + b"\x7f\x00\x00\x00\x00", "overflows"),
])
def test_int8_rejects_bad_scales_codes_and_overflow(payload: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        make_codec("int8", {"block": 3}).decode(payload, (5,))


FUZZ_SHAPES = [(), (0,), (1,), (5,), (2, 3), (16,), (4, 9)]


@pytest.mark.parametrize(("name", "params"), CONFIGS, ids=IDS)
@settings(max_examples=2000, deadline=None)
@given(data=st.binary(max_size=80), shape=st.sampled_from(FUZZ_SHAPES))
def test_random_bytes_only_raise_decode_error(name: str, params: dict[str, Any], data: bytes,
                                              shape: tuple[int, ...]) -> None:
    codec = codec_of(name, params)
    try:
        out = codec.decode(data, shape)
    except DecodeError:
        return
    assert out.shape == shape and out.dtype == np.float32 and np.isfinite(out).all()


def _value_bytes(values: str, k: int) -> int:
    return {"fp32": 4 * k, "fp16": 2 * k, "int8": 4 * -(-k // 4) + k}[values]


@pytest.mark.parametrize("values", ["fp32", "fp16", "int8"])
@settings(max_examples=1000, deadline=None)
@given(data=st.data())
def test_topk_plausible_payloads_only_raise_decode_error(values: str, data: st.DataObject) -> None:
    """Random payloads that get past the header: k <= n, right-sized bitmaps, often right-sized values."""
    shape = data.draw(st.sampled_from(FUZZ_SHAPES))
    n = int(np.prod(shape))
    k = data.draw(st.integers(0, n))
    mode = data.draw(st.sampled_from([VARINT, BITMAP]))
    if mode == BITMAP:
        index = data.draw(st.binary(min_size=-(-n // 8), max_size=-(-n // 8)))
    else:
        index = data.draw(st.one_of(st.binary(max_size=2 * k + 2), st.lists(st.integers(1, 3), min_size=k,
                                                                            max_size=k).map(bytes)))
    size = _value_bytes(values, k)
    rest = data.draw(st.one_of(st.binary(min_size=size, max_size=size), st.binary(max_size=90)))
    codec = TopKCodec({"values": values, "block": 4})
    try:
        out = codec.decode(_topk(mode, k, index, rest), shape)
    except DecodeError:
        return
    assert out.shape == shape and np.isfinite(out).all() and np.count_nonzero(out) <= k

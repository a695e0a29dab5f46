"""Every codec round-trips within its stated error bound; top-k keeps exactly the k largest magnitudes."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from compression_cases import ARRAYS, CONFIGS, IDS, codec_of, sent_mask
from hypothesis import given, settings
from hypothesis import strategies as st

from hffm_core.compression import (
    CODECS,
    TopKCodec,
    decode_state,
    encode_state,
    make_codec,
)
from hffm_core.compression.base import MAX_ELEMENTS
from hffm_core.compression.indices import BITMAP, VARINT, varint_decode, varint_encode
from hffm_core.errors import DecodeError


def test_every_registered_codec_is_tested() -> None:
    assert {name for name, _ in CONFIGS} == set(CODECS)


@pytest.mark.parametrize(("name", "params"), CONFIGS, ids=IDS)
@settings(max_examples=120, deadline=None)
@given(x=ARRAYS)
def test_round_trip_within_error_bound(name: str, params: dict[str, Any], x: np.ndarray) -> None:
    codec = codec_of(name, params)
    out = codec.decode(codec.encode(x), x.shape)
    assert out.dtype == np.float32 and out.shape == x.shape and out.flags.writeable
    assert np.isfinite(out).all()
    if codec.lossless:
        assert out.tobytes() == x.tobytes()
        assert codec.error_bound(x) == 0.0
        return
    sent = sent_mask(codec, x)
    err = np.abs(out.astype(np.float64) - x.astype(np.float64))
    bound = codec.error_bound(x)
    assert math.isfinite(bound) and bound >= 0.0
    assert (err[sent] <= bound).all(), (err[sent].max(), bound)
    assert (out[~sent] == 0).all()


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.37, 1.0])
@settings(max_examples=80, deadline=None)
@given(x=ARRAYS)
def test_topk_keeps_exactly_the_k_largest_magnitudes(fraction: float, x: np.ndarray) -> None:
    codec = TopKCodec({"fraction": fraction, "values": "fp32"})
    chosen = codec.select(x)
    n = x.size
    assert chosen.size == (0 if n == 0 else max(1, math.ceil(round(fraction * n, 9))))
    assert (np.diff(chosen) > 0).all()
    mask = np.zeros(n, dtype=bool)
    mask[chosen] = True
    flat = np.abs(x.reshape(-1))
    if 0 < chosen.size < n:
        assert flat[mask].min() >= flat[~mask].max()  # ties may go either way
    out = codec.decode(codec.encode(x), x.shape)
    np.testing.assert_array_equal(out.reshape(-1), np.where(mask, x.reshape(-1), np.float32(0)))


@pytest.mark.parametrize(("fraction", "n", "k"), [(0.01, 700, 7), (0.01, 73_728, 738), (0.01, 1, 1),
                                                  (0.5, 3, 2), (1.0, 5, 5), (0.001, 0, 0), (0.1, 10, 1)])
def test_topk_k_uses_the_decimal_fraction(fraction: float, n: int, k: int) -> None:
    assert TopKCodec({"fraction": fraction}).k_for(n) == k


def test_topk_picks_the_smaller_index_coding() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=4096).astype(np.float32)
    sparse, dense = TopKCodec({"fraction": 0.01}), TopKCodec({"fraction": 0.5})
    sparse_bytes, dense_bytes = sparse.encode(x), dense.encode(x)
    assert sparse_bytes[1] == VARINT and dense_bytes[1] == BITMAP
    assert int.from_bytes(dense_bytes[6:10], "little") == 4096 // 8
    for codec, data in ((sparse, sparse_bytes), (dense, dense_bytes)):
        out = codec.decode(data, x.shape)
        mask = out != 0
        np.testing.assert_array_equal(out[mask], x[mask])


def _leb128(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.integers(0, 300), st.sampled_from([127, 128, 2**14 - 1, 2**14, 2**21, 2**28 - 1,
                                                                2**28, 2**32 - 1]),
                          st.integers(0, 2**32 - 1)), max_size=50))
def test_vectorised_varints_match_reference_leb128(values: list[int]) -> None:
    data = varint_encode(np.array(values, dtype=np.uint64))
    assert data == b"".join(_leb128(v) for v in values)
    assert varint_decode(data, len(values), "t").tolist() == values


def test_large_topk_is_fast_and_exact() -> None:
    x = np.random.default_rng(2).normal(0, 1e-3, size=1_000_000).astype(np.float32)
    codec = TopKCodec({"fraction": 0.1, "values": "int8"})  # k = 100,000 indices through the varint path
    data = codec.encode(x)
    assert data[1] == VARINT
    out = codec.decode(data, x.shape)
    assert np.count_nonzero(out) <= 100_000
    assert np.abs(out - x)[out != 0].max() <= codec.error_bound(x)


def test_fp16_clips_out_of_range_values_and_says_so() -> None:
    codec = make_codec("fp16")
    x = np.array([1e6, -1e6, 70000.0, 65519.0, 1.0], dtype=np.float32)
    out = codec.decode(codec.encode(x), x.shape)
    np.testing.assert_array_equal(out, [65504.0, -65504.0, 65504.0, 65504.0, 1.0])
    assert codec.error_bound(x) >= 1e6 - 65504.0


def test_int8_layout_and_extremes() -> None:
    codec = make_codec("int8", {"block": 4})
    big = np.float32(np.finfo(np.float32).max)
    x = np.array([big, -big, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1e-44], dtype=np.float32)
    data = codec.encode(x)
    assert len(data) == 3 * 4 + 9
    out = codec.decode(data, x.shape)
    assert np.isfinite(out).all()
    assert (np.abs(out.astype(np.float64) - x.astype(np.float64)) <= codec.error_bound(x)).all()
    np.testing.assert_array_equal(out[4:8], 0)


@pytest.mark.parametrize(("name", "params"), CONFIGS, ids=IDS)
def test_encode_rejects_non_finite_and_non_float32(name: str, params: dict[str, Any]) -> None:
    codec = codec_of(name, params)
    for bad in (np.array([1.0, np.nan], dtype=np.float32), np.array([np.inf], dtype=np.float32),
                np.zeros(3, dtype=np.float64), [1.0, 2.0]):
        with pytest.raises(ValueError):
            codec.encode(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "params"), CONFIGS, ids=IDS)
def test_decode_accepts_bytes_likes_and_rejects_bad_shapes(name: str, params: dict[str, Any]) -> None:
    codec = codec_of(name, params)
    x = np.arange(6, dtype=np.float32)
    data = codec.encode(x)
    for buf in (bytearray(data), memoryview(data)):
        assert codec.decode(buf, [6]).shape == (6,)  # type: ignore[arg-type]
    for shape in ((-1,), (True,), ("6",), (2.0, 3), None, (MAX_ELEMENTS + 1,), (0, MAX_ELEMENTS + 1), (1,) * 33):
        with pytest.raises(DecodeError):
            codec.decode(data, shape)  # type: ignore[arg-type]
    with pytest.raises(DecodeError):
        codec.decode(data.hex(), (6,))  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "params"), CONFIGS, ids=IDS)
def test_state_round_trip_and_name_mismatch(name: str, params: dict[str, Any]) -> None:
    codec = codec_of(name, params)
    rng = np.random.default_rng(3)
    state = {"b": rng.normal(size=(3,)).astype(np.float32), "a": rng.normal(size=(2, 4)).astype(np.float32),
             "s": np.array(0.5, dtype=np.float32), "e": np.zeros((0, 2), dtype=np.float32)}
    encoded = encode_state(state, codec)
    assert list(encoded) == ["a", "b", "e", "s"]
    shapes = {k: v.shape for k, v in state.items()}
    decoded = decode_state(encoded, shapes, codec)
    assert list(decoded) == ["a", "b", "e", "s"]
    assert all(decoded[k].shape == state[k].shape for k in state)
    with pytest.raises(DecodeError, match="missing \\['s'\\], extra \\[\\]"):
        decode_state({k: v for k, v in encoded.items() if k != "s"}, shapes, codec)
    with pytest.raises(DecodeError, match="extra \\['z'\\]"):
        decode_state({**encoded, "z": b""}, shapes, codec)

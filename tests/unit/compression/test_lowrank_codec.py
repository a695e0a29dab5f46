"""The lowrank codec: sign-coded rank-r factors per matrix with the module layout; strict decoding."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hffm_core.compression import ErrorFeedback, make_codec
from hffm_core.compression.module_codec import layout_of, pack, unpack
from hffm_core.errors import DecodeError


def lora_like(seed: int) -> dict[str, np.ndarray]:
    """A module shaped like one LoRA adapter layer pair plus a bias: rank-1 structure plus noise."""
    rng = np.random.default_rng(seed)
    a = np.outer(rng.normal(size=8), rng.normal(size=384)) + 0.1 * rng.normal(size=(8, 384))
    b = np.outer(rng.normal(size=384), rng.normal(size=8)) + 0.1 * rng.normal(size=(384, 8))
    return {"a": (1e-3 * a).astype(np.float32), "b": (1e-3 * b).astype(np.float32),
            "bias": (1e-3 * rng.normal(size=384)).astype(np.float32)}


def cosine(x: np.ndarray, y: np.ndarray) -> float:
    return float(x.ravel() @ y.ravel() / np.linalg.norm(x) / np.linalg.norm(y))


def test_a_sign_times_int8_outer_product_is_decoded_exactly() -> None:
    rng = np.random.default_rng(0)
    q = np.where(rng.random(50) < 0.5, -1.0, 1.0)
    v = rng.integers(-127, 128, size=6).astype(np.float64)
    v[0] = 127.0  # the scale is max|v| / 127 = 1 / 64 exactly
    m = np.outer(q, v / 64.0).astype(np.float32)
    codec = make_codec("lowrank")
    data = codec.encode(m)
    assert len(data) == 4 + 6 + 7  # one scale, 6 int8 codes, 50 sign bits
    np.testing.assert_array_equal(codec.decode(data, m.shape), m)


def test_a_wide_matrix_is_coded_transposed_with_the_same_error() -> None:
    rng = np.random.default_rng(1)
    m = rng.normal(size=(40, 7)).astype(np.float32)
    codec = make_codec("lowrank", {"rank": 2})
    tall = codec.decode(codec.encode(m), m.shape)
    wide = codec.decode(codec.encode(np.ascontiguousarray(m.T)), m.T.shape)
    np.testing.assert_allclose(wide, tall.T, rtol=1e-6, atol=1e-7)


def test_payload_sizes_follow_the_layout() -> None:
    state = lora_like(0)
    packed, _ = pack(state, make_codec("lowrank"))
    # a (8 x 384) and b (384 x 8): 4 + 8 + 48 bytes each; bias: 4 + 48 bytes.
    assert packed.nbytes == 2 * 60 + 52
    packed2, _ = pack(state, make_codec("lowrank", {"rank": 2}))
    assert packed2.nbytes == 2 * 120 + 52
    assert packed2.codec_params == {"rank": 2} and packed.codec_params == {}


def test_more_components_fit_better_and_rank_structure_is_kept() -> None:
    state = lora_like(2)
    fits = []
    for rank in (1, 2, 4, 8):
        _, sent = pack(state, make_codec("lowrank", {"rank": rank}))
        fits.append(min(cosine(state[n], sent[n]) for n in ("a", "b")))
    assert fits[0] > 0.75  # the planted rank-1 structure survives one sign-coded component
    assert fits == sorted(fits) and fits[-1] > 0.95


def test_the_receiver_uses_its_own_layout() -> None:
    state = lora_like(3)
    packed, sent = pack(state, make_codec("lowrank"))
    back = unpack(packed, layout_of(state))
    for name in state:
        np.testing.assert_array_equal(back[name], sent[name])
    other = {"a": (16, 192), "b": (384, 8), "bias": (384,)}  # same sizes, other matrix sides: other payload size
    with pytest.raises(DecodeError, match="lowrank"):
        unpack(packed, other)
    with pytest.raises(DecodeError):
        unpack(packed, {"a": (8, 384), "bias": (384,)})


def test_error_feedback_delivers_what_one_component_left_out() -> None:
    rng = np.random.default_rng(4)
    target = rng.normal(size=(64, 16)).astype(np.float32)  # full rank: one component cannot carry it at once
    codec, fb = make_codec("lowrank"), ErrorFeedback()
    total = np.zeros_like(target)
    errors = []
    for i in range(1, 81):
        _, sent = pack({"w": target}, codec, feedback=fb, stream="s")
        total += sent["w"]
        errors.append(np.linalg.norm(total / i - target) / np.linalg.norm(target))
    residual = fb.residual("s")["module"].reshape(target.shape)
    np.testing.assert_allclose(total + residual, 80 * target, rtol=1e-4, atol=1e-2)
    # The residual stays bounded, so the running mean of what was sent converges to the true delta like 1 / i.
    assert errors[79] < 0.5 * errors[19] and errors[79] < 0.25


@pytest.mark.parametrize("mutate", ["short", "long", "padding", "negative", "nan", "code-128"])
def test_malformed_payloads_are_rejected(mutate: str) -> None:
    codec = make_codec("lowrank")
    x = np.random.default_rng(5).normal(size=(13, 5)).astype(np.float32)
    data = bytearray(codec.encode(x))  # 4 + 5 + 2 bytes: 13 sign bits leave 3 padding bits
    if mutate == "short":
        data = data[:-1]
    elif mutate == "long":
        data += b"\x00"
    elif mutate == "padding":
        data[-1] |= 0x01
    elif mutate == "negative":
        data[0:4] = np.float32(-1).tobytes()
    elif mutate == "nan":
        data[0:4] = np.float32(np.nan).tobytes()
    else:
        data[4] = 0x80
    with pytest.raises(DecodeError, match="lowrank"):
        codec.decode(bytes(data), x.shape)


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=40), rows=st.integers(0, 9), cols=st.integers(0, 9))
def test_a_crafted_payload_never_decodes_to_inf(data: bytes, rows: int, cols: int) -> None:
    codec = make_codec("lowrank", {"rank": 3})
    try:
        out = codec.decode(data, (rows, cols))
    except DecodeError:
        return
    assert np.isfinite(out).all()


def test_huge_scales_are_clipped_into_float32_range() -> None:
    codec = make_codec("lowrank", {"rank": 2})
    big = np.float32(3e38).tobytes()
    payload = big + big + bytes([127, 127, 127, 127, 0xFF])  # 2 components of a 4 x 2 matrix: 8 sign bits
    out = codec.decode(payload, (4, 2))
    assert np.isfinite(out).all() and out.max() == np.finfo(np.float32).max


def test_rank_of_gives_matching_tensors_their_own_rank() -> None:
    state = lora_like(6)
    packed, sent = pack(state, make_codec("lowrank", {"rank_of": "b:3"}))
    assert packed.nbytes == 60 + 3 * 60 + 52  # a: 1 component, b: 3, bias: signs
    assert packed.codec_params == {"rank_of": "b:3"}
    back = unpack(packed, layout_of(state))
    for name in state:
        np.testing.assert_array_equal(back[name], sent[name])
    first_wins = make_codec("lowrank", {"rank": 2, "rank_of": "a:1, b:4,a:3"})
    packed, _ = pack(state, first_wins)
    assert packed.nbytes == 60 + 4 * 60 + 52


@pytest.mark.parametrize("rank_of", ["b", "b:0", "b:65", ":2", "b:two", "b c:2", "b:2;a:1"])
def test_rank_of_must_be_name_parts_and_ranks(rank_of: str) -> None:
    from hffm_core.errors import ConfigError

    with pytest.raises(ConfigError, match="rank_of item"):
        make_codec("lowrank", {"rank_of": rank_of})


def attention_like(seed: int) -> dict[str, np.ndarray]:
    """Two LoRA A matrices of one layer (query and value read the same input) and a B matrix."""
    rng = np.random.default_rng(seed)
    shared = rng.normal(size=384)
    return {"q.lora_A": np.outer(rng.normal(size=8), shared + 0.3 * rng.normal(size=384)).astype(np.float32),
            "q.lora_B": rng.normal(size=(384, 8)).astype(np.float32),
            "v.lora_A": np.outer(rng.normal(size=8), shared + 0.3 * rng.normal(size=384)).astype(np.float32)}


@pytest.mark.parametrize("pair", ["q.lora_A|v.lora_A", "v.lora_A|q.lora_A"])
def test_pair_codes_two_matrices_as_one(pair: str) -> None:
    state = attention_like(7)
    packed, sent = pack(state, make_codec("lowrank", {"pair": pair}))
    # the A pair: one component of a 384 x 16 matrix (4 + 16 + 48 bytes); q.lora_B alone: 4 + 8 + 48
    assert packed.nbytes == 68 + 60
    back = unpack(packed, layout_of(state))
    for name in state:
        np.testing.assert_array_equal(back[name], sent[name])
    for name in ("q.lora_A", "v.lora_A"):  # their shared input direction survives the one shared component
        assert cosine(state[name], sent[name]) > 0.7
    unpaired, _ = pack({"q.lora_A": state["q.lora_A"]}, make_codec("lowrank", {"pair": pair}))
    assert unpaired.nbytes == 60  # no partner in the layout: coded alone


def test_int4_loadings_halve_the_codes_and_keep_the_fit() -> None:
    state = lora_like(8)
    p8, s8 = pack(state, make_codec("lowrank", {"rank": 2}))
    p4, s4 = pack(state, make_codec("lowrank", {"rank": 2, "loadings": "int4"}))
    assert p8.nbytes - p4.nbytes == 2 * 2 * 4  # two matrices, two components, 8 codes in 4 bytes instead of 8
    for name in ("a", "b"):
        assert cosine(state[name], s4[name]) > cosine(state[name], s8[name]) - 0.01


@pytest.mark.parametrize("mutate", ["reserved", "padding"])
def test_int4_rejects_the_reserved_code_and_a_set_padding_nibble(mutate: str) -> None:
    codec = make_codec("lowrank", {"loadings": "int4"})
    x = np.random.default_rng(9).normal(size=(16, 5)).astype(np.float32)  # 5 codes: 3 bytes, one padding nibble
    data = bytearray(codec.encode(x))
    if mutate == "reserved":
        data[4] = (data[4] & 0xF0) | 0x8
    else:
        data[6] |= 0xF0
    with pytest.raises(DecodeError, match="int4"):
        codec.decode(bytes(data), x.shape)


@pytest.mark.parametrize(("params", "message"), [({"pair": "q"}, "pair item"), ({"pair": "a|a"}, "pair item"),
                                                 ({"pair": "a|b c"}, "pair item"), ({"loadings": "int2"}, "loadings")])
def test_bad_pair_and_loadings_are_config_errors(params: dict, message: str) -> None:
    from hffm_core.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        make_codec("lowrank", params)

"""The sign codec: 1-bit signs + block magnitudes on a seeded subset; strict decoding."""

from __future__ import annotations

import numpy as np
import pytest

from hffm_core.compression import ErrorFeedback, make_codec
from hffm_core.compression.module_codec import pack
from hffm_core.compression.sign import subset
from hffm_core.errors import ConfigError, DecodeError

X = np.linspace(-1, 1, 1000, dtype=np.float32)


def test_full_sign_keeps_every_sign_and_block_mean_magnitude() -> None:
    codec = make_codec("sign", {"block": 100})
    y = codec.decode(codec.encode(X), X.shape)
    np.testing.assert_array_equal(np.sign(y[X != 0]), np.sign(X[X != 0]))
    np.testing.assert_allclose(np.abs(y[:100]), np.abs(X[:100]).mean(), rtol=1e-6)
    assert len(codec.encode(X)) == 4 * 10 + 125  # 10 block magnitudes + 1000 bits


def test_subset_depends_on_the_seed_and_costs_no_index_bytes() -> None:
    a, b = subset(1000, 0.3, 1), subset(1000, 0.3, 2)
    assert len(a) == len(b) == 300 and not np.array_equal(a, b)
    codec = make_codec("sign", {"fraction": 0.3, "seed": 1, "block": 300})
    data = codec.encode(X)
    assert len(data) == 4 + 38  # one magnitude + 300 sign bits; no indices
    y = codec.decode(data, X.shape)
    assert np.count_nonzero(y) == 300 and set(np.flatnonzero(y)) <= set(a)


def test_pack_draws_a_fresh_subset_per_seed_and_error_feedback_reaches_everything() -> None:
    codec, fb = make_codec("sign", {"fraction": 0.25}), ErrorFeedback()
    reached = np.zeros(X.size, bool)
    total_sent = np.zeros_like(X)
    for i in range(40):
        packed, sent = pack({"w": X}, codec, feedback=fb, stream="s", seed=i)
        assert packed.codec_params.get("seed", 0) == i  # defaults are left off the wire
        reached |= sent["w"] != 0
        total_sent += sent["w"]
    assert reached.all()  # every coordinate was sent at some point
    residual = fb.residual("s")["module"]  # pack codes a module as one flat vector
    np.testing.assert_allclose(total_sent + residual, 40 * X, rtol=1e-4, atol=1e-4)


def test_pack_leaves_the_seed_off_when_every_element_is_sent() -> None:
    packed, sent = pack({"w": X}, make_codec("sign"), seed=12345)
    assert packed.codec_params == {}  # the seed would pick nothing: no bytes spent on it
    np.testing.assert_array_equal(np.sign(sent["w"][X != 0]), np.sign(X[X != 0]))


@pytest.mark.parametrize("mutate", ["short", "long", "padding", "negative", "nan"])
def test_malformed_payloads_are_rejected(mutate: str) -> None:
    codec = make_codec("sign", {"block": 512})
    shape = (1001,)
    data = bytearray(codec.encode(np.ones(1001, np.float32)))
    if mutate == "short":
        data = data[:-1]
    elif mutate == "long":
        data += b"\x00"
    elif mutate == "padding":
        data[-1] |= 0x01  # bit 1008 is past the 1001 signs
    elif mutate == "negative":
        data[0:4] = np.float32(-1).tobytes()
    else:
        data[0:4] = np.float32("nan").tobytes()
    with pytest.raises(DecodeError):
        codec.decode(bytes(data), shape)


@pytest.mark.parametrize("params", [{"fraction": 0.0}, {"fraction": 1.5}, {"block": 0}, {"seed": -1},
                                    {"seed": 1.5}])
def test_bad_parameters_are_config_errors(params: dict) -> None:
    with pytest.raises(ConfigError):
        make_codec("sign", params)

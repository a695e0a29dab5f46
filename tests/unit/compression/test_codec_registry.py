"""The codec registry is strict: unknown names, unknown parameters, wrong types and bad values are refused."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pytest

import hffm_core.compression as compression
from hffm_core.compression import (
    CODECS,
    Codec,
    Fp16Codec,
    Fp32Codec,
    Int8Codec,
    TopKCodec,
    make_codec,
    register,
)
from hffm_core.errors import ConfigError


def test_the_six_codecs_are_registered() -> None:
    from hffm_core.compression import LowRankCodec, SignCodec

    assert CODECS == {"fp32": Fp32Codec, "fp16": Fp16Codec, "int8": Int8Codec, "topk": TopKCodec,
                      "sign": SignCodec, "lowrank": LowRankCodec}
    assert make_codec("fp32").lossless and not any(CODECS[n].lossless for n in ("fp16", "int8", "topk", "sign",
                                                                                "lowrank"))
    assert set(compression.__all__) >= {"Codec", "CODECS", "make_codec", "register", "ErrorFeedback",
                                        "encode_state", "decode_state"}


def test_unknown_codec_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown codec 'zstd'; expected one of \['fp16', 'fp32', 'int8', 'lowrank', 'sign', 'topk'\]"):
        make_codec("zstd")
    with pytest.raises(ConfigError, match="unknown codec"):
        make_codec(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "params", "message"), [
    ("fp32", {"block": 4}, "unknown parameter"),
    ("int8", {"fraction": 0.1}, "unknown parameter"),
    ("topk", {"k": 5}, "unknown parameter"),
    ("int8", {"block": "256"}, "must be int"),
    ("int8", {"block": True}, "must be int"),
    ("int8", {"block": 4.0}, "must be int"),
    ("topk", {"fraction": "0.1"}, "must be float"),
    ("topk", {"values": 8}, "must be str"),
    ("int8", {"block": 0}, "'block' must be an int >= 1"),
    ("int8", {"block": -3}, "'block' must be an int >= 1"),
    ("topk", {"block": 0}, "'block' must be an int >= 1"),
    ("topk", {"fraction": 0.0}, r"'fraction' must be in \(0, 1\]"),
    ("topk", {"fraction": -0.1}, r"'fraction' must be in \(0, 1\]"),
    ("topk", {"fraction": 1.5}, r"'fraction' must be in \(0, 1\]"),
    ("topk", {"fraction": float("nan")}, r"'fraction' must be in \(0, 1\]"),
    ("topk", {"values": "bf16"}, "unknown value codec 'bf16'"),
    ("topk", ["fraction"], "must be a mapping"),
    ("lowrank", {"rank": 0}, r"rank must be in \[1, 64\]"),
    ("lowrank", {"rank": 65}, r"rank must be in \[1, 64\]"),
    ("lowrank", {"rank": 1.0}, "must be int"),
])
def test_bad_parameters_are_config_errors(name: str, params: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_codec(name, params)


def test_int_is_accepted_for_a_float_parameter() -> None:
    codec = make_codec("topk", {"fraction": 1})
    assert codec.params["fraction"] == 1.0 and codec.k_for(9) == 9  # type: ignore[attr-defined]


def _codec_class(codec_name: Any) -> type[Codec]:
    class Dummy(Codec):
        name: ClassVar[str] = codec_name

        def encode(self, x: np.ndarray) -> bytes:
            return b""

        def decode(self, data: bytes, shape: tuple[int, ...]) -> np.ndarray:
            return np.zeros(shape, dtype=np.float32)

        def error_bound(self, x: np.ndarray) -> float:
            return 0.0

    return Dummy


def test_register_adds_and_rejects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compression, "CODECS", dict(CODECS))
    cls = _codec_class("dummy_2")
    assert register(cls) is cls and compression.CODECS["dummy_2"] is cls
    assert isinstance(make_codec("dummy_2"), cls)
    with pytest.raises(ValueError, match="already registered"):
        register(_codec_class("dummy_2"))
    with pytest.raises(ValueError, match="already registered"):
        register(_codec_class("fp32"))
    for bad in ("", "Fp32", "2x", "top k", "a-b", "x" * 33, None):
        with pytest.raises(ValueError, match="invalid"):
            register(_codec_class(bad))
    with pytest.raises(ValueError, match="not a Codec subclass"):
        register(int)  # type: ignore[arg-type]
    assert "dummy_2" not in CODECS  # the real registry was never touched

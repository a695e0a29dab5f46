"""The compression bench's settings: names are unique, every codec spec builds, fp32 always runs first."""

from __future__ import annotations

import pytest

from edge_runtime.bench.compression import DEFAULT_SETTINGS, SETTINGS, select_settings
from edge_runtime.config import ModelConfig, build, make_codecs
from edge_runtime.errors import ConfigError


def test_every_setting_is_valid() -> None:
    assert len({s.name for s in SETTINGS}) == len(SETTINGS)
    for s in SETTINGS:
        for link in (s.uplink, s.fog_uplink, s.downlink):
            make_codecs({k: _spec(v) for k, v in link.items()}, s.name)
        build(ModelConfig, dict(s.model), s.name)  # adapter variants and ranks are valid [model] keys


def _spec(table: dict) -> object:
    from edge_runtime.config import CodecSpec

    return build(CodecSpec, dict(table), "spec")


def test_selection() -> None:
    assert select_settings("") == DEFAULT_SETTINGS and DEFAULT_SETTINGS[0].name == "fp32"
    assert [s.name for s in select_settings("sign, sign+ffa")] == ["fp32", "sign", "sign+ffa"]
    assert [s.name for s in select_settings("sign+lora-r1")] == ["fp32", "sign+lora-r1"]  # not in the default run
    with pytest.raises(ConfigError, match=r"unknown compression setting\(s\) \['nope'\]"):
        select_settings("sign,nope")


def test_codec_speed_codes_modules_as_the_runtime_does(monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from edge_runtime.bench import compression as bench
    from edge_runtime.compression.lowrank import LowRankCodec
    from edge_runtime.protocol import ModuleKey

    rng = np.random.default_rng(0)
    deltas = {ModuleKey.parse("adapter:power:demand"): {"a": rng.normal(size=(8, 32)).astype(np.float32),
                                                        "b": rng.normal(size=(32, 8)).astype(np.float32)}}
    seen: list[tuple[tuple[int, ...], object]] = []
    encode = LowRankCodec.encode
    monkeypatch.setattr(LowRankCodec, "encode", lambda self, x: seen.append((x.shape, self.layout)) or encode(self, x))
    enc_ms, dec_ms = bench.codec_speed({"adapter": {"codec": "lowrank", "params": {}}}, deltas, repeats=2)
    assert enc_ms > 0 and dec_ms > 0
    assert seen == [((512,), [("a", (8, 32)), ("b", (32, 8))])] * 2  # one flat vector per module, with its layout

"""The compression bench's settings: names are unique, every codec spec builds, fp32 always runs first."""

from __future__ import annotations

import json
import os

import pytest

from hffm_core.config import ModelConfig, build, make_codecs
from hffm_core.errors import ConfigError
from hffm_lab.bench.compression import DEFAULT_SETTINGS, SETTINGS, select_settings


def test_every_setting_is_valid() -> None:
    assert len({s.name for s in SETTINGS}) == len(SETTINGS)
    for s in SETTINGS:
        for link in (s.uplink, s.fog_uplink, s.downlink):
            make_codecs({k: _spec(v) for k, v in link.items()}, s.name)
        build(ModelConfig, dict(s.model), s.name)  # adapter variants and ranks are valid [model] keys


def _spec(table: dict) -> object:
    from hffm_core.config import CodecSpec

    return build(CodecSpec, dict(table), "spec")


def test_selection() -> None:
    assert select_settings("") == DEFAULT_SETTINGS and DEFAULT_SETTINGS[0].name == "fp32"
    assert [s.name for s in select_settings("sign, sign+ffa")] == ["fp32", "sign", "sign+ffa"]
    assert [s.name for s in select_settings("sign+lora-r1")] == ["fp32", "sign+lora-r1"]  # not in the default run
    with pytest.raises(ConfigError, match=r"unknown compression setting\(s\) \['nope'\]"):
        select_settings("sign,nope")


def test_codec_speed_codes_modules_as_the_runtime_does(monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from hffm_core.compression.lowrank import LowRankCodec
    from hffm_core.protocol import ModuleKey
    from hffm_lab.bench import compression as bench

    rng = np.random.default_rng(0)
    deltas = {ModuleKey.parse("adapter:power:demand"): {"a": rng.normal(size=(8, 32)).astype(np.float32),
                                                        "b": rng.normal(size=(32, 8)).astype(np.float32)}}
    seen: list[tuple[tuple[int, ...], object]] = []
    encode = LowRankCodec.encode
    monkeypatch.setattr(LowRankCodec, "encode", lambda self, x: seen.append((x.shape, self.layout)) or encode(self, x))
    enc_ms, dec_ms = bench.codec_speed({"adapter": {"codec": "lowrank", "params": {}}}, deltas, repeats=2)
    assert enc_ms > 0 and dec_ms > 0
    assert seen == [((512,), [("a", (8, 32)), ("b", (32, 8))])] * 2  # one flat vector per module, with its layout


def test_several_seeds_give_means_spread_and_each_seed_against_its_own_fp32(
        monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """Two seeds, two settings, with the demo replaced by fixed results: each seed's setting is judged against that
    seed's fp32 run, and the entry holds the means, the per-seed figures and the spread."""
    from rich.console import Console

    from hffm_lab.bench import compression as bench

    acc = {(0, "fp32"): 0.80, (0, "sign"): 0.79, (1, "fp32"): 0.70, (1, "sign"): 0.67}
    up = {"fp32": 1000, "sign": 40}
    dirs = []

    def fake_demo(opts):
        dirs.append(opts.run_dir)
        name = opts.run_dir.name
        a = acc[(opts.seed, name)]
        return {"rounds": [{"bytes": {"device_to_fog": up[name] + opts.seed, "fog_to_cloud": 10, "fog_to_device": 5,
                                      "cloud_to_fog": 5}}] * 2,
                "final": {"mean_accuracy": a, "accuracy": {"digit": a}}, "wall_s": 1.0}

    monkeypatch.setattr(bench, "run_demo", fake_demo)
    monkeypatch.setattr(bench, "real_deltas", lambda db: {})
    monkeypatch.setattr(bench, "codec_speed", lambda uplink, deltas: (1.0, 2.0))
    report = tmp_path / "r.json"
    out = bench.run_compression_bench(rounds=2, seed=0, seeds=2, report=report, run_root=tmp_path,
                                      settings=bench.select_settings("sign"), console=Console(file=open(os.devnull, "w")))
    assert out["seeds"] == [0, 1] and [r["codec"] for r in out["runs"]] == ["fp32", "sign"]
    sign = out["runs"][1]
    assert [p["accuracy_delta_vs_fp32"] for p in sign["per_seed"]] == pytest.approx([-1.0, -3.0])
    assert sign["accuracy_delta_vs_fp32"] == pytest.approx(-2.0)
    assert sign["accuracy_delta_sd"] == pytest.approx(2 ** 0.5)
    assert [p["ratio_vs_fp32"] for p in sign["per_seed"]] == pytest.approx([1000 / 40, 1001 / 41])
    assert sign["ratio_vs_fp32"] == pytest.approx((1000 / 40 + 1001 / 41) / 2)
    assert sign["uplink_bytes_per_round"] == 40 and sign["mean_accuracy"] == pytest.approx(0.73)
    assert sign["accuracy"] == {"digit": pytest.approx(0.73)}
    assert dirs == [tmp_path / f"seed-{s}" / n for s in (0, 1) for n in ("fp32", "sign")]  # a folder per seed
    assert json.loads(report.read_text())["runs"][1]["per_seed"][1]["seed"] == 1


def test_one_seed_keeps_the_single_run_report(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from rich.console import Console

    from hffm_lab.bench import compression as bench

    dirs = []

    def fake_demo(opts):
        dirs.append(opts.run_dir)
        a = 0.8 if opts.run_dir.name == "fp32" else 0.78
        return {"rounds": [{"bytes": {"device_to_fog": 100 if opts.run_dir.name == "fp32" else 4, "fog_to_cloud": 1,
                                      "fog_to_device": 1, "cloud_to_fog": 1}}],
                "final": {"mean_accuracy": a, "accuracy": {"digit": a}}, "wall_s": 1.0}

    monkeypatch.setattr(bench, "run_demo", fake_demo)
    monkeypatch.setattr(bench, "real_deltas", lambda db: {})
    monkeypatch.setattr(bench, "codec_speed", lambda uplink, deltas: (1.0, 2.0))
    out = bench.run_compression_bench(rounds=1, seed=3, report=None, run_root=tmp_path,
                                      settings=bench.select_settings("sign"), console=Console(file=open(os.devnull, "w")))
    assert dirs == [tmp_path / "fp32", tmp_path / "sign"]
    run = out["runs"][1]
    assert "per_seed" not in run and run["ratio_vs_fp32"] == 25.0
    assert run["accuracy_delta_vs_fp32"] == pytest.approx(-2.0) and out["seeds"] == [3]

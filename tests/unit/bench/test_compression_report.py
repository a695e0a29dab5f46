"""The compression bench's own figures: bytes per link, the uplink's non-module share (adverts), time-to-accuracy,
means over seeds with targets some seed never reached, and the headline run."""

from __future__ import annotations

import json
import os
import sqlite3

import pytest

from hffm_core.errors import ConfigError
from hffm_lab.bench import compression as bench
from hffm_lab.bench.compression_report import combine_seeds, judge_against_fp32, run_figures


def _result(accs: list[float], uplink: int = 1000) -> dict:
    return {"rounds": [{"mean_accuracy": a, "bytes": {"device_to_fog": uplink, "fog_to_cloud": 10, "fog_to_device": 7,
                                                       "cloud_to_fog": 3}} for a in accs],
            "final": {"mean_accuracy": accs[-1], "accuracy": {"digit": accs[-1]}}, "wall_s": 9.0}


def test_run_figures_read_the_cloud_db_and_the_device_metrics(tmp_path) -> None:
    con = sqlite3.connect(tmp_path / "cloud.sqlite")
    con.execute("CREATE TABLE rounds (round INTEGER PRIMARY KEY, fogs_reported TEXT NOT NULL, "
                "modules_updated INTEGER NOT NULL, closed_at REAL NOT NULL)")
    con.executemany("INSERT INTO rounds VALUES (?, '', 1, ?)", [(1, 110.0), (2, 130.0)])
    con.commit()
    con.close()
    (tmp_path / "metrics").mkdir()
    for dev, sent in (("fog-1-dev-1", [300, 300, 300, 300]), ("fog-2-dev-1", [100, 100, 100, 100])):
        (tmp_path / "metrics" / f"{dev}.json").write_text(json.dumps({"rounds": [{"bytes_sent": b} for b in sent]}))
    (tmp_path / "metrics" / "fog-1.json").write_text(json.dumps({"rounds": [{"bytes_sent": 10**6}]}))  # not a device
    fig = run_figures(_result([0.5, 0.8]), tmp_path, started=100.0)
    assert fig["bytes_per_link_per_round"] == {"device_to_fog": 1000, "fog_to_cloud": 10, "fog_to_device": 7,
                                               "cloud_to_fog": 3}
    assert fig["module_bytes_per_round"] == 800 and fig["other_uplink_bytes_per_round"] == 200
    assert fig["accuracy_by_round"] == [0.5, 0.8] and fig["seconds_by_round"] == [10.0, 30.0]
    missing = run_figures(_result([0.5]), tmp_path / "nothing", started=0.0)
    assert missing["module_bytes_per_round"] is None and missing["seconds_by_round"] == [None]


def _run(accs: list[float], uplink: int, other: int | None, seconds: list[float]) -> dict:
    return {"codec": "x", "uplink_bytes_per_round": uplink, "fog_to_cloud_bytes_per_round": 10,
            "downlink_bytes_per_round": 10, "mean_accuracy": accs[-1], "accuracy": {"digit": accs[-1]},
            "encode_ms_per_mb": 1.0, "decode_ms_per_mb": 1.0, "wall_s": 5.0, "accuracy_by_round": accs,
            "seconds_by_round": seconds, "other_uplink_bytes_per_round": other}


def test_time_to_accuracy_is_the_first_round_at_95_percent_of_fp32_final() -> None:
    ref = _run([0.6, 0.8, 0.9, 1.0], 10_000, 100, [10, 20, 30, 40])
    run = _run([0.5, 0.9, 0.96, 0.97], 40, 2, [11, 22, 33, 44])
    judge_against_fp32(ref, ref)
    judge_against_fp32(run, ref)
    assert ref["time_to_accuracy"] == {"target": 0.95, "rounds": 4, "wall_s": 40}
    assert run["time_to_accuracy"] == {"target": 0.95, "rounds": 3, "wall_s": 33}
    assert run["ratio_vs_fp32"] == 250 and run["other_uplink_share"] == pytest.approx(0.05)
    assert run["accuracy_delta_by_round"] == pytest.approx([-10.0, 10.0, 6.0, -3.0])
    slow = _run([0.5, 0.6], 40, None, [1, 2])
    judge_against_fp32(slow, ref)
    assert slow["time_to_accuracy"]["rounds"] is None and slow["other_uplink_share"] is None
    assert slow["accuracy_delta_by_round"] == pytest.approx([-10.0, -20.0])  # only the rounds both ran


def test_means_over_seeds_keep_each_seed_and_the_worst() -> None:
    ref = _run([0.95, 1.0], 1000, 0, [1, 2])
    runs = []
    for accs, secs in (([0.96, 0.99], [5, 9]), ([0.9, 0.97], [6, 8])):
        r = _run(accs, 40, 4, secs)
        r["bytes_per_link_per_round"] = {"device_to_fog": 40, "fog_to_cloud": 10}
        judge_against_fp32(r, ref)
        runs.append(r)
    out = combine_seeds(runs, [0, 1])
    assert out["accuracy_delta_vs_fp32"] == pytest.approx(-2.0)
    assert out["worst_seed_accuracy_delta_vs_fp32"] == pytest.approx(-3.0)
    assert out["time_to_accuracy"] == {"target": pytest.approx(0.95), "rounds": 1.5, "wall_s": 6.5}
    assert out["other_uplink_share"] == pytest.approx(0.1)
    assert [p["time_to_accuracy"]["rounds"] for p in out["per_seed"]] == [1, 2]
    assert out["accuracy_delta_by_round"] == pytest.approx([-2.0, -2.0])  # round by round, the mean of the seeds
    assert [p["accuracy_delta_by_round"] for p in out["per_seed"]] == [pytest.approx([1.0, -1.0]),
                                                                        pytest.approx([-5.0, -3.0])]
    assert out["bytes_per_link_per_round"] == {"device_to_fog": 40, "fog_to_cloud": 10}


def test_headline_runs_fp32_and_the_headline_setting_and_marks_it(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from rich.console import Console

    assert [s.name for s in bench.select_settings("", headline=True)] == ["fp32", bench.HEADLINE]
    with pytest.raises(ConfigError, match="--headline"):
        bench.select_settings("sign", headline=True)
    seen = []

    def fake_demo(opts):
        seen.append((opts.run_dir.name, opts.model, opts.device))
        return _result([0.7, 0.8 if opts.run_dir.name == "fp32" else 0.795], 1000 if opts.run_dir.name == "fp32" else 4)

    monkeypatch.setattr(bench, "run_demo", fake_demo)
    monkeypatch.setattr(bench, "real_deltas", lambda db: {})
    monkeypatch.setattr(bench, "codec_speed", lambda uplink, deltas: (1.0, 2.0))
    report = tmp_path / "c.json"
    bench.run_compression_bench(rounds=2, seed=0, seeds=3, report=report, run_root=tmp_path,
                                settings=bench.select_settings("", headline=True),
                                console=Console(file=open(os.devnull, "w")))
    out = json.loads(report.read_text())
    fp32, head = out["runs"]
    assert out["headline"] == bench.HEADLINE and head["headline"] is True and "headline" not in fp32
    assert head["ratio_vs_fp32"] == 250 and head["accuracy_delta_vs_fp32"] == pytest.approx(-0.5)
    assert [p["seed"] for p in head["per_seed"]] == [0, 1, 2]
    assert head["time_to_accuracy"]["rounds"] == 2
    assert {d["telemetry_interval_s"] for _, _, d in seen} == {bench.ADVERT_INTERVAL_S}  # every setting alike
    assert [m.get("adapter") for n, m, _ in seen if n == bench.HEADLINE] == ["lora-sb"] * 3

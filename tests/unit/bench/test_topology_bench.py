"""``hffm bench topology`` fails on zero or missing measured bytes instead of reading them as a huge ratio."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from rich.console import Console

from hffm_core.errors import HffmError
from hffm_lab.bench import topology as bench

BYTES = {"star": {"device_cloud": 80_000},
         "hierarchical": {"device_fog": 80_000, "fog_cloud": 9_000},
         "hierarchical_d2d": {"device_fog": 60_000, "fog_cloud": 8_000, "device_device": 20_000, "fog_fog": 5_000}}


def _fake_demo(bytes_of: dict[str, dict[str, int]]):  # type: ignore[no-untyped-def]
    def run(opts):  # type: ignore[no-untyped-def]
        measured = bytes_of[opts.layout]
        return {"links": {"bytes": measured, "bytes_per_round": [measured],
                          "estimate": {"latency_s": 1.0, "energy_j": 2.0, "per_kind": {}}},
                "final": {"mean_accuracy": 0.5, "accuracy": {"digit": 0.5}}, "rejected_messages": {}, "wall_s": 1.0}
    return run


def _bench(tmp_path: Path, report: Path | None = None) -> dict:
    return bench.run_topology_bench(rounds=1, seed=0, report=report, run_root=tmp_path, agg_every=2, fogs=2,
                                    devices_per_fog=2, console=Console(file=open(os.devnull, "w")))


def test_measured_bytes_give_the_ratio(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(bench, "run_demo", _fake_demo(BYTES))
    out = _bench(tmp_path)
    assert [r["status"] for r in out["runs"]] == ["ok"] * 3
    assert out["goal"]["cloud_link_ratio"] == 10.0 and out["goal"]["met"] is True


@pytest.mark.parametrize("d2d", [{"device_fog": 60_000, "fog_cloud": 0},  # zero: was 80_000 / max(1, 0), "met"
                                 {"device_fog": 60_000}])  # missing: read as 0
def test_zero_or_missing_bytes_fail_the_row_and_the_bench(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                         d2d: dict[str, int]) -> None:
    monkeypatch.setattr(bench, "run_demo", _fake_demo({**BYTES, "hierarchical_d2d": d2d}))
    report = tmp_path / "topology.json"
    with pytest.raises(HffmError, match="topology benchmark FAILED: hierarchical_d2d: .*fog_cloud"):
        _bench(tmp_path / "runs", report)
    saved = json.loads(report.read_text())
    assert [r["status"] for r in saved["runs"]] == ["ok", "ok", "FAILED"]
    assert saved["goal"]["met"] is False and saved["goal"]["cloud_link_ratio"] is None


@pytest.mark.parametrize(("layout", "measured", "n"), [
    ("star", {}, 1), ("star", {"device_cloud": 0}, 1), ("hierarchical", {"device_fog": 0, "fog_cloud": 0}, 2),
    ("hierarchical", {"device_fog": 1, "fog_cloud": 1}, 0)])
def test_bytes_problems(layout: str, measured: dict[str, int], n: int) -> None:
    assert len(bench.bytes_problems(layout, measured)) == n

"""The demo's report fails on incomplete figures: a process without a readable metrics file (its bytes would be
silently left out), or a device missing from a round."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hffm_core.errors import HffmError
from hffm_core.protocol import RoundMetrics
from hffm_lab.demo.plan import DemoOptions, FleetPlan
from hffm_lab.demo.report import build_report, read_node_metrics

DEVICES = ("fog-1-dev-1", "fog-1-dev-2")
ROUNDS = [(1, 1), (1, 2), (2, 1), (2, 2)]


def _plan(run_dir: Path) -> FleetPlan:
    return FleetPlan(run_dir=run_dir, fog_of=dict.fromkeys(DEVICES, "fog-1"), modalities=["image"], tasks=["digit"],
                     device_tasks=dict.fromkeys(DEVICES, ["digit"]), fog_configs={"fog-1": run_dir / "fog-1.toml"})


def _write(plan: FleetPlan, node: str, metrics: dict) -> None:
    path = plan.metrics_file(node)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics))


def _traffic(category: str) -> list[dict]:
    return [{"round": g, "category": category, "bytes": 1000, "messages": 2} for g in (1, 2)]


def _complete_run(plan: FleetPlan) -> None:
    _write(plan, "cloud", {"traffic": _traffic("cloud_to_fog"), "rounds": []})
    _write(plan, "fog-1", {"traffic": _traffic("fog_to_cloud") + _traffic("fog_to_device"),
                           "rounds": [{"global_round": g, "cluster_round": c, "reporters": list(DEVICES), "updates": 2}
                                      for g, c in ROUNDS]})
    for dev in DEVICES:
        _write(plan, dev, {"traffic": _traffic("device_to_fog"), "final_accuracy": {"digit": 0.5},
                           "rounds": [{"global_round": g, "cluster_round": c} for g, c in ROUNDS]})


def _report(plan: FleetPlan) -> dict:
    history = [RoundMetrics(fleet="demo", global_round=g, total_rounds=2, accuracy={"digit": 0.5},
                            fogs_reported=("fog-1",), modules_updated=3) for g in (1, 2)]
    return build_report(DemoOptions(fogs=1, devices_per_fog=2, rounds=2, agg_every=2), plan, history, {}, wall_s=1.0)


def test_a_complete_run_counts_every_node(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    _complete_run(plan)
    report = _report(plan)
    assert report["metrics_missing"] == {} and report["participation"] == {"complete": True, "problems": []}
    assert [r["bytes"]["device_to_fog"] for r in report["rounds"]] == [2000, 2000]


def test_a_missing_metrics_file_fails_the_run(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    _complete_run(plan)
    plan.metrics_file("fog-1-dev-2").unlink()
    with pytest.raises(HffmError, match=r"incomplete: fog-1-dev-2: no metrics file .*fog-1-dev-2\.json"):
        _report(plan)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert list(saved["metrics_missing"]) == ["fog-1-dev-2"]
    assert [r["bytes"]["device_to_fog"] for r in saved["rounds"]] == [1000, 1000]  # what was counted, and it says so


def test_an_unreadable_metrics_file_is_reported(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    _complete_run(plan)
    plan.metrics_file("cloud").write_text('{"traffic": [')
    nodes, missing = read_node_metrics(plan)
    assert "cloud" not in nodes and missing["cloud"].startswith("unreadable metrics file")
    with pytest.raises(HffmError, match="cloud: unreadable metrics file"):
        _report(plan)


def test_a_device_missing_from_a_round_fails_the_run(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    _complete_run(plan)
    fog = json.loads(plan.metrics_file("fog-1").read_text())
    fog["rounds"][1]["reporters"] = ["fog-1-dev-1"]  # fog-1-dev-2's update for (1,2) never arrived
    _write(plan, "fog-1", fog)
    dev = json.loads(plan.metrics_file("fog-1-dev-2").read_text())
    dev["rounds"] = dev["rounds"][:2]  # nor did it train global round 2
    _write(plan, "fog-1-dev-2", dev)
    with pytest.raises(HffmError) as err:
        _report(plan)
    assert "fog-1 closed round (1,2) without ['fog-1-dev-2']" in str(err.value)
    assert "fog-1-dev-2 sent no update in round(s) [(2, 1), (2, 2)] of fog-1" in str(err.value)


def test_a_global_round_without_a_cluster_round_fails_the_run(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    _complete_run(plan)
    fog = json.loads(plan.metrics_file("fog-1").read_text())
    fog["rounds"] = fog["rounds"][:2]
    _write(plan, "fog-1", fog)
    with pytest.raises(HffmError, match=r"fog-1 closed no cluster round in global round\(s\) \[2\]"):
        _report(plan)

"""A small full run on real Mosquitto: tiny backbone, 2 fogs x 2 devices, 2 global rounds, every tier a process."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pytest
from hffm_testing.refusals import refusals

from hffm_core.protocol import ModuleKey

pytestmark = pytest.mark.integration


def test_deltas_crossed_every_tier_in_every_round(job: tuple[dict, Path]) -> None:
    report, _ = job
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    for r in report["rounds"]:
        for link in ("device_to_fog", "fog_to_device", "fog_to_cloud", "cloud_to_fog"):
            assert r["bytes"][link] > 0, (r["round"], link)
    assert refusals(report["rejected_messages"]) == {}, report["rejected_messages"]


def test_global_version_advanced_and_was_stored(job: tuple[dict, Path]) -> None:
    _, run_dir = job
    db = sqlite3.connect(run_dir / "cloud.sqlite")
    versions = dict(db.execute("SELECT module, MAX(version) FROM module_versions GROUP BY module").fetchall())
    assert versions, "no module versions stored"
    assert all(v == 2 for v in versions.values()), versions  # every module held by a device reached version 2
    assert versions[str(ModuleKey.head("digit"))] == 2
    assert db.execute("SELECT COUNT(DISTINCT round) FROM round_metrics").fetchone()[0] == 2


def test_devices_end_with_the_global_model(job: tuple[dict, Path]) -> None:
    """Each device evaluates what it holds after the final downlink: it must score exactly as the cloud's
    global model on the same held-out split, which only happens if the global modules reached it."""
    report, _ = job
    assert len(report["devices"]) == 2 * 2, report["devices"]
    for dev, info in report["devices"].items():
        assert info["final_accuracy"], dev
        for task, acc in info["final_accuracy"].items():
            assert acc == pytest.approx(report["final"]["accuracy"][task]), (dev, task)


def test_report_has_the_contract_fields(job: tuple[dict, Path]) -> None:
    report, run_dir = job
    assert json.loads((run_dir / "out" / "report.json").read_text()) == report
    assert set(report) >= {"config", "rounds", "final", "baselines", "modalities", "tasks"}
    assert report["metrics_missing"] == {} and report["participation"] == {"complete": True, "problems": []}
    assert set(report["baselines"]["local_only"]["accuracy"]) == set(report["tasks"])
    assert len(report["tasks"]) >= 4 and len(report["modalities"]) >= 3
    for acc in (*report["final"]["accuracy"].values(), *report["baselines"]["local_only"]["accuracy"].values()):
        assert 0.0 <= acc <= 1.0


def test_round_progress_rides_on_the_advert_refresh(job: tuple[dict, Path]) -> None:
    """A device's uplink is its module updates plus its state adverts: one at start, two at the end ("job finished",
    then "stopped") and the refreshes every telemetry_interval_s (30 s). Round progress adds none of its own: with
    an advert per sent cluster round this job would add four per device."""
    report, run_dir = job
    refreshes = math.ceil(report["wall_s"] / 30) + 1
    paths = sorted((run_dir / "metrics").glob("fog-*-dev-*.json"))
    assert len(paths) == 2 * 2, paths
    for path in paths:
        metrics = json.loads(path.read_text())
        messages = sum(t["messages"] for t in metrics["traffic"] if t["category"] == "device_to_fog")
        updates = metrics["outbox"]["sent"] + metrics["outbox"]["retransmitted"]
        assert updates >= 2 * 2, path.name  # two global rounds of two cluster rounds, at least one module each
        assert 3 <= messages - updates <= 3 + refreshes, (path.name, messages, updates, report["wall_s"])

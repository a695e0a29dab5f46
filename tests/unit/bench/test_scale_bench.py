"""hffm bench scale's report side, without running anything: the Flower column without Flower, the goals of issue
17 computed from rows, the table and the plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from hffm_lab.bench import scale


def _row(k: int, fogs: int, cluster: float, rss: float, *, paho: float = 1.0, flower: float | None = 2.0,
         lost: int = 0) -> dict[str, Any]:
    hffm = {"cluster_round_s": cluster, "devices_sent_by_s": round(0.75 * cluster, 3),
            "fog_after_last_send_s": round(0.25 * cluster, 3), "global_round_s": 2 * cluster + 1,
            "fanin_per_s": 7 * k / cluster,
            "fanin_mb_per_s": 1.0, "fog_rss_mb": rss, "cloud_rss_mb": 400.0, "broker_rss_mb": 10.0,
            "journal_peak_bytes": 5_000_000, "lost": lost}
    return {"K": k, "fogs": fogs, "hffm": hffm, "status": "ok", "problems": [],
            "paho": {"round_s": paho, "fanin_ceiling_per_s": 1000.0},
            "flower": {"round_s": flower, "status": "ok" if flower else "not installed"}}


def test_flower_column_says_not_installed_and_never_a_figure(tmp_path: Path) -> None:
    assert scale._flower(None, 10, 3, [100], tmp_path) == {"round_s": None, "status": "not installed"}
    assert scale.flower_python("/opt/flower/bin/python") == "/opt/flower/bin/python"


def test_goals_from_the_rows() -> None:
    runs = [_row(10, 1, 0.5, 80.0), _row(50, 1, 1.2, 90.0, paho=1.0, flower=2.5), _row(1000, 2, 12.0, 100.0)]
    got = {g["goal"]: (g["value"], g["met"]) for g in scale.goals(runs)}
    assert got["K=50 cluster round / naive paho round <= 1.3"] == (1.2, True)
    assert got["K=50 cluster round / Flower round <= 0.6"] == (0.48, True)
    assert got["K=50 fan-in / paho ceiling >= 0.8"] == (0.29, False)
    assert got["fog RSS K=1000 / K=10 <= 1.5"] == (1.25, True)
    assert got["K=1000: deltas lost == 0"] == (0, True)
    # per fog: 10 -> 500 devices (x50), 0.5 -> 12 s (x24): 0.48 of linear
    assert got["cluster round K=1000 vs K=10, per fog, / linear <= 1.2"] == (0.48, True)


def test_table_and_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    runs = [_row(10, 1, 0.5, 80.0), _row(50, 1, 1.2, 90.0, flower=None)]
    console = Console(width=250, record=True)
    console.print(scale.table(runs))
    text = console.export_text()
    assert "not installed" in text and "0.5" in text
    assert "fog after s" in text and "0.125" in text and "0.375" in text  # K=10's round split: devices, fog
    path = scale.plot(runs, tmp_path / "scale.png", console)
    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_fleet_is_spread_over_one_simulator_process_per_core_at_least() -> None:
    from hffm_lab.bench.scale import spread

    assert [spread(k, cores=2) for k in (1, 10, 50, 200, 500)] == [1, 5, 25, 100, 100]
    assert spread(1000, cores=16) == 63 and spread(7, cores=1) == 7


def test_repeats_combine_to_medians_with_every_loss_and_the_largest_memory_kept() -> None:
    rows = [_row(50, 1, c, rss, paho=p, lost=lost) for c, rss, p, lost in
            ((0.30, 76.0, 0.10, 0), (0.20, 80.0, 0.16, 2), (0.40, 75.0, 0.12, 0))]
    rows[1]["status"], rows[1]["problems"] = "FAILED", ["2 deltas queued by devices were neither applied nor answered"]
    rows[2]["flower"] = {"round_s": None, "status": "not installed"}
    got = scale.combine(rows)
    assert got["hffm"]["cluster_round_s"] == 0.3 and got["paho"]["round_s"] == 0.12  # medians
    assert got["hffm"]["lost"] == 2 and got["status"] == "FAILED"  # no repeat's loss is hidden
    assert got["problems"] == ["repeat 2: 2 deltas queued by devices were neither applied nor answered"]
    assert got["hffm"]["fog_rss_mb"] == 80.0  # the largest
    assert got["flower"]["round_s"] == 2.0  # a figure missing from a repeat stays as the first repeat has it
    assert [r["cluster_round_s"] for r in got["repeats"]] == [0.3, 0.2, 0.4]
    assert [r["paho_round_s"] for r in got["repeats"]] == [0.1, 0.16, 0.12]
    one = _row(10, 1, 0.5, 80.0)
    assert scale.combine([one]) is one

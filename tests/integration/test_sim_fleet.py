"""``hffm sim --mode noop`` end to end: virtual devices (two simulator processes) against real ``hffm fog run`` x 2
and ``hffm cloud run`` over real bridged Mosquitto brokers, tiny backbone. Every queued delta must be applied once
and acked; with injected faults (crash + rejoin, resource skip, slow sender, drop-out) nothing queued is lost.

run_sim waits on the processes' exits (bounded by the time limit, which scales with the machine's slowdown)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hffm_lab.sim import FaultRates, SimOptions, run_sim

pytestmark = pytest.mark.integration


def _opts(tmp_path: Path, slowdown: float, **kw: object) -> SimOptions:
    return SimOptions(devices=20, fogs=2, rounds=2, agg_every=2, backbone="tiny", per_process=10,
                      run_dir=tmp_path / "sim", time_limit_s=240.0 * slowdown, **kw)  # type: ignore[arg-type]


def test_twenty_virtual_devices_over_two_fogs_every_delta_applied(tmp_path: Path, slowdown: float) -> None:
    report = run_sim(_opts(tmp_path, slowdown))
    d = report["deltas"]
    assert report["problems"] == []
    assert d["lost"] == 0 and d["pending"] == 0 and d["stale"] == 0 and d["rejected"] == 0
    assert d["queued"] == d["applied_by_fogs"] == d["acked"] == d["expected_without_faults"] > 0
    assert report["processes"] == 2
    assert {(r["fog"], r["global_round"], r["cluster_round"]) for r in report["cluster_rounds"]} == {
        (f, g, c) for f in ("fog-1", "fog-2") for g in (1, 2) for c in (1, 2)}
    assert [g["round"] for g in report["global_rounds"]] == [1, 2]
    assert report["cluster_round_s"] > 0 and report["fog_rss_mb"] > 0
    # the round splits into the devices' part and the fog's, from the same rounds (medians of each)
    assert 0 < report["devices_sent_by_s"] <= max(r["seconds"] for r in report["cluster_rounds"])
    assert report["fog_after_last_send_s"] is not None and report["fog_after_last_send_s"] > -0.01  # rounding
    assert all(report["journal_peak_bytes"][f] > 0 for f in ("fog-1", "fog-2"))


@pytest.mark.slow
def test_faults_crash_rejoin_skip_slow_drop_lose_nothing(tmp_path: Path, slowdown: float) -> None:
    faults = FaultRates(crash=0.1, skip=0.1, slow=0.1, drop=0.1, slow_s=1.0, rejoin_s=1.0)
    report = run_sim(_opts(tmp_path, slowdown, faults=faults))
    d, dev = report["deltas"], report["devices"]
    assert report["problems"] == []
    assert (dev["crashed"], dev["rejoined"], dev["dropped_out"], dev["skipped"]) == (2, 2, 2, 2)
    assert dev["slowed"] >= 2
    assert d["lost"] == 0 and d["pending"] == 0 and d["queued"] == d["applied_by_fogs"] == d["acked"]
    assert d["applied_by_fogs"] < d["expected_without_faults"]  # the skips and drop-outs sent less

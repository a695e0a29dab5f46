"""Every link secured, end to end (tiny backbone): ``hffm demo --secure --layout hierarchical_d2d``.

Mutual TLS and generated access control on the cloud, fog and D2D brokers, TLS bridges to the cloud and between the
fogs, and signed envelopes on every message: members' deltas still reach the fog through their relay, the fogs still
mix each other's aggregates, and no message is rejected anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hffm_testing.refusals import refusals

from hffm_lab.demo import DemoOptions, run_demo

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _metrics(run_dir: Path, node: str) -> dict:
    return json.loads((run_dir / "metrics" / f"{node}.json").read_text())


def test_secure_hierarchical_d2d_job_relays_and_mixes_with_no_rejection(tmp_path: Path) -> None:
    opts = DemoOptions(fogs=2, devices_per_fog=3, rounds=2, agg_every=2, backbone="tiny", baseline=False,
                       show_tables=False, dashboard=False, layout="hierarchical_d2d", secure=True, run_dir=tmp_path,
                       time_limit_s=600)
    report = run_demo(opts)
    assert refusals(report["rejected_messages"]) == {}, report["rejected_messages"]
    assert len(report["rounds"]) == 2 and report["final"]["mean_accuracy"] > 0
    links = report["links"]["bytes"]
    assert links["device_device"] > 10_000 and links["fog_fog"] > 10_000, links  # deltas, not just handshakes
    relayed = sum(_metrics(tmp_path, d)["d2d"]["relayed"] for d in report["devices"])
    assert relayed > 0, "no member delta went through a relay"
    fogs = [_metrics(tmp_path, f) for f in ("fog-1", "fog-2")]
    assert all(sum(r.get("mixed", 0) for r in f["rounds"]) > 0 for f in fogs), [f["rounds"] for f in fogs]
    brokers = tmp_path / "brokers"
    # The D2D broker took each member's certificate CN as its user name, and fog-2's broker admitted fog-1's peer
    # bridge under its own identity.
    d2d_log = (brokers / "d2d-fog-1-dev-1" / "mosquitto.log").read_text()
    assert "u'fog-1-dev-2'" in d2d_log and "u'fog-1-dev-3'" in d2d_log
    assert "require_certificate true" in (brokers / "d2d-fog-1-dev-1" / "mosquitto.conf").read_text()
    assert "u'bridge-peer-fog-1'" in (brokers / "fog-2" / "mosquitto.log").read_text()
    for node in ("fog-1-dev-1", "fog-1-dev-2", "fog-2"):
        assert json.loads((tmp_path / "state" / f"{node}-replay.json").read_text()), node

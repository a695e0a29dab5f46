"""A secured fleet end to end on real brokers: mutual TLS, generated access control and signed envelopes.

Every tier seals what it publishes and opens what it receives; the job must run to the end with no message
rejected, which shows the signatures, sequence numbers, certificates and access rules all agree.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hffm_testing.refusals import refusals

from hffm_lab.demo import DemoOptions, run_demo

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_secure_demo_runs_clean(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    report = run_demo(DemoOptions(backbone="tiny", secure=True, fogs=1, devices_per_fog=2, rounds=1, agg_every=1,
                                  baseline=False, show_tables=False, run_dir=run_dir, time_limit_s=600))
    assert len(report["rounds"]) == 1
    assert refusals(report["rejected_messages"]) == {}, report["rejected_messages"]
    nodes = ["cloud", "fog-1", "fog-1-dev-1", "fog-1-dev-2"]
    for node in nodes:  # each node sealed messages (its sequence counter) and opened some (its replay windows)
        assert (run_dir / "state" / f"{node}-signing-seq.json").exists(), node
        assert json.loads((run_dir / "state" / f"{node}-replay.json").read_text()), node
        tls = (run_dir / "configs" / f"{node}.toml").read_text()
        assert "[tls]" in tls and "[signing]" in tls
    fog_log = (run_dir / "brokers" / "fog-1" / "mosquitto.log").read_text()
    assert "u'fog-1-dev-1'" in fog_log  # the broker took the device's certificate CN as its user name

"""D2D on real Mosquitto processes (tiny backbone): the hierarchical_d2d layout with its D2D brokers, fog-to-fog
bridges and a counting proxy on every link.

- A whole job: members' deltas reach the fog through their group's relay (peer averaging), the fogs mix each
  other's cluster aggregates through the generated bridge, and every link kind carries bytes.
- A device whose fog link is cut while it trains still gets its update into the cluster round, through a
  neighbour (relay or module relay); with the link restored it finishes the job.
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
from hffm_testing.refusals import node_refusals, refusals

from broker_config.topology import generate_topology
from hffm_lab.demo import DemoOptions, run_demo
from hffm_lab.demo.layout import start_layout
from hffm_lab.demo.plan import write_fleet
from hffm_lab.demo.processes import ProcessGroup, TierProcess

pytestmark = pytest.mark.integration


def _metrics(run_dir: Path, node: str) -> dict:
    return json.loads((run_dir / "metrics" / f"{node}.json").read_text())


def test_hierarchical_d2d_job_relays_mixes_and_measures_every_link(tmp_path: Path) -> None:
    opts = DemoOptions(fogs=2, devices_per_fog=3, rounds=2, agg_every=2, backbone="tiny", baseline=False,
                       show_tables=False, layout="hierarchical_d2d", run_dir=tmp_path, time_limit_s=300)
    report = run_demo(opts)
    assert refusals(report["rejected_messages"]) == {}, report["rejected_messages"]
    assert len(report["rounds"]) == 2 and report["final"]["mean_accuracy"] > 0
    links = report["links"]["bytes"]
    assert links["device_device"] > 10_000 and links["fog_fog"] > 10_000, links  # deltas, not just keepalives
    assert links["device_fog"] > 0 and links["fog_cloud"] > 0 and links["device_cloud"] == 0, links
    relayed = sum(_metrics(tmp_path, d).get("d2d", {}).get("relayed", 0) for d in report["devices"])
    assert relayed > 0, "no member delta went through a relay"
    fogs = [_metrics(tmp_path, f) for f in ("fog-1", "fog-2")]
    assert all(sum(r.get("mixed", 0) for r in f["rounds"]) > 0 for f in fogs), [f["rounds"] for f in fogs]
    assert report["links"]["estimate"]["latency_s"] > 0 and report["links"]["estimate"]["energy_j"] > 0


def test_a_device_with_its_fog_link_cut_is_aggregated_through_a_neighbour(tmp_path: Path) -> None:
    topology = generate_topology(1, 2, d2d_group_size=2, fleet="demo")
    member = "fog-1-dev-2"
    opts = DemoOptions(fogs=1, devices_per_fog=2, rounds=1, agg_every=1, local_epochs=15, backbone="tiny",
                       baseline=False, run_dir=tmp_path, time_limit_s=240, round_deadline_s=120)
    status = tmp_path / "state" / f"{member}-status.json"
    with ExitStack() as stack:
        layout = start_layout("hierarchical_d2d", topology, tmp_path, stack)
        plan = write_fleet(opts, tmp_path, cloud_port=layout.cloud_port, fog_ports=layout.fog_ports,
                           node_tables=layout.node_tables, fog_of=layout.fog_of, device_ports=layout.device_ports)
        group = stack.enter_context(ProcessGroup())
        for name, cfg in [*plan.fog_configs.items(), *plan.device_configs.items(), ("cloud", plan.cloud_config)]:
            tier = "fog" if name == "fog-1" else "cloud" if name == "cloud" else "edge"
            group.add(TierProcess(name, tier, cfg, tmp_path / "logs" / f"{name}.log", time_limit_s=200))
        end = time.monotonic() + 150
        while not (status.exists() and "training round (1,1)" in status.read_text()):
            assert group.failed() is None and time.monotonic() < end, "the member never started training"
            time.sleep(0.02)
        layout.network.cut("device_fog", member, "fog-1")
        fog_log = tmp_path / "logs" / "fog-1.log"
        while "cluster round (1,1) closed" not in fog_log.read_text():
            assert group.failed() is None and time.monotonic() < end, "the cluster round never closed"
            time.sleep(0.1)
        layout.network.restore("device_fog", member, "fog-1")
        group.wait(timeout_s=120)
        assert group.failed() is None
    fog = _metrics(tmp_path, "fog-1")
    (first,) = [r for r in fog["rounds"] if (r["global_round"], r["cluster_round"]) == (1, 1)]
    assert member in first["reporters"] and member in first["via_relay"], first
    assert node_refusals(fog["rejected"]) == {}, fog["rejected"]

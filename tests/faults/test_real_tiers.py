"""The real tiers (``hffm edge/fog/cloud run``, tiny backbone, 2 fogs x 1 device, 2 rounds) finish their job through
a kill -9 of the cloud broker just as the fogs queue their aggregates (the fogs' outboxes resend until the cloud
acks), and through a kill -9 of the cloud service mid-round (the restarted cloud resumes the round from its state on
disk and applies each aggregate once). Every global round merges both fogs' aggregates."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from edge_runtime.broker_process import BridgeSpec, MosquittoProcess, free_port, wait_for_bridge
from edge_runtime.demo.plan import FLEET, DemoOptions, write_fleet
from edge_runtime.demo.processes import ProcessGroup, TierProcess

pytestmark = pytest.mark.integration
FOGS = ["fog-1", "fog-2"]


def _count(path: Path, sql: str) -> int:
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0) as db:
            return int(db.execute(sql).fetchone()[0])
    except sqlite3.Error:
        return 0


@contextmanager
def _job(tmp_path: Path) -> Iterator[tuple[dict[str, MosquittoProcess], ProcessGroup, dict[str, TierProcess]]]:
    opts = DemoOptions(fogs=2, devices_per_fog=1, rounds=2, agg_every=1, local_epochs=1, backbone="tiny",
                       run_dir=tmp_path, time_limit_s=240, baseline=False, show_tables=False)
    cloud_port, fog_ports = free_port(), {f: free_port() for f in FOGS}
    plan = write_fleet(opts, tmp_path, cloud_port=cloud_port, fog_ports=fog_ports)
    cloud = MosquittoProcess(name="cloud", role="cloud", port=cloud_port, data_dir=tmp_path / "b" / "cloud",
                             fleet=FLEET)
    brokers = {"cloud": cloud}
    try:
        cloud.start()
        for fog in FOGS:
            broker = MosquittoProcess(name=fog, role="fog", port=fog_ports[fog], data_dir=tmp_path / "b" / fog,
                                      fleet=FLEET, bridge=BridgeSpec(fleet=FLEET, fog=fog, cloud_host="127.0.0.1",
                                                                     cloud_port=cloud_port))
            brokers[fog] = broker
            broker.start()
            wait_for_bridge(broker)
        with ProcessGroup() as group:
            procs = {}
            for name, cfg in [*plan.fog_configs.items(), *plan.device_configs.items(), ("cloud", plan.cloud_config)]:
                tier = "fog" if name in FOGS else "cloud" if name == "cloud" else "edge"
                procs[name] = group.add(TierProcess(name, tier, cfg, tmp_path / "logs" / f"{name}.log",
                                                    time_limit_s=opts.time_limit_s))
            yield brokers, group, procs
            group.wait(timeout_s=200)
            assert group.failed() is None
    finally:
        for broker in reversed(list(brokers.values())):
            broker.stop()


def _wait_for(condition: Callable[[], bool], group: ProcessGroup, what: str, timeout: float = 180) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert group.failed() is None and time.monotonic() < end, what
        time.sleep(0.02)


def _both_fogs_merged_every_round(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "cloud.sqlite") as db:
        rounds = db.execute("SELECT round, fogs_reported FROM rounds ORDER BY round").fetchall()
    assert rounds == [(1, "fog-1,fog-2"), (2, "fog-1,fog-2")]


def test_job_survives_a_cloud_broker_kill9_during_the_upload(tmp_path: Path) -> None:
    outboxes = [tmp_path / "state" / f"{fog}-outbox.sqlite" for fog in FOGS]
    with _job(tmp_path) as (brokers, group, _procs):
        _wait_for(lambda: any(_count(p, "SELECT COUNT(*) FROM outbox") for p in outboxes), group,
                  "no fog ever queued an aggregate")
        brokers["cloud"].kill9()  # the aggregates are queued on the fog brokers (or in flight to the cloud broker)
        time.sleep(8.0)
        brokers["cloud"].start()
    _both_fogs_merged_every_round(tmp_path)
    stats = [json.loads((tmp_path / "metrics" / f"{fog}.json").read_text())["outbox"] for fog in FOGS]
    assert all(s["pending"] == 0 and s["acked"] >= 2 and s["dropped"] == 0 for s in stats), stats


def test_cloud_service_kill9_mid_round_resumes_the_round(tmp_path: Path) -> None:
    applied = tmp_path / "state" / "cloud-round.sqlite"
    with _job(tmp_path) as (_broker, group, procs):
        _wait_for(lambda: _count(applied, "SELECT COUNT(*) FROM applied") >= 1, group,
                  "the cloud never applied an aggregate")
        procs["cloud"].proc.kill()  # SIGKILL, the process this test started
        procs["cloud"].proc.wait(timeout=10)
        time.sleep(2.0)
        procs["cloud"].start()
    _both_fogs_merged_every_round(tmp_path)
    log = (tmp_path / "logs" / "cloud.log").read_text()
    assert "resuming round 1 after a restart" in log or "was merged before the restart" in log, log[-2000:]


def test_fog_broker_kill9_while_devices_upload(tmp_path: Path) -> None:
    outbox = tmp_path / "state" / "fog-1-dev-1-outbox.sqlite"
    with _job(tmp_path) as (brokers, group, _procs):
        _wait_for(lambda: _count(outbox, "SELECT COUNT(*) FROM outbox") > 0, group, "the device never sent")
        brokers["fog-1"].kill9()  # the device's updates of this round were in flight or queued for the gateway
        time.sleep(4.0)
        brokers["fog-1"].start()
    _both_fogs_merged_every_round(tmp_path)
    device = json.loads((tmp_path / "metrics" / "fog-1-dev-1.json").read_text())["outbox"]
    assert device["pending"] == 0 and device["dropped"] == 0 and device["acked"] >= 2, device

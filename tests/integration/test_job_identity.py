"""Jobs have an identity: a second job started on brokers that still hold a finished job's retained messages (its
final round announcements, global and cluster versions, adverts) trains and runs to its end. Before job ids, every
fog and device of the second job read the first job's retained final announcement, logged "job finished" and
exited 0 without training, and the new cloud sat at version 0.

Real tiers (``hffm edge/fog/cloud run``, tiny backbone, 1 fog x 2 devices, 2 global rounds) on real Mosquitto
brokers; each job has fresh state folders, the brokers are the same."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from broker_config.process import (
    MosquittoProcess,
    free_port,
    wait_for_bridge,
)
from broker_config.render import BridgeSpec
from cloud.store import VersionStore
from hffm_lab.demo.plan import FLEET, DemoOptions, write_fleet
from hffm_lab.demo.processes import ProcessGroup, TierProcess

pytestmark = pytest.mark.integration
FOG = "fog-1"
ROUNDS = 2


@contextmanager
def _brokers(tmp_path: Path) -> Iterator[tuple[int, dict[str, int]]]:
    cloud_port, fog_ports = free_port(), {FOG: free_port()}
    cloud = MosquittoProcess(name="cloud", role="cloud", port=cloud_port, data_dir=tmp_path / "b" / "cloud",
                             fleet=FLEET)
    fog = MosquittoProcess(name=FOG, role="fog", port=fog_ports[FOG], data_dir=tmp_path / "b" / FOG, fleet=FLEET,
                           bridge=BridgeSpec(fleet=FLEET, fog=FOG, cloud_host="127.0.0.1", cloud_port=cloud_port))
    try:
        cloud.start()
        fog.start()
        wait_for_bridge(fog)
        yield cloud_port, fog_ports
    finally:
        fog.stop()
        cloud.stop()


def _run_job(run_dir: Path, cloud_port: int, fog_ports: dict[str, int]) -> list[str]:
    """Run one job to its end in ``run_dir`` (fresh state folders); returns the devices."""
    opts = DemoOptions(fogs=1, devices_per_fog=2, rounds=ROUNDS, agg_every=1, local_epochs=1, backbone="tiny",
                       run_dir=run_dir, time_limit_s=240, baseline=False, show_tables=False)
    plan = write_fleet(opts, run_dir, cloud_port=cloud_port, fog_ports=fog_ports)
    with ProcessGroup() as group:
        for name, cfg in [*plan.fog_configs.items(), *plan.device_configs.items(), ("cloud", plan.cloud_config)]:
            tier = "fog" if name == FOG else "cloud" if name == "cloud" else "edge"
            group.add(TierProcess(name, tier, cfg, run_dir / "logs" / f"{name}.log", time_limit_s=opts.time_limit_s))
        group.wait(timeout_s=220)
        failed = group.failed()
        assert failed is None, f"{failed.name} failed:\n{failed.log_tail(30)}" if failed else ""
    return sorted(plan.device_configs)


def _metrics(run_dir: Path, node: str) -> dict:
    return json.loads((run_dir / "metrics" / f"{node}.json").read_text())


def _rounds(run_dir: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(run_dir / "cloud.sqlite") as db:
        return db.execute("SELECT round, fogs_reported FROM rounds ORDER BY round").fetchall()


def test_a_new_job_on_brokers_that_hold_the_last_jobs_retained_end_trains_to_its_end(tmp_path: Path) -> None:
    with _brokers(tmp_path) as (cloud_port, fog_ports):
        first, second = tmp_path / "job-1", tmp_path / "job-2"
        _run_job(first, cloud_port, fog_ports)
        devices = _run_job(second, cloud_port, fog_ports)  # the brokers still hold job 1's retained messages

    jobs = [_metrics(run, "cloud")["job"] for run in (first, second)]
    assert jobs[0] != jobs[1] and all(jobs), jobs
    for run, job in zip((first, second), jobs):
        assert _rounds(run) == [(g, FOG) for g in range(1, ROUNDS + 1)]
        store = VersionStore(run / "cloud.sqlite")
        latest = {v.global_round for v in store.latest_versions(job).values()}
        store.close()
        assert latest == {ROUNDS}, latest  # every module at the final global version of its own job
        assert [r["round"] for r in _metrics(run, "cloud")["rounds"]] == list(range(1, ROUNDS + 1))
    # Nothing of job 1 leaks into job 2: the same fleet and seed give the same figures as on fresh brokers.
    assert _metrics(second, "cloud")["rounds"] == _metrics(first, "cloud")["rounds"]
    for dev in devices:
        device = _metrics(second, dev)
        assert device["final_accuracy"] == _metrics(first, dev)["final_accuracy"]
        assert device["job"] == jobs[1] and device["stale_modules"] == []
        assert device["final_accuracy"] and len(device["rounds"]) == ROUNDS, device
        assert (device["outbox"]["dropped"], device["outbox"]["pending"]) == (0, 0), device["outbox"]
        assert device["rounds"][0]["bytes_sent"] > 0
    fog = _metrics(second, FOG)
    assert [r["global_round"] for r in fog["rounds"]] == list(range(1, ROUNDS + 1))
    # What job 1 left retained was seen and set aside, never acted on; the first job saw nothing of the kind.
    assert fog["rejected"].get("other_job", 0) >= 1, fog["rejected"]
    assert "other_job" not in _metrics(first, FOG)["rejected"]
    fog_log = (second / "logs" / f"{FOG}.log").read_text()
    assert f"ignoring the final round announcement of job '{jobs[0]}'" in fog_log, fog_log[-3000:]

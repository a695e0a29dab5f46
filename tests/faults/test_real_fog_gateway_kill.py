"""kill -9 of a REAL fog gateway (``hffm fog run``) mid cluster round, after it acked a device's updates: the
restarted gateway resumes the round from its journal (round_journal.py) and the job completes with every device
update applied exactly once.

One fog, two devices, tiny backbone, 2 global rounds of 2 cluster rounds. dev-2 is stopped (SIGSTOP, a process
this test started) before the first round opens, so round (1,1) cannot close; once dev-1's updates are acked the
gateway is killed, dev-2 is let go (its updates wait in the gateway's session on the broker) and the gateway is
started again. Without the journal the restarted gateway would open
round (1,1) afresh and dev-1, whose updates were acked, would never send them again.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import tomli_w
import tomllib
from hffm_testing.timing import session_slowdown

from broker_config.process import (
    MosquittoProcess,
    free_port,
    wait_for_bridge,
)
from broker_config.render import BridgeSpec
from edge_runtime.config import DeviceConfig
from hffm_core.config import load_config
from hffm_core.protocol import modules_for
from hffm_lab.demo.plan import FLEET, DemoOptions, write_fleet
from hffm_lab.demo.processes import ProcessGroup, TierProcess
from hffm_model.spec import TASKS

pytestmark = pytest.mark.integration
FOG, DEV1, DEV2 = "fog-1", "fog-1-dev-1", "fog-1-dev-2"
ROUNDS, AGG_EVERY = 2, 2


def _rows(path: Path, sql: str) -> list[tuple]:  # type: ignore[type-arg]
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0) as db:
            return db.execute(sql).fetchall()
    except sqlite3.Error:
        return []


def _wait_for(condition: Callable[[], bool], group: ProcessGroup, what: str, timeout: float = 120) -> None:
    end = time.monotonic() + timeout * session_slowdown()
    while not condition():
        assert group.failed() is None and time.monotonic() < end, what
        time.sleep(0.02)


def _modules(config: Path) -> set[str]:
    dev = load_config(config, DeviceConfig).device
    by_modality: dict[str, list[str]] = {}
    for task in dev.tasks:
        by_modality.setdefault(TASKS[task].modality, []).append(task)
    return {str(k) for k in modules_for(by_modality)}


def test_fog_gateway_kill9_mid_round_resumes_from_its_journal(tmp_path: Path, slowdown: float) -> None:
    opts = DemoOptions(fogs=1, devices_per_fog=2, rounds=ROUNDS, agg_every=AGG_EVERY, local_epochs=1,
                       backbone="tiny", run_dir=tmp_path, time_limit_s=240 * slowdown,
                       round_deadline_s=120.0 * slowdown, baseline=False, show_tables=False)
    cloud_port, fog_port = free_port(), free_port()
    plan = write_fleet(opts, tmp_path, cloud_port=cloud_port, fog_ports={FOG: fog_port})
    # dev-2 stays stopped while the cloud starts and dev-1 trains: on a loaded machine that outlasts its MQTT
    # keepalive, the broker publishes its last will, and the gateway would close the round without it after
    # offline_grace_s. The scenario is about the journal, not about stragglers: wait for dev-2 until the deadline.
    fog_cfg = tomllib.loads(plan.fog_configs[FOG].read_text())
    fog_cfg["fog"]["offline_grace_s"] = opts.round_deadline_s
    plan.fog_configs[FOG].write_bytes(tomli_w.dumps(fog_cfg).encode())
    journal = tmp_path / "state" / f"{FOG}-round.sqlite"
    outbox1 = tmp_path / "state" / f"{DEV1}-outbox.sqlite"
    held = {dev: _modules(plan.device_configs[dev]) for dev in (DEV1, DEV2)}
    cloud_broker = MosquittoProcess(name="cloud", role="cloud", port=cloud_port, data_dir=tmp_path / "b" / "cloud",
                                    fleet=FLEET)
    fog_broker = MosquittoProcess(name=FOG, role="fog", port=fog_port, data_dir=tmp_path / "b" / FOG, fleet=FLEET,
                                  bridge=BridgeSpec(fleet=FLEET, fog=FOG, cloud_host="127.0.0.1",
                                                    cloud_port=cloud_port))
    stopped: TierProcess | None = None
    try:
        cloud_broker.start()
        fog_broker.start()
        wait_for_bridge(fog_broker)
        with ProcessGroup() as group:
            def tier(name: str, kind: str, config: Path, log: str) -> TierProcess:
                return group.add(TierProcess(name, kind, config, tmp_path / "logs" / log,
                                             time_limit_s=opts.time_limit_s))

            fog = tier(FOG, "fog", plan.fog_configs[FOG], f"{FOG}.log")
            tier(DEV1, "edge", plan.device_configs[DEV1], f"{DEV1}.log")
            dev2 = tier(DEV2, "edge", plan.device_configs[DEV2], f"{DEV2}.log")
            _wait_for(lambda: (tmp_path / "state" / f"{DEV2}-status.json").exists(), group, "dev-2 never advertised")
            time.sleep(0.5)  # its retained advert reaches the broker
            assert dev2.proc is not None
            os.kill(dev2.proc.pid, signal.SIGSTOP)
            stopped = dev2
            tier("cloud", "cloud", plan.cloud_config, "cloud.log")

            def dev1_acked() -> bool:  # some of dev-1's updates are in the journal and no longer in its outbox
                keys = {k for (k,) in _rows(journal, "SELECT key FROM deltas")}
                return bool(keys) and not keys & {k for (k,) in _rows(outbox1, "SELECT key FROM outbox")}

            _wait_for(dev1_acked, group, "the gateway never acked an update of dev-1")
            assert fog.proc is not None
            fog.proc.kill()  # SIGKILL, the process this test started
            fog.proc.wait(timeout=10)
            group.procs.remove(fog)
            os.kill(dev2.proc.pid, signal.SIGCONT)
            stopped = None
            acked_before = {k for (k,) in _rows(journal, "SELECT key FROM deltas")}
            fog2 = tier(FOG, "fog", plan.fog_configs[FOG], f"{FOG}-restarted.log")
            _wait_for(lambda: "resuming after a restart" in fog2.log_path.read_text(errors="replace"), group,
                      "the restarted gateway did not resume")
            group.wait(timeout_s=200 * session_slowdown())
    finally:
        if stopped is not None and stopped.proc is not None and stopped.proc.poll() is None:
            os.kill(stopped.proc.pid, signal.SIGCONT)
        fog_broker.stop()
        cloud_broker.stop()

    restarted = (tmp_path / "logs" / f"{FOG}-restarted.log").read_text()
    assert "resuming after a restart at round (1,1)" in restarted, restarted[-3000:]
    assert acked_before and all(k.startswith(f"{FLEET}/{DEV1}/1.1/") for k in acked_before)
    with sqlite3.connect(tmp_path / "cloud.sqlite") as db:
        rounds = db.execute("SELECT round, fogs_reported FROM rounds ORDER BY round").fetchall()
    assert rounds == [(g, FOG) for g in range(1, ROUNDS + 1)]

    # Every update of every device in every cluster round was applied, each once: the journal holds each key once
    # (and nothing else), and each cluster round's aggregate counted one update per device and module.
    expected = {f"{FLEET}/{dev}/{g}.{c}/{m}" for dev, mods in held.items() for m in mods
                for g in range(1, ROUNDS + 1) for c in range(1, AGG_EVERY + 1)}
    applied = [k for (k,) in _rows(journal, "SELECT key FROM applied")]
    assert len(applied) == len(set(applied)) and set(applied) == expected
    per_round = len(held[DEV1]) + len(held[DEV2])
    metrics = json.loads((tmp_path / "metrics" / f"{FOG}.json").read_text())
    assert [(r["global_round"], r["cluster_round"], r["updates"]) for r in metrics["rounds"]] == [
        (g, c, per_round) for g in range(1, ROUNDS + 1) for c in range(1, AGG_EVERY + 1)]
    for dev in (DEV1, DEV2):
        outbox = json.loads((tmp_path / "metrics" / f"{dev}.json").read_text())["outbox"]
        assert outbox["pending"] == 0 and outbox["dropped"] == 0, (dev, outbox)

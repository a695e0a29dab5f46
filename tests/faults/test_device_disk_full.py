"""A device whose state folder fills up mid-job (ENOSPC after round (1,1)) on the real tiers: it stops with one
`hffm: error:` line that names the cause and exit code 11 (StorageError), no traceback; its broker publishes its last
will (the offline advert), so its fog closes the following rounds without it after `offline_grace_s` instead of
waiting out the round deadline (600 s here), and the job runs to the end with the other device.

The state folder is a small tmpfs this test mounts (root only; skipped, saying why, where mounting is not allowed).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
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
from hffm_core.errors import StorageError
from hffm_lab.demo.plan import FLEET, DemoOptions, write_fleet
from hffm_lab.demo.processes import ProcessGroup, TierProcess

pytestmark = pytest.mark.integration
FOG, DEV1, DEV2 = "fog-1", "fog-1-dev-1", "fog-1-dev-2"
WAIT_S = 300.0  # far below the 600 s round deadline the fog would otherwise wait out in rounds (1,2) and (2,*)


@contextmanager
def _tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the full-disk device here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def _fill(folder: Path) -> None:
    """Write zeros into ``folder`` until its file system is full."""
    block = b"\0" * 65536
    with open(folder / "filler", "wb", buffering=0) as out:
        try:
            for _ in range(1 << 16):  # bounded: 4 GiB at most
                out.write(block)
        except OSError:
            return
    raise AssertionError(f"{folder} never filled up")


def _status(path: Path) -> str:
    try:
        return str(json.loads(path.read_text())["state"])
    except (OSError, ValueError, KeyError):
        return ""


def test_a_device_with_a_full_disk_stops_loudly_and_the_job_goes_on(tmp_path: Path) -> None:
    opts = DemoOptions(fogs=1, devices_per_fog=2, rounds=2, agg_every=2, local_epochs=1, backbone="tiny",
                       run_dir=tmp_path, time_limit_s=WAIT_S, round_deadline_s=600.0, baseline=False,
                       show_tables=False)
    cloud_port, fog_port = free_port(), free_port()
    with _tmpfs(tmp_path / "dev2-state", "8m") as dev2_state:
        plan = write_fleet(opts, tmp_path, cloud_port=cloud_port, fog_ports={FOG: fog_port},
                           node_tables={DEV2: {"state_dir": str(dev2_state)}})
        cloud_broker = MosquittoProcess(name="cloud", role="cloud", port=cloud_port, data_dir=tmp_path / "b" / "c",
                                        fleet=FLEET)
        fog_broker = MosquittoProcess(name=FOG, role="fog", port=fog_port, data_dir=tmp_path / "b" / FOG, fleet=FLEET,
                                      bridge=BridgeSpec(fleet=FLEET, fog=FOG, cloud_host="127.0.0.1",
                                                        cloud_port=cloud_port))
        try:
            cloud_broker.start()
            fog_broker.start()
            wait_for_bridge(fog_broker)
            with ProcessGroup() as group:
                procs = {name: group.add(TierProcess(name, tier, cfg, tmp_path / "logs" / f"{name}.log",
                                                     time_limit_s=WAIT_S))
                         for name, tier, cfg in [("cloud", "cloud", plan.cloud_config),
                                                 (FOG, "fog", plan.fog_configs[FOG]),
                                                 (DEV1, "edge", plan.device_configs[DEV1]),
                                                 (DEV2, "edge", plan.device_configs[DEV2])]}
                end = time.monotonic() + WAIT_S
                while not _status(dev2_state / f"{DEV2}-status.json").startswith("sent round (1,1)"):
                    assert group.failed() is None and time.monotonic() < end, "dev-2 never sent round (1,1)"
                    time.sleep(0.05)
                _fill(dev2_state)
                while not group.all_exited():
                    assert time.monotonic() < end, {n: p.returncode for n, p in procs.items()}
                    time.sleep(0.2)
        finally:
            fog_broker.stop()
            cloud_broker.stop()

    codes = {n: p.returncode for n, p in procs.items()}
    assert codes == {"cloud": 0, FOG: 0, DEV1: 0, DEV2: StorageError.exit_code}, codes
    dev2_log = (tmp_path / "logs" / f"{DEV2}.log").read_text()
    errors = [line for line in dev2_log.splitlines() if line.startswith("hffm: error:")]
    assert len(errors) == 1 and ("disk full" in errors[0] or "disk is full" in errors[0]), dev2_log[-3000:]
    assert "Traceback" not in dev2_log
    with sqlite3.connect(tmp_path / "cloud.sqlite") as db:
        rounds = db.execute("SELECT round FROM rounds ORDER BY round").fetchall()
    assert rounds == [(1,), (2,)]

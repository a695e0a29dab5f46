"""Test support: real Mosquitto brokers on free loopback ports and a collecting MQTT client."""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from broker_config.process import MosquittoProcess, wait_for_bridge
from broker_config.render import BridgeSpec
from hffm_core.transport import MqttTransport

FLEET = "itest"


@dataclass
class Brokers:
    cloud: MosquittoProcess
    fog: MosquittoProcess


@pytest.fixture
def brokers(tmp_path: Path) -> Iterator[Brokers]:
    cloud = MosquittoProcess(name="cloud", role="cloud", data_dir=tmp_path / "cloud", fleet=FLEET)
    cloud.start()
    fog = MosquittoProcess(name="fog-1", role="fog", data_dir=tmp_path / "fog-1", fleet=FLEET,
                           bridge=BridgeSpec(fleet=FLEET, fog="fog-1", cloud_host="127.0.0.1", cloud_port=cloud.port))
    try:
        fog.start()
        wait_for_bridge(fog)
        yield Brokers(cloud=cloud, fog=fog)
    finally:
        fog.stop()
        cloud.stop()


class Client:
    """A test MQTT client that collects what it receives."""

    def __init__(self, name: str, port: int) -> None:
        self.inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.transport = MqttTransport(client_id=name, host="127.0.0.1", port=port,
                                       on_message=lambda t, p, _r: self.inbox.put((t, p)))
        self.transport.connect()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.transport.publish(topic, payload, category="other", retain=retain)

    def expect(self, predicate, timeout: float = 15.0) -> tuple[str, bytes]:  # type: ignore[no-untyped-def]
        """The first received (topic, payload) for which ``predicate`` is true; fails the test after ``timeout``."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                item = self.inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            if predicate(*item):
                return item
        pytest.fail(f"no matching message within {timeout} s")

    def close(self) -> None:
        self.transport.close()


@pytest.fixture(scope="session")
def job(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """One small full run shared by the tests that inspect a finished job: tiny backbone, 2 fogs x 2 devices,
    2 global rounds of 2 cluster rounds, every tier a process on real Mosquitto brokers.

    Run once per ``pytest`` invocation, not once per xdist worker: the first worker that needs it runs it under a
    file lock in the run's shared temporary root; the others wait and read its report (every worker reads the
    report from the file, so they all see the same JSON)."""
    from filelock import FileLock

    from hffm_lab.demo import DemoOptions, run_demo

    base = tmp_path_factory.getbasetemp()
    root = base.parent if base.name.startswith("popen-gw") else base  # xdist: one basetemp per worker
    run_dir = root / "shared-job"
    report = run_dir / "out" / "report.json"
    with FileLock(str(root / "shared-job.lock")):
        if not report.is_file():
            opts = DemoOptions(fogs=2, devices_per_fog=2, rounds=2, agg_every=2, local_epochs=1, backbone="tiny",
                               run_dir=run_dir, report=report, time_limit_s=300)
            run_demo(opts)
    return json.loads(report.read_text()), run_dir

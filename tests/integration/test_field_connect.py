"""Connect like a field device, and never crash silently (issue 15, docs/reliability.md), on real Mosquitto:

- a first connect that is refused (the broker is not up yet) is retried with backoff until the deadline, so a tier
  started before its broker, or during a broker restart, comes up once the broker does;
- a broker that never comes up ends the connect with a TransportError that says how many attempts were made;
- a service whose loop dies (here: a full disk) raises a StorageError naming the cause, and its broker publishes the
  node's last will (the offline advert) exactly as after a kill -9, so its fog stops waiting for it.
"""

from __future__ import annotations

import errno
import threading
from pathlib import Path
from typing import Any

import pytest
from hffm_testing import Client

from broker_config.process import MosquittoProcess, free_port
from hffm_core.errors import StorageError, TransportError
from hffm_core.protocol import NodeState, decode, encode, topics
from hffm_core.protocol.topics import Topic
from hffm_core.service import Service
from hffm_core.transport import MqttTransport

pytestmark = pytest.mark.integration
FLEET = "conn"


def _transport(port: int, timeout_s: float) -> MqttTransport:
    return MqttTransport(client_id="field-dev", host="127.0.0.1", port=port, on_message=lambda *_: None,
                         connect_timeout_s=timeout_s)


def test_first_connect_waits_for_a_broker_that_comes_up_late(tmp_path: Path) -> None:
    port = free_port()
    transport = _transport(port, timeout_s=120.0)
    broker = MosquittoProcess(name="late", role="cloud", port=port, data_dir=tmp_path / "b", fleet=FLEET)
    refused_twice = threading.Event()

    def start_broker_after_two_refusals() -> None:
        while transport.connect_attempts < 2 and not refused_twice.wait(0.05):
            pass
        refused_twice.set()
        broker.start()

    starter = threading.Thread(target=start_broker_after_two_refusals, daemon=True)
    starter.start()
    try:
        transport.connect()
        assert transport.connected and transport.connect_attempts >= 3  # two refused, then the broker was up
    finally:
        refused_twice.set()
        starter.join(timeout=30)
        transport.close()
        broker.stop()


def test_a_broker_that_never_comes_up_ends_the_connect_with_the_attempts_made() -> None:
    transport = _transport(free_port(), timeout_s=1.5)
    with pytest.raises(TransportError, match=r"cannot reach MQTT broker .* gave up after \d+ attempt") as info:
        transport.connect()
    assert transport.connect_attempts >= 2, info.value
    assert not transport.connected


class _FullDiskDevice(Service):
    """A device whose state folder fills up on its first tick, as a real one does mid-job."""

    role = "device"
    fleet = FLEET

    def __init__(self, port: int) -> None:
        offline = NodeState(fleet=FLEET, node="dev-1", role="device", fog="fog-1", online=False)
        super().__init__(node="dev-1", host="127.0.0.1", port=port, connect_timeout_s=30.0,
                         will=(topics.state(FLEET, "dev-1"), encode(offline)))
        self.crash_seen: list[str] = []

    def subscriptions(self) -> list[str]:
        return [topics.ctl(FLEET, "fog-1")]

    def handle(self, topic: Topic, message: Any) -> None:
        raise AssertionError("no message expected")

    def tick(self) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "/state/dev-1-outbox.sqlite")

    def on_crash(self, reason: str) -> None:
        self.crash_seen.append(reason)


def test_a_crash_names_its_cause_and_the_broker_publishes_the_will(tmp_path: Path) -> None:
    broker = MosquittoProcess(name="fog-1", role="cloud", data_dir=tmp_path / "b", fleet=FLEET)
    broker.start()
    watcher = None
    try:
        watcher = Client("watcher", broker.port)
        watcher.transport.subscribe([topics.state(FLEET, "dev-1")])
        device = _FullDiskDevice(broker.port)
        with pytest.raises(StorageError, match="no space left on the device") as info:
            device.run(time_limit_s=60.0, poll_s=0.05)
        assert "dev-1-outbox.sqlite" in str(info.value)
        assert device.crash_seen == [device.crash] and "disk full" in (device.crash or "")
        _topic, payload = watcher.expect(lambda t, _p: t == topics.state(FLEET, "dev-1"))
        will = decode(payload, NodeState)
        assert (will.node, will.online) == ("dev-1", False)
    finally:
        if watcher is not None:
            watcher.close()
        broker.stop()

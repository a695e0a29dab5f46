"""Real mosquitto brokers from broker_config/: a cloud broker and a fog broker bridged to it, on free loopback ports.

Every test gets its own pair (startup takes ~0.1 s) and its own module key, so topics never collide.
"""

from __future__ import annotations

import os
import pwd
import queue
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from broker_config.process import (
    MosquittoProcess,
    find_mosquitto,
    free_port,
    wait_for_bridge,
)
from broker_config.render import (
    BridgeSpec,
    render_config,
)
from hffm_core.errors import BrokerError
from hffm_core.protocol import ModuleKey, topics

pytestmark = pytest.mark.integration

FLEET = "itest"
FOG = "f1"
WAIT_S = 5.0


@pytest.fixture(scope="module", autouse=True)
def _need_mosquitto() -> None:
    try:
        find_mosquitto()
    except BrokerError as exc:
        pytest.skip(str(exc))


@dataclass
class Pair:
    cloud: MosquittoProcess
    fog: MosquittoProcess


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    with MosquittoProcess(name="cloud", role="cloud", data_dir=tmp_path / "cloud", fleet=FLEET) as cloud:
        cloud.start()
        bridge = BridgeSpec(fleet=FLEET, fog=FOG, cloud_host=cloud.host, cloud_port=cloud.port)
        with MosquittoProcess(name=FOG, role="fog", data_dir=tmp_path / FOG, bridge=bridge) as fog:
            fog.start()
            wait_for_bridge(fog, timeout=WAIT_S)
            yield Pair(cloud=cloud, fog=fog)


@pytest.fixture
def key() -> ModuleKey:
    return ModuleKey.adapter("imu", f"t{uuid.uuid4().hex[:10]}")


class Subscriber:
    """A paho MQTT v5 subscriber that queues what it receives; subscribed (SUBACK checked) on return."""

    def __init__(self, broker: MosquittoProcess, topic: str, *, client_id: str = "", session_s: int = 0) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._subscribed = threading.Event()
        self._codes: list[int] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, _u, _f, _rc, _p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = session_s
        self.client.connect(broker.host, broker.port, keepalive=10, clean_start=not session_s, properties=props)
        self.client.loop_start()
        assert self._subscribed.wait(WAIT_S), f"no SUBACK from {broker!r}"
        assert all(code < 0x80 for code in self._codes), f"subscription to {topic!r} refused: {self._codes}"

    def _on_subscribe(self, _c: mqtt.Client, _u: object, _mid: int, codes: list, _p: object) -> None:
        self._codes = [int(getattr(code, "value", code)) for code in codes]
        self._subscribed.set()

    def get(self, timeout: float = WAIT_S) -> mqtt.MQTTMessage:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no message within {timeout} s") from None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish(broker: MosquittoProcess, topic: str, payload: bytes, *, retain: bool = False) -> None:
    """Publish one QoS 1 message and wait for the broker's PUBACK."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect(broker.host, broker.port, keepalive=10)
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=1, retain=retain)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, mqtt.error_string(info.rc)
        info.wait_for_publish(timeout=WAIT_S)
        assert info.is_published(), f"no PUBACK for {topic!r}"
    finally:
        client.disconnect()
        client.loop_stop()


def wait_until(predicate: object, timeout: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_fogup_crosses_to_cloud_at_qos1(pair: Pair, key: ModuleKey) -> None:
    topic = topics.fogup(FLEET, FOG, key)
    sub = Subscriber(pair.cloud, topics.fogup_filter(FLEET))
    try:
        publish(pair.fog, topic, b"aggregate")
        msg = sub.get()
        assert (msg.topic, msg.payload, msg.qos) == (topic, b"aggregate", 1)  # QoS 0 if the bridge topic lacked "1"
    finally:
        sub.close()


def test_retained_global_reaches_late_fog_subscriber(pair: Pair, key: ModuleKey) -> None:
    topic = topics.global_(FLEET, key)
    early = Subscriber(pair.fog, topic)
    try:
        publish(pair.cloud, topic, b"v1", retain=True)
        assert early.get().payload == b"v1"  # it has crossed the bridge
    finally:
        early.close()
    late = Subscriber(pair.fog, topic)
    try:
        msg = late.get()
        assert (msg.payload, msg.retain) == (b"v1", True)
    finally:
        late.close()


def test_unlisted_topics_do_not_cross(pair: Pair, key: ModuleKey) -> None:
    # Each direction: publish what must stay local, then a sentinel that crosses on the same bridge link;
    # anything that did cross would have arrived before the sentinel.
    stay_on_fog = [topics.up(FLEET, FOG, key, "dev1"), topics.cluster(FLEET, FOG, key),
                   topics.fogup(FLEET, "f2", key), topics.ctl(FLEET, FOG)]  # fmt: skip
    assert _crossing(pair.fog, pair.cloud, stay_on_fog, topics.fogdone(FLEET, FOG)) == [topics.fogdone(FLEET, FOG)]
    stay_on_cloud = [topics.fogup(FLEET, FOG, key), topics.ctl(FLEET, FOG), topics.state(FLEET, "cloud")]
    sentinel = topics.ctl(FLEET, "cloud")
    assert _crossing(pair.cloud, pair.fog, stay_on_cloud, sentinel) == [sentinel]


def _crossing(src: MosquittoProcess, dst: MosquittoProcess, local: list[str], sentinel: str) -> list[str]:
    """Publish ``local`` then ``sentinel`` on ``src``; the topics that reached ``dst`` up to the sentinel."""
    sub = Subscriber(dst, f"hffm/v1/{FLEET}/#")
    try:
        for topic in local:
            publish(src, topic, b"stay")
        publish(src, sentinel, b"sentinel")
        seen = [sub.get()]
        while seen[-1].payload != b"sentinel":
            seen.append(sub.get())
        return [m.topic for m in seen]
    finally:
        sub.close()


def test_bridge_session_survives_fog_restart(pair: Pair) -> None:
    # Why the bridge speaks MQTT 3.1.1: a QoS 1 "in" message published while the fog broker is down must be
    # delivered once it is back (mosquitto 2.0's v5 bridge loses it: session expiry 0 on the cloud).
    topic = topics.ctl(FLEET, "cloud")
    Subscriber(pair.fog, topic, client_id="fog-agent", session_s=300).close()
    pair.fog.stop()
    publish(pair.cloud, topic, b"while-down")
    pair.fog.start()
    wait_for_bridge(pair.fog, timeout=WAIT_S)
    sub = Subscriber(pair.fog, topic, client_id="fog-agent", session_s=300)
    try:
        assert sub.get().payload == b"while-down"
    finally:
        sub.close()


def test_retained_message_survives_kill9(pair: Pair, key: ModuleKey) -> None:
    topic = topics.global_(FLEET, key)
    publish(pair.cloud, topic, b"persist-me", retain=True)
    # autosave_interval 1: the database on disk holds the message within ~2 s.
    assert wait_until(lambda: pair.cloud.db_path.exists() and topic.encode() in pair.cloud.db_path.read_bytes())
    pair.cloud.kill9()
    pair.cloud.start()
    sub = Subscriber(pair.cloud, topic)
    try:
        msg = sub.get()
        assert (msg.payload, msg.retain) == (b"persist-me", True)
    finally:
        sub.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root drops privileges")
def test_as_root_drops_to_mosquitto_user_and_persists(key: ModuleKey) -> None:
    try:
        user = pwd.getpwnam("mosquitto")
    except KeyError:
        pytest.skip("no mosquitto user")
    base = Path(tempfile.mkdtemp(prefix="hffm-broker-"))
    base.chmod(0o755)  # reachable by the mosquitto user, unlike pytest's 0700 tmp root
    try:
        with MosquittoProcess(name="cloud", role="cloud", data_dir=base / "cloud") as cloud:
            cloud.start()
            assert "\nuser root" not in cloud.conf_path.read_text()
            publish(cloud, topics.global_(FLEET, key), b"x", retain=True)
            assert wait_until(lambda: cloud.db_path.exists())
            assert cloud.db_path.stat().st_uid == user.pw_uid
            assert cloud.log_path.stat().st_uid == user.pw_uid
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_stop_leaves_no_process(tmp_path: Path) -> None:
    broker = MosquittoProcess(name="solo", role="cloud", data_dir=tmp_path / "solo")
    assert broker.pid is None and not broker.running()
    broker.start()
    pid = broker.pid
    assert pid is not None and broker.running()
    broker.stop()
    broker.stop()  # idempotent
    assert not broker.running()
    assert not Path(f"/proc/{pid}").exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not _accepts(broker.host, broker.port)


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def test_start_fails_loudly_when_port_taken(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        broker = MosquittoProcess(name="clash", role="cloud", port=squatter.getsockname()[1], data_dir=tmp_path / "c")
        with pytest.raises(BrokerError, match="exited"):
            broker.start(timeout=5.0)
        assert not broker.running()


def test_wait_for_bridge_times_out_without_cloud(tmp_path: Path) -> None:
    bridge = BridgeSpec(fleet=FLEET, fog=FOG, cloud_host="127.0.0.1", cloud_port=free_port())
    with MosquittoProcess(name=FOG, role="fog", data_dir=tmp_path / FOG, bridge=bridge) as fog:
        fog.start()
        started = time.monotonic()
        with pytest.raises(BrokerError, match="not connected"):
            wait_for_bridge(fog, timeout=1.0)
        assert time.monotonic() - started < 3.0


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.1", "192.168.1.2", "::1", "localhost", "example.com"])
def test_harness_rejects_non_loopback_host(host: str, tmp_path: Path) -> None:
    # The production render (hffm broker) takes any address; the harness binds 127.0.0.0/8 only.
    assert f"listener 1883 {host}" in render_config("cloud", host=host, port=1883, data_dir=tmp_path)
    with pytest.raises(BrokerError, match="127.0.0.0/8"):
        MosquittoProcess(name="x", role="cloud", host=host, port=1883, data_dir=tmp_path)


@pytest.mark.parametrize("host", ["", "a b", "http://x", "10.0.0.1:1883", "-bad.example"])
def test_render_config_rejects_a_host_that_is_no_address(host: str, tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="IP address or a DNS name"):
        render_config("cloud", host=host, port=1883, data_dir=tmp_path)


def test_render_config_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="needs a BridgeSpec"):
        render_config("fog", host="127.0.0.1", port=1883, data_dir=tmp_path)
    with pytest.raises(BrokerError, match="absolute"):
        render_config("cloud", host="127.0.0.1", port=1883, data_dir=Path("rel/dir"))
    with pytest.raises(BrokerError, match="fog"):
        BridgeSpec(fleet=FLEET, fog="f1/#", cloud_host="127.0.0.1", cloud_port=1883)
    far = BridgeSpec(fleet=FLEET, fog=FOG, cloud_host="10.1.1.1", cloud_port=1883)  # fine for hffm broker
    with pytest.raises(BrokerError, match="loopback"):
        MosquittoProcess(name=FOG, role="fog", data_dir=tmp_path, bridge=far)


def test_rendered_fog_config_bridges_every_topic_at_qos1(tmp_path: Path) -> None:
    bridge = BridgeSpec(fleet=FLEET, fog=FOG, cloud_host="127.0.0.2", cloud_port=4242)
    conf = render_config("fog", host="127.0.0.3", port=1884, data_dir=tmp_path, bridge=bridge)
    lines = [line for line in conf.splitlines() if line and not line.startswith("#")]
    topic_lines = [line.split() for line in lines if line.startswith("topic ")]
    assert len(topic_lines) == 9 and all(parts[-1] == "1" for parts in topic_lines)
    assert ["topic", f"hffm/v1/{FLEET}/chunk/cloud/{FOG}", "out", "1"] in topic_lines
    assert ["topic", f"hffm/v1/{FLEET}/ack/{FOG}/{FOG}/cloud", "in", "1"] in topic_lines
    assert ["topic", f"hffm/v1/{FLEET}/resync/cloud/{FOG}", "out", "1"] in topic_lines
    assert "listener 1884 127.0.0.3" in lines and "address 127.0.0.2:4242" in lines
    assert f"connection fog-{FOG}-to-cloud" in lines and "bridge_protocol_version mqttv311" in lines
    assert "$" not in "".join(lines).replace("$SYS", "")  # every placeholder substituted

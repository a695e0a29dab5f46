"""Links generated from a topology, on real Mosquitto processes on free loopback ports: fog-to-fog bridges carry
each fog's ``fogpeer/`` messages to its neighbours exactly once and nowhere else, a ``d2d`` broker starts and
carries messages, and the counting proxies of a LinkNetwork measure and cut links.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from broker_config.process import (
    MosquittoProcess,
    find_mosquitto,
    free_port,
    wait_for_bridge,
    wait_for_peer_bridge,
)
from broker_config.render import (
    BridgeSpec,
    PeerBridgeSpec,
    peer_bridges_for,
    render_config,
)
from broker_config.topology import (
    LINK_KINDS,
    Topology,
    generate_topology,
    parse_topology,
)
from hffm_core.errors import BrokerError, TopologyError
from hffm_lab.faults.proxy import LinkProxy
from hffm_lab.network import LinkNetwork

pytestmark = pytest.mark.integration

FLEET = "ttest"
WAIT_S = 10.0


@pytest.fixture(scope="module", autouse=True)
def _need_mosquitto() -> None:
    try:
        find_mosquitto()
    except BrokerError as exc:
        pytest.skip(str(exc))


@dataclass
class Fleet:
    cloud: MosquittoProcess
    fogs: dict[str, MosquittoProcess]


def _start_fleet(topology: Topology, base: Path) -> Fleet:
    """A cloud broker and one broker per fog, each bridged to the cloud and to its higher-id neighbours."""
    cloud = MosquittoProcess(name="cloud", role="cloud", data_dir=base / "cloud", fleet=topology.fleet)
    cloud.start()
    ports = {fog: free_port() for fog in topology.fogs}
    fogs: dict[str, MosquittoProcess] = {}
    try:
        for fog in sorted(topology.fogs, reverse=True):  # the higher ids first: the bridges' targets
            bridge = BridgeSpec(fleet=topology.fleet, fog=fog, cloud_host=cloud.host, cloud_port=cloud.port)
            fogs[fog] = MosquittoProcess(name=fog, role="fog", port=ports[fog], data_dir=base / fog, bridge=bridge,
                                         peer_bridges=peer_bridges_for(topology, fog, ports))
            fogs[fog].start()
        for fog, broker in fogs.items():
            wait_for_bridge(broker, timeout=WAIT_S)
            for peer in broker.peer_bridges:
                wait_for_peer_bridge(broker, peer.neighbour, timeout=WAIT_S)
    except BaseException:
        for broker in fogs.values():
            broker.stop()
        cloud.stop()
        raise
    return Fleet(cloud=cloud, fogs=fogs)


@pytest.fixture
def fleet_of(tmp_path: Path) -> Iterator:  # type: ignore[type-arg]
    started: list[Fleet] = []

    def start(topology: Topology) -> Fleet:
        started.append(_start_fleet(topology, tmp_path))
        return started[-1]

    yield start
    for fleet in started:
        for broker in fleet.fogs.values():
            broker.stop()
        fleet.cloud.stop()


class Collector:
    """A paho MQTT v5 subscriber to one filter, subscribed (SUBACK received) on return."""

    def __init__(self, broker: MosquittoProcess, topic_filter: str) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, _u, _f, _rc, _p: c.subscribe(topic_filter, qos=1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = lambda _c, _u, msg: self.messages.put((msg.topic, msg.payload))
        self.client.connect(broker.host, broker.port, keepalive=10)
        self.client.loop_start()
        assert subscribed.wait(WAIT_S), f"no SUBACK from {broker!r}"

    def drain(self, quiet_s: float = 0.5) -> list[tuple[str, bytes]]:
        """Everything received until nothing more arrives for ``quiet_s``."""
        seen = []
        while True:
            try:
                seen.append(self.messages.get(timeout=quiet_s))
            except queue.Empty:
                return seen

    def wait_for(self, payload: bytes, timeout: float = WAIT_S) -> bool:
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            try:
                if self.messages.get(timeout=left)[1] == payload:
                    return True
            except queue.Empty:
                return False
        return False

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _publish(broker: MosquittoProcess, topic: str, payload: bytes) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect(broker.host, broker.port, keepalive=10)
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout=WAIT_S)
        assert info.is_published(), f"no PUBACK for {topic!r}"
    finally:
        client.disconnect()
        client.loop_stop()


def _peer(fog: str, rest: str = "adapter/imu/act") -> str:
    return f"hffm/v1/{FLEET}/fogpeer/{fog}/{rest}"


def _bridged(src: MosquittoProcess, dst: MosquittoProcess, fog: str) -> None:
    """Wait until a probe on ``src``'s ``fogpeer/{fog}/`` reaches ``dst`` (the bridge has subscribed on both sides),
    then let any duplicate probe drain."""
    probe = Collector(dst, _peer(fog, "probe"))
    try:
        end = time.monotonic() + WAIT_S
        while time.monotonic() < end:
            _publish(src, _peer(fog, "probe"), b"probe")
            if probe.wait_for(b"probe", timeout=0.5):
                return
        pytest.fail(f"fogpeer/{fog}/ never crossed from {src.name} to {dst.name}")
    finally:
        probe.close()


def _received(collectors: dict[str, Collector]) -> dict[str, list[bytes]]:
    return {name: [payload for _t, payload in c.drain()] for name, c in collectors.items()}


def test_peer_messages_cross_between_two_fogs_exactly_once(fleet_of) -> None:  # type: ignore[no-untyped-def]
    topology = generate_topology(2, 1, fog_ring=True, fleet=FLEET)
    fleet = fleet_of(topology)
    fog1, fog2 = fleet.fogs["fog-1"], fleet.fogs["fog-2"]
    assert [p.neighbour for p in fog1.peer_bridges] == ["fog-2"] and fog2.peer_bridges == ()  # lower id runs it
    _bridged(fog1, fog2, "fog-1")
    _bridged(fog2, fog1, "fog-2")
    watchers = {name: Collector(broker, f"hffm/v1/{FLEET}/fogpeer/#")
                for name, broker in (("fog-1", fog1), ("fog-2", fog2), ("cloud", fleet.cloud))}
    try:
        one, two = f"from-1-{uuid.uuid4().hex}".encode(), f"from-2-{uuid.uuid4().hex}".encode()
        _publish(fog1, _peer("fog-1"), one)
        _publish(fog2, _peer("fog-2"), two)
        got = _received(watchers)
        assert got["fog-2"].count(one) == 1 and got["fog-1"].count(two) == 1  # crossed, once
        assert got["fog-1"].count(one) == 1 and got["fog-2"].count(two) == 1  # locally once: no echo back
        assert got["cloud"] == []  # fogpeer/ never crosses the bridges to the cloud
    finally:
        for watcher in watchers.values():
            watcher.close()


def test_each_fog_reaches_only_its_neighbours(fleet_of) -> None:  # type: ignore[no-untyped-def]
    # A chain fog-1 - fog-2 - fog-3: fog-2 hears both; fog-1 and fog-3 are not neighbours and never hear each other,
    # although fog-2 holds both of their messages (each fog forwards only its own fogpeer/<fog>/#).
    topology = parse_topology({"topology": {"fleet": FLEET},
                               "fog": [{"id": "fog-1", "neighbours": ["fog-2"]}, {"id": "fog-2"},
                                       {"id": "fog-3", "neighbours": ["fog-2"]}],
                               "device": [{"id": "d1", "fog": "fog-1"}]})
    fleet = fleet_of(topology)
    brokers = fleet.fogs
    assert {f: [p.neighbour for p in b.peer_bridges] for f, b in brokers.items()} == {
        "fog-1": ["fog-2"], "fog-2": ["fog-3"], "fog-3": []}
    for src, dst in (("fog-1", "fog-2"), ("fog-2", "fog-1"), ("fog-2", "fog-3"), ("fog-3", "fog-2")):
        _bridged(brokers[src], brokers[dst], src)
    watchers = {name: Collector(broker, f"hffm/v1/{FLEET}/fogpeer/#") for name, broker in brokers.items()}
    try:
        sent = {fog: f"{fog}-{uuid.uuid4().hex}".encode() for fog in brokers}
        for fog, payload in sent.items():
            _publish(brokers[fog], _peer(fog), payload)
        got = _received(watchers)
        expected = {"fog-1": {"fog-1", "fog-2"}, "fog-2": {"fog-1", "fog-2", "fog-3"}, "fog-3": {"fog-2", "fog-3"}}
        for where, payloads in got.items():
            assert {fog for fog, p in sent.items() if payloads.count(p) == 1} == expected[where]
            assert len(payloads) == len(expected[where]), f"{where} got duplicates or strays: {payloads}"
    finally:
        for watcher in watchers.values():
            watcher.close()


def test_a_fog_cannot_publish_into_a_neighbours_namespace(fleet_of) -> None:  # type: ignore[no-untyped-def]
    fleet = fleet_of(generate_topology(2, 1, fog_ring=True, fleet=FLEET))
    fog1, fog2 = fleet.fogs["fog-1"], fleet.fogs["fog-2"]
    _bridged(fog1, fog2, "fog-1")
    _bridged(fog2, fog1, "fog-2")
    # Another fog's topics published on a broker stay there, on either side of the bridge.
    for src, dst in ((fog1, fog2), (fog2, fog1)):
        watcher = Collector(dst, f"hffm/v1/{FLEET}/fogpeer/#")
        try:
            _publish(src, _peer(dst.name), b"spoof")
            _publish(src, _peer(src.name), b"sentinel")
            assert [p for _t, p in watcher.drain()] == [b"sentinel"]
        finally:
            watcher.close()


def test_d2d_broker_starts_and_carries_peer_traffic(tmp_path: Path) -> None:
    with MosquittoProcess(name="d2d-fog-1-dev-1", role="d2d", data_dir=tmp_path / "d2d", fleet=FLEET) as broker:
        broker.start()
        conf = broker.conf_path.read_text()
        assert "connection " not in conf and "D2D group broker" in conf
        watcher = Collector(broker, f"hffm/v1/{FLEET}/#")
        try:
            _publish(broker, f"hffm/v1/{FLEET}/peer/fog-1/fog-1-dev-1/fog-1-dev-2", b"delta")
            assert watcher.wait_for(b"delta")
        finally:
            watcher.close()


def test_render_config_refuses_bad_peer_bridges(tmp_path: Path) -> None:
    bridge = BridgeSpec(fleet=FLEET, fog="fog-1", cloud_host="127.0.0.1", cloud_port=1883)
    peer = PeerBridgeSpec(fleet=FLEET, fog="fog-1", neighbour="fog-2", host="127.0.0.1", port=1884)
    conf = render_config("fog", host="127.0.0.1", port=1885, data_dir=tmp_path, bridge=bridge, peer_bridges=[peer])
    lines = [line for line in conf.splitlines() if line and not line.startswith("#")]
    assert "connection fog-fog-1-to-fog-2" in lines and "address 127.0.0.1:1884" in lines
    assert f"topic hffm/v1/{FLEET}/fogpeer/fog-1/# out 1" in lines
    assert f"topic hffm/v1/{FLEET}/fogpeer/fog-2/# in 1" in lines
    assert f"remote_clientid hffm-peer-{FLEET}-fog-1-fog-2" in lines
    assert lines.count("bridge_protocol_version mqttv311") == 2 and lines.count("cleansession false") == 2
    assert "$" not in "".join(lines).replace("$SYS", "")
    with pytest.raises(BrokerError, match="lower id"):
        PeerBridgeSpec(fleet=FLEET, fog="fog-2", neighbour="fog-1", host="127.0.0.1", port=1884)
    with pytest.raises(BrokerError, match="itself"):
        PeerBridgeSpec(fleet=FLEET, fog="fog-1", neighbour="fog-1", host="127.0.0.1", port=1884)
    far = PeerBridgeSpec(fleet=FLEET, fog="fog-1", neighbour="fog-2", host="10.0.0.2", port=1884)  # hffm broker
    with pytest.raises(BrokerError, match="loopback"):  # the harness bridges on loopback only
        MosquittoProcess(name="fog-1", role="fog", data_dir=tmp_path, bridge=bridge, peer_bridges=[far])
    with pytest.raises(BrokerError, match="only a fog broker"):
        render_config("cloud", host="127.0.0.1", port=1885, data_dir=tmp_path, peer_bridges=[peer])
    with pytest.raises(BrokerError, match="two peer bridges"):
        render_config("fog", host="127.0.0.1", port=1885, data_dir=tmp_path, bridge=bridge, peer_bridges=[peer, peer])
    other = BridgeSpec(fleet=FLEET, fog="fog-0", cloud_host="127.0.0.1", cloud_port=1883)
    with pytest.raises(BrokerError, match="does not start at this broker's fog 'fog-0'"):
        render_config("fog", host="127.0.0.1", port=1885, data_dir=tmp_path, bridge=other, peer_bridges=[peer])
    with pytest.raises(BrokerError, match="takes no bridge"):
        render_config("d2d", host="127.0.0.1", port=1885, data_dir=tmp_path, bridge=bridge)
    with pytest.raises(BrokerError, match="no broker port given for fog 'fog-2'"):
        peer_bridges_for(generate_topology(2, 1, fog_ring=True, fleet=FLEET), "fog-1", {"fog-1": 1})


def test_tls_peer_bridges_and_d2d_brokers_render(tmp_path: Path) -> None:
    """A TLS fog broker's peer bridges present the fog's peer-bridge certificate; a plain one there is refused; a D2D
    broker renders with the mutual-TLS listener and its group's access control."""
    from broker_config.fleet_pki import provision_fleet

    pki = provision_fleet(tmp_path / "pki", FLEET, {"fog-1": ["fog-1-dev-1", "fog-1-dev-2"], "fog-2": ["fog-2-dev-1"]},
                          groups=[("fog-1-dev-1", "fog-1-dev-2")], links=[("fog-1", "fog-2")])
    bridge = BridgeSpec(fleet=FLEET, fog="fog-1", cloud_host="127.0.0.1", cloud_port=1883)
    plain = PeerBridgeSpec(fleet=FLEET, fog="fog-1", neighbour="fog-2", host="127.0.0.1", port=1884)
    with pytest.raises(BrokerError, match="plain MQTT on a TLS fog broker"):
        render_config("fog", host="127.0.0.1", port=1885, data_dir=tmp_path, bridge=bridge, peer_bridges=[plain],
                      tls=pki.broker("fog-1"))
    secured = PeerBridgeSpec(fleet=FLEET, fog="fog-1", neighbour="fog-2", host="127.0.0.1", port=1884,
                             tls=pki.peer_bridge("fog-1"))
    conf = render_config("fog", host="127.0.0.1", port=1885, data_dir=tmp_path, bridge=bridge, peer_bridges=[secured],
                         tls=pki.broker("fog-1"))
    lines = conf.splitlines()
    assert f"bridge_certfile {tmp_path}/tls-peer-fog-2.pem" in lines and "bridge_insecure false" in lines
    assert f"bridge_cafile {tmp_path}/tls-peer-fog-2-ca.pem" in lines
    d2d = render_config("d2d", host="127.0.0.1", port=1886, data_dir=tmp_path, fleet=FLEET,
                        tls=pki.broker("d2d-fog-1-dev-1")).splitlines()
    assert "require_certificate true" in d2d and "allow_anonymous false" in d2d and "use_identity_as_username true" in d2d


# --- counting proxies ------------------------------------------------------------------------------------------


class EchoServer:
    """A loopback TCP server that sends back 2x what it receives (so up and down counts differ)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _addr = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data * 2)
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self.sock.close()


def _exchange(port: int, chunks: list[bytes]) -> int:
    """Send each chunk and read back its doubled echo; the bytes received."""
    got = 0
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as sock:
        for chunk in chunks:
            sock.sendall(chunk)
            want = 2 * len(chunk)
            while want:
                data = sock.recv(want)
                assert data, "connection closed early"
                want -= len(data)
                got += len(data)
    return got


def _until(predicate, timeout: float = WAIT_S) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_link_proxy_counts_each_direction() -> None:
    server = EchoServer()
    proxy = LinkProxy(server.port).start()
    try:
        assert (proxy.bytes_up, proxy.bytes_down) == (0, 0)
        chunks = [b"x" * 10, b"y" * 100_000, b"z"]
        assert _exchange(proxy.port, chunks) == 2 * 100_011
        _exchange(proxy.port, [b"abc"])  # a second connection adds to the same counters
        assert _until(lambda: (proxy.bytes_up, proxy.bytes_down) == (100_014, 200_028))
        proxy.cut()
        with pytest.raises((OSError, AssertionError)):
            _exchange(proxy.port, [b"lost"])
        proxy.restore()
        assert _exchange(proxy.port, [b"ok"]) == 4
        assert _until(lambda: (proxy.bytes_up, proxy.bytes_down) == (100_016, 200_032))
    finally:
        proxy.stop()
        server.close()


def test_link_network_counts_per_link_and_kind() -> None:
    topology = generate_topology(1, 2, d2d_group_size=2, fleet=FLEET)
    server = EchoServer()
    try:
        with LinkNetwork(topology) as network:
            up1 = network.add("device_fog", "fog-1-dev-1", "fog-1", server.port)
            up2 = network.add("device_fog", "fog-1-dev-2", "fog-1", server.port)
            d2d = network.add("device_device", "fog-1-dev-2", "fog-1-dev-1", server.port)
            assert network.port("device_fog", "fog-1-dev-1", "fog-1") == up1 and len({up1, up2, d2d}) == 3
            _exchange(up1, [b"a" * 1000])
            _exchange(up2, [b"b" * 10])
            _exchange(d2d, [b"c" * 7])
            want = {("device_fog", "fog-1-dev-1", "fog-1"): 3000, ("device_fog", "fog-1-dev-2", "fog-1"): 30,
                    ("device_device", "fog-1-dev-2", "fog-1-dev-1"): 21}
            assert _until(lambda: network.counts() == want)
            assert network.counts_by_kind() == {**dict.fromkeys(LINK_KINDS, 0), "device_fog": 3030,
                                                "device_device": 21}
            network.cut("device_fog", "fog-1-dev-1", "fog-1")
            with pytest.raises((OSError, AssertionError)):
                _exchange(up1, [b"lost"])
            assert _exchange(up2, [b"still"]) == 10  # other links are unaffected
            network.restore("device_fog", "fog-1-dev-1", "fog-1")
            assert _exchange(up1, [b"back"]) == 8
            with pytest.raises(TopologyError, match="already has a proxy"):
                network.add("device_fog", "fog-1-dev-1", "fog-1", server.port)
            with pytest.raises(TopologyError, match="belongs to fog"):
                network.add("device_fog", "fog-1-dev-1", "fog-2", server.port)
            with pytest.raises(KeyError, match="no proxy"):
                network.port("fog_cloud", "fog-1", "cloud")
        with pytest.raises(TopologyError, match="stopped"):
            network.add("fog_cloud", "fog-1", "cloud", server.port)
    finally:
        server.close()


def test_link_network_measures_mqtt_through_a_broker(tmp_path: Path) -> None:
    topology = generate_topology(1, 1, fleet=FLEET)
    with MosquittoProcess(name="fog-1", role="d2d", data_dir=tmp_path / "b", fleet=FLEET) as broker, \
            LinkNetwork(topology) as network:
        broker.start()
        port = network.add("device_fog", "fog-1-dev-1", "fog-1", broker.port)
        watcher = Collector(broker, f"hffm/v1/{FLEET}/#")
        try:
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
            client.connect("127.0.0.1", port, keepalive=10)
            client.loop_start()
            try:
                info = client.publish(f"hffm/v1/{FLEET}/up/x", b"p" * 50_000, qos=1)
                info.wait_for_publish(timeout=WAIT_S)
                assert info.is_published() and watcher.wait_for(b"p" * 50_000)
            finally:
                client.disconnect()
                client.loop_stop()
            # The payload plus the MQTT framing (CONNECT, PUBLISH header and topic) went up; CONNACK/PUBACK came down.
            assert _until(lambda: 50_000 < network.counts_by_kind()["device_fog"] < 50_200)
        finally:
            watcher.close()

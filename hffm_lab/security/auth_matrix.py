"""The authentication and authorization matrix, run against real brokers: who may connect, publish, subscribe.

:func:`run_auth_matrix` provisions a small fleet (:func:`~broker_config.fleet_pki.provision_fleet`) with a D2D
group and a fog-to-fog link, starts a TLS cloud broker, two TLS fog brokers bridged to it (fog-a also bridged to
fog-b over TLS with its peer-bridge certificate) and the group's TLS D2D broker (with the broker harness, on
loopback), and runs every case in :data:`CASES` (the D2D, fog-to-fog, ``chunk/`` and ``ack/`` cases are in
:mod:`hffm_lab.security.auth_links`). Every wait is bounded; only the brokers started here are stopped.

"Not delivered" is checked without sleeping: after a denied publish, the same kind of message is published on an
allowed topic, and once it arrives the denied one cannot arrive any more (the broker decided before it sent the
PUBACK that denied it).

A refusal counts only when it is the broker's own answer: a CONNACK, SUBACK or PUBACK failure code, a TLS alert,
or the connection closed by the broker during the handshake. A broker that cannot be reached or does not answer
(connection refused, timeout) is an error, never a pass. The first case is the control: a valid device connects to
the same broker. If it fails, the broker is broken, not secure, and every other case is reported failed unrun.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker_config.broker_sys import read_sys
from broker_config.fleet_pki import FleetPki, provision_fleet
from broker_config.pki import init_ca, issue, revoke
from broker_config.acl import d2d_broker_name
from broker_config.process import MosquittoProcess, wait_for_bridge, wait_for_peer_bridge
from broker_config.render import BridgeSpec, PeerBridgeSpec
from hffm_core.errors import BrokerError, TransportError
from hffm_core.protocol import topics
from hffm_core.protocol.keys import ModuleKey
from hffm_core.security.tls import TlsSettings, verifying_context
from hffm_core.transport.mqtt import MqttRefusedError, MqttTransport
from hffm_lab.security import auth_links

__all__ = ["CASES", "run_auth_matrix"]

log = logging.getLogger(__name__)

FLEET = "authm"
FOGS = {"fog-a": ["dev-1", "dev-2", "dev-old", "dev-gone", "dev-4", "dev-5"], "fog-b": ["dev-3"], "fog-c": ["dev-6"]}
GROUPS = [auth_links.GROUP]  # on fog-a; dev-5 stays outside it
LINKS = [("fog-a", "fog-b")]  # fog-c has no link: fog-a's peer bridge must not speak for it
KEY = ModuleKey(kind="head", modality="_", task="demand")
WAIT_S = 5.0
CONNECT_S = 3.0  # retrying an unreachable broker for longer only delays the verdict: the brokers are on loopback
# How MqttTransport.connect words a broker's answer (CONNACK refusal, a close before the CONNACK, a TLS alert),
# as opposed to "cannot reach MQTT broker" / "did not answer" (nobody answered).
_ANSWERED = ("did not accept", "TLS handshake")
CASES: tuple[str, ...] = (
    "valid device certificate connects",
    "same CN from another CA is refused",
    "no client certificate is refused",
    "plain MQTT without TLS is refused",
    "expired certificate is refused",
    "revoked certificate is refused (CRL)",
    "device publish to its own update topic is delivered",
    "device publish to another device's update topic is denied (0x87) and not delivered",
    "device subscribe to another device's peer topic is refused (SUBACK 0x87)",
    "device of another fog has no rights on this fog's broker",
    "bridge carries fogup out and global in over mutual TLS",
    "bridge identity cannot publish outside its fog's prefix (0x87, not delivered)",
    "fog gateway publishes its own cluster topic but not another fog's",
    *auth_links.CASES,
)


@dataclass
class _Client:
    transport: MqttTransport
    inbox: queue.Queue[str] = field(default_factory=queue.Queue)

    def expect(self, topic: str) -> list[str]:
        """Wait (bounded) for ``topic``; return every topic received before it (empty when nothing else came).

        Raises:
            TransportError: ``topic`` did not arrive within WAIT_S.
        """
        seen: list[str] = []
        end = time.monotonic() + WAIT_S
        while (left := end - time.monotonic()) > 0:
            try:
                got = self.inbox.get(timeout=left)
            except queue.Empty:
                break
            if got == topic:
                return seen
            seen.append(got)
        raise TransportError(f"{topic!r} not delivered within {WAIT_S} s (got {seen})")

    def send(self, topic: str, payload: bytes) -> None:
        """Publish ``payload`` on ``topic`` (QoS 1: returns once the broker took it).

        Raises:
            MqttRefusedError: the broker refused it.
        """
        self.transport.publish(topic, payload, category="other")

    def deliver(self, topic: str, payload: bytes, to: _Client) -> list[str]:
        """:meth:`send`, then :meth:`expect` it at ``to``; returns what ``to`` got before it.

        Raises:
            TransportError: it did not arrive within WAIT_S (MqttRefusedError: the broker refused it).
        """
        self.send(topic, payload)
        return to.expect(topic)

    def publish_code(self, topic: str) -> str:
        """Publish on ``topic``: "accepted", or the broker's refusal code ("0x87")."""
        try:
            self.send(topic, b"denied?")
        except MqttRefusedError as exc:
            return f"0x{exc.reason_code:02x}"
        return "accepted"

    def suback(self, filter_: str) -> str:
        """Subscribe to ``filter_``: "granted", or the broker's refusal ("SUBACK 0x87")."""
        try:
            self.transport.subscribe([filter_])
        except MqttRefusedError as exc:
            return f"SUBACK 0x{exc.reason_code:02x}"
        return "granted"


class _Matrix:
    """The cases' handle on the fleet and its brokers: ``fog`` (fog-a's), ``peer`` (fog-b's, reached by fog-a's peer
    bridge) and ``d2d`` (the D2D group's); ``peer`` and ``d2d`` default to ``fog`` (tests with one fake broker)."""

    def __init__(self, fleet: FleetPki, other_ca: Path, cloud: MosquittoProcess, fog: MosquittoProcess, *,
                 peer: MosquittoProcess | None = None, d2d: MosquittoProcess | None = None) -> None:
        self.fleet, self.other_pki, self.cloud, self.fog = fleet, other_ca, cloud, fog
        self.peer = peer if peer is not None else fog
        self.d2d = d2d if d2d is not None else fog
        self.clients: list[MqttTransport] = []

    def connect(self, name: str, broker: MosquittoProcess, tls: TlsSettings) -> _Client:
        inbox: queue.Queue[str] = queue.Queue()
        transport = MqttTransport(client_id=f"authm-{name}-{len(self.clients)}", host=broker.host, port=broker.port,
                                  on_message=lambda t, _p, _r: inbox.put(t), tls=tls, timeout_s=WAIT_S,
                                  connect_timeout_s=CONNECT_S)
        transport.connect()
        self.clients.append(transport)
        return _Client(transport, inbox)

    def node(self, name: str, broker: MosquittoProcess, *filters: str) -> _Client:
        """``name`` connected to ``broker`` with its own certificate from the fleet, subscribed to ``filters``.

        Raises:
            TransportError: the connect failed (MqttRefusedError: a subscription was refused).
        """
        client = self.connect(name, broker, self.fleet.identity(name))
        if filters:
            client.transport.subscribe(list(filters))
        return client

    def refused(self, name: str, tls: TlsSettings) -> str:
        """"refused: ..." when the fog broker answered the connect with a refusal; "error: ..." when it could not
        be reached or did not answer; "connected" when it let the client in."""
        try:
            client = self.connect(name, self.fog, tls)
        except TransportError as exc:
            return connect_verdict(exc)
        client.transport.close()
        return "connected"

    def close(self) -> None:
        for transport in self.clients:
            try:
                transport.close()
            except Exception:  # noqa: BLE001 - best effort at teardown
                log.debug("closing %s failed", transport.client_id)

    # -- cases --------------------------------------------------------------------------------------------------
    def valid(self) -> tuple[str, str]:
        self.node("dev-1", self.fog)
        return "connected", "connected"

    def other_ca(self) -> tuple[str, str]:
        forged = TlsSettings(ca=self.fleet.ca, cert=self.other_pki / "issued" / "dev-1.pem",
                             key=self.other_pki / "issued" / "dev-1.key")
        return "refused", self.refused("forged-dev-1", forged)

    def no_cert(self) -> tuple[str, str]:
        return "refused", self._probe(verifying_context(self.fleet.ca))

    def plain(self) -> tuple[str, str]:
        return "refused", self._probe(None)

    def _probe(self, context: Any) -> str:
        try:
            read_sys(self.fog.host, self.fog.port, "$SYS/broker/uptime", timeout=WAIT_S, ssl_context=context)
        except (OSError, BrokerError) as exc:
            return probe_verdict(exc)
        return "connected"

    def expired(self) -> tuple[str, str]:
        return "refused", self.refused("dev-old", self.fleet.identity("dev-old"))

    def revoked(self) -> tuple[str, str]:
        return "refused", self.refused("dev-gone", self.fleet.identity("dev-gone"))

    def own_topic(self) -> tuple[str, str]:
        gateway = self.node("fog-a", self.fog, topics.up_filter(FLEET, "fog-a"))
        device = self.node("dev-1", self.fog)
        device.deliver(topics.up(FLEET, "fog-a", KEY, "dev-1"), b"own", gateway)
        return "delivered", "delivered"

    def other_device_topic(self) -> tuple[str, str]:
        gateway = self.node("fog-a", self.fog, topics.up_filter(FLEET, "fog-a"))
        device = self.node("dev-1", self.fog)
        code = device.publish_code(topics.up(FLEET, "fog-a", KEY, "dev-2"))
        before = device.deliver(topics.up(FLEET, "fog-a", KEY, "dev-1"), b"control", gateway)
        return "0x87, not delivered", f"{code}, {auth_links.delivered(before)}"

    def peer_subscribe(self) -> tuple[str, str]:
        device = self.node("dev-1", self.fog, topics.d2d_inbox_filter(FLEET, "peer", "fog-a", "dev-1"))  # control
        return "SUBACK 0x87", device.suback(topics.d2d_inbox_filter(FLEET, "peer", "fog-a", "dev-2"))

    def foreign_device(self) -> tuple[str, str]:
        return "0x87", self.node("dev-3", self.fog).publish_code(topics.up(FLEET, "fog-a", KEY, "dev-3"))

    def bridge_carries(self) -> tuple[str, str]:
        cloud = self.node("cloud", self.cloud, topics.fogup_filter(FLEET))
        gateway = self.node("fog-a", self.fog, topics.global_filter(FLEET))
        gateway.deliver(topics.fogup(FLEET, "fog-a", KEY), b"agg", cloud)
        cloud.deliver(topics.global_(FLEET, KEY), b"global", gateway)
        return "out and in delivered", "out and in delivered"

    def bridge_prefix(self) -> tuple[str, str]:
        cloud = self.node("cloud", self.cloud, topics.fogup_filter(FLEET))
        gateway = self.node("fog-a", self.fog, topics.global_filter(FLEET))
        impostor = self.connect("bridge-fog-a", self.cloud, self.fleet.bridge("fog-a"))
        other_fog = impostor.publish_code(topics.fogup(FLEET, "fog-b", KEY))
        global_ = impostor.publish_code(topics.global_(FLEET, KEY))
        leaked = impostor.deliver(topics.fogup(FLEET, "fog-a", KEY), b"own", cloud)  # its own prefix (control)
        leaked += cloud.deliver(topics.global_(FLEET, KEY), b"control", gateway)
        return ("fogup/fog-b 0x87, global 0x87, not delivered",
                f"fogup/fog-b {other_fog}, global {global_}, {auth_links.delivered(leaked)}")

    def fog_cluster(self) -> tuple[str, str]:
        device = self.node("dev-1", self.fog, topics.cluster_filter(FLEET, "fog-a"))
        gateway = self.node("fog-a", self.fog)
        gateway.deliver(topics.cluster(FLEET, "fog-a", KEY), b"cluster", device)
        other = gateway.publish_code(topics.cluster(FLEET, "fog-b", KEY))
        return "own delivered, fog-b 0x87", f"own delivered, fog-b {other}"


def connect_verdict(exc: TransportError) -> str:
    """"refused: ..." for a connect the broker answered with a refusal (a CONNACK failure code, a close before the
    CONNACK, a TLS alert); "error: ..." for one that reached no broker or got no answer, and for a TLS handshake
    that failed because the client did not trust the broker (the broker refused nothing then)."""
    text = str(exc)
    if any(mark in text for mark in _ANSWERED) and "CERTIFICATE_VERIFY_FAILED" not in text:
        return f"refused: {text}"
    return f"error: {text}"


def probe_verdict(exc: OSError | BrokerError) -> str:
    """The same verdict for the raw ``$SYS`` probe: the broker's answer is a TLS alert, a refusing CONNACK or the
    connection closed (or reset) by the broker once it was open; a refused TCP connect, a timeout or an unreachable
    host is no answer, and a failed verification of the broker's certificate is the client's refusal."""
    name = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"error: {name}"
    if isinstance(exc, (ssl.SSLError, BrokerError, ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
        return f"refused: {name}"
    return f"error: {name}"


def _provision(workdir: Path) -> tuple[FleetPki, Path]:
    now = dt.datetime.now(dt.timezone.utc)
    fleet = provision_fleet(workdir / "fleet", FLEET, FOGS, groups=GROUPS, links=LINKS,
                            validity={"dev-old": (now - dt.timedelta(days=30), now - dt.timedelta(days=1))})
    revoke(fleet.pki.root, "dev-gone")
    other = workdir / "other-ca"
    init_ca(other, name="not the fleet CA")
    issue(other, "dev-1", "device")
    return fleet, other


def run_auth_matrix(workdir: Path) -> dict[str, Any]:
    """Run every case of :data:`CASES` against real TLS brokers in ``workdir`` (a new or empty folder).

    Returns:
        ``{"passed": n, "total": n, "control_passed": bool, "cases": [{"name", "expected", "observed", "passed"}]}``;
        a case that raised an hffm error is reported as failed with the error as its observation; when the control
        (the first case) fails, every other case is reported failed without running.

    Raises:
        BrokerError: mosquitto (or its dynamic-security plugin) is missing or a broker did not start.
        ConfigError: ``workdir`` already holds a fleet PKI.
    """
    workdir = Path(workdir).resolve()
    fleet, other_ca = _provision(workdir)
    cloud = MosquittoProcess(name="authm-cloud", role="cloud", data_dir=workdir / "cloud", fleet=FLEET,
                             tls=fleet.broker("cloud"))
    fog_b = MosquittoProcess(name="authm-fog-b", role="fog", data_dir=workdir / "fog-b", tls=fleet.broker("fog-b"),
                             bridge=_bridge(fleet, "fog-b", cloud))
    peer = PeerBridgeSpec(fleet=FLEET, fog="fog-a", neighbour="fog-b", host=fog_b.host, port=fog_b.port,
                          tls=fleet.peer_bridge("fog-a"))
    fog = MosquittoProcess(name="authm-fog-a", role="fog", data_dir=workdir / "fog-a", tls=fleet.broker("fog-a"),
                           bridge=_bridge(fleet, "fog-a", cloud), peer_bridges=[peer])
    hub = d2d_broker_name(auth_links.GROUP[0])
    d2d = MosquittoProcess(name=f"authm-{hub}", role="d2d", data_dir=workdir / hub, fleet=FLEET,
                           tls=fleet.broker(hub))
    with cloud, fog_b, fog, d2d:
        for broker in (cloud, fog_b, fog, d2d):
            broker.start()
        wait_for_bridge(fog)
        wait_for_bridge(fog_b)
        wait_for_peer_bridge(fog, "fog-b")
        results = run_cases(lambda: _Matrix(fleet, other_ca, cloud, fog, peer=fog_b, d2d=d2d))
    return {"passed": sum(r["passed"] for r in results), "total": len(results), "control_passed": results[0]["passed"],
            "cases": results}


def _bridge(fleet: FleetPki, fog: str, cloud: MosquittoProcess) -> BridgeSpec:
    return BridgeSpec(fleet=FLEET, fog=fog, cloud_host=cloud.host, cloud_port=cloud.port, tls=fleet.bridge(fog))


def run_cases(make: Callable[[], _Matrix]) -> list[dict[str, Any]]:
    """Run every case, each on a fresh :class:`_Matrix` from ``make``; the first is the control. When it fails,
    the others are not run and are reported failed: a refusal by a broken broker proves nothing."""
    results: list[dict[str, Any]] = []
    for name, run in zip(CASES, _case_methods(), strict=True):
        if results and not results[0]["passed"]:
            results.append({"name": name, "expected": "(see case name)", "passed": False,
                            "observed": f"not run: the control case failed ({results[0]['observed']})"})
            continue
        matrix = make()
        try:
            expected, observed = run(matrix)
        except TransportError as exc:
            expected, observed = "(see case name)", f"error: {exc}"
        finally:
            matrix.close()
        passed = observed == expected or (expected == "refused" and observed.startswith("refused: "))
        results.append({"name": name, "expected": expected, "observed": observed, "passed": passed})
    return results


def _case_methods() -> list[Callable[[_Matrix], tuple[str, str]]]:
    m = _Matrix
    return [m.valid, m.other_ca, m.no_cert, m.plain, m.expired, m.revoked, m.own_topic, m.other_device_topic,
            m.peer_subscribe, m.foreign_device, m.bridge_carries, m.bridge_prefix, m.fog_cluster,
            *auth_links.CASE_FUNCTIONS]

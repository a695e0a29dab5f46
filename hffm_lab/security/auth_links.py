"""The auth matrix's cases for the links beyond device -> fog -> cloud: a D2D group's broker, a fog-to-fog bridge,
and the ``chunk/`` and ``ack/`` topics (:mod:`hffm_lab.security.auth_matrix` runs them, after its control case).

Each case takes the matrix (its fleet, and its brokers: ``fog`` is fog-a's, ``peer`` fog-b's, which fog-a's peer
bridge reaches, ``d2d`` the D2D broker of group (dev-1, dev-2, dev-4) on its hub dev-1) and returns
``(expected, observed)``. Every case first does something that must succeed on the same broker (a connect, a granted
subscribe or a delivered publish), so a refusal is the broker's answer to that one request only; "not delivered" is
checked as in the matrix: an allowed publish follows the denied one, and when it arrives nothing else has.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from broker_config.broker_sys import read_sys
from hffm_core.errors import BrokerError, TransportError
from hffm_core.protocol import topics
from hffm_core.protocol.keys import ModuleKey
from hffm_core.security.tls import TlsSettings
from hffm_core.transport.mqtt import MqttRefusedError

if TYPE_CHECKING:
    from hffm_lab.security.auth_matrix import _Client, _Matrix

FLEET = "authm"  # auth_matrix's (not imported from there: it imports this module)
KEY = ModuleKey(kind="head", modality="_", task="demand")
GROUP = ("dev-1", "dev-2", "dev-4")  # a D2D group of fog-a; dev-1 is its hub and relay in these cases
OUTSIDER = "dev-5"  # a device of fog-a outside the group

CASES: tuple[str, ...] = (
    "D2D member's delta reaches its relay over mutual TLS",
    "D2D member spoofing another member is denied (0x87) and not delivered",
    "D2D member subscribing to another member's inbox is refused (SUBACK 0x87)",
    "D2D relay acks its group's members only (0x87 outside the group and as another member)",
    "device outside the D2D group has no rights on its broker",
    "D2D broker refuses plain MQTT and a certificate from another CA",
    "fog-to-fog bridge carries fogpeer both ways over mutual TLS",
    "fog A's peer-bridge identity cannot publish as fog C or as its neighbour (0x87, not delivered)",
    "fog gateway publishes its own fogpeer topic but not its neighbour's (0x87)",
    "device publishes its own chunk topic but not another device's (0x87, not delivered)",
    "device cannot ack as the fog or read another device's acks (0x87)",
)


def _code(client: _Client, topic: str) -> str:
    try:
        client.transport.publish(topic, b"denied?", category="other")
    except MqttRefusedError as exc:
        return f"0x{exc.reason_code:02x}"
    return "accepted"


def _suback(client: _Client, filter_: str) -> str:
    try:
        client.transport.subscribe([filter_])
    except MqttRefusedError as exc:
        return f"SUBACK 0x{exc.reason_code:02x}"
    return "granted"


def _delivered(before: list[str]) -> str:
    return "not delivered" if not before else f"delivered {before}"


# -- D2D -------------------------------------------------------------------------------------------------------------
def d2d_own_delta(m: _Matrix) -> tuple[str, str]:
    relay = m.connect("dev-1", m.d2d, m.fleet.identity("dev-1"))
    relay.transport.subscribe([topics.d2d_inbox_filter(FLEET, "peer", "fog-a", "dev-1")])
    member = m.connect("dev-2", m.d2d, m.fleet.identity("dev-2"))
    topic = topics.peer(FLEET, "fog-a", "dev-1", "dev-2")
    member.transport.publish(topic, b"delta", category="other")
    relay.expect(topic)
    return "delivered", "delivered"


def d2d_spoof(m: _Matrix) -> tuple[str, str]:
    relay = m.connect("dev-1", m.d2d, m.fleet.identity("dev-1"))
    relay.transport.subscribe([topics.d2d_inbox_filter(FLEET, "peer", "fog-a", "dev-1")])
    member = m.connect("dev-2", m.d2d, m.fleet.identity("dev-2"))
    code = _code(member, topics.peer(FLEET, "fog-a", "dev-1", "dev-4"))  # dev-2 posing as dev-4
    control = topics.peer(FLEET, "fog-a", "dev-1", "dev-2")
    member.transport.publish(control, b"control", category="other")
    return "0x87, not delivered", f"{code}, {_delivered(relay.expect(control))}"


def d2d_inbox(m: _Matrix) -> tuple[str, str]:
    member = m.connect("dev-2", m.d2d, m.fleet.identity("dev-2"))
    own = _suback(member, topics.d2d_inbox_filter(FLEET, "peer", "fog-a", "dev-2"))  # granted (control)
    other = _suback(member, topics.d2d_inbox_filter(FLEET, "peer", "fog-a", "dev-1"))
    return "own granted, dev-1's SUBACK 0x87", f"own {own}, dev-1's {other}"


def d2d_relay_acks(m: _Matrix) -> tuple[str, str]:
    member = m.connect("dev-2", m.d2d, m.fleet.identity("dev-2"))
    member.transport.subscribe([topics.ack_filter(FLEET, "fog-a", "dev-2")])
    relay = m.connect("dev-1", m.d2d, m.fleet.identity("dev-1"))
    outside = _code(relay, topics.ack(FLEET, "fog-a", OUTSIDER, "dev-1"))
    as_other = _code(relay, topics.ack(FLEET, "fog-a", "dev-2", "dev-4"))  # an ack in another member's name
    own = topics.ack(FLEET, "fog-a", "dev-2", "dev-1")
    relay.transport.publish(own, b"ack", category="other")
    leaked = member.expect(own)
    return ("member delivered, outside 0x87, as dev-4 0x87, not delivered",
            f"member delivered, outside {outside}, as dev-4 {as_other}, {_delivered(leaked)}")


def d2d_outsider(m: _Matrix) -> tuple[str, str]:
    relay = m.connect("dev-1", m.d2d, m.fleet.identity("dev-1"))
    relay.transport.subscribe([topics.d2d_inbox_filter(FLEET, "peer", "fog-a", "dev-1")])
    outsider = m.connect(OUTSIDER, m.d2d, m.fleet.identity(OUTSIDER))  # a valid fleet certificate: it connects
    send = _code(outsider, topics.peer(FLEET, "fog-a", "dev-1", OUTSIDER))
    inbox = _suback(outsider, topics.d2d_inbox_filter(FLEET, "peer", "fog-a", OUTSIDER))
    member = m.connect("dev-2", m.d2d, m.fleet.identity("dev-2"))
    control = topics.peer(FLEET, "fog-a", "dev-1", "dev-2")
    member.transport.publish(control, b"control", category="other")
    leaked = relay.expect(control)
    return ("peer 0x87, inbox SUBACK 0x87, not delivered",
            f"peer {send}, inbox {inbox}, {_delivered(leaked)}")


def d2d_tls(m: _Matrix) -> tuple[str, str]:
    from hffm_lab.security.auth_matrix import connect_verdict, probe_verdict

    m.connect("dev-2", m.d2d, m.fleet.identity("dev-2")).transport.close()  # control: a member connects
    try:
        read_sys(m.d2d.host, m.d2d.port, "$SYS/broker/uptime", timeout=3.0, ssl_context=None)
        plain = "connected"
    except (OSError, BrokerError) as exc:
        plain = probe_verdict(exc)
    forged = TlsSettings(ca=m.fleet.ca, cert=m.other_pki / "issued" / "dev-1.pem",
                         key=m.other_pki / "issued" / "dev-1.key")
    try:
        m.connect("forged-dev-1", m.d2d, forged).transport.close()
        other = "connected"
    except TransportError as exc:
        other = connect_verdict(exc)
    short = [v.split(":")[0] if v.startswith("refused: ") else v for v in (plain, other)]
    return "plain refused, other CA refused", f"plain {short[0]}, other CA {short[1]}"


# -- fog to fog ------------------------------------------------------------------------------------------------------
def fogpeer_carries(m: _Matrix) -> tuple[str, str]:
    a = m.connect("fog-a", m.fog, m.fleet.identity("fog-a"))
    a.transport.subscribe([topics.fogpeer_filter(FLEET, "fog-b")])
    b = m.connect("fog-b", m.peer, m.fleet.identity("fog-b"))
    b.transport.subscribe([topics.fogpeer_filter(FLEET, "fog-a")])
    out, into = topics.fogpeer(FLEET, "fog-a", KEY), topics.fogpeer(FLEET, "fog-b", KEY)
    a.transport.publish(out, b"agg-a", category="other")
    b.expect(out)
    b.transport.publish(into, b"agg-b", category="other")
    a.expect(into)
    return "out and in delivered", "out and in delivered"


def peer_bridge_impostor(m: _Matrix) -> tuple[str, str]:
    b = m.connect("fog-b", m.peer, m.fleet.identity("fog-b"))
    b.transport.subscribe([topics.fogpeer_filter(FLEET, "fog-a")])
    device = m.connect("dev-3", m.peer, m.fleet.identity("dev-3"))
    device.transport.subscribe([topics.cluster_filter(FLEET, "fog-b")])
    impostor = m.connect("bridge-peer-fog-a", m.peer, m.fleet.peer_bridge("fog-a"))
    as_c = _code(impostor, topics.fogpeer(FLEET, "fog-c", KEY))
    as_b = _code(impostor, topics.fogpeer(FLEET, "fog-b", KEY))
    cluster = _code(impostor, topics.cluster(FLEET, "fog-b", KEY))
    own = topics.fogpeer(FLEET, "fog-a", KEY)
    impostor.transport.publish(own, b"own", category="other")  # its own fog's prefix: allowed (control)
    leaked = b.expect(own)
    control = topics.cluster(FLEET, "fog-b", KEY)
    b.transport.publish(control, b"control", category="other")
    leaked += device.expect(control)
    return ("fog-c 0x87, fog-b 0x87, cluster 0x87, not delivered",
            f"fog-c {as_c}, fog-b {as_b}, cluster {cluster}, {_delivered(leaked)}")


def fog_fogpeer(m: _Matrix) -> tuple[str, str]:
    b = m.connect("fog-b", m.peer, m.fleet.identity("fog-b"))
    b.transport.subscribe([topics.fogpeer_filter(FLEET, "fog-a")])
    a = m.connect("fog-a", m.fog, m.fleet.identity("fog-a"))
    own = topics.fogpeer(FLEET, "fog-a", KEY)
    a.transport.publish(own, b"own", category="other")
    b.expect(own)
    neighbour = _code(a, topics.fogpeer(FLEET, "fog-b", KEY))
    return "own delivered, fog-b's 0x87", f"own delivered, fog-b's {neighbour}"


# -- chunk/ and ack/ -------------------------------------------------------------------------------------------------
def chunk_topics(m: _Matrix) -> tuple[str, str]:
    gateway = m.connect("fog-a", m.fog, m.fleet.identity("fog-a"))
    gateway.transport.subscribe([topics.chunk_filter(FLEET, "fog-a")])
    device = m.connect("dev-1", m.fog, m.fleet.identity("dev-1"))
    other = _code(device, topics.chunk(FLEET, "fog-a", "dev-2"))
    own = topics.chunk(FLEET, "fog-a", "dev-1")
    device.transport.publish(own, b"chunk", category="other")
    return "0x87, not delivered", f"{other}, {_delivered(gateway.expect(own))}"


def ack_topics(m: _Matrix) -> tuple[str, str]:
    victim = m.connect("dev-2", m.fog, m.fleet.identity("dev-2"))
    victim.transport.subscribe([topics.ack_filter(FLEET, "fog-a", "dev-2")])
    device = m.connect("dev-1", m.fog, m.fleet.identity("dev-1"))
    own = _suback(device, topics.ack_filter(FLEET, "fog-a", "dev-1"))  # granted (control)
    other = _suback(device, topics.ack_filter(FLEET, "fog-a", "dev-2"))
    as_fog = _code(device, topics.ack(FLEET, "fog-a", "dev-2", "fog-a"))
    gateway = m.connect("fog-a", m.fog, m.fleet.identity("fog-a"))
    control = topics.ack(FLEET, "fog-a", "dev-2", "fog-a")
    gateway.transport.publish(control, b"ack", category="other")
    leaked = victim.expect(control)
    return ("own granted, dev-2's SUBACK 0x87, as the fog 0x87, not delivered",
            f"own {own}, dev-2's {other}, as the fog {as_fog}, {_delivered(leaked)}")


CASE_FUNCTIONS = (d2d_own_delta, d2d_spoof, d2d_inbox, d2d_relay_acks, d2d_outsider, d2d_tls, fogpeer_carries,
                  peer_bridge_impostor, fog_fogpeer, chunk_topics, ack_topics)

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


def delivered(before: list[str]) -> str:
    """The verdict on a denied publish, from what arrived before the allowed one that followed it."""
    return "not delivered" if not before else f"delivered {before}"


# -- D2D -------------------------------------------------------------------------------------------------------------
def _relay(m: _Matrix) -> _Client:
    """The group's relay (dev-1) on its D2D broker, subscribed to its inbox."""
    return m.node("dev-1", m.d2d, topics.d2d_inbox_filter(FLEET, "peer", "fog-a", "dev-1"))


def d2d_own_delta(m: _Matrix) -> tuple[str, str]:
    relay = _relay(m)
    m.node("dev-2", m.d2d).deliver(topics.peer(FLEET, "fog-a", "dev-1", "dev-2"), b"delta", relay)
    return "delivered", "delivered"


def d2d_spoof(m: _Matrix) -> tuple[str, str]:
    relay = _relay(m)
    member = m.node("dev-2", m.d2d)
    code = member.publish_code(topics.peer(FLEET, "fog-a", "dev-1", "dev-4"))  # dev-2 posing as dev-4
    before = member.deliver(topics.peer(FLEET, "fog-a", "dev-1", "dev-2"), b"control", relay)
    return "0x87, not delivered", f"{code}, {delivered(before)}"


def d2d_inbox(m: _Matrix) -> tuple[str, str]:
    member = m.node("dev-2", m.d2d)
    own = member.suback(topics.d2d_inbox_filter(FLEET, "peer", "fog-a", "dev-2"))  # granted (control)
    other = member.suback(topics.d2d_inbox_filter(FLEET, "peer", "fog-a", "dev-1"))
    return "own granted, dev-1's SUBACK 0x87", f"own {own}, dev-1's {other}"


def d2d_relay_acks(m: _Matrix) -> tuple[str, str]:
    member = m.node("dev-2", m.d2d, topics.ack_filter(FLEET, "fog-a", "dev-2"))
    relay = m.node("dev-1", m.d2d)
    outside = relay.publish_code(topics.ack(FLEET, "fog-a", OUTSIDER, "dev-1"))
    as_other = relay.publish_code(topics.ack(FLEET, "fog-a", "dev-2", "dev-4"))  # an ack in another member's name
    leaked = relay.deliver(topics.ack(FLEET, "fog-a", "dev-2", "dev-1"), b"ack", member)
    return ("member delivered, outside 0x87, as dev-4 0x87, not delivered",
            f"member delivered, outside {outside}, as dev-4 {as_other}, {delivered(leaked)}")


def d2d_outsider(m: _Matrix) -> tuple[str, str]:
    relay = _relay(m)
    outsider = m.node(OUTSIDER, m.d2d)  # a valid fleet certificate: it connects
    send = outsider.publish_code(topics.peer(FLEET, "fog-a", "dev-1", OUTSIDER))
    inbox = outsider.suback(topics.d2d_inbox_filter(FLEET, "peer", "fog-a", OUTSIDER))
    leaked = m.node("dev-2", m.d2d).deliver(topics.peer(FLEET, "fog-a", "dev-1", "dev-2"), b"control", relay)
    return ("peer 0x87, inbox SUBACK 0x87, not delivered",
            f"peer {send}, inbox {inbox}, {delivered(leaked)}")


def d2d_tls(m: _Matrix) -> tuple[str, str]:
    from hffm_lab.security.auth_matrix import connect_verdict, probe_verdict

    m.node("dev-2", m.d2d).transport.close()  # control: a member connects
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
    a = m.node("fog-a", m.fog, topics.fogpeer_filter(FLEET, "fog-b"))
    b = m.node("fog-b", m.peer, topics.fogpeer_filter(FLEET, "fog-a"))
    a.deliver(topics.fogpeer(FLEET, "fog-a", KEY), b"agg-a", b)
    b.deliver(topics.fogpeer(FLEET, "fog-b", KEY), b"agg-b", a)
    return "out and in delivered", "out and in delivered"


def peer_bridge_impostor(m: _Matrix) -> tuple[str, str]:
    b = m.node("fog-b", m.peer, topics.fogpeer_filter(FLEET, "fog-a"))
    device = m.node("dev-3", m.peer, topics.cluster_filter(FLEET, "fog-b"))
    impostor = m.connect("bridge-peer-fog-a", m.peer, m.fleet.peer_bridge("fog-a"))
    as_c = impostor.publish_code(topics.fogpeer(FLEET, "fog-c", KEY))
    as_b = impostor.publish_code(topics.fogpeer(FLEET, "fog-b", KEY))
    cluster = impostor.publish_code(topics.cluster(FLEET, "fog-b", KEY))
    leaked = impostor.deliver(topics.fogpeer(FLEET, "fog-a", KEY), b"own", b)  # its own fog's prefix (control)
    leaked += b.deliver(topics.cluster(FLEET, "fog-b", KEY), b"control", device)
    return ("fog-c 0x87, fog-b 0x87, cluster 0x87, not delivered",
            f"fog-c {as_c}, fog-b {as_b}, cluster {cluster}, {delivered(leaked)}")


def fog_fogpeer(m: _Matrix) -> tuple[str, str]:
    b = m.node("fog-b", m.peer, topics.fogpeer_filter(FLEET, "fog-a"))
    a = m.node("fog-a", m.fog)
    a.deliver(topics.fogpeer(FLEET, "fog-a", KEY), b"own", b)
    neighbour = a.publish_code(topics.fogpeer(FLEET, "fog-b", KEY))
    return "own delivered, fog-b's 0x87", f"own delivered, fog-b's {neighbour}"


# -- chunk/ and ack/ -------------------------------------------------------------------------------------------------
def chunk_topics(m: _Matrix) -> tuple[str, str]:
    gateway = m.node("fog-a", m.fog, topics.chunk_filter(FLEET, "fog-a"))
    device = m.node("dev-1", m.fog)
    other = device.publish_code(topics.chunk(FLEET, "fog-a", "dev-2"))
    before = device.deliver(topics.chunk(FLEET, "fog-a", "dev-1"), b"chunk", gateway)
    return "0x87, not delivered", f"{other}, {delivered(before)}"


def ack_topics(m: _Matrix) -> tuple[str, str]:
    victim = m.node("dev-2", m.fog, topics.ack_filter(FLEET, "fog-a", "dev-2"))
    device = m.node("dev-1", m.fog)
    own = device.suback(topics.ack_filter(FLEET, "fog-a", "dev-1"))  # granted (control)
    other = device.suback(topics.ack_filter(FLEET, "fog-a", "dev-2"))
    as_fog = device.publish_code(topics.ack(FLEET, "fog-a", "dev-2", "fog-a"))
    leaked = m.node("fog-a", m.fog).deliver(topics.ack(FLEET, "fog-a", "dev-2", "fog-a"), b"ack", victim)
    return ("own granted, dev-2's SUBACK 0x87, as the fog 0x87, not delivered",
            f"own {own}, dev-2's {other}, as the fog {as_fog}, {delivered(leaked)}")


CASE_FUNCTIONS = (d2d_own_delta, d2d_spoof, d2d_inbox, d2d_relay_acks, d2d_outsider, d2d_tls, fogpeer_carries,
                  peer_bridge_impostor, fog_fogpeer, chunk_topics, ack_topics)

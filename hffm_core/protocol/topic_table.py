"""The topic table: every fact about a topic kind in one row, from which the rest of the protocol derives.

A :class:`TopicSpec` row says, for one kind (the segment after ``hffm/v1/{fleet}``): the named segments after it
(their number is the kind's arity), the message type it carries, which roles publish it and which segment names
the node that must sign it, its QoS and retain flag, which broker bridges carry it (and in which direction), and
which topics each role may publish and read on its broker. Derived from it:

- :func:`hffm_core.protocol.topics.parse` and :func:`~hffm_core.protocol.topics.build` (segment names and arity),
- :data:`hffm_core.protocol.routing.MESSAGE_FOR_KIND` (the message type of each kind),
- :func:`hffm_core.protocol.envelope.expected_signer` (who signs),
- :func:`bridge_topics` (the ``topic`` lines of a fog broker's bridges; ``broker_config/fog.conf.tmpl`` and
  ``fog_peer_bridge.conf.tmpl`` are tested against it) and the broker ACLs (``broker_config/acl.py``).

Patterns (the part of a topic after ``{kind}/``) may hold MQTT wildcards and these placeholders: ``{self}``, the
identity the rule is for; ``{fog}``, its fog (a fog's own id; for the cloud, each fog of the fleet in turn);
``{device}``, each device of the fog (bridge rules only); ``{neighbour}``, the neighbour fog (peer bridges), or each
neighbour fog in turn (a fog's grants); ``{peer}``, each other member of the device's D2D group (grants on the D2D
group's broker).

A grant holds on the role's own broker (``home``: a device's and a fog's is the fog broker, the cloud's the cloud
broker) or, for a device, on its D2D group's broker (``d2d``, written ``device@d2d`` in the compact rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hffm_core.protocol.control import Ack, Chunk, NodeState, ResyncRequest, RoundControl, RoundMetrics
from hffm_core.protocol.messages import FogAggregate, FogRoundReport, ModuleUpdate, ModuleVersion

Role = Literal["device", "fog", "cloud"]
Access = Literal["read", "write"]
Link = Literal["cloud", "peer"]
Scope = Literal["home", "d2d"]
Direction = Literal["out", "in"]
ROLES: tuple[Role, ...] = ("device", "fog", "cloud")
CLOUD = "cloud"  # the target segment that stands for the cloud (``ctl/cloud``, ``resync/cloud/{fog}``...)
MODULE_SEGMENTS = ("modality", "task", "kind")  # a module key's place in a topic, in this order
# Segment name -> the :class:`~hffm_core.protocol.topics.Topic` field that holds it.
TOPIC_FIELD = {"fog": "fog", "target": "fog", "node": "node", "device": "node", "sender": "node", "recipient": "to",
               "modality": "module", "task": "module", "kind": "module"}


@dataclass(frozen=True, slots=True)
class Grant:
    """Role ``role`` may ``access`` topics ``{kind}/{pattern}`` on its own broker (``scope`` ``home``) or on its D2D
    group's broker (``d2d``: devices only)."""

    role: Role
    access: Access
    pattern: str
    scope: Scope = "home"


@dataclass(frozen=True, slots=True)
class Route:
    """A fog broker's bridge carries ``{kind}/{pattern}`` over ``link`` (``cloud``: to the cloud broker; ``peer``: to
    a neighbour fog's broker) in ``direction`` (``out``: from the fog broker), at the kind's QoS. ``acl``: what the
    bridge's identity may do for it on the cloud broker, when narrower than ``pattern`` (e.g. only its devices')."""

    link: Link
    direction: Direction
    pattern: str
    acl: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class TopicSpec:
    """One topic kind: see the module docstring."""

    kind: str
    segments: tuple[str, ...]
    message: type
    publishers: tuple[Role, ...]
    signer: str  # a segment name whose value is the signer, or a fixed node id (``cloud``)
    qos: int = 1
    retain: bool = False
    bridges: tuple[Route, ...] = ()
    grants: tuple[Grant, ...] = ()

    @property
    def arity(self) -> int:
        """How many segments follow ``hffm/v1/{fleet}/{kind}``."""
        return len(self.segments)

    @property
    def has_module(self) -> bool:
        return MODULE_SEGMENTS[0] in self.segments


def _spec(kind: str, segments: str, message: type, publishers: str, signer: str, *, retain: bool = False,
          bridges: tuple[Route, ...] = (), grants: str = "") -> TopicSpec:
    """A row from compact text: ``segments`` and ``publishers`` space-separated, ``grants`` as
    ``role[@scope]:access:pattern`` words."""
    rules = []
    for word in grants.split():
        who, access, pattern = word.split(":", 2)
        role, _, scope = who.partition("@")
        rules.append(Grant(role, access, pattern, scope or "home"))  # type: ignore[arg-type]
    return TopicSpec(kind=kind, segments=tuple(segments.split()), message=message,
                     publishers=tuple(publishers.split()), signer=signer, retain=retain,  # type: ignore[arg-type]
                     bridges=bridges, grants=tuple(rules))


_MODULE = "fog modality task kind"
TOPIC_TABLE: tuple[TopicSpec, ...] = (
    _spec("up", f"{_MODULE} device", ModuleUpdate, "device", "device",
          grants="device:write:{fog}/+/+/+/{self} fog:read:{fog}/#"),
    _spec("cluster", _MODULE, ModuleVersion, "fog", "fog", retain=True,
          grants="fog:write:{fog}/# device:read:{fog}/#"),
    _spec("fogup", _MODULE, FogAggregate, "fog", "fog", bridges=(Route("cloud", "out", "{fog}/#"),),
          grants="fog:write:{fog}/# cloud:read:+/#"),
    _spec("fogdone", "fog", FogRoundReport, "fog", "fog", bridges=(Route("cloud", "out", "{fog}"),),
          grants="fog:write:{fog} cloud:read:+"),
    _spec("global", "modality task kind", ModuleVersion, "cloud", CLOUD, retain=True,
          bridges=(Route("cloud", "in", "#"),), grants="cloud:write:# device:read:# fog:read:#"),
    _spec("ctl", "node", RoundControl, "cloud fog", "node", retain=True, bridges=(Route("cloud", "in", CLOUD),),
          grants="cloud:write:cloud fog:write:{fog} device:read:{fog} fog:read:cloud cloud:read:+"),
    _spec("state", "node", NodeState, "device fog", "node", retain=True,
          bridges=(Route("cloud", "out", "#", acl=("{fog}", "{device}")),),
          grants="device:write:{self} fog:write:{self} fog:read:+ cloud:read:+"),
    _spec("metrics", "node", RoundMetrics, "cloud", "node", retain=True, bridges=(Route("cloud", "in", "#"),),
          grants="cloud:write:cloud cloud:read:#"),
    _spec("resync", "target node", ResyncRequest, "device fog", "node",
          bridges=(Route("cloud", "out", "cloud/{fog}"),),
          grants="device:write:{fog}/{self} fog:write:cloud/{self} fog:read:{fog}/+ cloud:read:cloud/+"),
    # On the D2D broker a relay acks its group's members only (``{peer}``), and each member reads only its own acks.
    _spec("ack", "fog recipient sender", Ack, "device fog cloud", "sender",
          bridges=(Route("cloud", "in", "{fog}/{fog}/cloud"),),
          grants="device:write:{fog}/+/{self} device:read:{fog}/{self}/+ fog:write:{fog}/+/{fog} "
                 "fog:read:{fog}/{fog}/+ cloud:write:{fog}/{fog}/cloud "
                 "device@d2d:write:{fog}/{peer}/{self} device@d2d:read:{fog}/{self}/+"),
    _spec("chunk", "target node", Chunk, "device fog", "node", bridges=(Route("cloud", "out", "cloud/{fog}"),),
          grants="device:write:{fog}/{self} fog:write:cloud/{self} fog:read:{fog}/+ cloud:read:cloud/+"),
    # D2D: a member's update for the relay device of its group, on the group's D2D broker (never bridged): a member
    # sends only as itself and only to another member of its group, and reads only its own inbox.
    _spec("peer", "fog recipient sender", ModuleUpdate, "device", "sender",
          grants="device:write:{fog}/+/{self} device:read:{fog}/{self}/+ "
                 "device@d2d:write:{fog}/{peer}/{self} device@d2d:read:{fog}/{self}/+"),
    # A fog's cluster aggregate for its neighbours, over the fog-to-fog bridges: a fog publishes only its own and
    # reads its neighbours'; a peer bridge's identity gets the peer routes on the neighbour's broker (acl.py).
    _spec("fogpeer", _MODULE, FogAggregate, "fog", "fog",
          bridges=(Route("peer", "out", "{fog}/#"), Route("peer", "in", "{neighbour}/#")),
          grants="fog:write:{fog}/# fog:read:{neighbour}/#"),
)
TOPIC_SPECS: dict[str, TopicSpec] = {spec.kind: spec for spec in TOPIC_TABLE}


def spec_of(kind: str) -> TopicSpec:
    """The row of ``kind``. Raises ``KeyError`` for an unknown kind."""
    return TOPIC_SPECS[kind]


def bridge_topics(fleet: str, fog: str, *, link: Link = "cloud",
                  neighbour: str | None = None) -> list[tuple[str, Direction, int]]:
    """The ``(topic pattern, direction, qos)`` lines of fog ``fog``'s bridge over ``link`` (to its ``neighbour`` fog
    for a peer bridge), in table order. The caller checks ``fog`` and ``neighbour`` (topic segments)."""
    lines: list[tuple[str, Direction, int]] = []
    for spec in TOPIC_TABLE:
        for route in spec.bridges:
            if route.link == link:
                pattern = route.pattern.format(fog=fog, neighbour=neighbour)
                lines.append((f"hffm/v1/{fleet}/{spec.kind}/{pattern}", route.direction, spec.qos))
    return lines

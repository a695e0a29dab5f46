"""The topic scheme: the only place that builds or parses an hffm topic string.

Root ``hffm/v1/{fleet}``. Every segment matches ``[a-z0-9_-]{1,64}``; ``_`` stands for "any" (an encoder's task, a
head's modality). See docs/architecture.md for the table of topics, their direction, QoS and retain flag.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from hffm_core.errors import DecodeError
from hffm_core.protocol.keys import ModuleKey

ROOT = "hffm/v1"
_SEGMENT = re.compile(r"^[a-z0-9_-]{1,64}$")

TopicKind = Literal["up", "cluster", "fogup", "global", "ctl", "fogdone", "state", "metrics", "resync", "ack",
                    "chunk", "peer", "fogpeer"]

# Number of segments after ``hffm/v1/{fleet}/{kind}`` for each kind.
_ARITY: dict[str, int] = {
    "up": 5,  # fog, modality, task, kind, device
    "cluster": 4,  # fog, modality, task, kind
    "fogup": 4,  # fog, modality, task, kind
    "global": 3,  # modality, task, kind
    "ctl": 1,  # "cloud" or a fog id
    "fogdone": 1,  # fog
    "state": 1,  # device or fog id
    "metrics": 1,  # "cloud"
    "resync": 2,  # target ("cloud" or a fog id), requesting node
    "ack": 3,  # fog, to (the node acknowledged), sender (the node acknowledging)
    "chunk": 2,  # target ("cloud" or a fog id), sending node
    "peer": 3,  # fog, to (the relay device), sender (a device of the same D2D group)
    "fogpeer": 4,  # fog (the sender), modality, task, kind: a fog's cluster aggregate for its neighbour fogs
}


def check_segment(value: str, what: str) -> str:
    """Return ``value`` if it is a valid topic segment.

    Raises:
        ValueError: naming ``what`` and quoting the bad value.
    """
    if not isinstance(value, str) or not _SEGMENT.fullmatch(value):
        raise ValueError(f"invalid {what} {value!r}: must match [a-z0-9_-]{{1,64}}")
    return value


@dataclass(frozen=True, slots=True)
class Topic:
    """A parsed hffm topic. ``module`` is set for module topics, ``node`` for the per-node ones (for ``resync`` and
    ``chunk``, ``fog`` holds the target: a fog id or ``cloud``)."""

    fleet: str
    kind: str
    fog: str | None = None
    module: ModuleKey | None = None
    node: str | None = None
    to: str | None = None  # ``ack`` topics: the node acknowledged (``node`` is the one acknowledging)

    def __str__(self) -> str:
        return build(self)


def _base(fleet: str, kind: str) -> str:
    return f"{ROOT}/{check_segment(fleet, 'fleet')}/{kind}"


def _module_path(key: ModuleKey) -> str:
    return f"{key.modality}/{key.task}/{key.kind}"


def up(fleet: str, fog: str, key: ModuleKey, device: str) -> str:
    """device -> fog: a module delta (QoS 1)."""
    return f"{_base(fleet, 'up')}/{check_segment(fog, 'fog')}/{_module_path(key)}/{check_segment(device, 'device')}"


def up_filter(fleet: str, fog: str) -> str:
    return f"{_base(fleet, 'up')}/{check_segment(fog, 'fog')}/#"


def cluster(fleet: str, fog: str, key: ModuleKey) -> str:
    """fog -> its devices: the cluster module version (QoS 1, retained)."""
    return f"{_base(fleet, 'cluster')}/{check_segment(fog, 'fog')}/{_module_path(key)}"


def fogup(fleet: str, fog: str, key: ModuleKey) -> str:
    """fog -> cloud: the fog's aggregate and its total weight (QoS 1, bridged out)."""
    return f"{_base(fleet, 'fogup')}/{check_segment(fog, 'fog')}/{_module_path(key)}"


def fogup_filter(fleet: str, fog: str | None = None) -> str:
    return f"{_base(fleet, 'fogup')}/{check_segment(fog, 'fog') if fog is not None else '+'}/#"


def fogpeer(fleet: str, fog: str, key: ModuleKey) -> str:
    """``fogpeer/{fog}/{modality}/{task}/{kind}``: fog ``fog``'s cluster aggregate of a module for its neighbour fogs
    (carried to them by the fog-to-fog bridges generated from the topology)."""
    return f"{_base(fleet, 'fogpeer')}/{check_segment(fog, 'fog')}/{_module_path(key)}"


def fogpeer_filter(fleet: str, fog: str) -> str:
    """``fogpeer/{fog}/#``: every aggregate fog ``fog`` shares with its neighbours."""
    return f"{_base(fleet, 'fogpeer')}/{check_segment(fog, 'fog')}/#"


def fogdone(fleet: str, fog: str) -> str:
    """fog -> cloud: the end-of-global-round report listing the aggregates sent (QoS 1, bridged out)."""
    return f"{_base(fleet, 'fogdone')}/{check_segment(fog, 'fog')}"


def fogdone_filter(fleet: str) -> str:
    return f"{_base(fleet, 'fogdone')}/+"


def global_(fleet: str, key: ModuleKey) -> str:
    """cloud -> all: the global module version (QoS 1, retained, bridged in)."""
    return f"{_base(fleet, 'global')}/{_module_path(key)}"


def global_filter(fleet: str) -> str:
    return f"{_base(fleet, 'global')}/#"


def ctl(fleet: str, node: str) -> str:
    """Round announcements: ``ctl/cloud`` (cloud -> fogs) and ``ctl/{fog}`` (fog -> its devices); retained."""
    return f"{_base(fleet, 'ctl')}/{check_segment(node, 'node')}"


def ctl_filter(fleet: str) -> str:
    """``ctl/+``: every round announcement of the fleet (the cloud's and each fog's); for observers."""
    return f"{_base(fleet, 'ctl')}/+"


def state(fleet: str, node: str) -> str:
    """A node's capability advert / status; retained, with a last-will 'offline'."""
    return f"{_base(fleet, 'state')}/{check_segment(node, 'node')}"


def state_filter(fleet: str) -> str:
    return f"{_base(fleet, 'state')}/+"


def metrics(fleet: str, node: str = "cloud") -> str:
    """cloud -> observers: per-round evaluation metrics (QoS 1, retained)."""
    return f"{_base(fleet, 'metrics')}/{check_segment(node, 'node')}"


def resync(fleet: str, target: str, node: str) -> str:
    """receiver -> publisher: a node asks for the full state of modules it cannot apply a delta to (QoS 1)."""
    return f"{_base(fleet, 'resync')}/{check_segment(target, 'target')}/{check_segment(node, 'node')}"


def resync_filter(fleet: str, target: str) -> str:
    return f"{_base(fleet, 'resync')}/{check_segment(target, 'target')}/+"


def chunk(fleet: str, target: str, node: str) -> str:
    """``chunk/{target}/{node}``: pieces of a payload above the broker's packet limit (target: a fog id, or
    ``cloud``, bridged out)."""
    return f"{_base(fleet, 'chunk')}/{check_segment(target, 'target')}/{check_segment(node, 'node')}"


def chunk_filter(fleet: str, target: str) -> str:
    return f"{_base(fleet, 'chunk')}/{check_segment(target, 'target')}/+"


def ack_filter(fleet: str, fog: str, to: str) -> str:
    """``ack/{fog}/{to}/+``: every application-level ack addressed to node ``to`` (a device, or the fog itself)."""
    return d2d_inbox_filter(fleet, "ack", fog, to)


# --- Device-to-device (D2D) and acknowledgement topics ------------------------------------------------------
# ``peer/{fog}/{to}/{sender}`` (a device's module delta for the relay device of its D2D group, carrying a
# ``ModuleUpdate``, on the group's D2D broker: docs/topology.md) and ``ack/{fog}/{to}/{sender}`` (an application-level acknowledgement, carrying
# ``Ack``: the fog acks its devices on ``ack/{fog}/{device}/{fog}``, the cloud acks a fog on
# ``ack/{fog}/{fog}/cloud``). The broker ACLs (broker_config/acl.py) grant both to devices.
RESERVED_KINDS: tuple[str, ...] = ("peer", "ack")


def peer(fleet: str, fog: str, to: str, sender: str) -> str:
    """device -> the relay device of its D2D group (same fog), on the group's D2D broker."""
    return _d2d(fleet, "peer", fog, to, sender)


def ack(fleet: str, fog: str, to: str, sender: str) -> str:
    """``sender`` acknowledges to ``to`` (both under fog ``fog``; ``sender`` may be ``cloud``)."""
    return _d2d(fleet, "ack", fog, to, sender)


def d2d_inbox_filter(fleet: str, kind: str, fog: str, to: str) -> str:
    """``{kind}/{fog}/{to}/+``: every ``peer`` (or ``ack``) message addressed to device ``to``."""
    return f"{_d2d_base(fleet, kind, fog)}/{check_segment(to, 'device')}/+"


def d2d_sent_filter(fleet: str, kind: str, fog: str, sender: str) -> str:
    """``{kind}/{fog}/+/{sender}``: every ``peer`` (or ``ack``) message device ``sender`` may send."""
    return f"{_d2d_base(fleet, kind, fog)}/+/{check_segment(sender, 'device')}"


def _d2d_base(fleet: str, kind: str, fog: str) -> str:
    if kind not in RESERVED_KINDS:
        raise ValueError(f"invalid D2D kind {kind!r}: expected one of {list(RESERVED_KINDS)}")
    return f"{_base(fleet, kind)}/{check_segment(fog, 'fog')}"


def _d2d(fleet: str, kind: str, fog: str, to: str, sender: str) -> str:
    return f"{_d2d_base(fleet, kind, fog)}/{check_segment(to, 'device')}/{check_segment(sender, 'device')}"


# --- Filters for broker ACLs (broker_config/acl.py) ---------------------------------------------------


def device_up_filter(fleet: str, fog: str, device: str) -> str:
    """``up/{fog}/+/+/+/{device}``: every module update device ``device`` of fog ``fog`` may publish."""
    return f"{_base(fleet, 'up')}/{check_segment(fog, 'fog')}/+/+/+/{check_segment(device, 'device')}"


def cluster_filter(fleet: str, fog: str) -> str:
    """``cluster/{fog}/#``: every cluster module version of fog ``fog``."""
    return f"{_base(fleet, 'cluster')}/{check_segment(fog, 'fog')}/#"


def metrics_filter(fleet: str) -> str:
    """``metrics/#``: every metrics topic (what the bridge carries in)."""
    return f"{_base(fleet, 'metrics')}/#"


def build(topic: Topic) -> str:
    """Build the string of a parsed :class:`Topic` (inverse of :func:`parse`)."""
    if topic.kind == "up" and topic.fog and topic.module and topic.node:
        return up(topic.fleet, topic.fog, topic.module, topic.node)
    if topic.kind in ("cluster", "fogup", "fogpeer") and topic.fog and topic.module:
        return {"cluster": cluster, "fogup": fogup, "fogpeer": fogpeer}[topic.kind](topic.fleet, topic.fog, topic.module)
    if topic.kind == "global" and topic.module:
        return global_(topic.fleet, topic.module)
    if topic.kind in ("resync", "chunk") and topic.fog and topic.node:
        return (resync if topic.kind == "resync" else chunk)(topic.fleet, topic.fog, topic.node)
    if topic.kind in ("ack", "peer") and topic.fog and topic.to and topic.node:
        return (ack if topic.kind == "ack" else peer)(topic.fleet, topic.fog, topic.to, topic.node)
    if topic.kind == "fogdone" and topic.fog:
        return fogdone(topic.fleet, topic.fog)
    if topic.kind in ("ctl", "state", "metrics") and topic.node:
        return {"ctl": ctl, "state": state, "metrics": metrics}[topic.kind](topic.fleet, topic.node)
    raise ValueError(f"incomplete topic {topic!r}")


def parse(topic: str) -> Topic:
    """Parse and validate a concrete (wildcard-free) hffm topic.

    Raises:
        DecodeError: the topic is not under ``hffm/v1``, has the wrong number of segments for its kind, an
            unknown kind, a bad segment, or a module key that is not valid.
    """
    parts = topic.split("/")
    if len(parts) < 4 or "/".join(parts[:2]) != ROOT:
        raise DecodeError(f"topic {topic!r} is not under {ROOT}/{{fleet}}/{{kind}}")
    fleet, kind, rest = parts[2], parts[3], parts[4:]
    if kind not in _ARITY:
        raise DecodeError(f"topic {topic!r}: unknown kind {kind!r}; expected one of {sorted(_ARITY)}")
    if len(rest) != _ARITY[kind]:
        raise DecodeError(f"topic {topic!r}: kind {kind!r} takes {_ARITY[kind]} segments after it, got {len(rest)}")
    try:
        check_segment(fleet, "fleet")
        for seg in rest:
            check_segment(seg, "segment")
        if kind == "up":
            key = ModuleKey(kind=rest[3], modality=rest[1], task=rest[2])
            return Topic(fleet=fleet, kind=kind, fog=rest[0], module=key, node=rest[4])
        if kind in ("cluster", "fogup", "fogpeer"):
            key = ModuleKey(kind=rest[3], modality=rest[1], task=rest[2])
            return Topic(fleet=fleet, kind=kind, fog=rest[0], module=key)
        if kind == "global":
            return Topic(fleet=fleet, kind=kind, module=ModuleKey(kind=rest[2], modality=rest[0], task=rest[1]))
        if kind == "fogdone":
            return Topic(fleet=fleet, kind=kind, fog=rest[0])
        if kind in ("resync", "chunk"):
            return Topic(fleet=fleet, kind=kind, fog=rest[0], node=rest[1])
        if kind in ("ack", "peer"):
            return Topic(fleet=fleet, kind=kind, fog=rest[0], to=rest[1], node=rest[2])
        return Topic(fleet=fleet, kind=kind, node=rest[0])
    except ValueError as exc:
        raise DecodeError(f"topic {topic!r}: {exc}") from None

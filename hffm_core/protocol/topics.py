"""The topic scheme: the only place that builds or parses an hffm topic string.

Root ``hffm/v1/{fleet}``. Every segment matches ``[a-z0-9_-]{1,64}``; ``_`` stands for "any" (an encoder's task, a
head's modality). Each kind's segments, message type, publishers, signer, QoS, retain flag and bridging are rows of
:data:`hffm_core.protocol.topic_table.TOPIC_TABLE`: :func:`parse` and :func:`build` read it, and every builder
below checks its kind's arity against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hffm_core.errors import DecodeError
from hffm_core.protocol.checks import check_segment
from hffm_core.protocol.keys import ModuleKey
from hffm_core.protocol.topic_table import MODULE_SEGMENTS, TOPIC_FIELD, TOPIC_SPECS

ROOT = "hffm/v1"

TopicKind = Literal["up", "cluster", "fogup", "global", "ctl", "fogdone", "state", "metrics", "resync", "ack",
                    "chunk", "peer", "fogpeer"]


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


def _topic(kind: str, fleet: str, *values: str | ModuleKey) -> str:
    """``hffm/v1/{fleet}/{kind}/...``: ``values`` fill the kind's segments in order (a ModuleKey fills
    ``modality/task/kind``), each checked under its segment's name."""
    names = TOPIC_SPECS[kind].segments
    parts: list[str] = []
    for value in values:
        if isinstance(value, ModuleKey):
            parts += [value.modality, value.task, value.kind]
        else:
            parts.append(check_segment(value, names[len(parts)]))
    if len(parts) != len(names):  # a builder that disagrees with the table: a bug here, not bad input
        raise AssertionError(f"kind {kind!r} takes {len(names)} segments, built {len(parts)}")
    return f"{_base(fleet, kind)}/{'/'.join(parts)}"


def up(fleet: str, fog: str, key: ModuleKey, device: str) -> str:
    """device -> fog: a module delta (QoS 1)."""
    return _topic("up", fleet, fog, key, device)


def up_filter(fleet: str, fog: str) -> str:
    return f"{_base(fleet, 'up')}/{check_segment(fog, 'fog')}/#"


def cluster(fleet: str, fog: str, key: ModuleKey) -> str:
    """fog -> its devices: the cluster module version (QoS 1, retained)."""
    return _topic("cluster", fleet, fog, key)


def fogup(fleet: str, fog: str, key: ModuleKey) -> str:
    """fog -> cloud: the fog's aggregate and its total weight (QoS 1, bridged out)."""
    return _topic("fogup", fleet, fog, key)


def fogup_filter(fleet: str, fog: str | None = None) -> str:
    return f"{_base(fleet, 'fogup')}/{check_segment(fog, 'fog') if fog is not None else '+'}/#"


def fogpeer(fleet: str, fog: str, key: ModuleKey) -> str:
    """``fogpeer/{fog}/{modality}/{task}/{kind}``: fog ``fog``'s cluster aggregate of a module for its neighbour fogs
    (carried to them by the fog-to-fog bridges generated from the topology)."""
    return _topic("fogpeer", fleet, fog, key)


def fogpeer_filter(fleet: str, fog: str) -> str:
    """``fogpeer/{fog}/#``: every aggregate fog ``fog`` shares with its neighbours."""
    return f"{_base(fleet, 'fogpeer')}/{check_segment(fog, 'fog')}/#"


def fogdone(fleet: str, fog: str) -> str:
    """fog -> cloud: the end-of-global-round report listing the aggregates sent (QoS 1, bridged out)."""
    return _topic("fogdone", fleet, fog)


def fogdone_filter(fleet: str) -> str:
    return f"{_base(fleet, 'fogdone')}/+"


def global_(fleet: str, key: ModuleKey) -> str:
    """cloud -> all: the global module version (QoS 1, retained, bridged in)."""
    return _topic("global", fleet, key)


def global_filter(fleet: str) -> str:
    return f"{_base(fleet, 'global')}/#"


def ctl(fleet: str, node: str) -> str:
    """Round announcements: ``ctl/cloud`` (cloud -> fogs) and ``ctl/{fog}`` (fog -> its devices); retained."""
    return _topic("ctl", fleet, node)


def ctl_filter(fleet: str) -> str:
    """``ctl/+``: every round announcement of the fleet (the cloud's and each fog's); for observers."""
    return f"{_base(fleet, 'ctl')}/+"


def state(fleet: str, node: str) -> str:
    """A node's capability advert / status; retained, with a last-will 'offline'."""
    return _topic("state", fleet, node)


def state_filter(fleet: str) -> str:
    return f"{_base(fleet, 'state')}/+"


def metrics(fleet: str, node: str = "cloud") -> str:
    """cloud -> observers: per-round evaluation metrics (QoS 1, retained)."""
    return _topic("metrics", fleet, node)


def resync(fleet: str, target: str, node: str) -> str:
    """receiver -> publisher: a node asks for the full state of modules it cannot apply a delta to (QoS 1)."""
    return _topic("resync", fleet, target, node)


def resync_filter(fleet: str, target: str) -> str:
    return f"{_base(fleet, 'resync')}/{check_segment(target, 'target')}/+"


def chunk(fleet: str, target: str, node: str) -> str:
    """``chunk/{target}/{node}``: pieces of a payload above the broker's packet limit (target: a fog id, or
    ``cloud``, bridged out)."""
    return _topic("chunk", fleet, target, node)


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
    return _topic("peer", fleet, fog, to, sender)


def ack(fleet: str, fog: str, to: str, sender: str) -> str:
    """``sender`` acknowledges to ``to`` (both under fog ``fog``; ``sender`` may be ``cloud``)."""
    return _topic("ack", fleet, fog, to, sender)


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


def matches(filter_: str, topic: str) -> bool:
    """Whether MQTT topic filter ``filter_`` (``+``: one level, ``#``: the rest) matches the topic ``topic``, as a
    broker applies a subscription or an ACL pattern."""
    f_levels, t_levels = filter_.split("/"), topic.split("/")
    for i, level in enumerate(f_levels):
        if level == "#":
            return True
        if i >= len(t_levels) or (level != "+" and level != t_levels[i]):
            return False
    return len(f_levels) == len(t_levels)


def build(topic: Topic) -> str:
    """Build the string of a parsed :class:`Topic` (inverse of :func:`parse`).

    Raises:
        ValueError: an unknown kind, or a field its kind needs is unset or empty ("incomplete topic").
    """
    spec = TOPIC_SPECS.get(topic.kind)
    values = [] if spec is None else [getattr(topic, TOPIC_FIELD[name]) for name in spec.segments
                                      if name not in MODULE_SEGMENTS[1:]]
    if spec is None or not all(values):
        raise ValueError(f"incomplete topic {topic!r}")
    return _topic(topic.kind, topic.fleet, *values)


def _parse_plan(segments: tuple[str, ...]) -> tuple[tuple[tuple[str, int], ...], tuple[int, int, int] | None]:
    """(Topic field, index) of each plain segment, and the indices of (modality, task, kind) or None."""
    named = tuple((TOPIC_FIELD[name], i) for i, name in enumerate(segments) if name not in MODULE_SEGMENTS)
    if MODULE_SEGMENTS[0] not in segments:
        return named, None
    m, t, k = (segments.index(name) for name in MODULE_SEGMENTS)
    return named, (m, t, k)


# Per kind, from the table once: where parse() finds each field (it runs on every message received).
_PARSE_PLAN = {kind: _parse_plan(spec.segments) for kind, spec in TOPIC_SPECS.items()}


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
    spec = TOPIC_SPECS.get(kind)
    if spec is None:
        raise DecodeError(f"topic {topic!r}: unknown kind {kind!r}; expected one of {sorted(TOPIC_SPECS)}")
    if len(rest) != spec.arity:
        raise DecodeError(f"topic {topic!r}: kind {kind!r} takes {spec.arity} segments after it, got {len(rest)}")
    try:
        check_segment(fleet, "fleet")
        for seg in rest:
            check_segment(seg, "segment")
        named, module_at = _PARSE_PLAN[kind]
        fields = {name: rest[i] for name, i in named}
        if module_at is not None:
            m, t, k = module_at
            fields["module"] = ModuleKey(kind=rest[k], modality=rest[m], task=rest[t])
        return Topic(fleet=fleet, kind=kind, **fields)
    except ValueError as exc:
        raise DecodeError(f"topic {topic!r}: {exc}") from None

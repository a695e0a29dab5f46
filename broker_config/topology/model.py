"""The fleet's topology as values: fogs, devices, D2D and fog-to-fog neighbour links, and each link's radio.

Every value validates itself (a :class:`~hffm_core.errors.TopologyError` naming the field and quoting the value),
so a :class:`Topology` built in code is held to the same rules as one read from a file (``toml_file.py``). Neighbour
links are undirected: the methods read them from both sides, and the file reader and :func:`generate_topology`
store both sides, sorted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeVar

from hffm_core.errors import TopologyError
from hffm_core.protocol.topics import check_segment

__all__ = [
    "CLOUD",
    "DEFAULT_LINKS",
    "LINK_KINDS",
    "Channel",
    "DeviceNode",
    "FogNode",
    "LinkParams",
    "Topology",
]  # check_id and check_number are for the package's own modules (the file reader)

_Node = TypeVar("_Node", "FogNode", "DeviceNode")  # what Topology._fog and ._device look up

# The link kinds, in tier order: device<->device (D2D, within a fog), device<->fog, fog<->fog, fog<->cloud, and
# device<->cloud for the star topology (devices talk to the cloud directly).
LINK_KINDS: tuple[str, ...] = ("device_device", "device_fog", "fog_fog", "fog_cloud", "device_cloud")
# The cloud's node id in link ids, e.g. ("fog_cloud", "fog-1", "cloud"). No fog or device may take it.
CLOUD = "cloud"


def check_number(value: object, what: str, *, positive: bool = True) -> float:
    """``value`` as a float if it is a finite number (and > 0 when ``positive``); bools are refused.

    Raises:
        TopologyError: naming ``what`` and quoting the value.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TopologyError(f"{what} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or (positive and number <= 0):
        raise TopologyError(f"{what} must be a finite number{' > 0' if positive else ''}, got {value!r}")
    return number


def check_id(value: object, what: str) -> None:
    """Refuse an id that is not a topic segment, or is the cloud's id.

    Raises:
        TopologyError: naming ``what`` and quoting the value.
    """
    try:
        check_segment(value, what)  # type: ignore[arg-type]
    except ValueError as exc:
        raise TopologyError(str(exc)) from None
    if value == CLOUD:
        raise TopologyError(f"invalid {what} {value!r}: {CLOUD!r} is the cloud's id")


@dataclass(frozen=True, slots=True)
class LinkParams:
    """One radio link: channel bandwidth (Hz), the transmitter's power (W) and the distance (m); all > 0."""

    bandwidth_hz: float
    tx_power_w: float
    distance_m: float

    def __post_init__(self) -> None:
        for name in ("bandwidth_hz", "tx_power_w", "distance_m"):
            check_number(getattr(self, name), name)


@dataclass(frozen=True, slots=True)
class Channel:
    """The propagation model shared by every link: thermal noise density N0 (dBm/Hz), path-loss exponent alpha and
    the channel gain at the 1 m reference distance (dB). The defaults are those of the HF-FM prototype
    (docs/topology.md)."""

    noise_dbm_per_hz: float = -174.0
    path_loss_exponent: float = 3.0
    ref_gain_db: float = -30.0

    def __post_init__(self) -> None:
        check_number(self.noise_dbm_per_hz, "noise_dbm_per_hz", positive=False)
        check_number(self.path_loss_exponent, "path_loss_exponent")
        check_number(self.ref_gain_db, "ref_gain_db", positive=False)


# Defaults per link kind; docs/topology.md gives the source or assumption behind each value.
DEFAULT_LINKS: MappingProxyType[str, LinkParams] = MappingProxyType({
    "device_device": LinkParams(bandwidth_hz=1e6, tx_power_w=0.1, distance_m=10.0),
    "device_fog": LinkParams(bandwidth_hz=1e6, tx_power_w=0.2, distance_m=100.0),
    "fog_fog": LinkParams(bandwidth_hz=10e6, tx_power_w=1.0, distance_m=1000.0),
    "fog_cloud": LinkParams(bandwidth_hz=10e6, tx_power_w=1.0, distance_m=5000.0),
    "device_cloud": LinkParams(bandwidth_hz=1e6, tx_power_w=0.2, distance_m=5000.0),
})


@dataclass(frozen=True, slots=True)
class FogNode:
    """A fog: its neighbour fogs, its E_agg (cluster rounds per global round; None = the job's value) and its
    fog<->cloud link."""

    id: str
    neighbours: tuple[str, ...]
    agg_every: int | None
    link: LinkParams

    def __post_init__(self) -> None:
        check_id(self.id, "fog id")
        _check_neighbours(self.id, self.neighbours)
        if self.agg_every is not None and (
            isinstance(self.agg_every, bool) or not isinstance(self.agg_every, int) or self.agg_every < 1
        ):
            raise TopologyError(f"fog {self.id!r}: agg_every must be an integer >= 1, got {self.agg_every!r}")
        _check_link(self.link, f"fog {self.id!r}: link")


@dataclass(frozen=True, slots=True)
class DeviceNode:
    """A device: its fog, its D2D neighbours (devices of the same fog), its device<->fog link and its D2D radio."""

    id: str
    fog: str
    neighbours: tuple[str, ...]
    link: LinkParams
    d2d_link: LinkParams

    def __post_init__(self) -> None:
        check_id(self.id, "device id")
        check_id(self.fog, f"device {self.id!r}: fog")
        _check_neighbours(self.id, self.neighbours)
        _check_link(self.link, f"device {self.id!r}: link")
        _check_link(self.d2d_link, f"device {self.id!r}: d2d_link")


@dataclass(frozen=True)
class Topology:
    """The whole fleet. ``fogs`` and ``devices`` map each id to its node; ``defaults`` holds one
    :class:`LinkParams` per kind in :data:`LINK_KINDS` (used where a node has no link of its own: fog<->fog and
    device<->cloud)."""

    fleet: str
    fogs: dict[str, FogNode]
    devices: dict[str, DeviceNode]
    channel: Channel = field(default_factory=Channel)
    defaults: dict[str, LinkParams] = field(default_factory=lambda: dict(DEFAULT_LINKS))
    name: str = ""

    def __post_init__(self) -> None:
        try:
            check_segment(self.fleet, "fleet")
        except ValueError as exc:
            raise TopologyError(str(exc)) from None
        if not isinstance(self.name, str):
            raise TopologyError(f"topology name must be a string, got {self.name!r}")
        if not isinstance(self.channel, Channel):
            raise TopologyError(f"channel must be a Channel, got {type(self.channel).__name__}")
        if sorted(self.defaults) != sorted(LINK_KINDS):
            raise TopologyError(f"defaults must name exactly the link kinds {list(LINK_KINDS)}, got {sorted(self.defaults)}")
        for kind, params in self.defaults.items():
            _check_link(params, f"defaults[{kind!r}]")
        if not self.fogs:
            raise TopologyError("a topology needs at least one fog")
        for kind_name, nodes, node_type in (("fog", self.fogs, FogNode), ("device", self.devices, DeviceNode)):
            for key, node in nodes.items():
                if not isinstance(node, node_type) or node.id != key:
                    raise TopologyError(f"{kind_name}s[{key!r}] must be a {node_type.__name__} with id {key!r}")
        both = sorted(set(self.fogs) & set(self.devices))
        if both:
            raise TopologyError(f"id(s) {both} name both a fog and a device")
        for fog in self.fogs.values():
            for other in fog.neighbours:
                if other not in self.fogs:
                    raise TopologyError(f"fog {fog.id!r}: neighbour {other!r} is not a fog of the topology")
        for dev in self.devices.values():
            if dev.fog not in self.fogs:
                raise TopologyError(f"device {dev.id!r}: fog {dev.fog!r} is not a fog of the topology")
            for other in dev.neighbours:
                peer = self.devices.get(other)
                if peer is None:
                    raise TopologyError(f"device {dev.id!r}: neighbour {other!r} is not a device of the topology")
                if peer.fog != dev.fog:
                    raise TopologyError(f"device {dev.id!r} (fog {dev.fog!r}): neighbour {other!r} is in fog "
                                        f"{peer.fog!r}; D2D links stay within a fog")

    # --- queries -------------------------------------------------------------------------------------------

    def devices_of(self, fog: str) -> list[str]:
        """The devices of ``fog``, sorted.

        Raises:
            TopologyError: ``fog`` is not a fog of the topology.
        """
        self._fog(fog)
        return sorted(d.id for d in self.devices.values() if d.fog == fog)

    def d2d_groups(self, fog: str) -> list[tuple[str, ...]]:
        """The D2D groups of ``fog``: the connected components (of two devices or more) of its devices' neighbour
        graph, each sorted, in the order of their first member. A group's first member is its hub.

        Raises:
            TopologyError: ``fog`` is not a fog of the topology.
        """
        members = self.devices_of(fog)
        adjacency = _adjacency((d, n) for d in members for n in self.devices[d].neighbours)
        seen: set[str] = set()
        groups = []
        for start in members:
            if start in seen:
                continue
            component, frontier = {start}, [start]
            while frontier:
                for nxt in adjacency.get(frontier.pop(), ()):
                    if nxt not in component:
                        component.add(nxt)
                        frontier.append(nxt)
            seen |= component
            if len(component) >= 2:
                groups.append(tuple(sorted(component)))
        return sorted(groups)

    def group_of(self, device: str) -> tuple[str, ...] | None:
        """The D2D group ``device`` belongs to, or None if it has no D2D neighbour.

        Raises:
            TopologyError: ``device`` is not a device of the topology.
        """
        node = self._device(device)
        return next((g for g in self.d2d_groups(node.fog) if device in g), None)

    def fog_links(self) -> list[tuple[str, str]]:
        """Each undirected fog<->fog link once, as (lower id, higher id), sorted."""
        return sorted({_pair(f.id, n) for f in self.fogs.values() for n in f.neighbours})

    def d2d_links(self, fog: str | None = None) -> list[tuple[str, str]]:
        """Each undirected device<->device link once (of ``fog`` only, if given), as (lower id, higher id), sorted."""
        nodes = self.devices.values() if fog is None else [self.devices[d] for d in self.devices_of(fog)]
        return sorted({_pair(d.id, n) for d in nodes for n in d.neighbours})

    def link(self, kind: str, a: str, b: str) -> LinkParams:
        """The parameters of link ``(kind, a, b)``; either order of ``a`` and ``b`` names the same link.

        - ``device_device``: two devices of the same D2D group (traffic between group members goes through the
          group's broker on the hub, so they need not be direct neighbours); the D2D radio of ``a``, the sender.
        - ``device_fog``: a device and its fog; the device's ``link``.
        - ``fog_fog``: two neighbour fogs; ``defaults["fog_fog"]``.
        - ``fog_cloud``: a fog and ``"cloud"``; the fog's ``link``.
        - ``device_cloud``: a device and ``"cloud"`` (star topology); ``defaults["device_cloud"]``.

        Raises:
            TopologyError: an unknown kind, an unknown node, or two nodes that this kind of link does not join.
        """
        what = f"link ({kind!r}, {a!r}, {b!r})"
        if kind == "device_device":
            sender = self._device(a, what)
            self._device(b, what)
            group = self.group_of(a)
            if a == b or group is None or b not in group:
                raise TopologyError(f"{what}: {a!r} and {b!r} are not in the same D2D group")
            return sender.d2d_link
        if kind == "device_fog":
            device, fog = (a, b) if a in self.devices else (b, a)
            node = self._device(device, what)
            if node.fog != fog:
                raise TopologyError(f"{what}: device {device!r} belongs to fog {node.fog!r}, not {fog!r}")
            return node.link
        if kind == "fog_fog":
            fog_a = self._fog(a, what)
            self._fog(b, what)
            if b not in fog_a.neighbours and a not in self.fogs[b].neighbours:
                raise TopologyError(f"{what}: fogs {a!r} and {b!r} are not neighbours")
            return self.defaults["fog_fog"]
        if kind in ("fog_cloud", "device_cloud"):
            node_id = b if a == CLOUD else a
            if CLOUD not in (a, b) or node_id == CLOUD:
                raise TopologyError(f"{what}: one end must be {CLOUD!r}")
            if kind == "fog_cloud":
                return self._fog(node_id, what).link
            self._device(node_id, what)
            return self.defaults["device_cloud"]
        raise TopologyError(f"unknown link kind {kind!r}; expected one of {list(LINK_KINDS)}")

    def _fog(self, fog: str, what: str = "") -> FogNode:
        return _known(self.fogs, fog, "fog", what, listed=True)

    def _device(self, device: str, what: str = "") -> DeviceNode:
        return _known(self.devices, device, "device", what, listed=False)


def _known(nodes: Mapping[str, _Node], node_id: str, kind: str, what: str, *, listed: bool) -> _Node:
    """``nodes[node_id]``. Raises: TopologyError: an unknown id (prefixed with ``what``; with ``listed``, naming the
    known ids too)."""
    node = nodes.get(node_id)
    if node is None:
        prefix = f"{what}: " if what else ""
        known = f"; the {kind}s are {sorted(nodes)}" if listed else ""
        raise TopologyError(f"{prefix}unknown {kind} {node_id!r}{known}")
    return node


# --- helpers ------------------------------------------------------------------------------------------------


def _check_neighbours(node: str, neighbours: object) -> None:
    if not isinstance(neighbours, tuple) or not all(isinstance(n, str) for n in neighbours):
        raise TopologyError(f"{node!r}: neighbours must be a tuple of ids, got {neighbours!r}")
    if node in neighbours:
        raise TopologyError(f"{node!r}: lists itself as a neighbour")
    if len(set(neighbours)) != len(neighbours):
        raise TopologyError(f"{node!r}: lists a neighbour twice: {list(neighbours)}")


def _check_link(params: object, what: str) -> None:
    if not isinstance(params, LinkParams):
        raise TopologyError(f"{what} must be LinkParams, got {type(params).__name__}")


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


def _adjacency(edges: Iterable[tuple[str, str]]) -> dict[str, set[str]]:
    adjacency: dict[str, set[str]] = {}
    for a, b in edges:
        adjacency.setdefault(a, set()).add(b)
        adjacency.setdefault(b, set()).add(a)
    return adjacency

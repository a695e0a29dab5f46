"""Topology files: TOML in, :class:`~broker_config.topology.model.Topology` out, and back.

The format is documented field by field in ``examples/topology.toml`` and ``docs/topology.md``. Every problem is a
:class:`~hffm_core.errors.TopologyError` (a ConfigError, exit code 2) whose message names the file, the entry
(``[[fog]] 'fog-1'``, or its position before its id is known) and the field, and quotes the bad value.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

from broker_config.topology.model import (
    CLOUD,
    DEFAULT_LINKS,
    LINK_KINDS,
    Channel,
    DeviceNode,
    FogNode,
    LinkParams,
    Topology,
    check_id,
    check_number,
)
from hffm_core.errors import TopologyError
from hffm_core.protocol.topics import check_segment

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (JetPack 6): the same parser from PyPI
    import tomli as tomllib

__all__ = ["dump_topology", "load_topology", "parse_topology"]

_TOP_KEYS = ("channel", "device", "fog", "links", "topology")
_TOPOLOGY_KEYS = ("fleet", "name")
_CHANNEL_KEYS = ("noise_dbm_per_hz", "path_loss_exponent", "ref_gain_db")
_LINK_KEYS = ("bandwidth_hz", "distance_m", "tx_power_w")
_FOG_KEYS = ("agg_every", "id", "link", "neighbours")
_DEVICE_KEYS = ("d2d_link", "fog", "id", "link", "neighbours")


def load_topology(path: str | Path) -> Topology:
    """Read and validate a topology file.

    Raises:
        TopologyError: the file cannot be read, is not TOML, or breaks a rule (see :func:`parse_topology`).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise TopologyError(f"cannot read topology {str(path)!r}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TopologyError(f"{path}: invalid TOML: {exc}") from None
    return parse_topology(data, source=str(path))


def parse_topology(data: Mapping[str, Any], *, source: str = "topology") -> Topology:
    """Validate a parsed topology document (the dict ``tomllib`` returns) and build the :class:`Topology`.

    Neighbour links are undirected: listing one on either side is enough, and both nodes get it.

    Raises:
        TopologyError: an unknown key; a missing or mistyped field; a duplicate id, or a fog and a device sharing
            one; an id that is not a topic segment (``[a-z0-9_-]{1,64}``) or is ``"cloud"``; a device whose fog
            does not exist; a neighbour that does not exist, is the node itself or is of the other kind; a D2D
            neighbour in another fog; a number that is not finite or not > 0 (the channel's dB values need only
            be finite); ``agg_every`` < 1; no fog or no device. The message starts with ``source``.
    """
    _keys(data, _TOP_KEYS, source)
    fleet, name = _head(data, source)
    channel_table = _table(data, "channel", source, required=False)
    _keys(channel_table, _CHANNEL_KEYS, f"{source}: [channel]")
    channel = _build(Channel, {k: _number(channel_table, k, f"{source}: [channel]", positive=k == "path_loss_exponent")
                               for k in _CHANNEL_KEYS if k in channel_table}, f"{source}: [channel]")
    links_table = _table(data, "links", source, required=False)
    _keys(links_table, LINK_KINDS, f"{source}: [links]")
    defaults = {kind: _link(links_table, kind, DEFAULT_LINKS[kind], f"{source}: [links.{kind}]") for kind in LINK_KINDS}
    fog_entries = _entries(data, "fog", source)
    device_entries = _entries(data, "device", source)
    if not fog_entries:
        raise TopologyError(f"{source}: no [[fog]] entry; a topology needs at least one fog")
    if not device_entries:
        raise TopologyError(f"{source}: no [[device]] entry; a topology needs at least one device")
    fog_ids = _ids(fog_entries, "fog", _FOG_KEYS, source, taken=set())
    device_ids = _ids(device_entries, "device", _DEVICE_KEYS, source, taken=set(fog_ids))
    fogs_in = dict(zip(fog_ids, fog_entries))
    devices_in = dict(zip(device_ids, device_entries))
    fog_of = {dev: _device_fog(entry, fog_ids, f"{source}: [[device]] {dev!r}") for dev, entry in devices_in.items()}
    adjacency = _links(fogs_in, devices_in, fog_of, source)
    fogs = {fog: _fog_node(fog, entry, adjacency[fog], defaults, f"{source}: [[fog]] {fog!r}")
            for fog, entry in fogs_in.items()}
    devices = {dev: _device_node(dev, fog_of[dev], entry, adjacency[dev], defaults, f"{source}: [[device]] {dev!r}")
               for dev, entry in devices_in.items()}
    try:
        return Topology(fleet=fleet, fogs=fogs, devices=devices, channel=channel, defaults=defaults, name=name)
    except TopologyError as exc:
        raise TopologyError(f"{source}: {exc}") from None


def dump_topology(topology: Topology) -> str:
    """The topology as a TOML document that :func:`parse_topology` reads back into an equal :class:`Topology`.

    Every link default is written out; a node's own link table only where it differs from its kind's default.
    Neighbour lists are written from both sides.
    """
    doc: dict[str, Any] = {"topology": {"fleet": topology.fleet, "name": topology.name}}
    doc["channel"] = {k: getattr(topology.channel, k) for k in _CHANNEL_KEYS}
    doc["links"] = {kind: _link_dict(topology.defaults[kind]) for kind in LINK_KINDS}
    fogs = []
    for fog in sorted(topology.fogs.values(), key=lambda f: f.id):
        entry: dict[str, Any] = {"id": fog.id, "neighbours": list(fog.neighbours)}
        if fog.agg_every is not None:
            entry["agg_every"] = fog.agg_every
        if fog.link != topology.defaults["fog_cloud"]:
            entry["link"] = _link_dict(fog.link)
        fogs.append(entry)
    devices = []
    for dev in sorted(topology.devices.values(), key=lambda d: d.id):
        entry = {"id": dev.id, "fog": dev.fog, "neighbours": list(dev.neighbours)}
        if dev.link != topology.defaults["device_fog"]:
            entry["link"] = _link_dict(dev.link)
        if dev.d2d_link != topology.defaults["device_device"]:
            entry["d2d_link"] = _link_dict(dev.d2d_link)
        devices.append(entry)
    doc["fog"] = fogs
    doc["device"] = devices
    return tomli_w.dumps(doc)


# --- helpers ------------------------------------------------------------------------------------------------


def _keys(table: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise TopologyError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(allowed)}")


def _table(data: Mapping[str, Any], key: str, where: str, *, required: bool) -> Mapping[str, Any]:
    if key not in data:
        if required:
            raise TopologyError(f"{where}: missing table [{key}]")
        return {}
    value = data[key]
    if not isinstance(value, Mapping):
        raise TopologyError(f"{where}: [{key}] must be a table, got {value!r}")
    return value


def _string(table: Mapping[str, Any], key: str, where: str, *, required: bool) -> str:
    if key not in table:
        if required:
            raise TopologyError(f"{where}: missing key {key!r}")
        return ""
    value = table[key]
    if not isinstance(value, str):
        raise TopologyError(f"{where}: {key} must be a string, got {value!r}")
    return value


def _number(table: Mapping[str, Any], key: str, where: str, *, positive: bool = True) -> float:
    return check_number(table[key], f"{where}: {key}", positive=positive)


def _link(table: Mapping[str, Any], key: str, default: LinkParams, where: str) -> LinkParams:
    """``table[key]`` (a partial link table) over ``default``; ``default`` itself when absent."""
    if key not in table:
        return default
    override = table[key]
    if not isinstance(override, Mapping):
        raise TopologyError(f"{where} must be a table, got {override!r}")
    _keys(override, _LINK_KEYS, where)
    values = {k: _number(override, k, where) if k in override else getattr(default, k) for k in _LINK_KEYS}
    return LinkParams(**values)


def _link_dict(params: LinkParams) -> dict[str, float]:
    return {k: getattr(params, k) for k in ("bandwidth_hz", "tx_power_w", "distance_m")}


def _build(cls: type, values: dict[str, float], where: str) -> Any:
    try:
        return cls(**values)
    except TopologyError as exc:
        raise TopologyError(f"{where}: {exc}") from None


def _entries(data: Mapping[str, Any], key: str, where: str) -> list[Mapping[str, Any]]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(e, Mapping) for e in value):
        raise TopologyError(f"{where}: {key} must be an array of tables ([[{key}]] entries), got {value!r}")
    return value


def _ids(entries: list[Mapping[str, Any]], kind: str, allowed: tuple[str, ...], source: str,
         *, taken: set[str]) -> list[str]:
    """Each entry's id, after checking its keys; refuses a bad, reserved or repeated id."""
    ids: list[str] = []
    for number, entry in enumerate(entries, start=1):
        where = f"{source}: [[{kind}]] #{number}"
        _keys(entry, allowed, where)
        node = _string(entry, "id", where, required=True)
        try:
            check_id(node, "id")
        except TopologyError as exc:
            raise TopologyError(f"{where}: {exc}") from None
        if node in ids:
            raise TopologyError(f"{where}: duplicate {kind} id {node!r}")
        if node in taken:
            raise TopologyError(f"{where}: id {node!r} is already a fog's id")
        ids.append(node)
    return ids


def _head(data: Mapping[str, Any], source: str) -> tuple[str, str]:
    """The ``[topology]`` table's fleet and name."""
    where = f"{source}: [topology]"
    head = _table(data, "topology", source, required=True)
    _keys(head, _TOPOLOGY_KEYS, where)
    fleet = _string(head, "fleet", where, required=True)
    name = _string(head, "name", where, required=False)
    try:
        check_segment(fleet, "fleet")
    except ValueError as exc:
        raise TopologyError(f"{where}: {exc}") from None
    return fleet, name


def _links(fogs: Mapping[str, Mapping[str, Any]], devices: Mapping[str, Mapping[str, Any]], fog_of: Mapping[str, str],
           source: str) -> dict[str, set[str]]:
    """Every node's neighbours, from both sides of each listed link, after checking each list."""
    adjacency: dict[str, set[str]] = {node: set() for node in [*fogs, *devices]}
    for fog, entry in fogs.items():
        for other in _neighbours(entry, fog, "fog", list(fogs), list(devices), f"{source}: [[fog]] {fog!r}"):
            adjacency[fog].add(other)
            adjacency[other].add(fog)
    for dev, entry in devices.items():
        where = f"{source}: [[device]] {dev!r}"
        for other in _neighbours(entry, dev, "device", list(devices), list(fogs), where):
            if fog_of[other] != fog_of[dev]:
                raise TopologyError(f"{where}: neighbours: {other!r} is in fog {fog_of[other]!r}, not "
                                    f"{fog_of[dev]!r}; D2D links stay within a fog")
            adjacency[dev].add(other)
            adjacency[other].add(dev)
    return adjacency


def _fog_node(fog: str, entry: Mapping[str, Any], neighbours: set[str], defaults: Mapping[str, LinkParams],
              where: str) -> FogNode:
    agg_every = entry.get("agg_every")
    if agg_every is not None and (isinstance(agg_every, bool) or not isinstance(agg_every, int) or agg_every < 1):
        raise TopologyError(f"{where}: agg_every must be an integer >= 1, got {agg_every!r}")
    return FogNode(id=fog, neighbours=tuple(sorted(neighbours)), agg_every=agg_every,
                   link=_link(entry, "link", defaults["fog_cloud"], f"{where}: [fog.link]"))


def _device_node(dev: str, fog: str, entry: Mapping[str, Any], neighbours: set[str],
                 defaults: Mapping[str, LinkParams], where: str) -> DeviceNode:
    return DeviceNode(id=dev, fog=fog, neighbours=tuple(sorted(neighbours)),
                      link=_link(entry, "link", defaults["device_fog"], f"{where}: [device.link]"),
                      d2d_link=_link(entry, "d2d_link", defaults["device_device"], f"{where}: [device.d2d_link]"))


def _device_fog(entry: Mapping[str, Any], fog_ids: list[str], where: str) -> str:
    fog = _string(entry, "fog", where, required=True)
    if fog not in fog_ids:
        known = f"; the fogs are {fog_ids}" if fog != CLOUD else ""
        raise TopologyError(f"{where}: fog {fog!r} is not a [[fog]] of this topology{known}")
    return fog


def _neighbours(entry: Mapping[str, Any], node: str, kind: str, same: list[str], other: list[str],
                where: str) -> list[str]:
    """The ``neighbours`` of an entry: ids of the same kind (``same``), each once, not the node itself."""
    value = entry.get("neighbours", [])
    if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
        raise TopologyError(f"{where}: neighbours must be a list of ids, got {value!r}")
    for number, neighbour in enumerate(value):
        if neighbour == node:
            raise TopologyError(f"{where}: neighbours: lists itself ({node!r}); a self-link is not a link")
        if neighbour in value[:number]:
            raise TopologyError(f"{where}: neighbours: lists {neighbour!r} twice")
        if neighbour in other:
            raise TopologyError(f"{where}: neighbours: {neighbour!r} is not a {kind}; a {kind}'s neighbours are "
                                f"{kind}s" + ("" if kind == "fog" else " (its fog is its `fog` field)"))
        if neighbour not in same:
            raise TopologyError(f"{where}: neighbours: unknown {kind} {neighbour!r}")
    return value

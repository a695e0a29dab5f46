"""Broker access control generated from the fleet's topology: each identity may touch only its own topics.

Brokers run with ``use_identity_as_username``, so the user name an ACL names is the certificate's CN, the node id
(:mod:`broker_config.pki`). Every rule comes from the topic table (:mod:`hffm_core.protocol.topic_table`): each
kind's grants per role (on the role's own broker, or a device's on its D2D group's broker), and for a bridge its
routes (cloud bridge or fog-to-fog bridge). Anything not granted is denied: a refused PUBLISH gets PUBACK 0x87
and reaches no one; a refused SUBSCRIBE gets SUBACK 0x87.

| Identity | Connects to | May publish | May read |
|---|---|---|---|
| device ``d`` of fog ``f`` | fog ``f``'s broker | ``up/f/+/+/+/d``, ``state/d``, ``resync/f/d``, ``chunk/f/d``, ``peer/f/+/d``, ``ack/f/+/d`` | ``cluster/f/#``, ``ctl/f``, ``global/#``, ``peer/f/d/+``, ``ack/f/d/+`` |
| fog gateway ``f`` | fog ``f``'s broker | ``cluster/f/#``, ``ctl/f``, ``fogup/f/#``, ``fogdone/f``, ``state/f``, ``resync/cloud/f``, ``chunk/cloud/f``, ``ack/f/+/f`` | ``up/f/#``, ``chunk/f/+``, ``ack/f/f/+``, ``state/+`` (only its devices' and its own reach its broker), ``resync/f/+``, ``global/#``, ``ctl/cloud``, ``$SYS/#`` |
| bridge ``bridge-f`` | the cloud broker | ``fogup/f/#``, ``fogdone/f``, ``resync/cloud/f``, ``chunk/cloud/f``, ``state/f``, ``state/<its devices>``, its ``$SYS`` connection state | ``global/#``, ``ctl/cloud``, ``metrics/#``, ``ack/f/f/cloud`` |
| cloud | the cloud broker | ``global/#``, ``ctl/cloud``, ``metrics/cloud``, ``ack/f/f/cloud`` for each fog ``f`` | ``fogup/+/#``, ``fogdone/+``, ``resync/cloud/+``, ``chunk/cloud/+``, ``state/+``, ``metrics/#``, ``ctl/+``, ``$SYS/#`` |
| fog gateway ``f`` (also) | fog ``f``'s broker | ``fogpeer/f/#`` | ``fogpeer/n/#`` for each neighbour fog ``n`` |
| peer bridge ``bridge-peer-f`` | the broker of each neighbour ``n`` of ``f`` with a higher id | ``fogpeer/f/#``, its ``$SYS`` connection state | ``fogpeer/n/#`` |
| member ``d`` of D2D group ``G`` (fog ``f``) | the group's D2D broker ``d2d-<hub>`` | ``peer/f/m/d`` and ``ack/f/m/d`` for each other member ``m`` | ``peer/f/d/+``, ``ack/f/d/+`` (the hub also ``$SYS/#``) |

The bridge's local side on a fog broker is mosquitto's own connection and is not subject to access control.

The same rules render two ways. :func:`render_dynsec` writes the config of Mosquitto's dynamic-security plugin,
which the TLS brokers load: it checks SUBSCRIBE too (SUBACK 0x87). :func:`render_acl` writes a classic
``acl_file``, kept because it is easy to review; Mosquitto 2.0's ``acl_file`` never refuses a SUBSCRIBE (its check
returns success for subscribe and unsubscribe, "FIXME - implement ACL subscription strings" in
``src/security_default.c``) and only filters delivery, so the brokers do not use it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from broker_config.pki import BRIDGE_PREFIX, BROKER_PREFIX, bridge_id, broker_id, check_id
from broker_config.render import bridge_state_topic, peer_bridge_state_topic
from hffm_core.errors import ConfigError
from hffm_core.protocol import topics
from hffm_core.protocol.topic_table import TOPIC_TABLE, Role

if TYPE_CHECKING:
    from broker_config.topology import Topology

__all__ = ["CLOUD_BROKER", "AclRule", "FleetSpec", "acl_users", "d2d_broker_name", "peer_bridge_id", "render_acl",
           "render_dynsec", "write_acl", "write_dynsec"]

Access = Literal["read", "write", "readwrite"]
AclRule = tuple[Access, str]
CLOUD_BROKER = "cloud"
SYS_FILTER = "$SYS/#"


D2D_PREFIX = "d2d-"


def d2d_broker_name(hub: str) -> str:
    """The broker name of the D2D group whose hub (first member) is ``hub``: ``d2d-<hub>``; its server certificate
    is ``broker-d2d-<hub>`` and its access control ``acl/d2d-<hub>.json``."""
    return D2D_PREFIX + hub


def peer_bridge_id(fog: str) -> str:
    """The certificate id (CN, and so the user name on its neighbours' brokers) of fog ``fog``'s fog-to-fog bridges:
    ``bridge-peer-<fog>`` (role ``bridge``; one identity for every neighbour it bridges to).

    Raises:
        ConfigError: ``fog`` is not a topic segment, or the id would be longer than 64 characters.
    """
    return check_id(f"{BRIDGE_PREFIX}peer-{check_id(fog, 'fog id')}", "peer bridge id")


@dataclass(frozen=True, slots=True)
class FleetSpec:
    """The topology an ACL is generated from: a fleet, its fogs, each fog's devices, the cloud's id, the D2D
    groups (each a tuple of devices of one fog, its hub first; each runs a D2D broker on its hub) and the fog-to-fog
    links (``(lower id, higher id)`` pairs; the lower fog's broker runs the bridge).

    Raises (on construction):
        ConfigError: a bad id, no fogs, a fog without devices, a node id with a bridge's or broker's prefix, two
            identities or certificates with the same name (a device named like a fog or the cloud, a device in two
            fogs...), a D2D group of fewer than two devices, of devices of two fogs or of unknown devices, a device
            in two groups, or a fog link that is not an ordered pair of two known fogs.
    """

    fleet: str
    fogs: tuple[tuple[str, tuple[str, ...]], ...]
    cloud: str = "cloud"
    groups: tuple[tuple[str, ...], ...] = ()
    links: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        check_id(self.fleet, "fleet")
        if not self.fogs:
            raise ConfigError(f"fleet {self.fleet!r} has no fogs")
        nodes = [(self.cloud, "the cloud")]
        for fog, devices in self.fogs:
            if not devices:
                raise ConfigError(f"fog {fog!r} has no devices")
            nodes += [(fog, f"fog {fog!r}"), *((d, f"device {d!r} of fog {fog!r}") for d in devices)]
        seen: dict[str, str] = {}
        for name, what in nodes:
            check_id(name, "node id")
            if name.startswith((BRIDGE_PREFIX, BROKER_PREFIX)):
                raise ConfigError(f"{what}: ids starting with {BRIDGE_PREFIX!r} or {BROKER_PREFIX!r} are reserved "
                                  "for bridge and broker certificates")
            if name in seen:
                raise ConfigError(f"identity {name!r} is used twice: by {seen[name]} and by {what}")
            seen[name] = what
        self._check_groups()
        self._check_links()
        certs: dict[str, str] = {}
        for cert_id, what in self._extra_certs():
            if cert_id in certs:
                raise ConfigError(f"certificate id {cert_id!r} is used twice: by {certs[cert_id]} and by {what}; "
                                  "rename a fog or device")
            certs[cert_id] = what

    def _check_groups(self) -> None:
        fog_of = {d: fog for fog, devices in self.fogs for d in devices}
        grouped: set[str] = set()
        for group in self.groups:
            if len(group) < 2:
                raise ConfigError(f"D2D group {list(group)} needs at least two devices")
            unknown = [d for d in group if d not in fog_of]
            if unknown:
                raise ConfigError(f"D2D group {list(group)}: {unknown} are not devices of fleet {self.fleet!r}")
            if len({fog_of[d] for d in group}) != 1:
                raise ConfigError(f"D2D group {list(group)} spans fogs {sorted({fog_of[d] for d in group})}; "
                                  "a group stays within one fog")
            twice = sorted(grouped & set(group)) or sorted(d for d in set(group) if group.count(d) > 1)
            if twice:
                raise ConfigError(f"device(s) {twice} are in two D2D groups (or twice in one)")
            grouped |= set(group)

    def _check_links(self) -> None:
        fogs = set(self.fog_ids)
        for link in self.links:
            if len(link) != 2 or not set(link) <= fogs or not link[0] < link[1]:
                raise ConfigError(f"fog link {list(link)} must be two fogs of fleet {self.fleet!r}, lower id first")
        if len(set(self.links)) != len(self.links):
            raise ConfigError(f"a fog link is listed twice in {[list(x) for x in self.links]}")

    def _extra_certs(self) -> list[tuple[str, str]]:
        """Every certificate id besides the nodes': bridges and brokers (all must differ)."""
        out = [(broker_id(CLOUD_BROKER), "the cloud broker")]
        for fog in self.fog_ids:
            out += [(bridge_id(fog), f"fog {fog!r}'s bridge"), (broker_id(fog), f"fog {fog!r}'s broker")]
        out += [(peer_bridge_id(fog), f"fog {fog!r}'s peer bridge") for fog in sorted({low for low, _ in self.links})]
        out += [(broker_id(d2d_broker_name(group[0])), f"D2D group {list(group)}'s broker") for group in self.groups]
        return out

    @classmethod
    def of(cls, fleet: str, fogs: Mapping[str, Sequence[str]], cloud: str = "cloud", *,
           groups: Sequence[Sequence[str]] = (), links: Sequence[Sequence[str]] = ()) -> FleetSpec:
        """Build from a ``{fog: [device, ...]}`` mapping, D2D groups and fog links (ConfigError as above)."""
        return cls(fleet, tuple((fog, tuple(devices)) for fog, devices in fogs.items()), cloud,
                   tuple(tuple(g) for g in groups), tuple((str(a), str(b)) for a, b in links))

    @classmethod
    def from_topology(cls, topology: Topology, cloud: str = "cloud", *, fogs: Sequence[str] | None = None,
                      d2d: bool = True) -> FleetSpec:
        """The fleet of a topology (``fogs``: only these, e.g. the cloud's ``[cloud] fogs``); ``d2d`` false leaves
        out its D2D groups and fog links (a layout without them). ConfigError as above."""
        names = sorted(topology.fogs) if fogs is None else list(fogs)
        groups = [g for fog in names for g in topology.d2d_groups(fog)] if d2d else []
        links = [(a, b) for a, b in topology.fog_links() if a in names and b in names] if d2d else []
        return cls.of(topology.fleet, {fog: topology.devices_of(fog) for fog in names}, cloud, groups=groups,
                      links=links)

    @property
    def fog_ids(self) -> tuple[str, ...]:
        return tuple(fog for fog, _ in self.fogs)

    def devices(self, fog: str) -> tuple[str, ...]:
        """Raises ConfigError for an unknown fog."""
        for name, devices in self.fogs:
            if name == fog:
                return devices
        raise ConfigError(f"unknown fog {fog!r}; fleet {self.fleet!r} has {list(self.fog_ids)}")

    def fog_of(self, device: str) -> str:
        """Raises ConfigError for an unknown device."""
        for fog, devices in self.fogs:
            if device in devices:
                return fog
        raise ConfigError(f"fleet {self.fleet!r} has no device {device!r}")

    def neighbours(self, fog: str) -> tuple[str, ...]:
        """The fogs linked to ``fog``, sorted."""
        return tuple(sorted({b if a == fog else a for a, b in self.links if fog in (a, b)}))

    @property
    def d2d_brokers(self) -> dict[str, tuple[str, ...]]:
        """Each D2D broker's name (``d2d-<hub>``) and its group."""
        return {d2d_broker_name(group[0]): group for group in self.groups}

    @property
    def brokers(self) -> tuple[str, ...]:
        """Every broker of the fleet: ``cloud``, each fog, each D2D group's."""
        return (CLOUD_BROKER, *self.fog_ids, *self.d2d_brokers)


def _granted(fleet: str, role: Role, *, self_id: str, values: Mapping[str, Sequence[str]],
             scope: str = "home") -> list[AclRule]:
    """The rules the topic table grants ``role`` (identity ``self_id``) on ``scope`` brokers, each placeholder of a
    pattern taking each of its ``values`` in turn (``fog``: a device's or fog's own fog, every fog for the cloud;
    ``neighbour``: a fog's neighbours; ``peer``: the other members of a D2D group); a pattern with a placeholder
    that has no values grants nothing. In table order, each rule once."""
    rules: list[AclRule] = []
    for spec in TOPIC_TABLE:
        for grant in spec.grants:
            if grant.role != role or grant.scope != scope:
                continue
            for pattern in _expand(grant.pattern.replace("{self}", self_id), values):
                rule: AclRule = (grant.access, _topic(fleet, spec.kind, pattern))
                if rule not in rules:
                    rules.append(rule)
    return rules


def _expand(pattern: str, values: Mapping[str, Sequence[str]]) -> list[str]:
    names = [name for name in values if "{" + name + "}" in pattern]
    out = [pattern]
    for name in names:
        out = [p.replace("{" + name + "}", value) for p in out for value in values[name]]
    return out


def _topic(fleet: str, kind: str, pattern: str) -> str:
    return f"{topics.ROOT}/{fleet}/{kind}/{pattern}"


def device_rules(fleet: str, fog: str, device: str) -> list[AclRule]:
    """What device ``device`` of fog ``fog`` may do on its fog's broker (its grants in the topic table): publish
    its own updates, advert, resync requests, chunks and D2D messages; read its fog's cluster versions and round
    announcements, the global versions and its D2D inbox."""
    return _granted(fleet, "device", self_id=device, values={"fog": (fog,)})


def member_rules(spec: FleetSpec, group: Sequence[str], device: str) -> list[AclRule]:
    """What member ``device`` of D2D group ``group`` may do on the group's D2D broker (the table's ``device@d2d``
    grants): send its own deltas to another member (``peer/f/<member>/<device>``) and, as a relay, ack another
    member (``ack/f/<member>/<device>``); read its own inbox and acks. The hub (the group's first member, which runs
    the broker) also reads the broker's ``$SYS``."""
    others = [d for d in group if d != device]
    rules = _granted(spec.fleet, "device", self_id=device, scope="d2d",
                     values={"fog": (spec.fog_of(device),), "peer": others})
    return [*rules, ("read", SYS_FILTER)] if device == group[0] else rules


def fog_rules(spec: FleetSpec, fog: str) -> list[AclRule]:
    """What fog gateway ``fog`` may do on its own broker: its grants in the topic table (among them every advert
    on its broker, which the operators' ``hffm fleet status -c fog.toml`` and the Ansible upgrade's health check
    read as the fog; the bridge carries no other fog's in; its own ``fogpeer`` out and its neighbours' in), and its
    broker's ``$SYS`` topics."""
    values = {"fog": (fog,), "neighbour": spec.neighbours(fog)}
    return [*_granted(spec.fleet, "fog", self_id=fog, values=values), ("read", SYS_FILTER)]


def bridge_rules(spec: FleetSpec, fog: str) -> list[AclRule]:
    """What fog ``fog``'s bridge may do on the cloud broker: the topic table's cloud-bridge routes (what
    broker_config/fog.conf.tmpl forwards; ``out`` is a write, ``in`` a read), narrowed to that fog (``state/#`` out
    becomes the states of the fog and of its devices), and its own ``$SYS`` connection state."""
    return [*_route_rules(spec, "cloud", fog=fog), ("write", bridge_state_topic(spec.fleet, fog))]


def peer_bridge_rules(spec: FleetSpec, fog: str, neighbour: str) -> list[AclRule]:
    """What fog ``fog``'s peer bridge (``bridge-peer-<fog>``) may do on neighbour ``neighbour``'s broker: the topic
    table's peer routes (fog_peer_bridge.conf.tmpl): write ``fog``'s own ``fogpeer/<fog>/#``, read the neighbour's
    ``fogpeer/<neighbour>/#``, and its own ``$SYS`` connection state."""
    return [*_route_rules(spec, "peer", fog=fog, neighbour=neighbour),
            ("write", peer_bridge_state_topic(spec.fleet, fog, neighbour))]


def _route_rules(spec: FleetSpec, link: str, *, fog: str, neighbour: str = "") -> list[AclRule]:
    rules: list[AclRule] = []
    for kind_spec in TOPIC_TABLE:
        for route in kind_spec.bridges:
            if route.link != link:
                continue
            access: Access = "write" if route.direction == "out" else "read"
            for pattern in route.acl or (route.pattern,):
                names = spec.devices(fog) if "{device}" in pattern else ("",)
                rules += [(access, _topic(spec.fleet, kind_spec.kind,
                                          pattern.format(fog=fog, device=name, neighbour=neighbour)))
                          for name in names]
    return rules


def cloud_rules(spec: FleetSpec) -> list[AclRule]:
    """What the cloud service may do on the cloud broker: its grants in the topic table (acks to each fog; it also
    serves as the operators' reader there: every advert, announcement and metric), and the broker's ``$SYS``."""
    return [*_granted(spec.fleet, "cloud", self_id=spec.cloud, values={"fog": spec.fog_ids}), ("read", SYS_FILTER)]


def acl_users(spec: FleetSpec, broker: str) -> dict[str, list[AclRule]]:
    """The users (certificate CNs) of one broker and their rules. ``broker`` is ``"cloud"`` (the cloud service
    and every bridge), a fog id (that fog's gateway, its devices, and the peer bridges of its neighbours with a lower
    id) or a D2D broker ``d2d-<hub>`` (the group's members).

    Raises:
        ConfigError: ``broker`` is none of the fleet's brokers.
    """
    if broker == CLOUD_BROKER:
        users = {spec.cloud: cloud_rules(spec)}
        users |= {bridge_id(fog): bridge_rules(spec, fog) for fog in spec.fog_ids}
        return users
    group = spec.d2d_brokers.get(broker)
    if group is not None:
        return {device: member_rules(spec, group, device) for device in group}
    if broker not in spec.fog_ids:
        raise ConfigError(f"unknown broker {broker!r}; expected one of {list(spec.brokers)}")
    users = {broker: fog_rules(spec, broker)}
    users |= {d: device_rules(spec.fleet, broker, d) for d in spec.devices(broker)}
    users |= {peer_bridge_id(low): peer_bridge_rules(spec, low, broker) for low, high in spec.links if high == broker}
    return users


def render_acl(spec: FleetSpec, broker: str) -> str:
    """The text of ``broker``'s Mosquitto ``acl_file`` (see :func:`acl_users`).

    Raises:
        ConfigError: an unknown broker.
    """
    lines = [
        f"# hffm ACL for broker {broker!r} of fleet {spec.fleet!r}, generated by broker_config/acl.py:",
        "# regenerate it, do not edit it. User names are certificate CNs (use_identity_as_username).",
        "# No topic lines before the first user: anonymous clients get nothing (allow_anonymous is false too).",
    ]
    for user, rules in acl_users(spec, broker).items():
        lines += ["", f"user {user}"]
        lines += [f"topic {access} {pattern}" for access, pattern in rules]
    return "\n".join(lines) + "\n"


def write_acl(spec: FleetSpec, broker: str, path: Path) -> Path:
    """Write :func:`render_acl` to ``path``.

    Raises:
        ConfigError: an unknown broker, or the file cannot be written.
    """
    return _write(render_acl(spec, broker), path, "ACL file")


def _write(text: str, path: Path, what: str) -> Path:
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {what} {str(path)!r}: {exc}") from None
    return Path(path)


def render_dynsec(spec: FleetSpec, broker: str) -> str:
    """The dynamic-security plugin config (JSON) of ``broker``: one client per user (no password: identities come
    from certificates), one role per client holding its rules, and everything else denied. A ``read`` rule is a
    ``subscribePattern`` plus a ``publishClientReceive``; a ``write`` rule is a ``publishClientSend``.

    Raises:
        ConfigError: an unknown broker.
    """
    clients, roles = [], []
    for user, rules in acl_users(spec, broker).items():
        acls = []
        for access, pattern in rules:
            kinds = {"read": ["subscribePattern", "publishClientReceive"], "write": ["publishClientSend"],
                     "readwrite": ["subscribePattern", "publishClientReceive", "publishClientSend"]}[access]
            acls += [{"acltype": kind, "topic": pattern, "allow": True} for kind in kinds]
        clients.append({"username": user, "textname": f"hffm {broker} broker user", "roles": [{"rolename": user}]})
        roles.append({"rolename": user, "acls": acls})
    config = {
        "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": False, "subscribe": False,
                             "unsubscribe": True},
        "clients": clients,
        "groups": [],
        "roles": roles,
    }
    return json.dumps(config, indent=1) + "\n"


def write_dynsec(spec: FleetSpec, broker: str, path: Path) -> Path:
    """Write :func:`render_dynsec` to ``path``.

    Raises:
        ConfigError: an unknown broker, or the file cannot be written.
    """
    return _write(render_dynsec(spec, broker), path, "dynamic-security file")

"""Broker access control generated from the fleet's topology: each identity may touch only its own topics.

Brokers run with ``use_identity_as_username``, so the user name an ACL names is the certificate's CN, the node id
(:mod:`broker_config.pki`). Every rule comes from the topic table (:mod:`hffm_core.protocol.topic_table`): each
kind's grants per role, and for a bridge its cloud-bridge routes. Anything not
granted is denied: a refused PUBLISH gets PUBACK 0x87 and reaches no one; a refused SUBSCRIBE gets SUBACK 0x87.

| Identity | Connects to | May publish | May read |
|---|---|---|---|
| device ``d`` of fog ``f`` | fog ``f``'s broker | ``up/f/+/+/+/d``, ``state/d``, ``resync/f/d``, ``chunk/f/d``, ``peer/f/+/d``, ``ack/f/+/d`` | ``cluster/f/#``, ``ctl/f``, ``global/#``, ``peer/f/d/+``, ``ack/f/d/+`` |
| fog gateway ``f`` | fog ``f``'s broker | ``cluster/f/#``, ``ctl/f``, ``fogup/f/#``, ``fogdone/f``, ``state/f``, ``resync/cloud/f``, ``chunk/cloud/f``, ``ack/f/+/f`` | ``up/f/#``, ``chunk/f/+``, ``ack/f/f/+``, ``state/+`` (only its devices' and its own reach its broker), ``resync/f/+``, ``global/#``, ``ctl/cloud``, ``$SYS/#`` |
| bridge ``bridge-f`` | the cloud broker | ``fogup/f/#``, ``fogdone/f``, ``resync/cloud/f``, ``chunk/cloud/f``, ``state/f``, ``state/<its devices>``, its ``$SYS`` connection state | ``global/#``, ``ctl/cloud``, ``metrics/#``, ``ack/f/f/cloud`` |
| cloud | the cloud broker | ``global/#``, ``ctl/cloud``, ``metrics/cloud``, ``ack/f/f/cloud`` for each fog ``f`` | ``fogup/+/#``, ``fogdone/+``, ``resync/cloud/+``, ``chunk/cloud/+``, ``state/+``, ``metrics/#``, ``ctl/+``, ``$SYS/#`` |

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
from typing import Literal

from broker_config.pki import BRIDGE_PREFIX, BROKER_PREFIX, bridge_id, check_id
from broker_config.render import bridge_state_topic
from hffm_core.errors import ConfigError
from hffm_core.protocol import topics
from hffm_core.protocol.topic_table import TOPIC_TABLE, Role

__all__ = ["CLOUD_BROKER", "AclRule", "FleetSpec", "acl_users", "render_acl", "render_dynsec", "write_acl",
           "write_dynsec"]

Access = Literal["read", "write", "readwrite"]
AclRule = tuple[Access, str]
CLOUD_BROKER = "cloud"
SYS_FILTER = "$SYS/#"


@dataclass(frozen=True, slots=True)
class FleetSpec:
    """The topology an ACL is generated from: a fleet, its fogs, each fog's devices, and the cloud's id.

    Raises (on construction):
        ConfigError: a bad id, no fogs, a fog without devices, a node id with a bridge's or broker's prefix, or
            two identities with the same name (a device named like a fog or the cloud, a device in two fogs...).
    """

    fleet: str
    fogs: tuple[tuple[str, tuple[str, ...]], ...]
    cloud: str = "cloud"

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
        for fog, _ in self.fogs:
            bridge_id(fog)  # fits in 64 characters

    @classmethod
    def of(cls, fleet: str, fogs: Mapping[str, Sequence[str]], cloud: str = "cloud") -> FleetSpec:
        """Build from a ``{fog: [device, ...]}`` mapping (ConfigError as above)."""
        return cls(fleet, tuple((fog, tuple(devices)) for fog, devices in fogs.items()), cloud)

    @property
    def fog_ids(self) -> tuple[str, ...]:
        return tuple(fog for fog, _ in self.fogs)

    def devices(self, fog: str) -> tuple[str, ...]:
        """Raises ConfigError for an unknown fog."""
        for name, devices in self.fogs:
            if name == fog:
                return devices
        raise ConfigError(f"unknown fog {fog!r}; fleet {self.fleet!r} has {list(self.fog_ids)}")


def _granted(fleet: str, role: Role, *, self_id: str, fogs: Sequence[str]) -> list[AclRule]:
    """The rules the topic table grants ``role`` (identity ``self_id``), with ``{fog}`` taking each of ``fogs`` in
    turn (a device's or fog's own fog; every fog for the cloud); in table order, each rule once."""
    rules: list[AclRule] = []
    for spec in TOPIC_TABLE:
        for grant in spec.grants:
            if grant.role != role:
                continue
            for fog in fogs:
                rule: AclRule = (grant.access, _topic(fleet, spec.kind, grant.pattern.format(self=self_id, fog=fog)))
                if rule not in rules:
                    rules.append(rule)
    return rules


def _topic(fleet: str, kind: str, pattern: str) -> str:
    return f"{topics.ROOT}/{fleet}/{kind}/{pattern}"


def device_rules(fleet: str, fog: str, device: str) -> list[AclRule]:
    """What device ``device`` of fog ``fog`` may do on its fog's broker (its grants in the topic table): publish
    its own updates, advert, resync requests, chunks and D2D messages; read its fog's cluster versions and round
    announcements, the global versions and its D2D inbox."""
    return _granted(fleet, "device", self_id=device, fogs=(fog,))


def fog_rules(spec: FleetSpec, fog: str) -> list[AclRule]:
    """What fog gateway ``fog`` may do on its own broker: its grants in the topic table (among them every advert
    on its broker, which the operators' ``hffm fleet status -c fog.toml`` and the Ansible upgrade's health check
    read as the fog; the bridge carries no other fog's in), and its broker's ``$SYS`` topics."""
    return [*_granted(spec.fleet, "fog", self_id=fog, fogs=(fog,)), ("read", SYS_FILTER)]


def bridge_rules(spec: FleetSpec, fog: str) -> list[AclRule]:
    """What fog ``fog``'s bridge may do on the cloud broker: the topic table's cloud-bridge routes (what
    broker_config/fog.conf.tmpl forwards; ``out`` is a write, ``in`` a read), narrowed to that fog (``state/#`` out
    becomes the states of the fog and of its devices), and its own ``$SYS`` connection state."""
    rules: list[AclRule] = []
    for kind_spec in TOPIC_TABLE:
        for route in kind_spec.bridges:
            if route.link != "cloud":
                continue
            access: Access = "write" if route.direction == "out" else "read"
            for pattern in route.acl or (route.pattern,):
                names = spec.devices(fog) if "{device}" in pattern else ("",)
                rules += [(access, _topic(spec.fleet, kind_spec.kind, pattern.format(fog=fog, device=name)))
                          for name in names]
    return [*rules, ("write", bridge_state_topic(spec.fleet, fog))]


def cloud_rules(spec: FleetSpec) -> list[AclRule]:
    """What the cloud service may do on the cloud broker: its grants in the topic table (acks to each fog; it also
    serves as the operators' reader there: every advert, announcement and metric), and the broker's ``$SYS``."""
    return [*_granted(spec.fleet, "cloud", self_id=spec.cloud, fogs=spec.fog_ids), ("read", SYS_FILTER)]


def acl_users(spec: FleetSpec, broker: str) -> dict[str, list[AclRule]]:
    """The users (certificate CNs) of one broker and their rules. ``broker`` is ``"cloud"`` (the cloud service
    and every bridge) or a fog id (that fog's gateway and its devices).

    Raises:
        ConfigError: ``broker`` is neither ``"cloud"`` nor a fog of ``spec``.
    """
    if broker == CLOUD_BROKER:
        users = {spec.cloud: cloud_rules(spec)}
        users |= {bridge_id(fog): bridge_rules(spec, fog) for fog in spec.fog_ids}
        return users
    if broker not in spec.fog_ids:
        raise ConfigError(f"unknown broker {broker!r}; expected {CLOUD_BROKER!r} or one of {list(spec.fog_ids)}")
    users = {broker: fog_rules(spec, broker)}
    users |= {d: device_rules(spec.fleet, broker, d) for d in spec.devices(broker)}
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

"""Broker access control generated from the fleet's topology: each identity may touch only its own topics.

Brokers run with ``use_identity_as_username``, so the user name an ACL names is the certificate's CN, the node id
(:mod:`broker_config.pki`). Every pattern comes from :mod:`hffm_core.protocol.topics`. Anything not
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


def device_rules(fleet: str, fog: str, device: str) -> list[AclRule]:
    """What device ``device`` of fog ``fog`` may do on its fog's broker."""
    rules: list[AclRule] = [
        ("write", topics.device_up_filter(fleet, fog, device)),
        ("write", topics.state(fleet, device)),
        ("write", topics.resync(fleet, fog, device)),
        ("write", topics.chunk(fleet, fog, device)),  # updates above the packet limit (docs/reliability.md)
        ("read", topics.cluster_filter(fleet, fog)),
        ("read", topics.ctl(fleet, fog)),
        ("read", topics.global_filter(fleet)),
    ]
    for kind in topics.RESERVED_KINDS:
        rules += [("write", topics.d2d_sent_filter(fleet, kind, fog, device)),
                  ("read", topics.d2d_inbox_filter(fleet, kind, fog, device))]
    return rules


def fog_rules(spec: FleetSpec, fog: str) -> list[AclRule]:
    """What fog gateway ``fog`` may do on its own broker."""
    f = spec.fleet
    rules: list[AclRule] = [
        ("write", topics.cluster_filter(f, fog)),
        ("write", topics.ctl(f, fog)),
        ("write", topics.fogup_filter(f, fog)),
        ("write", topics.fogdone(f, fog)),
        ("write", topics.state(f, fog)),
        ("write", topics.resync(f, CLOUD_BROKER, fog)),
        ("write", topics.chunk(f, CLOUD_BROKER, fog)),
        ("write", topics.d2d_sent_filter(f, "ack", fog, fog)),  # acks to its devices (docs/reliability.md)
        ("read", topics.up_filter(f, fog)),
        ("read", topics.chunk_filter(f, fog)),
        ("read", topics.ack_filter(f, fog, fog)),  # the cloud's acks, bridged in
        ("read", topics.resync_filter(f, fog)),
        ("read", topics.global_filter(f)),
        ("read", topics.ctl(f, CLOUD_BROKER)),
        ("read", SYS_FILTER),
        # Every advert on its own broker (its devices' and its own; the bridge carries no other fog's in): the
        # operators' ``hffm fleet status -c fog.toml`` and the Ansible upgrade's health check read them as the fog.
        ("read", topics.state_filter(f)),
    ]
    return rules


def bridge_rules(spec: FleetSpec, fog: str) -> list[AclRule]:
    """What fog ``fog``'s bridge may do on the cloud broker: exactly what broker_config/fog.conf.tmpl forwards,
    narrowed to that fog (``state/#`` out becomes the states of the fog and of its devices)."""
    f = spec.fleet
    rules: list[AclRule] = [
        ("write", topics.fogup_filter(f, fog)),
        ("write", topics.fogdone(f, fog)),
        ("write", topics.resync(f, CLOUD_BROKER, fog)),
        ("write", topics.state(f, fog)),
        *(("write", topics.state(f, d)) for d in spec.devices(fog)),
        ("write", bridge_state_topic(f, fog)),
        ("write", topics.chunk(f, CLOUD_BROKER, fog)),
        ("read", topics.ack(f, fog, fog, CLOUD_BROKER)),
        ("read", topics.global_filter(f)),
        ("read", topics.ctl(f, CLOUD_BROKER)),
        ("read", topics.metrics_filter(f)),
    ]
    return rules


def cloud_rules(spec: FleetSpec) -> list[AclRule]:
    """What the cloud service may do on the cloud broker (it also serves as the operators' reader there)."""
    f = spec.fleet
    return [
        ("write", topics.global_filter(f)),
        ("write", topics.ctl(f, CLOUD_BROKER)),
        ("write", topics.metrics(f, CLOUD_BROKER)),
        ("read", topics.fogup_filter(f)),
        ("read", topics.fogdone_filter(f)),
        ("read", topics.resync_filter(f, CLOUD_BROKER)),
        ("read", topics.chunk_filter(f, CLOUD_BROKER)),
        *(("write", topics.ack(f, fog, fog, CLOUD_BROKER)) for fog in spec.fog_ids),  # acks to each fog
        ("read", topics.state_filter(f)),
        ("read", topics.metrics_filter(f)),
        ("read", topics.ctl_filter(f)),  # its own announcements, for ``hffm job status -c cloud.toml``
        ("read", SYS_FILTER),
    ]


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
    text = render_acl(spec, broker)
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write ACL file {str(path)!r}: {exc}") from None
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
    text = render_dynsec(spec, broker)
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write dynamic-security file {str(path)!r}: {exc}") from None
    return Path(path)

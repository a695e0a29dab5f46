"""A node's own Mosquitto broker, as ``hffm broker render|run|check`` builds it: the ``[mosquitto]`` table of a fog
or cloud config (or of the hub device of a D2D group: its group's D2D broker), plus the fleet's topology, rendered
through :func:`broker_config.process.render_config` from the templates in ``broker_config/`` (the same code the test
harness and the Ansible roles use).

```toml
[mosquitto]
listen_host = "0.0.0.0"            # default: the [broker] host
port = 1883                        # default: the [broker] port
data_dir = "/var/lib/hffm/mosquitto-fog"   # persistence, log, TLS copies, dynsec.json (default "mosquitto")
user = "mosquitto"                 # the account mosquitto runs as (default: mosquitto's own default)
ca = "pki/ca.pem"                  # default: [tls] ca
cert = "pki/broker-fog-1.pem"      # the broker's server certificate (role broker, naming its addresses)
key = "pki/broker-fog-1.key"
crl = "pki/crl.pem"
cloud_host = "192.168.0.10"        # a fog: the cloud broker its bridge connects to
cloud_port = 1883
bridge_cert = "pki/bridge-fog-1.pem"   # a fog: the bridge's client certificate (CN bridge-<fog>)
bridge_key = "pki/bridge-fog-1.key"
peer_bridge_cert = "pki/bridge-peer-fog-1.pem"   # a fog with a higher neighbour: its fog-to-fog bridges' certificate
peer_bridge_key = "pki/bridge-peer-fog-1.key"    # (CN bridge-peer-<fog>)
peers = {fog-2 = "192.168.0.12:1883"}  # a fog: its higher neighbours' brokers (from the topology's fog links)
topology = "topology.toml"         # the fleet (who is in which fog): the cloud's ACL needs it
insecure = false                   # true: plain MQTT, anonymous (refused off loopback without --allow-insecure)
```

TLS, the CRL and the dynamic-security ACL generated from the fleet (:mod:`broker_config.acl`) are on unless
``insecure = true``; a TLS fog's bridges to its neighbours use TLS too. Relative paths are taken from the config's
``base_dir``. On a device, the table describes its D2D group's broker (only the hub, the group's first member, runs
one): the listener defaults to the ``[d2d]`` host and port, the certificate is ``broker-d2d-<hub>``'s, and the ACL
grants the ``[d2d] group`` its D2D topics.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker_config.broker_tls import (
    LISTENER_FILES,
    BrokerTls,
)
from broker_config.render import (
    BridgeSpec,
    BrokerLimits,
    PeerBridgeSpec,
    is_loopback,
    render_config,
)
from hffm_core.errors import BrokerError, ConfigError, HffmError
from hffm_core.security.tls import TlsSettings

__all__ = ["MOSQUITTO_KEYS", "BrokerNode", "broker_node_from"]

MOSQUITTO_KEYS: tuple[str, ...] = (
    "listen_host", "port", "data_dir", "user", "insecure", "ca", "cert", "key", "crl", "acl", "topology",
    "cloud_host", "cloud_port", "bridge_cert", "bridge_key", "peer_bridge_cert", "peer_bridge_key", "peers",
    "max_queued_messages", "message_size_limit", "max_packet_size",
)
_TLS_FILES = ("ca", "cert", "key", "crl")
_BRIDGE_TLS = ("bridge_cert", "bridge_key")


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerNode:
    """Everything one node's broker config is rendered from (built by :func:`broker_node_from`)."""

    role: str  # "cloud", "fog" or "d2d"
    name: str  # "cloud", the fog id or "d2d-<hub>"
    fleet: str
    listen_host: str
    port: int
    data_dir: Path
    user: str | None
    insecure: bool
    tls: BrokerTls | None
    acl_json: str | None  # the dynamic-security config, generated from the fleet unless [mosquitto] acl names one
    bridge: BridgeSpec | None
    peer_bridges: tuple[PeerBridgeSpec, ...]
    limits: BrokerLimits
    source: Path  # the node config

    @property
    def exposed_insecure(self) -> bool:
        """Plain anonymous MQTT on an address other machines can reach."""
        return self.insecure and not is_loopback(self.listen_host)

    def render(self, run_as: str | None = None) -> str:
        """The mosquitto.conf text (file names in the data dir, see :func:`rendered_files`).

        Raises:
            ConfigError: the renderer refused a value (quoted in the message).
        """
        try:
            return render_config(self.role, host=self.listen_host, port=self.port, data_dir=self.data_dir,  # type: ignore[arg-type]
                                 bridge=self.bridge, fleet=self.fleet, run_as=run_as if run_as else self.user,
                                 tls=self.tls, limits=self.limits, peer_bridges=self.peer_bridges)
        except BrokerError as exc:
            raise ConfigError(f"{self.source}: [mosquitto]: {exc}") from None


def broker_node_from(cfg: Any, *, role: str, name: str, fleet: str, config: Path, topology: Path | None = None,
                     allow_insecure: bool = False) -> BrokerNode:
    """A :class:`BrokerNode` from a loaded fog, cloud or device config (``role`` "fog", "cloud" or "d2d": a hub
    device's D2D broker, ``name`` ``d2d-<hub>``; the CLI loads it: ``hffm_cli/commands/broker.py``) and its
    ``[mosquitto]`` table; ``config`` is the file it came from.

    Raises:
        ConfigError: an unknown or bad key, a missing TLS file, a cloud without a topology (its ACL needs every
            fog's devices), a topology that disagrees with the config, ``insecure`` on a non-loopback listener
            without ``allow_insecure``, or a device that is not its D2D group's hub.
    """
    table = dict(cfg.mosquitto)
    where = f"{config}: [mosquitto]"
    unknown = sorted(set(table) - set(MOSQUITTO_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(MOSQUITTO_KEYS)}")
    get = _Getter(table, where, Path(cfg.base_dir))
    insecure = get.boolean("insecure", False)
    listener = (cfg.d2d.host, cfg.d2d.port) if role == "d2d" else (cfg.broker.host, cfg.broker.port)
    listen_host = get.string("listen_host", listener[0])
    port = get.integer("port", listener[1])
    if insecure and not is_loopback(listen_host) and not allow_insecure:
        raise ConfigError(f"{where}: insecure = true on listener {listen_host}:{port}, which is not loopback: anyone "
                          "who reaches it can read and publish every topic; remove insecure (TLS, CRL and ACL "
                          "are the default) or pass --allow-insecure")
    topo_path = topology if topology is not None else get.path("topology", None)
    spec = _fleet_spec(role, name, fleet, cfg, topo_path, where)
    tls, acl_json = None, None
    if not insecure:
        tls, acl_json = _listener_tls(get, cfg, name, spec, where)
    bridge, peers = None, ()
    if role == "fog":
        bridge_tls = None
        if not insecure:
            bridge_tls = TlsSettings(ca=tls.ca, cert=get.file("bridge_cert", required=True),  # type: ignore[union-attr]
                                     key=get.file("bridge_key", required=True))
        bridge = _build(BridgeSpec, where, fleet=fleet, fog=name, cloud_host=get.string("cloud_host", None),
                        cloud_port=get.integer("cloud_port", 1883), tls=bridge_tls)
        peers = _peer_bridges(get, name, fleet, topo_path, None if insecure else tls.ca, where)  # type: ignore[union-attr]
    limits = _build(BrokerLimits, where, **{k: get.integer(k, getattr(BrokerLimits(), k))
                                           for k in ("max_queued_messages", "message_size_limit", "max_packet_size")})
    user = get.string("user", "") or None
    data_dir = get.path("data_dir", Path("mosquitto"))
    node = BrokerNode(role=role, name=name, fleet=fleet, listen_host=listen_host, port=port,
                      data_dir=data_dir, user=user, insecure=insecure, tls=tls, acl_json=acl_json,  # type: ignore[arg-type]
                      bridge=bridge, peer_bridges=tuple(peers), limits=limits, source=Path(config))
    node.render()  # every value the renderer checks, checked now
    return node


class _Getter:
    """Typed reads from the raw ``[mosquitto]`` table, each problem a ConfigError naming the key."""

    def __init__(self, table: Mapping[str, Any], where: str, base_dir: Path) -> None:
        self.table, self.where, self.base_dir = table, where, base_dir

    def _get(self, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        if key not in self.table:
            if default is None:
                raise ConfigError(f"{self.where}: missing key {key!r}")
            return default
        value = self.table[key]
        if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
            name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise ConfigError(f"{self.where}: {key}: expected {name}, got {value!r}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        return bool(self._get(key, bool, default))

    def integer(self, key: str, default: int | None) -> int:
        return int(self._get(key, int, default))

    def string(self, key: str, default: str | None) -> str:
        return str(self._get(key, str, default))

    def path(self, key: str, default: Path | None) -> Path:
        if key not in self.table and default is None:
            return None  # type: ignore[return-value]
        raw = Path(self._get(key, str, str(default)))
        return raw if raw.is_absolute() else (self.base_dir / raw).resolve()

    def file(self, key: str, *, required: bool, fallback: Path | None = None) -> Path:
        if key not in self.table and fallback is not None:
            path = fallback
        elif key not in self.table:
            raise ConfigError(f"{self.where}: missing key {key!r} (TLS is on: set it, or insecure = true)")
        else:
            path = self.path(key, None)
        if not path.is_file():
            raise ConfigError(f"{self.where}: {key}: file {str(path)!r} does not exist")
        return path


def _build(cls: Any, where: str, **kwargs: Any) -> Any:
    try:
        return cls(**kwargs)
    except BrokerError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _listener_tls(get: _Getter, cfg: Any, name: str, spec: Any, where: str) -> tuple[BrokerTls, str]:
    from broker_config.acl import render_dynsec

    node_ca = Path(cfg.tls["ca"]) if isinstance(cfg.tls, dict) and isinstance(cfg.tls.get("ca"), str) else None
    if node_ca is not None and not node_ca.is_absolute():
        node_ca = (Path(cfg.base_dir) / node_ca).resolve()
    files = {key: get.file(key, required=True, fallback=node_ca if key == "ca" else None) for key in _TLS_FILES}
    acl_path = get.path("acl", None)
    if acl_path is not None:
        acl_json = read_source(acl_path, Path(where)).decode("utf-8", errors="replace")
    else:
        if spec is None:
            raise ConfigError(f"{where}: the cloud broker's ACL is generated from the fleet's topology: set topology "
                              "= \"<file>\" (or pass --topology) listing every fog and its devices")
        try:
            acl_json = render_dynsec(spec, name)
        except ConfigError as exc:
            raise ConfigError(f"{where}: cannot generate the ACL: {exc}") from None
    tls = BrokerTls(ca=files["ca"], cert=files["cert"], key=files["key"], crl=files["crl"],
                    acl=acl_path if acl_path is not None else Path(LISTENER_FILES["acl"]),
                    probe=TlsSettings(ca=files["ca"], cert=files["cert"], key=files["key"]))
    return tls, acl_json


def _load_topology(topology: Path | None, fleet: str, where: str) -> Any:
    if topology is None:
        return None
    from broker_config.topology import load_topology

    try:
        topo = load_topology(topology)
    except HffmError as exc:
        raise ConfigError(f"{where}: topology: {exc}") from None
    if topo.fleet != fleet:
        raise ConfigError(f"{where}: topology {str(topology)!r} is fleet {topo.fleet!r}, the config {fleet!r}")
    return topo


def _fleet_spec(role: str, name: str, fleet: str, cfg: Any, topology: Path | None, where: str) -> Any:
    """The :class:`~broker_config.acl.FleetSpec` the ACL is generated from (None: a cloud without a topology).

    - a fog: the whole topology when given (its fog links give its neighbours' peer bridges their rights; its own
      ``[fog] devices`` must match the topology's), else its own fog and devices;
    - the cloud: the topology's ``[cloud] fogs`` and their devices;
    - a D2D broker (a hub device): its ``[d2d] group``, which must be the topology's group when one is given."""
    from broker_config.acl import FleetSpec

    topo = _load_topology(topology, fleet, where)
    try:
        if role == "fog":
            devices = list(cfg.fog.devices)
            if topo is None:
                return FleetSpec.of(fleet, {name: devices})
            listed = sorted(topo.devices_of(name)) if name in topo.fogs else None
            if listed != sorted(devices):
                raise ConfigError(f"{where}: topology {str(topology)!r} gives fog {name!r} the devices {listed}, "
                                  f"its [fog] devices are {sorted(devices)}")
            return FleetSpec.from_topology(topo)
        if role == "d2d":
            group = tuple(cfg.d2d.group)
            if len(group) < 2 or group[0] != cfg.device.id:
                raise ConfigError(f"{where}: device {cfg.device.id!r} runs no D2D broker: only the hub, the first "
                                  f"member of its [d2d] group, does (group {list(group)})")
            if topo is not None and topo.group_of(cfg.device.id) != group:
                raise ConfigError(f"{where}: [d2d] group {list(group)} is not the topology's group of "
                                  f"{cfg.device.id!r}: {topo.group_of(cfg.device.id)}")
            return FleetSpec.of(fleet, {cfg.device.fog: group}, groups=[group])
        if topo is None:
            return None
        missing = sorted(set(cfg.cloud.fogs) - set(topo.fogs))
        if missing:
            raise ConfigError(f"{where}: topology {str(topology)!r} lacks the fog(s) {missing} of [cloud] fogs")
        return FleetSpec.of(fleet, {fog: sorted(topo.devices_of(fog)) for fog in cfg.cloud.fogs})
    except HffmError as exc:
        if isinstance(exc, ConfigError) and str(exc).startswith(where):
            raise
        raise ConfigError(f"{where}: {exc}") from None


def _peer_bridges(get: _Getter, fog: str, fleet: str, topology: Path | None, ca: Path | None,
                  where: str) -> list[PeerBridgeSpec]:
    """The bridges to neighbour fogs with a higher id, from the topology; ``peers`` gives their ``host:port``. With
    ``ca`` (a TLS broker) they present ``peer_bridge_cert``/``peer_bridge_key`` and check the neighbour against it."""
    peers_table = get._get("peers", dict, {})
    if topology is None:
        if peers_table:
            raise ConfigError(f"{where}: peers needs the topology that makes them neighbours (topology = ...)")
        return []
    from broker_config.topology import load_topology

    links = [high for low, high in load_topology(topology).fog_links() if low == fog]
    tls = None
    if links and ca is not None:
        tls = TlsSettings(ca=ca, cert=get.file("peer_bridge_cert", required=True),
                          key=get.file("peer_bridge_key", required=True))
    specs = []
    for neighbour in links:
        address = peers_table.get(neighbour)
        host, sep, port = str(address).rpartition(":") if isinstance(address, str) else ("", "", "")
        if not sep or not port.isdigit():
            raise ConfigError(f"{where}: peers: give neighbour fog {neighbour!r}'s broker as \"host:port\", got "
                              f"{address!r}")
        specs.append(_build(PeerBridgeSpec, where, fleet=fleet, fog=fog, neighbour=neighbour, host=host,
                            port=int(port), tls=tls))
    return specs


def read_source(path: Path, source: Path) -> bytes:
    """The bytes of a file a broker config names (``source``: the config that named it). Raises ``ConfigError``."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read {str(path)!r} for the broker: {exc.strerror or exc}") from None

"""Render the Mosquitto templates in ``broker_config/`` into a broker config: the one renderer behind the test harness
(:mod:`broker_config.process`), ``hffm broker`` (:mod:`broker_config.node`) and the Ansible role.

A fog broker is bridged to the cloud (:class:`BridgeSpec`); from a topology (``broker_config.topology``) it can also
bridge to its neighbour fogs (:class:`PeerBridgeSpec`, ``fog_peer_bridge.conf.tmpl``; only the lower fog id of each
pair runs the bridge), and a ``d2d`` broker (``d2d.conf.tmpl``) carries one D2D group's peer traffic on the group's
hub device. :func:`render_config` takes any address; the loopback rule is the harness's.

With ``tls`` (:class:`BrokerTls`) a broker (cloud, fog or D2D) gets a mutual-TLS listener with a CRL and access
control generated from the fleet's topology (Mosquitto's dynamic-security plugin); with ``BridgeSpec.tls`` a fog's
bridge authenticates to the cloud with its own certificate, and with ``PeerBridgeSpec.tls`` a fog-to-fog bridge to its
neighbour with the fog's peer-bridge certificate (docs/security.md). A TLS fog broker takes TLS peer bridges only.
"""

from __future__ import annotations

import ipaddress
import os
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from broker_config.broker_tls import BrokerTls, find_dynsec_plugin
from hffm_core.errors import BrokerError
from hffm_core.protocol.topics import check_segment
from hffm_core.security.tls import TlsSettings

if TYPE_CHECKING:
    from broker_config.topology import Topology

__all__ = [
    "DEFAULT_FLEET",
    "BridgeSpec",
    "BrokerLimits",
    "BrokerTls",
    "PeerBridgeSpec",
    "Role",
    "bridge_client_id",
    "bridge_state_topic",
    "check_host",
    "check_port",
    "is_loopback",
    "peer_bridge_client_id",
    "peer_bridge_state_topic",
    "peer_bridges_for",
    "render_config",
    "templates_dir",
]

Role = Literal["cloud", "fog", "d2d"]
_ROLES: tuple[str, ...] = ("cloud", "fog", "d2d")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
DEFAULT_FLEET = "fleet"


def templates_dir() -> Path:
    """The folder holding ``cloud.conf.tmpl`` and ``fog.conf.tmpl``: ``$HFFM_BROKER_CONFIG`` if set, else this
    package's folder (the templates ship inside the ``broker_config`` package).

    Raises:
        BrokerError: the folder does not exist.
    """
    env = os.environ.get("HFFM_BROKER_CONFIG")
    folder = Path(env) if env else Path(__file__).resolve().parent
    if not folder.is_dir():
        source = "HFFM_BROKER_CONFIG" if env else "the repository or the installed package"
        raise BrokerError(f"broker config templates folder {str(folder)!r} (from {source}) does not exist")
    return folder


def bridge_client_id(fleet: str, fog: str) -> str:
    """The client id of fog ``fog``'s bridge on the cloud broker; it also names its ``$SYS`` state topic."""
    return f"hffm-bridge-{fleet}-{fog}"


def connection_state_topic(client_id: str) -> str:
    """Where the bridge with client id ``client_id`` publishes its retained ``1``/``0`` state (on both brokers)."""
    return f"$SYS/broker/connection/{client_id}/state"


def bridge_state_topic(fleet: str, fog: str) -> str:
    """Where the bridge of fog ``fog`` publishes its retained ``1``/``0`` state (on both brokers)."""
    return connection_state_topic(bridge_client_id(fleet, fog))


@dataclass(frozen=True, slots=True)
class _Bridge:
    """What both bridge specs share: their first fields (the fleet, the fog whose broker runs the bridge), their
    checks and the ``$SYS`` topic of their state."""

    fleet: str
    fog: str

    @property
    def remote_clientid(self) -> str:
        raise NotImplementedError

    @property
    def state_topic(self) -> str:
        """Where this bridge publishes its retained ``1``/``0`` state (named by its client id)."""
        return connection_state_topic(self.remote_clientid)

    def _check(self, host: str, port: int, tls: object, what: str) -> None:
        """The checks of both: topic-safe fleet and fog ids, the remote broker's address, the ``what``'s ``tls``.

        Raises:
            BrokerError: naming the bad value.
        """
        _check_segment(self.fleet, "fleet")
        _check_segment(self.fog, "fog")
        check_host(host)
        check_port(port)
        if tls is not None and not isinstance(tls, TlsSettings):
            raise BrokerError(f"{what} tls must be TlsSettings, got {type(tls).__name__}")


@dataclass(frozen=True, slots=True)
class BridgeSpec(_Bridge):
    """Where a fog broker's bridge goes. Validates itself: topic-safe ids, an IP address or DNS name, a real port
    (the harness, :class:`MosquittoProcess`, also requires a loopback host).

    ``tls``: the bridge's own certificate and key (role ``bridge``, CN ``bridge-<fog>``) and the CA that signed
    the cloud broker's certificate; None for a plain bridge."""

    cloud_host: str
    cloud_port: int
    tls: TlsSettings | None = None

    def __post_init__(self) -> None:
        self._check(self.cloud_host, self.cloud_port, self.tls, "bridge")

    @property
    def connection(self) -> str:
        """The bridge's ``connection`` name in the fog config."""
        return f"fog-{self.fog}-to-cloud"

    @property
    def remote_clientid(self) -> str:
        """The bridge's client id on the cloud broker; also names its ``$SYS`` state topic."""
        return bridge_client_id(self.fleet, self.fog)


def peer_bridge_client_id(fleet: str, fog: str, neighbour: str) -> str:
    """The client id of the bridge from fog ``fog``'s broker on neighbour ``neighbour``'s broker; it also names
    its ``$SYS`` state topic."""
    return f"hffm-peer-{fleet}-{fog}-{neighbour}"


def peer_bridge_state_topic(fleet: str, fog: str, neighbour: str) -> str:
    """Where the bridge from ``fog`` to ``neighbour`` publishes its retained ``1``/``0`` state (on both brokers)."""
    return connection_state_topic(peer_bridge_client_id(fleet, fog, neighbour))


@dataclass(frozen=True, slots=True)
class PeerBridgeSpec(_Bridge):
    """A bridge from fog ``fog``'s broker to its neighbour fog ``neighbour``'s broker at ``host:port``: this fog's
    ``fogpeer/{fog}/#`` goes out, the neighbour's ``fogpeer/{neighbour}/#`` comes in (QoS 1).

    One bridge serves a pair in both directions, so only the broker of the lower fog id runs it: ``fog`` must sort
    before ``neighbour``. Validates itself: topic-safe ids, an IP address or DNS name, a real port (the harness also
    requires a loopback host).

    ``tls``: the bridge's own certificate and key (role ``bridge``, CN ``bridge-peer-<fog>``) and the CA that signed
    the neighbour broker's certificate; None for a plain bridge (refused on a TLS fog broker)."""

    neighbour: str
    host: str
    port: int
    tls: TlsSettings | None = None

    def __post_init__(self) -> None:
        self._check(self.host, self.port, self.tls, "peer bridge")
        _check_segment(self.neighbour, "neighbour fog")
        if self.fog == self.neighbour:
            raise BrokerError(f"fog {self.fog!r} cannot bridge to itself")
        if not self.fog < self.neighbour:
            raise BrokerError(f"the bridge between fogs {self.neighbour!r} and {self.fog!r} runs on the broker of the "
                              f"lower id, {self.neighbour!r}, not on {self.fog!r}'s")

    @property
    def connection(self) -> str:
        """The bridge's ``connection`` name in the fog config."""
        return f"fog-{self.fog}-to-{self.neighbour}"

    @property
    def remote_clientid(self) -> str:
        return peer_bridge_client_id(self.fleet, self.fog, self.neighbour)


def peer_bridges_for(topology: Topology, fog: str, ports: Mapping[str, int],
                     host: str = "127.0.0.1", tls: TlsSettings | None = None) -> list[PeerBridgeSpec]:
    """The fog-to-fog bridges that fog ``fog``'s broker runs: one to each neighbour with a higher id (the other
    neighbours run theirs to it). ``ports`` maps each fog id to its broker's port on ``host``; ``tls``: the fog's
    peer-bridge identity (``FleetPki.peer_bridge(fog)``), for every one of them.

    Raises:
        BrokerError: ``fog`` is not a fog of the topology, or a neighbour has no port in ``ports``.
    """
    if fog not in topology.fogs:
        raise BrokerError(f"fog {fog!r} is not in the topology; its fogs are {sorted(topology.fogs)}")
    specs = []
    for low, high in topology.fog_links():
        if low != fog:
            continue
        if high not in ports:
            raise BrokerError(f"no broker port given for fog {high!r}, neighbour of {fog!r}")
        specs.append(PeerBridgeSpec(fleet=topology.fleet, fog=fog, neighbour=high, host=host, port=ports[high],
                                    tls=tls))
    return specs


@dataclass(frozen=True, slots=True)
class BrokerLimits:
    """Queue and packet limits rendered into a broker config. The defaults are the production values; fault tests
    lower them (a small queue to overflow, a small packet limit to force chunking)."""

    max_queued_messages: int = 100_000
    message_size_limit: int = 67_108_864  # the codec's DEFAULT_MAX_PAYLOAD (64 MiB)
    max_packet_size: int = 67_174_400  # the payload limit + 64 KiB for topic and properties

    def __post_init__(self) -> None:
        for name in ("max_queued_messages", "message_size_limit", "max_packet_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 268_435_455:
                raise BrokerError(f"broker limit {name} must be an integer in 1..268435455, got {value!r}")
        if self.max_packet_size < 1024:
            raise BrokerError(f"broker limit max_packet_size {self.max_packet_size} is below 1024 bytes")


def render_config(
    role: Role,
    *,
    host: str,
    port: int,
    data_dir: Path,
    bridge: BridgeSpec | None = None,
    fleet: str = DEFAULT_FLEET,
    run_as: str | None = None,
    tls: BrokerTls | None = None,
    limits: BrokerLimits | None = None,
    peer_bridges: Sequence[PeerBridgeSpec] = (),
) -> str:
    """Render ``broker_config/<role>.conf.tmpl``, with ``listener_tls.conf.tmpl`` when ``tls`` is given (else
    ``listener_anonymous.conf.tmpl``) and, for a fog, ``bridge_tls.conf.tmpl`` when ``bridge.tls`` is given
    (else ``bridge_plain.conf.tmpl``). The TLS files are referenced under their installed names in ``data_dir``.
    For a fog, each of ``peer_bridges`` appends one ``connection`` section from ``fog_peer_bridge.conf.tmpl``, with
    ``peer_bridge_tls.conf.tmpl`` when its ``tls`` is given (else ``peer_bridge_plain.conf.tmpl``).

    ``run_as`` renders a ``user`` line (the harness passes ``"root"`` only when the data dir is unreachable for
    the user mosquitto would drop to); ``None`` keeps mosquitto's default. For a fog, ``bridge.fleet`` is the
    fleet; a ``fleet`` other than the default must match it.

    Raises:
        BrokerError: unknown role, a fog without a bridge (or a cloud or d2d broker with one), a host that is not
            an IP address or DNS name (any address: the loopback rule is the harness's, :class:`MosquittoProcess`), a
            bad port, fleet, user or data dir (relative, or with whitespace), a broken template;
            peer bridges on a broker that is not a fog, without TLS on a TLS broker, of another fog or fleet, or
            twice to one neighbour.
    """
    if role not in _ROLES:
        raise BrokerError(f"unknown broker role {role!r}; expected one of {list(_ROLES)}")
    check_host(host)
    check_port(port)
    _check_segment(fleet, "fleet")
    if role == "fog" and bridge is None:
        raise BrokerError("a fog broker needs a BridgeSpec to the cloud broker")
    if role != "fog" and bridge is not None:
        raise BrokerError(f"a {role} broker takes no bridge")
    _check_peer_bridges(role, bridge, tls, peer_bridges)
    if bridge is not None and fleet not in (DEFAULT_FLEET, bridge.fleet):
        raise BrokerError(f"fleet {fleet!r} does not match the bridge's fleet {bridge.fleet!r}")
    if run_as is not None and not _USER.match(run_as):
        raise BrokerError(f"invalid user {run_as!r}: must match {_USER.pattern}")
    data = str(data_dir)
    if not Path(data).is_absolute() or any(ch.isspace() or not ch.isprintable() for ch in data):
        raise BrokerError(f"data dir {data!r} must be an absolute path without whitespace")
    values = {
        "host": host,
        "port": str(port),
        "data_dir": data.rstrip("/") or "/",
        "fleet": bridge.fleet if bridge else fleet,
        "user_line": f"user {run_as}" if run_as else "# user: mosquitto's default (as root it drops to 'mosquitto')",
    }
    lim = limits if limits is not None else BrokerLimits()
    values |= {"max_queued_messages": str(lim.max_queued_messages),
               "message_size_limit": str(lim.message_size_limit), "max_packet_size": str(lim.max_packet_size)}
    if bridge is not None:
        values |= {"fog": bridge.fog, "cloud_host": bridge.cloud_host, "cloud_port": str(bridge.cloud_port)}
        values["bridge_security"] = _render_template("bridge_tls" if bridge.tls else "bridge_plain", values)
    if tls is not None:
        values["dynsec_plugin"] = find_dynsec_plugin()
    values["listener_security"] = _render_template("listener_tls" if tls else "listener_anonymous", values)
    text = _render_template(role, values)
    sections = []
    for peer in peer_bridges:
        peer_values = values | {"neighbour": peer.neighbour, "peer_host": peer.host, "peer_port": str(peer.port)}
        peer_values["peer_bridge_security"] = _render_template(
            "peer_bridge_tls" if peer.tls else "peer_bridge_plain", peer_values)
        sections.append(_render_template("fog_peer_bridge", peer_values))
    return text + "".join(f"\n{section}\n" for section in sections)


def _check_peer_bridges(role: str, bridge: BridgeSpec | None, tls: BrokerTls | None,
                        peer_bridges: Sequence[PeerBridgeSpec]) -> None:
    if not peer_bridges:
        return
    if role != "fog" or bridge is None:
        raise BrokerError(f"only a fog broker runs fog-to-fog bridges, not a {role} broker")
    seen: set[str] = set()
    for peer in peer_bridges:
        if not isinstance(peer, PeerBridgeSpec):
            raise BrokerError(f"peer bridges must be PeerBridgeSpec, got {type(peer).__name__}")
        if tls is not None and peer.tls is None:
            raise BrokerError(f"peer bridge {peer.connection!r} is plain MQTT on a TLS fog broker: its neighbour "
                              f"refuses it; give it the fog's peer-bridge certificate (PeerBridgeSpec.tls)")
        if (peer.fleet, peer.fog) != (bridge.fleet, bridge.fog):
            raise BrokerError(f"peer bridge {peer.connection!r} (fleet {peer.fleet!r}) does not start at this broker's "
                              f"fog {bridge.fog!r} (fleet {bridge.fleet!r})")
        if peer.neighbour in seen:
            raise BrokerError(f"two peer bridges from fog {peer.fog!r} to {peer.neighbour!r}")
        seen.add(peer.neighbour)


def _render_template(name: str, values: dict[str, str]) -> str:
    path = templates_dir() / f"{name}.conf.tmpl"
    try:
        text = string.Template(path.read_text(encoding="utf-8")).substitute(values)
    except OSError as exc:
        raise BrokerError(f"cannot read broker template {str(path)!r}: {exc}") from None
    except (KeyError, ValueError) as exc:
        raise BrokerError(f"broker template {str(path)!r} has an unknown or malformed placeholder: {exc}") from None
    return text if name in _ROLES else text.rstrip("\n")


def check_host(host: str) -> None:
    """Accept a listen or bridge address for a production config: an IP address (v4 or v6) or a DNS name.

    Raises:
        BrokerError: anything else (empty, whitespace, a URL, a port).
    """
    if not isinstance(host, str) or not host:
        raise BrokerError(f"broker host {host!r} must be an IP address or a DNS name")
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    if len(host) > 253 or not all(_DNS_LABEL.match(label) for label in host.rstrip(".").split(".")):
        raise BrokerError(f"broker host {host!r} must be an IP address or a DNS name")


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only: 127.0.0.0/8, ::1 or ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_port(port: int) -> None:
    """Raises ``BrokerError`` unless ``port`` is an integer in 1..65535."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise BrokerError(f"invalid port {port!r}: expected an integer in 1..65535")


def _check_segment(value: str, what: str) -> None:
    try:
        check_segment(value, what)
    except ValueError as exc:
        raise BrokerError(str(exc)) from None

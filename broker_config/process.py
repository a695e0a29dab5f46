"""Render the Mosquitto templates in ``broker_config/`` and run real ``mosquitto`` processes on loopback.

This is the harness behind the integration tests and local runs: one broker per fog, one cloud broker, each
fog broker bridged to the cloud. It only ever binds 127.0.0.0/8, only ever signals the PID it started, and
every wait in it is bounded. :func:`render_config` itself takes any address: ``hffm broker``
(:mod:`broker_config.node`) renders production configs through it.

From a topology (``broker_config.topology``): a fog broker can also bridge to its neighbour fogs
(:class:`PeerBridgeSpec`, ``fog_peer_bridge.conf.tmpl``; only the lower fog id of each pair runs the bridge), and
a ``d2d`` broker (``d2d.conf.tmpl``) carries one D2D group's peer traffic on the group's hub device.

Bridge state is read from ``$SYS/broker/connection/<remote_clientid>/state`` with the tiny read-only MQTT
client in :mod:`broker_config.broker_sys`.

With ``tls`` (:class:`BrokerTls`) a broker gets a mutual-TLS listener with a CRL and access control generated from
the fleet's topology (Mosquitto's dynamic-security plugin), and with ``BridgeSpec.tls`` a fog's bridge
authenticates to the cloud with its own certificate (docs/security.md).
"""

from __future__ import annotations

import atexit
import ipaddress
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import string
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from broker_config.broker_sys import read_sys
from broker_config.broker_tls import (
    BrokerTls,
    find_dynsec_plugin,
    install_files,
    probe_context,
)
from hffm_core.errors import BrokerError
from hffm_core.protocol.topics import check_segment
from hffm_core.security.tls import TlsSettings

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11

    from broker_config.topology import Topology

__all__ = [
    "BridgeSpec",
    "BrokerLimits",
    "BrokerTls",
    "MosquittoProcess",
    "PeerBridgeSpec",
    "bridge_client_id",
    "bridge_state_topic",
    "check_host",
    "find_mosquitto",
    "free_port",
    "is_loopback",
    "peer_bridge_client_id",
    "peer_bridge_state_topic",
    "peer_bridges_for",
    "render_config",
    "templates_dir",
    "wait_for_bridge",
    "wait_for_peer_bridge",
]

log = logging.getLogger(__name__)

Role = Literal["cloud", "fog", "d2d"]
_ROLES: tuple[str, ...] = ("cloud", "fog", "d2d")
_FALLBACK_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
_LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_RUNNING_LINE = re.compile(rb"mosquitto version \S+ running")
_DEFAULT_FLEET = "fleet"
_POLL_S = 0.05
_LIVE: set[MosquittoProcess] = set()  # started here and maybe running: stopped at exit


def find_mosquitto() -> str:
    """Path of the ``mosquitto`` executable: ``PATH`` first, then the usual sbin folders.

    Raises:
        BrokerError: no executable mosquitto was found.
    """
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in _FALLBACK_PATHS:
        if os.access(candidate, os.X_OK):
            return candidate
    raise BrokerError("mosquitto not found; install it with: apt-get install mosquitto")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now (the OS picks it; another process may still
    take it before the broker binds, which :meth:`MosquittoProcess.start` reports as a BrokerError).

    Raises:
        BrokerError: ``host`` is not a loopback IPv4 address.
    """
    _check_host(host)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


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


def bridge_state_topic(fleet: str, fog: str) -> str:
    """Where the bridge of fog ``fog`` publishes its retained ``1``/``0`` state (on both brokers)."""
    return f"$SYS/broker/connection/{bridge_client_id(fleet, fog)}/state"


@dataclass(frozen=True, slots=True)
class BridgeSpec:
    """Where a fog broker's bridge goes. Validates itself: topic-safe ids, an IP address or DNS name, a real port
    (the harness, :class:`MosquittoProcess`, also requires a loopback host).

    ``tls``: the bridge's own certificate and key (role ``bridge``, CN ``bridge-<fog>``) and the CA that signed
    the cloud broker's certificate; None for a plain bridge."""

    fleet: str
    fog: str
    cloud_host: str
    cloud_port: int
    tls: TlsSettings | None = None

    def __post_init__(self) -> None:
        _check_segment(self.fleet, "fleet")
        _check_segment(self.fog, "fog")
        check_host(self.cloud_host)
        _check_port(self.cloud_port)
        if self.tls is not None and not isinstance(self.tls, TlsSettings):
            raise BrokerError(f"bridge tls must be TlsSettings, got {type(self.tls).__name__}")

    @property
    def connection(self) -> str:
        """The bridge's ``connection`` name in the fog config."""
        return f"fog-{self.fog}-to-cloud"

    @property
    def remote_clientid(self) -> str:
        """The bridge's client id on the cloud broker; also names its ``$SYS`` state topic."""
        return bridge_client_id(self.fleet, self.fog)

    @property
    def state_topic(self) -> str:
        return bridge_state_topic(self.fleet, self.fog)


def peer_bridge_client_id(fleet: str, fog: str, neighbour: str) -> str:
    """The client id of the bridge from fog ``fog``'s broker on neighbour ``neighbour``'s broker; it also names
    its ``$SYS`` state topic."""
    return f"hffm-peer-{fleet}-{fog}-{neighbour}"


def peer_bridge_state_topic(fleet: str, fog: str, neighbour: str) -> str:
    """Where the bridge from ``fog`` to ``neighbour`` publishes its retained ``1``/``0`` state (on both brokers)."""
    return f"$SYS/broker/connection/{peer_bridge_client_id(fleet, fog, neighbour)}/state"


@dataclass(frozen=True, slots=True)
class PeerBridgeSpec:
    """A bridge from fog ``fog``'s broker to its neighbour fog ``neighbour``'s broker at ``host:port``: this fog's
    ``fogpeer/{fog}/#`` goes out, the neighbour's ``fogpeer/{neighbour}/#`` comes in (QoS 1).

    One bridge serves a pair in both directions, so only the broker of the lower fog id runs it: ``fog`` must sort
    before ``neighbour``. Validates itself: topic-safe ids, an IP address or DNS name, a real port (the harness also
    requires a loopback host). Plain MQTT only (a fog
    broker with TLS refuses peer bridges; see broker_config/README.md)."""

    fleet: str
    fog: str
    neighbour: str
    host: str
    port: int

    def __post_init__(self) -> None:
        _check_segment(self.fleet, "fleet")
        _check_segment(self.fog, "fog")
        _check_segment(self.neighbour, "neighbour fog")
        check_host(self.host)
        _check_port(self.port)
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

    @property
    def state_topic(self) -> str:
        return peer_bridge_state_topic(self.fleet, self.fog, self.neighbour)


def peer_bridges_for(topology: Topology, fog: str, ports: Mapping[str, int],
                     host: str = "127.0.0.1") -> list[PeerBridgeSpec]:
    """The fog-to-fog bridges that fog ``fog``'s broker runs: one to each neighbour with a higher id (the other
    neighbours run theirs to it). ``ports`` maps each fog id to its broker's port on ``host``.

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
        specs.append(PeerBridgeSpec(fleet=topology.fleet, fog=fog, neighbour=high, host=host, port=ports[high]))
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
    fleet: str = _DEFAULT_FLEET,
    run_as: str | None = None,
    tls: BrokerTls | None = None,
    limits: BrokerLimits | None = None,
    peer_bridges: Sequence[PeerBridgeSpec] = (),
) -> str:
    """Render ``broker_config/<role>.conf.tmpl``, with ``listener_tls.conf.tmpl`` when ``tls`` is given (else
    ``listener_anonymous.conf.tmpl``) and, for a fog, ``bridge_tls.conf.tmpl`` when ``bridge.tls`` is given
    (else ``bridge_plain.conf.tmpl``). The TLS files are referenced under their installed names in ``data_dir``.
    For a fog, each of ``peer_bridges`` appends one ``connection`` section from ``fog_peer_bridge.conf.tmpl``.

    ``run_as`` renders a ``user`` line (the harness passes ``"root"`` only when the data dir is unreachable for
    the user mosquitto would drop to); ``None`` keeps mosquitto's default. For a fog, ``bridge.fleet`` is the
    fleet; a ``fleet`` other than the default must match it.

    Raises:
        BrokerError: unknown role, a fog without a bridge (or a cloud or d2d broker with one), a host that is not
            an IP address or DNS name (any address: the loopback rule is the harness's, :class:`MosquittoProcess`), a
            bad port, fleet, user or data dir (relative, or with whitespace), a broken template;
            peer bridges on a broker that is not a fog, with TLS, of another fog or fleet, or twice to one
            neighbour; a d2d broker with TLS.
    """
    if role not in _ROLES:
        raise BrokerError(f"unknown broker role {role!r}; expected one of {list(_ROLES)}")
    check_host(host)
    _check_port(port)
    _check_segment(fleet, "fleet")
    if role == "fog" and bridge is None:
        raise BrokerError("a fog broker needs a BridgeSpec to the cloud broker")
    if role != "fog" and bridge is not None:
        raise BrokerError(f"a {role} broker takes no bridge")
    if role == "d2d" and tls is not None:
        raise BrokerError("a d2d broker has a plain loopback listener only: TLS is not supported for D2D brokers "
                          "(their access control is not generated)")
    _check_peer_bridges(role, bridge, tls, peer_bridges)
    if bridge is not None and fleet not in (_DEFAULT_FLEET, bridge.fleet):
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
    sections = [_render_template("fog_peer_bridge", values | {"neighbour": peer.neighbour, "peer_host": peer.host,
                                                                "peer_port": str(peer.port)})
                for peer in peer_bridges]
    return text + "".join(f"\n{section}\n" for section in sections)


def _check_peer_bridges(role: str, bridge: BridgeSpec | None, tls: BrokerTls | None,
                        peer_bridges: Sequence[PeerBridgeSpec]) -> None:
    if not peer_bridges:
        return
    if role != "fog" or bridge is None:
        raise BrokerError(f"only a fog broker runs fog-to-fog bridges, not a {role} broker")
    if tls is not None:
        raise BrokerError("fog-to-fog bridges are plain MQTT only: a fog broker with TLS cannot run peer bridges "
                          "(the access control has no peer-bridge identity); leave peer_bridges empty or drop TLS")
    seen: set[str] = set()
    for peer in peer_bridges:
        if not isinstance(peer, PeerBridgeSpec):
            raise BrokerError(f"peer bridges must be PeerBridgeSpec, got {type(peer).__name__}")
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


class MosquittoProcess:
    """One ``mosquitto`` process with its own config, log and persistence in ``data_dir``.

    Files in ``data_dir``: ``mosquitto.conf`` (rendered), ``mosquitto.log`` (the broker's log),
    ``mosquitto.out`` (its stdout/stderr, where it reports problems before the log is open) and
    ``mosquitto.db`` (persistence, saved every second); with ``tls``, copies of the TLS files and of the
    access-control config (see :mod:`broker_config.broker_tls`).
    """

    def __init__(
        self,
        *,
        name: str,
        role: Role,
        host: str = "127.0.0.1",
        port: int | None = None,
        data_dir: Path,
        bridge: BridgeSpec | None = None,
        fleet: str = _DEFAULT_FLEET,
        tls: BrokerTls | None = None,
        limits: BrokerLimits | None = None,
        peer_bridges: Sequence[PeerBridgeSpec] = (),
    ) -> None:
        _check_host(host)
        if bridge is not None:
            _check_host(bridge.cloud_host)
        for peer in peer_bridges:
            if isinstance(peer, PeerBridgeSpec):
                _check_host(peer.host)
        self.name = name
        self.role: Role = role
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.data_dir = Path(data_dir).resolve()
        self.bridge = bridge
        self.fleet = fleet
        self.tls = tls
        self.limits = limits
        self.peer_bridges: tuple[PeerBridgeSpec, ...] = tuple(peer_bridges)
        self.conf_path = self.data_dir / "mosquitto.conf"
        self.log_path = self.data_dir / "mosquitto.log"
        self.out_path = self.data_dir / "mosquitto.out"
        self.db_path = self.data_dir / "mosquitto.db"
        self._proc: subprocess.Popen[bytes] | None = None
        # Validate everything before anything is started.
        render_config(role, host=host, port=self.port, data_dir=self.data_dir, bridge=bridge, fleet=fleet, tls=tls,
                      limits=limits, peer_bridges=self.peer_bridges)
        # The SSL context the harness's $SYS probe connects with (None for a plain listener).
        self.sys_context = probe_context(tls)

    def __repr__(self) -> str:
        return f"MosquittoProcess(name={self.name!r}, role={self.role!r}, {self.host}:{self.port}, pid={self.pid})"

    @property
    def pid(self) -> int | None:
        """PID of the process last started (kept after it stopped); None before the first start."""
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Write the config, start mosquitto, and wait until it logs "running" and its port accepts TCP.

        Raises:
            BrokerError: already running; mosquitto missing; it exited, could not open its log (an unwritable
                data dir) or was not ready within ``timeout`` s. The message carries the log tails.
        """
        if self.running():
            raise BrokerError(f"broker {self.name!r} is already running (pid {self.pid})")
        exe = find_mosquitto()
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            install_files(self.data_dir, self.tls, self.bridge.tls if self.bridge else None)
            run_as = _prepare_data_dir(self.data_dir)
        except OSError as exc:
            raise BrokerError(f"cannot prepare data dir {str(self.data_dir)!r}: {exc}") from None
        conf = render_config(
            self.role,
            host=self.host,
            port=self.port,
            data_dir=self.data_dir,
            bridge=self.bridge,
            fleet=self.fleet,
            run_as=run_as,
            tls=self.tls,
            limits=self.limits,
            peer_bridges=self.peer_bridges,
        )
        try:
            self.conf_path.write_text(conf, encoding="utf-8")
            log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
            with open(self.out_path, "ab") as out:
                self._proc = subprocess.Popen([exe, "-c", str(self.conf_path)], stdout=out, stderr=out)
        except OSError as exc:
            raise BrokerError(f"cannot start mosquitto {self.name!r} in {str(self.data_dir)!r}: {exc}") from None
        _LIVE.add(self)
        log.info("started mosquitto %r (%s) pid %d on %s:%d", self.name, self.role, self._proc.pid, self.host, self.port)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerError(f"mosquitto {self.name!r} exited with code {self._proc.returncode}{self._tails()}")
            if self._logged_running(log_start) and _accepts_tcp(self.host, self.port):
                return
            time.sleep(_POLL_S)
        self.stop()
        raise BrokerError(f"mosquitto {self.name!r} was not ready on {self.host}:{self.port} in {timeout} s{self._tails()}")

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM our process (mosquitto then saves its database), wait up to ``timeout`` s, then SIGKILL.
        Idempotent; never signals any other PID."""
        proc = self._proc
        _LIVE.discard(self)
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("mosquitto %r (pid %d) ignored SIGTERM for %s s; killing it", self.name, proc.pid, timeout)
            proc.kill()
            proc.wait(timeout=timeout)

    def kill9(self) -> None:
        """SIGKILL our process (no final database save): for fault tests."""
        proc = self._proc
        _LIVE.discard(self)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=5.0)

    def restart(self, timeout: float = 10.0) -> None:
        """Stop (if running) and start again on the same port and data dir."""
        self.stop()
        self.start(timeout=timeout)

    def dropped_messages(self, timeout: float = 2.0) -> int | None:
        """The broker's ``$SYS/broker/publish/messages/dropped`` counter (messages dropped because a client's
        queue was full; refreshed every second), or None if it could not be read."""
        if not self.running():
            return None
        try:
            raw = read_sys(self.host, self.port, "$SYS/broker/publish/messages/dropped", timeout=timeout,
                           ssl_context=self.sys_context)
        except (OSError, BrokerError):
            return None
        return int(raw) if raw is not None and raw.strip().isdigit() else None

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the broker log and of its stdout/stderr."""
        return self._tails(lines).strip()

    def __enter__(self) -> Self:
        """Returns self without starting it (call :meth:`start`); the broker is stopped on exit."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _logged_running(self, offset: int) -> bool:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(offset)
                return _RUNNING_LINE.search(fh.read()) is not None
        except OSError:
            return False

    def _tails(self, lines: int = 20) -> str:
        parts = []
        for path in (self.log_path, self.out_path):
            try:
                text = path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            if text:
                parts.append(f"\n--- {path.name} ---\n" + "\n".join(text))
        return "".join(parts)


def wait_for_bridge(fog: MosquittoProcess, timeout: float = 10.0) -> None:
    """Wait until the fog broker reports its bridge connected (``$SYS/broker/connection/<id>/state`` == 1).

    "Connected" means the cloud accepted the bridge's CONNECT; its subscriptions follow within a round trip.

    Raises:
        BrokerError: ``fog`` has no bridge or is not running, or the bridge did not connect within ``timeout`` s.
    """
    if fog.bridge is None:
        raise BrokerError(f"broker {fog.name!r} has no bridge")
    last = _wait_connected(fog, fog.bridge.state_topic, timeout)
    if last == b"1":
        return
    raise BrokerError(
        f"bridge {fog.bridge.connection!r} to {fog.bridge.cloud_host}:{fog.bridge.cloud_port} not connected "
        f"after {timeout} s (last state {last!r}){fog._tails()}"
    )


def wait_for_peer_bridge(fog: MosquittoProcess, neighbour: str, timeout: float = 10.0) -> None:
    """Wait until fog broker ``fog`` reports its bridge to fog ``neighbour`` connected (``$SYS`` state == 1).

    Raises:
        BrokerError: ``fog`` runs no bridge to ``neighbour`` (the lower id of a pair runs it) or is not running, or
            the bridge did not connect within ``timeout`` s.
    """
    peer = next((p for p in fog.peer_bridges if p.neighbour == neighbour), None)
    if peer is None:
        raise BrokerError(f"broker {fog.name!r} runs no peer bridge to {neighbour!r}")
    last = _wait_connected(fog, peer.state_topic, timeout)
    if last == b"1":
        return
    raise BrokerError(f"peer bridge {peer.connection!r} to {peer.host}:{peer.port} not connected after {timeout} s "
                      f"(last state {last!r}){fog._tails()}")


def _wait_connected(broker: MosquittoProcess, state_topic: str, timeout: float) -> bytes | None:
    """Poll a bridge's retained ``$SYS`` state on ``broker`` until it reads ``1`` or ``timeout`` s pass; the last
    value read."""
    deadline = time.monotonic() + timeout
    last: bytes | None = None
    while (left := deadline - time.monotonic()) > 0:
        if not broker.running():
            raise BrokerError(f"fog broker {broker.name!r} is not running{broker._tails()}")
        try:
            last = read_sys(broker.host, broker.port, state_topic, timeout=min(left, 2.0), want=b"1",
                            ssl_context=broker.sys_context)
        except (OSError, BrokerError) as exc:
            log.debug("bridge state probe on %r failed: %s", broker.name, exc)
        if last == b"1":
            return last
        time.sleep(min(_POLL_S * 2, max(deadline - time.monotonic(), 0)))
    return last


# --- helpers ------------------------------------------------------------------------------------------------


_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


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


def _check_host(host: str) -> None:
    """The harness's rule: it binds and bridges to 127.0.0.0/8 only."""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise BrokerError(f"broker host {host!r} must be an IPv4 address in 127.0.0.0/8") from None
    if addr.version != 4 or addr not in _LOOPBACK:
        raise BrokerError(f"broker host {host!r} is not loopback; this harness only binds 127.0.0.0/8")


def _check_port(port: int) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise BrokerError(f"invalid port {port!r}: expected an integer in 1..65535")


def _check_segment(value: str, what: str) -> None:
    try:
        check_segment(value, what)
    except ValueError as exc:
        raise BrokerError(str(exc)) from None


def _accepts_tcp(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _prepare_data_dir(data_dir: Path) -> str | None:
    """Make ``data_dir`` usable by the user mosquitto drops to when started as root; return the ``user`` to
    render (``"root"`` when that user cannot even reach the folder, e.g. under pytest's 0700 tmp root), or None.

    Mosquitto as root drops to 'mosquitto' (or 'nobody' if that user does not exist); without write access it
    keeps running but never writes its log or its database.
    """
    if os.geteuid() != 0:
        return None
    try:
        user = pwd.getpwnam("mosquitto")
    except KeyError:
        try:
            user = pwd.getpwnam("nobody")
        except KeyError:
            return None
    for path in [data_dir, *(p for p in data_dir.iterdir() if p.is_file())]:
        os.chown(path, user.pw_uid, user.pw_gid)
    if _reachable_by(data_dir, user):
        return None
    log.warning("data dir %s is not reachable by user %r; running mosquitto as root", data_dir, user.pw_name)
    return "root"


def _reachable_by(folder: Path, user: pwd.struct_passwd) -> bool:
    groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
    for path in [folder, *folder.parents]:
        st = path.stat()
        if st.st_uid == user.pw_uid:
            bit = stat.S_IXUSR
        elif st.st_gid in groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


@atexit.register
def _stop_all() -> None:
    """Stop every broker this interpreter started and left running (only those PIDs)."""
    for proc in list(_LIVE):
        proc.stop(timeout=2.0)


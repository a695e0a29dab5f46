"""Run real ``mosquitto`` processes on loopback from configs rendered by :mod:`broker_config.render`.

This is the harness behind the integration tests and local runs: one broker per fog, one cloud broker, each
fog broker bridged to the cloud (and, from a topology, to its neighbour fogs; a ``d2d`` broker per D2D group). It
only ever binds 127.0.0.0/8, only ever signals the PID it started, and every wait in it is bounded.

Bridge state is read from ``$SYS/broker/connection/<remote_clientid>/state`` with the tiny read-only MQTT
client in :mod:`broker_config.broker_sys`.
"""

from __future__ import annotations

import atexit
import ipaddress
import logging
import os
import pwd
import random
import re
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from broker_config.broker_sys import read_sys
from broker_config.broker_tls import BrokerTls, install_files, probe_context
from broker_config.render import (
    DEFAULT_FLEET,
    BridgeSpec,
    BrokerLimits,
    PeerBridgeSpec,
    Role,
    render_config,
)
from hffm_core.errors import BrokerError

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11

__all__ = [
    "MosquittoProcess",
    "find_mosquitto",
    "free_port",
    "wait_for_bridge",
    "wait_for_peer_bridge",
]

log = logging.getLogger(__name__)

_FALLBACK_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
_LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
_RUNNING_LINE = re.compile(rb"mosquitto version \S+ running")
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


_PORT_FLOOR = 10000  # free_port() draws from here up to just below the OS's ephemeral range
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_PORT_TRIES = 200


def _below_ephemeral() -> tuple[int, int] | None:
    """Ports from ``_PORT_FLOOR`` to just below the ephemeral range (where the OS takes the local port of every
    outgoing connection), or None where that leaves fewer than 1,000."""
    try:
        low = int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default
    return (_PORT_FLOOR, low - 1) if low - _PORT_FLOOR >= 1000 else None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now, for a listener started a little later.

    It is drawn at random (from system entropy, so parallel test workers that seed ``random`` do not draw alike)
    below the OS's ephemeral range: the OS's pick (bind to port 0) comes from that range, where any outgoing
    connection (an MQTT client's, say) may take the port before the listener binds it. Another process may still
    take it; :meth:`MosquittoProcess.start` reports that as a BrokerError, a metrics server as a ConfigError.

    Raises:
        BrokerError: ``host`` is not a loopback IPv4 address.
    """
    _check_host(host)
    span = _below_ephemeral()
    if span is not None:
        draw = random.SystemRandom()
        for _ in range(_PORT_TRIES):
            port = draw.randint(*span)
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind((host, port))
                except OSError:
                    continue
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # the OS's pick
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


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
        fleet: str = DEFAULT_FLEET,
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
            install_files(self.data_dir, self.tls, self.bridge.tls if self.bridge else None,
                          {p.neighbour: p.tls for p in self.peer_bridges if p.tls is not None})
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


def _check_host(host: str) -> None:
    """The harness's rule: it binds and bridges to 127.0.0.0/8 only."""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise BrokerError(f"broker host {host!r} must be an IPv4 address in 127.0.0.0/8") from None
    if addr.version != 4 or addr not in _LOOPBACK:
        raise BrokerError(f"broker host {host!r} is not loopback; this harness only binds 127.0.0.0/8")


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

"""The TLS files of one Mosquitto broker, and how the broker harness installs them in the broker's data dir.

Mosquitto started as root drops to the ``mosquitto`` user, and the broker must still be able to read its TLS files
and its access-control config after that switch. Files under a CA folder (0600 keys) or pytest's 0700 tmp root are
not readable by that user, so the harness copies them into the broker's own data dir, which it then hands to that
user, under the fixed names below that the ``broker_config/`` TLS snippets use. Private keys are copied into new
files created with mode 0600.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from hffm_core.errors import BrokerError, ConfigError
from hffm_core.security.tls import TlsSettings, paths_as_path

__all__ = ["BRIDGE_FILES", "LISTENER_FILES", "BrokerTls", "find_dynsec_plugin", "install_files", "peer_bridge_files",
           "probe_context"]

_DYNSEC = "mosquitto_dynamic_security.so"
_DYNSEC_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib/arm-linux-gnueabihf",
                "/usr/lib/mosquitto", "/usr/lib64", "/usr/lib", "/usr/local/lib")

LISTENER_FILES: dict[str, str] = {
    "ca": "tls-ca.pem", "cert": "tls-server.pem", "key": "tls-server.key", "crl": "tls-crl.pem", "acl": "dynsec.json",
}
BRIDGE_FILES: dict[str, str] = {"ca": "tls-bridge-ca.pem", "cert": "tls-bridge.pem", "key": "tls-bridge.key"}


def peer_bridge_files(neighbour: str) -> dict[str, str]:
    """The data-dir names of the TLS files of a fog's peer bridge to ``neighbour`` (peer_bridge_tls.conf.tmpl)."""
    return {"ca": f"tls-peer-{neighbour}-ca.pem", "cert": f"tls-peer-{neighbour}.pem",
            "key": f"tls-peer-{neighbour}.key"}


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerTls:
    """A broker's mutual-TLS listener: the fleet CA, the broker's server certificate (role ``broker``, naming the
    listener's address) and key, the CRL, ``acl`` (the dynamic-security plugin config from
    :func:`broker_config.acl.render_dynsec`), and ``probe``: a client identity the ACL lets read
    ``$SYS/#`` on this broker (the harness reads the bridge state and counters with it; a fog broker's gateway
    or the cloud service qualify)."""

    ca: Path
    cert: Path
    key: Path
    crl: Path
    acl: Path
    probe: TlsSettings

    def __post_init__(self) -> None:
        paths_as_path(self, LISTENER_FILES)


def install_files(data_dir: Path, listener: BrokerTls | None, bridge: TlsSettings | None,
                  peers: dict[str, TlsSettings] | None = None) -> None:
    """Copy the listener's, the bridge's and the peer bridges' (``{neighbour: tls}``) TLS files into ``data_dir``
    under :data:`LISTENER_FILES`, :data:`BRIDGE_FILES` and :func:`peer_bridge_files` names (keys as new 0600 files).
    Run before the data dir is handed to the broker's user.

    Raises:
        BrokerError: a source file is missing or unreadable, or a copy cannot be written.
    """
    pairs: list[tuple[Path, str, bool]] = []
    if listener is not None:
        pairs += [(getattr(listener, name), target, name == "key") for name, target in LISTENER_FILES.items()]
    if bridge is not None:
        pairs += [(getattr(bridge, name), target, name == "key") for name, target in BRIDGE_FILES.items()]
    for neighbour, tls in (peers or {}).items():
        pairs += [(getattr(tls, name), target, name == "key") for name, target in peer_bridge_files(neighbour).items()]
    for source, target, private in pairs:
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise BrokerError(f"cannot read TLS file {str(source)!r} for the broker: {exc}") from None
        dest = data_dir / target
        try:
            dest.unlink(missing_ok=True)
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        except OSError as exc:
            raise BrokerError(f"cannot install TLS file {str(dest)!r}: {exc}") from None


def probe_context(listener: BrokerTls | None) -> ssl.SSLContext | None:
    """The SSL context the harness's ``$SYS`` probe connects with (None for a plain listener).

    Raises:
        BrokerError: the probe identity's files cannot be loaded.
    """
    if listener is None:
        return None
    try:
        return listener.probe.client_context()
    except ConfigError as exc:
        raise BrokerError(f"broker probe identity: {exc}") from None


def find_dynsec_plugin() -> str:
    """Path of Mosquitto's dynamic-security plugin (``$HFFM_DYNSEC_PLUGIN`` if set, else the usual lib folders).

    Raises:
        BrokerError: the plugin was not found (Debian and Ubuntu ship it in the ``mosquitto`` package).
    """
    env = os.environ.get("HFFM_DYNSEC_PLUGIN")
    candidates = [Path(env)] if env else [Path(d) / _DYNSEC for d in _DYNSEC_DIRS]
    for path in candidates:
        if path.is_file():
            return str(path)
    raise BrokerError(f"mosquitto's dynamic-security plugin not found (looked for {[str(p) for p in candidates]}); "
                      "install the mosquitto package or set HFFM_DYNSEC_PLUGIN")

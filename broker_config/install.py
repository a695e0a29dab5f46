"""Write a rendered broker config and the files it names (TLS copies, the ACL) into the broker's data dir, each only
when its content or mode differs, so that a rerun (Ansible's second pass) changes nothing. The config itself comes
from :class:`broker_config.node.BrokerNode`.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from broker_config.broker_tls import BRIDGE_FILES, LISTENER_FILES, peer_bridge_files
from broker_config.node import BrokerNode, read_source
from hffm_core.errors import ConfigError

__all__ = ["RenderResult", "install_rendered", "rendered_files"]


@dataclass(frozen=True, slots=True)
class RenderResult:
    conf: Path
    changed: list[str]  # the files written because their content or mode differed
    run_as: str | None


def rendered_files(node: BrokerNode) -> dict[str, tuple[bytes, bool]]:
    """The files the rendered config names in the data dir: ``{name: (content, private)}`` (TLS copies, the ACL).

    Raises:
        ConfigError: a source file cannot be read.
    """
    files: dict[str, tuple[bytes, bool]] = {}
    if node.tls is not None:
        for field, target in LISTENER_FILES.items():
            if field != "acl":
                files[target] = (read_source(getattr(node.tls, field), node.source), field == "key")
        files[LISTENER_FILES["acl"]] = ((node.acl_json or "").encode(), False)
    if node.bridge is not None and node.bridge.tls is not None:
        for field, target in BRIDGE_FILES.items():
            files[target] = (read_source(getattr(node.bridge.tls, field), node.source), field == "key")
    for peer in node.peer_bridges:
        if peer.tls is not None:
            for field, target in peer_bridge_files(peer.neighbour).items():
                files[target] = (read_source(getattr(peer.tls, field), node.source), field == "key")
    return files


def install_rendered(node: BrokerNode, out: Path | None = None) -> RenderResult:
    """Write the config (``out``, default ``<data_dir>/mosquitto.conf``) and its files into the data dir, each only
    when its content or mode differs (so a rerun changes nothing). Started as root, the data dir and its files are
    handed to the account mosquitto drops to (``user``, else ``mosquitto``), which must read them after the switch.

    Raises:
        ConfigError: a bad value or unreadable source file. StorageError (via OSError): a file cannot be written.
    """
    conf_path = Path(out) if out is not None else node.data_dir / "mosquitto.conf"
    owner = _owner(node.user)
    node.data_dir.mkdir(parents=True, exist_ok=True)
    changed = []
    for name, (data, private) in rendered_files(node).items():
        if _write_if_changed(node.data_dir / name, data, 0o600 if private else 0o644, owner):
            changed.append(str(node.data_dir / name))
    if owner is not None and (node.data_dir.stat().st_uid, node.data_dir.stat().st_gid) != owner:
        os.chown(node.data_dir, *owner)
        changed.append(str(node.data_dir))
    conf_path.parent.mkdir(parents=True, exist_ok=True)
    if _write_if_changed(conf_path, node.render().encode(), 0o644, None):
        changed.append(str(conf_path))
    return RenderResult(conf=conf_path, changed=changed, run_as=node.user)


# --- helpers ------------------------------------------------------------------------------------------------


def _owner(user: str | None) -> tuple[int, int] | None:
    """(uid, gid) to hand the data dir to: only when running as root (else the files stay ours)."""
    if os.geteuid() != 0:
        return None
    for name in (user or "mosquitto", "nobody"):
        try:
            entry = pwd.getpwnam(name)
            return entry.pw_uid, entry.pw_gid
        except KeyError:
            if user:
                raise ConfigError(f"[mosquitto] user {user!r} does not exist on this host") from None
    return None


def _write_if_changed(path: Path, data: bytes, mode: int, owner: tuple[int, int] | None) -> bool:
    """Write ``data`` atomically with ``mode`` (a key is never readable by others, not even briefly); False when
    the file already had that content, mode and owner."""
    try:
        st = path.stat()
        same = (path.read_bytes() == data and (st.st_mode & 0o777) == mode
                and (owner is None or (st.st_uid, st.st_gid) == owner))
    except FileNotFoundError:
        same = False
    if same:
        return False
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, mode)  # the umask may have narrowed it
    if owner is not None:
        os.chown(tmp, *owner)
    os.replace(tmp, path)
    return True


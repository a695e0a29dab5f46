"""The ``[signing]`` config table, and building a node's :class:`Signer` and :class:`Verifier` from it.

```toml
[signing]
key = "keys/dev-1.key"          # this node's Ed25519 private key (PEM, mode 0600): every publish is sealed with it
enrolled = "keys/enrolled"      # folder of '<signer>.pub' public keys: every delivery must be signed by one of them
revoked = ["dev-7"]             # signer ids or key ids (32 hex digits) refused even though enrolled (default [])
replay_window = 4096            # sequence numbers remembered per signer (default 4096)
```

Paths are relative to the config file's folder. The sequence counter and the replay windows live in the node's
state folder (``{node}-signing-seq.json``, ``{node}-replay.json``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hffm_core.errors import check_table_keys
from hffm_core.protocol.topics import check_segment
from hffm_core.security.replay import DEFAULT_WINDOW, MAX_WINDOW

if TYPE_CHECKING:  # cryptography is imported only when a node signs
    from hffm_core.security.signing import Signer, Verifier

_KEY_ID = re.compile(r"[0-9a-f]{32}")
_KEYS = ("key", "enrolled", "revoked", "replay_window")


@dataclass(frozen=True, slots=True, kw_only=True)
class SigningSettings:
    """Where a node's signing key and the enrolled public keys are, what is revoked, and the replay window."""

    key_file: Path
    enrolled_dir: Path
    revoked: tuple[str, ...] = ()
    replay_window: int = DEFAULT_WINDOW

    @staticmethod
    def seq_file(state_dir: Path, node: str) -> Path:
        """The node's sequence counter (reserved ahead, so a restart never reuses a number)."""
        return Path(state_dir) / f"{node}-signing-seq.json"

    @staticmethod
    def replay_file(state_dir: Path, node: str) -> Path:
        """The node's replay windows and last number per topic."""
        return Path(state_dir) / f"{node}-replay.json"


def parse_signing(table: Any, where: str, problems: list[str], *, base_dir: str | Path = ".") -> SigningSettings | None:
    """Validate a ``[signing]`` table, appending each problem (naming ``where`` and the bad value) to ``problems``.

    Returns the settings, or None when there was any problem. Raises nothing.
    """
    before = len(problems)
    if not check_table_keys(table, where, problems, allowed=sorted(_KEYS), required=("key", "enrolled")):
        return None
    key_file = _path(table, "key", where, problems, base_dir, want_dir=False)
    enrolled = _path(table, "enrolled", where, problems, base_dir, want_dir=True)
    if enrolled is not None and not any(enrolled.glob("*.pub")):
        problems.append(f"{where}: enrolled: folder {str(enrolled)!r} holds no '<signer>.pub' key")
    elif enrolled is not None:
        for pub in sorted(enrolled.glob("*.pub")):
            try:
                check_segment(pub.stem, "signer id")
            except ValueError as exc:
                problems.append(f"{where}: enrolled: {pub.name}: {exc}")
    revoked = table.get("revoked", [])
    if not (isinstance(revoked, list) and all(isinstance(r, str) for r in revoked)):
        problems.append(f"{where}: revoked: expected a list of signer ids or key ids, got {revoked!r}")
        revoked = []
    for item in revoked:
        if _KEY_ID.fullmatch(item) is None:
            try:
                check_segment(item, "revoked signer id")
            except ValueError as exc:
                problems.append(f"{where}: revoked: {exc} (or a key id of 32 lowercase hex digits)")
    window = table.get("replay_window", DEFAULT_WINDOW)
    if not (isinstance(window, int) and not isinstance(window, bool) and 1 <= window <= MAX_WINDOW):
        problems.append(f"{where}: replay_window: expected an int in 1..{MAX_WINDOW}, got {window!r}")
    if len(problems) > before or key_file is None or enrolled is None:
        return None
    return SigningSettings(key_file=key_file, enrolled_dir=enrolled, revoked=tuple(revoked), replay_window=window)


def _path(table: dict[str, Any], name: str, where: str, problems: list[str], base_dir: str | Path,
          *, want_dir: bool) -> Path | None:
    if name not in table:
        return None
    value = table[name]
    if not isinstance(value, str) or not value:
        problems.append(f"{where}: {name}: expected a path, got {value!r}")
        return None
    path = Path(value) if Path(value).is_absolute() else Path(base_dir) / value
    if want_dir and not path.is_dir():
        problems.append(f"{where}: {name}: folder {str(path)!r} does not exist")
        return None
    if not want_dir and not path.is_file():
        problems.append(f"{where}: {name}: file {str(path)!r} does not exist")
        return None
    return path


def make_signer(settings: SigningSettings, node: str, state_dir: Path) -> Signer:
    """The node's :class:`~hffm_core.security.signing.Signer`, its counter in ``state_dir``.

    Raises:
        ConfigError: the key cannot be loaded, or the counter file is corrupt.
    """
    from hffm_core.security.signing import Signer

    return Signer(signer_id=node, private_key=settings.key_file, state_file=settings.seq_file(state_dir, node))


def make_verifier(settings: SigningSettings, node: str, state_dir: Path) -> Verifier:
    """The node's :class:`~hffm_core.security.signing.Verifier`, its replay windows in ``state_dir``.

    Raises:
        ConfigError: an enrolled key cannot be loaded, or the replay state file is corrupt.
    """
    from hffm_core.security.signing import Verifier

    return Verifier.from_dir(settings.enrolled_dir, revoked=settings.revoked, window=settings.replay_window,
                             state_file=settings.replay_file(state_dir, node))

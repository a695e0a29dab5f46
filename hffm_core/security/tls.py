"""A node's TLS identity: the CA it trusts, its certificate and its key; and the ``[tls]`` config table.

```toml
[tls]
ca = "pki/ca.pem"          # the fleet CA: the broker's certificate must be signed by it
cert = "pki/issued/dev-1.pem"
key = "pki/issued/dev-1.key"
```
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hffm_core.errors import ConfigError, check_table_keys

__all__ = ["TLS_KEYS", "TlsSettings", "parse_tls", "paths_as_path", "verifying_context"]

TLS_KEYS: tuple[str, ...] = ("ca", "cert", "key")


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsSettings:
    """Mutual TLS for one MQTT client (or a broker's bridge): PEM files of the trusted CA, the certificate and
    its private key. The broker's certificate must name the host the client connects to."""

    ca: Path
    cert: Path
    key: Path

    def __post_init__(self) -> None:
        paths_as_path(self, TLS_KEYS)

    def client_context(self) -> ssl.SSLContext:
        """An SSL context that verifies the broker against ``ca`` (and its host name) and presents ``cert``.

        Raises:
            ConfigError: a file is missing or is not a valid PEM certificate / matching key.
        """
        context = verifying_context(self.ca)
        try:
            context.load_cert_chain(str(self.cert), str(self.key))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the TLS certificate {str(self.cert)!r} with key {str(self.key)!r}: "
                              f"{exc}") from None
        return context


def paths_as_path(settings: object, names: Iterable[str]) -> None:
    """Turn each of the frozen dataclass ``settings``' fields ``names`` into a :class:`Path` (a config may give
    strings)."""
    for name in names:
        value = getattr(settings, name)
        if not isinstance(value, Path):
            object.__setattr__(settings, name, Path(value))


def verifying_context(ca: Path) -> ssl.SSLContext:
    """A TLS 1.2+ client context that verifies the broker's certificate (and host name) against ``ca`` and
    presents no certificate of its own.

    Raises:
        ConfigError: ``ca`` is missing or not a PEM certificate.
    """
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS CA file {str(ca)!r}: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def parse_tls(table: Any, where: str, problems: list[str], *, base_dir: str | Path | None = None
              ) -> TlsSettings | None:
    """Validate a ``[tls]`` config table; append every problem to ``problems``.

    ``None`` or an empty table means "no TLS". Otherwise ``ca``, ``cert`` and ``key`` are all required strings
    naming existing files (relative paths are taken from ``base_dir``, the config file's folder, when given).

    Returns:
        The settings (paths resolved), or None when there is no table or any problem was found.
    """
    if table is None or table == {}:
        return None
    before = len(problems)
    if not check_table_keys(table, where, problems, allowed=TLS_KEYS, required=TLS_KEYS):
        return None
    paths: dict[str, Path] = {}
    for name in TLS_KEYS:
        if name not in table:
            continue
        value = table[name]
        if not isinstance(value, str) or not value:
            problems.append(f"{where}: {name}: expected a file path, got {value!r}")
            continue
        path = Path(value)
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        if not path.is_file():
            problems.append(f"{where}: {name}: file {str(path)!r} does not exist")
        paths[name] = path
    if len(problems) > before:
        return None
    return TlsSettings(ca=paths["ca"], cert=paths["cert"], key=paths["key"])

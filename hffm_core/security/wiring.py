"""A node's security settings from its config: TLS for the broker connection, signer and verifier.

The config dataclasses keep the ``[tls]`` and ``[signing]`` tables raw; :func:`check_tables`
validates them when a config is loaded (so ``hffm config check`` lists their problems with every other one), and
:func:`service_security` builds what :class:`~hffm_core.service.Service` takes when a node starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hffm_core.errors import ConfigError


def check_tables(cfg: Any, where: str, problems: list[str]) -> None:
    """Append every problem of the config's security tables to ``problems``. Raises nothing."""
    from hffm_core.security.signing_config import parse_signing
    from hffm_core.security.tls import parse_tls

    parse_tls(cfg.tls or None, f"{where}: tls", problems, base_dir=cfg.base_dir)
    if cfg.signing:
        parse_signing(cfg.signing, f"{where}: signing", problems, base_dir=cfg.base_dir)
    # A tier's own raw tables (the device's [privacy]) are checked by its config class.
    extra = getattr(cfg, "check_tables", None)
    if extra is not None:
        extra(where, problems)


def service_security(cfg: Any, node: str, state_dir: Path) -> dict[str, Any]:
    """Keyword arguments for ``Service.__init__``: ``tls``, ``signer`` and ``verifier`` (None where not configured).

    Raises:
        ConfigError: a table is invalid, or a key or the state files cannot be loaded.
    """
    from hffm_core.security.signing_config import (
        make_signer,
        make_verifier,
        parse_signing,
    )
    from hffm_core.security.tls import parse_tls

    problems: list[str] = []
    tls = parse_tls(cfg.tls or None, "tls", problems, base_dir=cfg.base_dir)
    signing = parse_signing(cfg.signing, "signing", problems, base_dir=cfg.base_dir) if cfg.signing else None
    if problems:
        raise ConfigError("\n".join(problems))
    out: dict[str, Any] = {"tls": tls, "signer": None, "verifier": None}
    if signing is not None:
        out["signer"] = make_signer(signing, node, state_dir)
        out["verifier"] = make_verifier(signing, node, state_dir)
    return out

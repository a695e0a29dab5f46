"""The files of a PKI folder (:mod:`broker_config.pki` describes the layout): their paths, the certificate index,
the CA's key and certificate, and private-key files created with mode 0600."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hffm_core.errors import ConfigError

__all__ = ["IssuedCert", "Pki", "atomic_write", "load_ca", "load_index", "load_pki", "save_index", "write_key"]


@dataclass(frozen=True, slots=True)
class Pki:
    """Paths of a PKI folder (nothing is read or checked by building one)."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def crl(self) -> Path:
        return self.root / "crl.pem"

    @property
    def index(self) -> Path:
        return self.root / "index.json"

    def cert(self, node_id: str) -> Path:
        return self.root / "issued" / f"{node_id}.pem"

    def key(self, node_id: str) -> Path:
        return self.root / "issued" / f"{node_id}.key"


@dataclass(frozen=True, slots=True, kw_only=True)
class IssuedCert:
    """One row of ``index.json``. Times are ISO 8601 UTC; ``serial`` is hexadecimal."""

    id: str
    role: str
    serial: str
    not_before: str
    not_after: str
    revoked_at: str | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def as_row(self) -> dict[str, Any]:
        return {**asdict(self), "revoked": self.revoked}


def load_pki(root: Path) -> Pki:
    """The PKI folder ``root`` after checking that it holds a CA.

    Raises:
        ConfigError: ``ca.pem`` or ``ca.key`` is missing.
    """
    pki = Pki(Path(root))
    for path in (pki.ca_cert, pki.ca_key):
        if not path.is_file():
            raise ConfigError(f"no CA in {str(pki.root)!r} ({path.name} is missing): run 'hffm certs init' first")
    return pki


def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Write a private key to a new file created with mode 0600 (it is never readable by others, not even
    briefly). Fails if the file exists."""
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def load_ca(pki: Pki) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    try:
        key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot load the CA in {str(pki.root)!r}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"the CA key in {str(pki.ca_key)!r} is not an EC key")
    return key, cert


def load_index(pki: Pki) -> list[IssuedCert]:
    try:
        raw = json.loads(pki.index.read_text(encoding="utf-8"))
        return [IssuedCert(**row) for row in raw["certs"]]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"unreadable certificate index {str(pki.index)!r}: {exc}") from None


def save_index(pki: Pki, records: list[IssuedCert]) -> None:
    text = json.dumps({"version": 1, "certs": [asdict(r) for r in records]}, indent=1)
    atomic_write(pki.index, text.encode())


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)

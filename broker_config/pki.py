"""The fleet's certificate authority: one CA, one certificate per node, a CRL, all in one folder.

Layout of a PKI folder (``hffm certs`` works on it; docs/security.md describes it):

| Path | What |
|---|---|
| ``ca.pem`` / ``ca.key`` | the CA certificate and its private key (0600) |
| ``crl.pem`` | the certificate revocation list, signed by the CA; rewritten by every :func:`revoke` |
| ``issued/<id>.pem`` / ``issued/<id>.key`` | a node's certificate and private key (0600) |
| ``index.json`` | every certificate ever issued: id, role, serial, validity, revocation time |

The certificate's common name (CN) is the node id, a topic segment (``[a-z0-9_-]{1,64}``): brokers run with
``use_identity_as_username``, so the CN is the user name that the ACL file (:mod:`broker_config.acl`) grants
topics to. Keys are ECDSA P-256. Private key files are created with mode 0600 (never widened, then narrowed).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from broker_config.pki_store import (
    IssuedCert,
    Pki,
    atomic_write,
    load_ca,
    load_index,
    load_pki,
    save_index,
    write_key,
)
from hffm_core.errors import ConfigError
from hffm_core.protocol.topics import check_segment

__all__ = [
    "CLIENT_ROLES",
    "ROLES",
    "IssuedCert",
    "Pki",
    "bridge_id",
    "broker_id",
    "check_id",
    "init_ca",
    "issue",
    "list_certs",
    "load_pki",
    "revoke",
    "write_crl",
]

ROLES: tuple[str, ...] = ("device", "fog", "cloud", "bridge", "broker")
"""``device``, ``fog``, ``cloud``: the tier processes (client certificates). ``bridge``: a fog broker's bridge to
the cloud broker (a client certificate, id ``bridge-<fog>``). ``broker``: a Mosquitto listener (a server
certificate, id ``broker-<name>``, with the broker's addresses as subject alternative names)."""
CLIENT_ROLES: tuple[str, ...] = ("device", "fog", "cloud", "bridge")
BRIDGE_PREFIX = "bridge-"
BROKER_PREFIX = "broker-"
_ROLE_PREFIX = {"bridge": BRIDGE_PREFIX, "broker": BROKER_PREFIX}
DEFAULT_CA_DAYS = 3650
DEFAULT_DAYS = 365
DEFAULT_CRL_DAYS = 365
DEFAULT_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost")
_CLOCK_SKEW = dt.timedelta(minutes=5)



def bridge_id(fog: str) -> str:
    """The certificate id (CN, and so the broker user name) of fog ``fog``'s bridge: ``bridge-<fog>``.

    Raises:
        ConfigError: ``fog`` is not a topic segment, or the id would be longer than 64 characters.
    """
    return check_id(BRIDGE_PREFIX + check_id(fog, "fog id"), "bridge id")


def broker_id(name: str) -> str:
    """The certificate id of broker ``name`` (``"cloud"`` or a fog id): ``broker-<name>``.

    Raises:
        ConfigError: ``name`` is not a topic segment, or the id would be longer than 64 characters.
    """
    return check_id(BROKER_PREFIX + check_id(name, "broker name"), "broker id")


def check_id(value: str, what: str = "certificate id") -> str:
    """Return ``value`` if it is a valid node id (a topic segment, ``[a-z0-9_-]{1,64}``).

    Raises:
        ConfigError: quoting the bad value.
    """
    try:
        return check_segment(value, what)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None



def init_ca(root: Path, *, name: str = "hffm fleet CA", days: int = DEFAULT_CA_DAYS) -> Pki:
    """Create a PKI folder: a CA key and self-signed certificate, an empty CRL and an empty index.

    Raises:
        ConfigError: ``root`` already holds a CA, ``days`` is not positive, or a file cannot be written.
    """
    pki = Pki(Path(root))
    if pki.ca_cert.exists() or pki.ca_key.exists():
        raise ConfigError(f"{str(pki.root)!r} already holds a CA; refusing to overwrite it")
    _check_days(days, "days")
    now = _now()
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hffm"),
                         x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    try:
        (pki.root / "issued").mkdir(parents=True, exist_ok=True)
        write_key(pki.ca_key, key)
        pki.ca_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        save_index(pki, [])
    except OSError as exc:
        raise ConfigError(f"cannot create the CA in {str(pki.root)!r}: {exc}") from None
    write_crl(pki.root)
    return pki


def issue(
    root: Path,
    node_id: str,
    role: str,
    *,
    days: int = DEFAULT_DAYS,
    hosts: Sequence[str] = (),
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> IssuedCert:
    """Issue a certificate and key for ``node_id`` with ``role`` (see :data:`ROLES`), signed by the CA in ``root``.

    ``hosts`` (IP addresses or DNS names) become subject alternative names; a ``broker`` certificate gets
    :data:`DEFAULT_HOSTS` when none are given. ``not_before``/``not_after`` override the validity window (tests
    use them to make an expired certificate). A revoked id may be issued again (a new serial).

    Raises:
        ConfigError: no CA; a bad id, role, host or validity; a bridge (broker) id not of the form
            ``bridge-<fog>`` (``broker-<name>``), or another role's id that is; the id already has a certificate that is not revoked; a file cannot
            be written.
    """
    pki = load_pki(root)
    check_id(node_id)
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}; expected one of {list(ROLES)}")
    for prefixed_role, prefix in _ROLE_PREFIX.items():
        if (role == prefixed_role) != node_id.startswith(prefix):
            raise ConfigError(f"certificate id {node_id!r}: ids starting with {prefix!r} are for the "
                              f"{prefixed_role} role only, and a {prefixed_role} id must be {prefix}<name>")
    records = load_index(pki)
    current = [r for r in records if r.id == node_id and not r.revoked]
    if current:
        raise ConfigError(f"certificate id {node_id!r} already exists (serial {current[0].serial}); revoke it first")
    _check_days(days, "days")
    start = not_before or _now() - _CLOCK_SKEW
    end = not_after or start + _CLOCK_SKEW + dt.timedelta(days=days)
    if end <= start:
        raise ConfigError(f"certificate {node_id!r}: not_after {end.isoformat()} is not after not_before "
                          f"{start.isoformat()}")
    sans = _subject_alt_names(list(hosts) or (list(DEFAULT_HOSTS) if role == "broker" else []))
    ca_key, ca_cert = load_ca(pki)
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if role == "broker" else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hffm"),
                                 x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                                 x509.NameAttribute(NameOID.COMMON_NAME, node_id)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    record = IssuedCert(id=node_id, role=role, serial=f"{cert.serial_number:x}",
                        not_before=_iso(start), not_after=_iso(end))
    try:
        pki.key(node_id).unlink(missing_ok=True)  # a revoked predecessor's key
        write_key(pki.key(node_id), key)
        pki.cert(node_id).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        save_index(pki, [*records, record])
    except OSError as exc:
        raise ConfigError(f"cannot write the certificate of {node_id!r} in {str(pki.root)!r}: {exc}") from None
    return record


def revoke(root: Path, node_id: str, *, crl_days: int = DEFAULT_CRL_DAYS) -> IssuedCert:
    """Revoke the current certificate of ``node_id`` and rewrite ``crl.pem``.

    Brokers read their CRL when they start: restart them (or redeploy the CRL) after a revocation.

    Raises:
        ConfigError: no CA, a bad id, no certificate for the id, or it is already revoked.
    """
    pki = load_pki(root)
    check_id(node_id)
    records = load_index(pki)
    for i, rec in enumerate(records):
        if rec.id == node_id and not rec.revoked:
            records[i] = IssuedCert(**{**asdict(rec), "revoked_at": _iso(_now())})
            try:
                save_index(pki, records)
            except OSError as exc:
                raise ConfigError(f"cannot update {str(pki.index)!r}: {exc}") from None
            write_crl(pki.root, days=crl_days)
            return records[i]
    known = sorted({r.id for r in records})
    if node_id in known:
        raise ConfigError(f"certificate id {node_id!r} is already revoked")
    raise ConfigError(f"no certificate with id {node_id!r} in {str(pki.root)!r}; issued ids: {known}")


def write_crl(root: Path, *, days: int = DEFAULT_CRL_DAYS) -> Path:
    """(Re)write ``crl.pem``: every revoked serial in the index, signed by the CA, valid for ``days``.

    A broker refuses every client once its CRL's next update has passed, so re-sign it before then.

    Raises:
        ConfigError: no CA, bad ``days``, or the file cannot be written.
    """
    pki = load_pki(root)
    _check_days(days, "crl days")
    ca_key, ca_cert = load_ca(pki)
    now = _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - _CLOCK_SKEW)
        .next_update(now + dt.timedelta(days=days))
    )
    for rec in load_index(pki):
        if rec.revoked_at is not None:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(int(rec.serial, 16))
                .revocation_date(dt.datetime.fromisoformat(rec.revoked_at))
                .build()
            )
    crl = builder.sign(ca_key, hashes.SHA256())
    try:
        atomic_write(pki.crl, crl.public_bytes(serialization.Encoding.PEM))
    except OSError as exc:
        raise ConfigError(f"cannot write {str(pki.crl)!r}: {exc}") from None
    return pki.crl


def list_certs(root: Path) -> list[IssuedCert]:
    """Every certificate issued by the CA in ``root``, in issue order (revoked ones included).

    Raises:
        ConfigError: no CA, or an unreadable index.
    """
    return load_index(load_pki(root))


# --- helpers ------------------------------------------------------------------------------------------------


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).isoformat()


def _check_days(days: int, what: str) -> None:
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 36500:
        raise ConfigError(f"invalid {what} {days!r}: expected an integer in 1..36500")


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=not cert_sign, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
                         crl_sign=cert_sign, encipher_only=False, decipher_only=False)


def _subject_alt_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        labels = host.split(".")
        if not host or len(host) > 253 or not all(
            label and len(label) <= 63 and label.replace("-", "").isalnum() and label.isascii() for label in labels
        ):
            raise ConfigError(f"invalid host {host!r}: expected an IP address or a DNS name")
        names.append(x509.DNSName(host.lower()))
    return names

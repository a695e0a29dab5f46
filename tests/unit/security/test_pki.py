"""The fleet CA: init, issue, revoke, list; files, permissions, extensions and the CRL, checked with cryptography."""

from __future__ import annotations

import datetime as dt
import json
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hffm_core.errors import ConfigError
from broker_config import pki


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def ca(tmp_path: Path) -> pki.Pki:
    return pki.init_ca(tmp_path / "pki")


def test_init_writes_a_ca_an_empty_crl_and_a_0600_key(ca: pki.Pki) -> None:
    cert = _cert(ca.ca_cert)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert _mode(ca.ca_key) == 0o600
    crl = x509.load_pem_x509_crl(ca.crl.read_bytes())
    assert len(crl) == 0 and crl.is_signature_valid(cert.public_key())
    assert pki.list_certs(ca.root) == []


def test_init_refuses_to_overwrite_a_ca(ca: pki.Pki) -> None:
    with pytest.raises(ConfigError, match="already holds a CA"):
        pki.init_ca(ca.root)


@pytest.mark.parametrize(("node_id", "role", "usage"), [
    ("dev-1", "device", ExtendedKeyUsageOID.CLIENT_AUTH),
    ("fog-1", "fog", ExtendedKeyUsageOID.CLIENT_AUTH),
    ("cloud", "cloud", ExtendedKeyUsageOID.CLIENT_AUTH),
    ("bridge-fog-1", "bridge", ExtendedKeyUsageOID.CLIENT_AUTH),
    ("broker-cloud", "broker", ExtendedKeyUsageOID.SERVER_AUTH),
])
def test_issue_signs_a_leaf_with_the_id_as_cn(ca: pki.Pki, node_id: str, role: str, usage: x509.ObjectIdentifier
                                              ) -> None:
    record = pki.issue(ca.root, node_id, role)
    cert, ca_cert = _cert(ca.cert(node_id)), _cert(ca.ca_cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == node_id
    assert cert.issuer == ca_cert.subject
    cert.verify_directly_issued_by(ca_cert)
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [usage]
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert _mode(ca.key(node_id)) == 0o600
    assert record.serial == f"{cert.serial_number:x}" and record.role == role and not record.revoked


def test_broker_certificates_name_their_hosts(ca: pki.Pki) -> None:
    pki.issue(ca.root, "broker-cloud", "broker")
    pki.issue(ca.root, "broker-fog-1", "broker", hosts=["127.0.0.2", "fog-1.local"])
    default = _cert(ca.cert("broker-cloud")).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in default.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert default.get_values_for_type(x509.DNSName) == ["localhost"]
    named = _cert(ca.cert("broker-fog-1")).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert named.get_values_for_type(x509.DNSName) == ["fog-1.local"]


@pytest.mark.parametrize(("node_id", "role", "match"), [
    ("Dev-1", "device", "invalid certificate id 'Dev-1'"),
    ("dev/1", "device", "invalid certificate id"),
    ("x" * 65, "device", "invalid certificate id"),
    ("dev-1", "admin", "unknown role 'admin'"),
    ("fog-1", "bridge", "bridge id must be bridge-<name>"),
    ("bridge-x", "device", "for the bridge role only"),
    ("cloud", "broker", "broker id must be broker-<name>"),
])
def test_issue_rejects_bad_ids_and_roles(ca: pki.Pki, node_id: str, role: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        pki.issue(ca.root, node_id, role)


def test_issue_rejects_bad_hosts_and_validity(ca: pki.Pki) -> None:
    with pytest.raises(ConfigError, match="invalid host 'bad host'"):
        pki.issue(ca.root, "broker-x", "broker", hosts=["bad host"])
    with pytest.raises(ConfigError, match="invalid days 0"):
        pki.issue(ca.root, "dev-1", "device", days=0)
    now = dt.datetime.now(dt.timezone.utc)
    with pytest.raises(ConfigError, match="is not after not_before"):
        pki.issue(ca.root, "dev-1", "device", not_before=now, not_after=now - dt.timedelta(days=1))


def test_an_expired_certificate_can_be_made_for_tests(ca: pki.Pki) -> None:
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    pki.issue(ca.root, "dev-old", "device", not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1))
    assert _cert(ca.cert("dev-old")).not_valid_after_utc == now - dt.timedelta(days=1)


def test_an_id_gets_one_live_certificate_until_it_is_revoked(ca: pki.Pki) -> None:
    first = pki.issue(ca.root, "dev-1", "device")
    with pytest.raises(ConfigError, match="'dev-1' already exists"):
        pki.issue(ca.root, "dev-1", "device")
    revoked = pki.revoke(ca.root, "dev-1")
    assert revoked.revoked and revoked.serial == first.serial
    second = pki.issue(ca.root, "dev-1", "device")
    assert second.serial != first.serial and _mode(ca.key("dev-1")) == 0o600
    assert [(r.serial, r.revoked) for r in pki.list_certs(ca.root)] == [(first.serial, True), (second.serial, False)]


def test_revoke_rewrites_the_signed_crl(ca: pki.Pki) -> None:
    pki.issue(ca.root, "dev-1", "device")
    pki.issue(ca.root, "dev-2", "device")
    record = pki.revoke(ca.root, "dev-1", crl_days=7)
    crl = x509.load_pem_x509_crl(ca.crl.read_bytes())
    assert crl.is_signature_valid(_cert(ca.ca_cert).public_key())
    assert [r.serial_number for r in crl] == [int(record.serial, 16)]
    assert crl.next_update_utc is not None
    assert dt.timedelta(days=6) < crl.next_update_utc - dt.datetime.now(dt.timezone.utc) <= dt.timedelta(days=7)


def test_revoke_errors_name_the_problem(ca: pki.Pki) -> None:
    with pytest.raises(ConfigError, match="no certificate with id 'dev-9'"):
        pki.revoke(ca.root, "dev-9")
    pki.issue(ca.root, "dev-1", "device")
    pki.revoke(ca.root, "dev-1")
    with pytest.raises(ConfigError, match="already revoked"):
        pki.revoke(ca.root, "dev-1")


def test_every_operation_needs_a_ca(tmp_path: Path) -> None:
    for call in (lambda: pki.issue(tmp_path, "dev-1", "device"), lambda: pki.revoke(tmp_path, "dev-1"),
                 lambda: pki.list_certs(tmp_path), lambda: pki.write_crl(tmp_path)):
        with pytest.raises(ConfigError, match="no CA in .*run 'hffm certs init' first"):
            call()


def test_a_corrupt_index_is_a_config_error(ca: pki.Pki) -> None:
    ca.index.write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable certificate index"):
        pki.list_certs(ca.root)


def test_the_index_is_json_with_every_field(ca: pki.Pki) -> None:
    pki.issue(ca.root, "fog-1", "fog")
    (row,) = json.loads(ca.index.read_text())["certs"]
    assert set(row) == {"id", "role", "serial", "not_before", "not_after", "revoked_at"}


def test_derived_ids() -> None:
    assert pki.bridge_id("fog-1") == "bridge-fog-1" and pki.broker_id("cloud") == "broker-cloud"
    with pytest.raises(ConfigError, match="bridge id"):
        pki.bridge_id("f" * 60)

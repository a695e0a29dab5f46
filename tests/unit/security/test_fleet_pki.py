"""Provisioning a whole fleet: every certificate, the CRL, and each broker's access control (no network)."""

from __future__ import annotations

import datetime as dt
import json
import stat
from pathlib import Path

import pytest
from cryptography import x509

from broker_config.fleet_pki import provision_fleet
from broker_config.pki import list_certs
from hffm_core.errors import ConfigError

FOGS = {"fog-a": ["dev-1", "dev-2"], "fog-b": ["dev-3"]}


def test_provision_issues_every_identity(tmp_path: Path) -> None:
    fleet = provision_fleet(tmp_path, "f1", FOGS)
    roles = {r.id: r.role for r in list_certs(fleet.pki.root)}
    assert roles == {"cloud": "cloud", "broker-cloud": "broker", "fog-a": "fog", "bridge-fog-a": "bridge",
                     "broker-fog-a": "broker", "dev-1": "device", "dev-2": "device", "fog-b": "fog",
                     "bridge-fog-b": "bridge", "broker-fog-b": "broker", "dev-3": "device"}
    for cert_id in roles:
        assert stat.S_IMODE(fleet.pki.key(cert_id).stat().st_mode) == 0o600
    assert fleet.tls_table("dev-1") == {"ca": str(fleet.ca), "cert": str(fleet.pki.cert("dev-1")),
                                        "key": str(fleet.pki.key("dev-1"))}
    broker = fleet.broker("fog-a")
    assert broker.cert == fleet.pki.cert("broker-fog-a") and broker.probe.cert == fleet.pki.cert("fog-a")
    assert fleet.broker("cloud").probe.cert == fleet.pki.cert("cloud")
    assert fleet.bridge("fog-b").cert == fleet.pki.cert("bridge-fog-b")
    assert [c["username"] for c in json.loads(fleet.acl("fog-b").read_text())["clients"]] == ["fog-b", "dev-3"]
    assert fleet.acl_text("cloud").read_text().count("\nuser ") == 3


def test_validity_overrides_and_errors(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    window = (now - dt.timedelta(days=3), now - dt.timedelta(days=1))
    fleet = provision_fleet(tmp_path / "a", "f1", FOGS, validity={"dev-2": window})
    cert = x509.load_pem_x509_certificate(fleet.pki.cert("dev-2").read_bytes())
    assert cert.not_valid_after_utc == window[1]
    with pytest.raises(ConfigError, match=r"unknown certificate id\(s\) \['dev-9'\]"):
        provision_fleet(tmp_path / "b", "f1", FOGS, validity={"dev-9": window})
    with pytest.raises(ConfigError, match="already holds a CA"):
        provision_fleet(tmp_path / "a", "f1", FOGS)
    for call in (lambda: fleet.identity("dev-9"), lambda: fleet.bridge("fog-c"), lambda: fleet.broker("fog-c")):
        with pytest.raises(ConfigError):
            call()

"""The ``[tls]`` config table, TLS contexts, and the TLS variants of the rendered broker configs (no network)."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

import pytest

from broker_config.broker_tls import (
    BRIDGE_FILES,
    LISTENER_FILES,
    BrokerTls,
    install_files,
)
from broker_config.render import BridgeSpec, render_config
from hffm_core.errors import BrokerError, ConfigError
from broker_config import pki
from hffm_core.security.tls import TlsSettings, parse_tls, verifying_context
from hffm_core.transport.mqtt import MqttTransport


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory) -> pki.Pki:
    ca = pki.init_ca(tmp_path_factory.mktemp("tls") / "pki")
    for node_id, role in (("dev-1", "device"), ("broker-fog-a", "broker"), ("bridge-fog-a", "bridge")):
        pki.issue(ca.root, node_id, role)
    return ca


def _table(ca: pki.Pki, node_id: str = "dev-1") -> dict[str, str]:
    return {"ca": str(ca.ca_cert), "cert": str(ca.cert(node_id)), "key": str(ca.key(node_id))}


def test_no_table_means_no_tls() -> None:
    problems: list[str] = []
    assert parse_tls(None, "d.toml: tls", problems) is None
    assert parse_tls({}, "d.toml: tls", problems) is None
    assert problems == []


def test_a_valid_table(issued: pki.Pki) -> None:
    problems: list[str] = []
    tls = parse_tls(_table(issued), "d.toml: tls", problems)
    assert problems == [] and tls == TlsSettings(ca=issued.ca_cert, cert=issued.cert("dev-1"), key=issued.key("dev-1"))


def test_relative_paths_are_taken_from_base_dir(issued: pki.Pki) -> None:
    problems: list[str] = []
    table = {"ca": "ca.pem", "cert": "issued/dev-1.pem", "key": "issued/dev-1.key"}
    tls = parse_tls(table, "d.toml: tls", problems, base_dir=issued.root)
    assert problems == [] and tls is not None and tls.cert == issued.cert("dev-1")


@pytest.mark.parametrize(("table", "expected"), [
    ("yes", ["d.toml: tls: expected a table, got str"]),
    ({"ca": "x"}, ["d.toml: tls: missing key(s) ['cert', 'key']", "d.toml: tls: ca: file 'x' does not exist"]),
    ({"ca": 1, "cert": "", "key": "k", "pem": "p"}, [
        "d.toml: tls: unknown key(s) ['pem']; expected some of ['ca', 'cert', 'key']",
        "d.toml: tls: ca: expected a file path, got 1",
        "d.toml: tls: cert: expected a file path, got ''",
        "d.toml: tls: key: file 'k' does not exist",
    ]),
])
def test_every_problem_is_named(table: object, expected: list[str]) -> None:
    problems: list[str] = []
    assert parse_tls(table, "d.toml: tls", problems) is None
    assert problems == expected


def test_client_context_verifies_the_broker_and_presents_the_certificate(issued: pki.Pki) -> None:
    context = TlsSettings(**{k: Path(v) for k, v in _table(issued).items()}).client_context()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert verifying_context(issued.ca_cert).verify_mode == ssl.CERT_REQUIRED


def test_unloadable_files_are_config_errors(issued: pki.Pki, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot load the TLS CA file"):
        TlsSettings(ca=tmp_path / "none.pem", cert=issued.cert("dev-1"), key=issued.key("dev-1")).client_context()
    mismatched = TlsSettings(ca=issued.ca_cert, cert=issued.cert("dev-1"), key=issued.key("bridge-fog-a"))
    with pytest.raises(ConfigError, match="cannot load the TLS certificate"):
        mismatched.client_context()
    with pytest.raises(ConfigError, match="cannot load the TLS certificate"):  # the transport refuses it up front
        MqttTransport(client_id="x", host="127.0.0.1", port=1, on_message=lambda *_: None, tls=mismatched)


def _broker_tls(ca: pki.Pki, acl: Path) -> BrokerTls:
    return BrokerTls(ca=ca.ca_cert, cert=ca.cert("broker-fog-a"), key=ca.key("broker-fog-a"), crl=ca.crl, acl=acl,
                     probe=TlsSettings(ca=ca.ca_cert, cert=ca.cert("dev-1"), key=ca.key("dev-1")))


def test_rendered_tls_configs(issued: pki.Pki, tmp_path: Path) -> None:
    bridge = BridgeSpec(fleet="f1", fog="fog-a", cloud_host="127.0.0.1", cloud_port=8883,
                        tls=TlsSettings(ca=issued.ca_cert, cert=issued.cert("bridge-fog-a"),
                                        key=issued.key("bridge-fog-a")))
    conf = render_config("fog", host="127.0.0.1", port=8884, data_dir=tmp_path, bridge=bridge,
                         tls=_broker_tls(issued, tmp_path / "acl.json"))
    lines = [line for line in conf.splitlines() if line and not line.startswith("#")]
    for option in ("allow_anonymous false", "require_certificate true", "use_identity_as_username true",
                   f"cafile {tmp_path}/tls-ca.pem", f"certfile {tmp_path}/tls-server.pem",
                   f"keyfile {tmp_path}/tls-server.key", f"crlfile {tmp_path}/tls-crl.pem",
                   f"plugin_opt_config_file {tmp_path}/dynsec.json", f"bridge_cafile {tmp_path}/tls-bridge-ca.pem",
                   f"bridge_certfile {tmp_path}/tls-bridge.pem", f"bridge_keyfile {tmp_path}/tls-bridge.key",
                   "bridge_insecure false"):
        assert option in lines, option
    assert "allow_anonymous true" not in lines and not any(line.startswith("acl_file") for line in lines)
    assert any(line.startswith("plugin /") and line.endswith("mosquitto_dynamic_security.so") for line in lines)
    assert "$" not in "".join(lines).replace("$SYS", "")
    assert lines.index("listener 8884 127.0.0.1") < lines.index("cafile " + f"{tmp_path}/tls-ca.pem")
    assert lines.index("address 127.0.0.1:8883") < lines.index("bridge_cafile " + f"{tmp_path}/tls-bridge-ca.pem")


def test_plain_configs_keep_their_options(tmp_path: Path) -> None:
    conf = render_config("cloud", host="127.0.0.1", port=1883, data_dir=tmp_path)
    lines = [line for line in conf.splitlines() if line and not line.startswith("#")]
    assert lines[:3] == ["per_listener_settings false", "listener 1883 127.0.0.1", "allow_anonymous true"]
    assert not any(line.startswith(("cafile", "plugin", "bridge_")) for line in lines)


def test_install_files_copies_keys_as_0600(issued: pki.Pki, tmp_path: Path) -> None:
    acl = tmp_path / "acl.json"
    acl.write_text("{}")
    data = tmp_path / "broker"
    data.mkdir()
    bridge = TlsSettings(ca=issued.ca_cert, cert=issued.cert("bridge-fog-a"), key=issued.key("bridge-fog-a"))
    for _ in range(2):  # a restart reinstalls over the previous copies
        install_files(data, _broker_tls(issued, acl), bridge)
    for name in (*LISTENER_FILES.values(), *BRIDGE_FILES.values()):
        mode = stat.S_IMODE((data / name).stat().st_mode)
        assert mode == (0o600 if name.endswith(".key") else 0o644), name
    assert (data / "tls-server.key").read_bytes() == issued.key("broker-fog-a").read_bytes()
    with pytest.raises(BrokerError, match="cannot read TLS file"):
        install_files(data, _broker_tls(issued, tmp_path / "missing.json"), None)

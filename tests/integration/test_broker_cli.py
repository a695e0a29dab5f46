"""``hffm broker render|check|run`` on real mosquitto: a secured cloud broker and a fog broker bridged to it, rendered
from node configs and a topology; the brokers ``hffm broker run`` starts refuse a client without a certificate, a
client from a foreign CA and a device publishing on another device's topic. Bad configs exit 2 with one line."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from broker_config.broker_sys import read_sys
from broker_config.fleet_pki import FleetPki, provision_fleet
from broker_config.pki import init_ca, issue
from broker_config.process import free_port
from hffm_cli.main import app
from hffm_core.errors import BrokerError, TransportError
from hffm_core.protocol import topics
from hffm_core.protocol.codec import encode
from hffm_core.protocol.keys import ModuleKey
from hffm_core.protocol.messages import NodeState
from hffm_core.security.tls import TlsSettings, verifying_context
from hffm_core.transport.mqtt import MqttRefusedError, MqttTransport
from hffm_lab.security.auth_matrix import connect_verdict, probe_verdict

pytestmark = pytest.mark.integration
if shutil.which("mosquitto") is None and not os.access("/usr/sbin/mosquitto", os.X_OK):
    pytestmark = [pytest.mark.integration, pytest.mark.skip(reason="mosquitto is not installed")]

FLEET = "brk"
FOGS = {"fog-1": ["dev-1", "dev-2"]}
KEY = ModuleKey(kind="head", modality="_", task="demand")
HFFM = Path(sys.executable).parent / "hffm"
# pytest's tmp root is 0700: mosquitto started as root must not drop to its own account, which cannot enter it.
USER = pwd.getpwuid(os.geteuid()).pw_name
runner = CliRunner()


def hffm(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["broker", *args])
    return result.exit_code, result.stdout, result.stderr


def _write_configs(tmp: Path, pki: FleetPki, cloud_port: int, fog_port: int) -> tuple[Path, Path]:
    issued = pki.pki.root / "issued"
    (tmp / "topology.toml").write_text(
        f'[topology]\nfleet = "{FLEET}"\n[[fog]]\nid = "fog-1"\n'
        + "".join(f'[[device]]\nid = "{d}"\nfog = "fog-1"\n' for d in FOGS["fog-1"]))
    cloud = tmp / "cloud.toml"
    cloud.write_text(f"""
[cloud]
fleet = "{FLEET}"
fogs = ["fog-1"]
modalities = ["power"]
tasks = ["demand"]
[broker]
port = {cloud_port}
[tls]
ca = "{pki.ca}"
cert = "{issued / 'cloud.pem'}"
key = "{issued / 'cloud.key'}"
[mosquitto]
data_dir = "broker-cloud"
user = "{USER}"
cert = "{issued / 'broker-cloud.pem'}"
key = "{issued / 'broker-cloud.key'}"
crl = "{pki.crl}"
topology = "topology.toml"
""")
    fog = tmp / "fog.toml"
    fog.write_text(f"""
[fog]
id = "fog-1"
fleet = "{FLEET}"
devices = {json.dumps(FOGS["fog-1"])}
[broker]
port = {fog_port}
[tls]
ca = "{pki.ca}"
cert = "{issued / 'fog-1.pem'}"
key = "{issued / 'fog-1.key'}"
[mosquitto]
data_dir = "broker-fog"
user = "{USER}"
cert = "{issued / 'broker-fog-1.pem'}"
key = "{issued / 'broker-fog-1.key'}"
crl = "{pki.crl}"
cloud_host = "127.0.0.1"
cloud_port = {cloud_port}
bridge_cert = "{issued / 'bridge-fog-1.pem'}"
bridge_key = "{issued / 'bridge-fog-1.key'}"
""")
    return cloud, fog


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, FleetPki, Path, Path, int, int]:
    tmp = tmp_path_factory.mktemp("broker-cli")
    pki = provision_fleet(tmp / "fleet", FLEET, FOGS)
    cloud_port, fog_port = free_port(), free_port()
    cloud, fog = _write_configs(tmp, pki, cloud_port, fog_port)
    return tmp, pki, cloud, fog, cloud_port, fog_port


def test_broker_help_lists_its_commands() -> None:
    code, out, _ = hffm("--help")
    assert code == 0 and all(cmd in out for cmd in ("render", "run", "check"))


def test_render_is_secure_by_default_and_idempotent(fleet: tuple[Path, FleetPki, Path, Path, int, int]) -> None:
    tmp, _pki, cloud, fog, cloud_port, _fog_port = fleet
    for config in (cloud, fog):
        code, out, err = hffm("render", "-c", str(config), "--format", "json")
        assert code == 0, err
        first = json.loads(out)
        assert first["tls"] and first["changed"]
        text = Path(first["conf"]).read_text()
        lines = {line for line in text.splitlines() if line and not line.startswith("#")}
        assert "allow_anonymous false" in lines and "allow_anonymous true" not in lines
        assert "require_certificate true" in lines and "use_identity_as_username true" in lines
        assert any(line.startswith("plugin ") and line.endswith("mosquitto_dynamic_security.so") for line in lines)
        dynsec = json.loads((Path(first["data_dir"]) / "dynsec.json").read_text())
        assert {c["username"] for c in dynsec["clients"]} == (
            {"cloud", "bridge-fog-1"} if config == cloud else {"fog-1", "dev-1", "dev-2"})
        key = Path(first["data_dir"]) / "tls-server.key"
        assert key.stat().st_mode & 0o777 == 0o600
        code, out, _ = hffm("render", "-c", str(config), "--format", "json")
        assert code == 0 and json.loads(out)["changed"] == []
    fog_conf = (tmp / "broker-fog" / "mosquitto.conf").read_text()
    assert f"address 127.0.0.1:{cloud_port}" in fog_conf and "bridge_certfile" in fog_conf
    assert "bridge_insecure false" in fog_conf


def test_check_accepts_the_secured_configs(fleet: tuple[Path, FleetPki, Path, Path, int, int]) -> None:
    _tmp, _pki, cloud, fog, _cp, _fp = fleet
    for config in (cloud, fog):
        code, out, err = hffm("check", "-c", str(config))
        assert code == 0 and out.startswith("ok: "), err


def _variant(config: Path, tmp: Path, name: str, old: str, new: str) -> Path:
    text = config.read_text()
    assert old in text
    path = tmp / name
    path.write_text(text.replace(old, new))
    return path


def test_bad_configs_exit_2_with_one_line(fleet: tuple[Path, FleetPki, Path, Path, int, int]) -> None:
    tmp, pki, cloud, fog, _cp, _fp = fleet
    other = tmp / "other-ca"
    init_ca(other)
    issue(other, "broker-cloud", "broker")
    cases = {
        "insecure off loopback": (_variant(cloud, tmp, "c1.toml", "[mosquitto]\n",
                                           '[mosquitto]\ninsecure = true\nlisten_host = "0.0.0.0"\n'),
                                  "not loopback"),
        "missing crl": (_variant(cloud, tmp, "c2.toml", f'crl = "{pki.crl}"', f'crl = "{tmp}/nope.pem"'),
                        "does not exist"),
        "no topology for the cloud's ACL": (_variant(cloud, tmp, "c3.toml", 'topology = "topology.toml"\n', ""),
                                            "topology"),
        "unknown key": (_variant(fog, tmp, "f1.toml", "[mosquitto]\n", "[mosquitto]\nlisten = 1\n"), "unknown key"),
        "fog without cloud_host": (_variant(fog, tmp, "f2.toml", 'cloud_host = "127.0.0.1"\n', ""), "cloud_host"),
    }
    for what, (config, message) in cases.items():
        code, out, err = hffm("render", "-c", str(config))
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (what, out, err)
    foreign = _variant(cloud, tmp, "c4.toml", f'cert = "{pki.pki.root}/issued/broker-cloud.pem"',
                       f'cert = "{other}/issued/broker-cloud.pem"')
    foreign = _variant(foreign, tmp, "c4.toml", f'key = "{pki.pki.root}/issued/broker-cloud.key"',
                       f'key = "{other}/issued/broker-cloud.key"')
    code, _, err = hffm("check", "-c", str(foreign), "--no-start")
    assert code == 2 and "not signed by the CA" in err and len(err.strip().splitlines()) == 1, err


def test_insecure_on_a_lan_address_needs_allow_insecure_and_warns(
        fleet: tuple[Path, FleetPki, Path, Path, int, int]) -> None:
    tmp, _pki, cloud, _fog, _cp, _fp = fleet
    config = _variant(cloud, tmp, "c5.toml", "[mosquitto]\n",
                      '[mosquitto]\ninsecure = true\nlisten_host = "0.0.0.0"\n')
    config = _variant(config, tmp, "c5.toml", 'data_dir = "broker-cloud"', 'data_dir = "broker-insecure"')
    code, out, err = hffm("render", "-c", str(config), "--allow-insecure")
    assert code == 0 and "warning" in err and "insecure = true" in err, (out, err)
    text = (tmp / "broker-insecure" / "mosquitto.conf").read_text()
    assert "allow_anonymous true" in text and "require_certificate" not in text


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:  # only what this test started
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _connect(port: int, tls: TlsSettings, name: str) -> MqttTransport:
    client = MqttTransport(client_id=f"brk-{name}", host="127.0.0.1", port=port, on_message=lambda *_: None,
                           tls=tls, timeout_s=5.0, connect_timeout_s=10.0)
    client.connect()
    return client


def assert_refusals(port: int, pki: FleetPki, other_ca: Path, fleet: str, fog: str, devices: list[str]) -> None:
    """On a running secured fog broker: a client without a certificate and a client from a foreign CA are refused
    by the broker; a valid device connects, publishes on its own update topic, and is refused (PUBACK 0x87) on
    another device's."""
    try:
        read_sys("127.0.0.1", port, "$SYS/broker/uptime", timeout=5.0, ssl_context=verifying_context(pki.ca))
        verdict = "connected"
    except (OSError, BrokerError) as exc:
        verdict = probe_verdict(exc)
    assert verdict.startswith("refused"), f"a client without a certificate: {verdict}"
    forged = TlsSettings(ca=pki.ca, cert=other_ca / "issued" / f"{devices[0]}.pem",
                         key=other_ca / "issued" / f"{devices[0]}.key")
    try:
        _connect(port, forged, "forged").close()
        verdict = "connected"
    except TransportError as exc:
        verdict = connect_verdict(exc)
    assert verdict.startswith("refused"), f"a client from a foreign CA: {verdict}"
    device = _connect(port, pki.identity(devices[0]), devices[0])
    try:
        device.publish(topics.up(fleet, fog, KEY, devices[0]), b"own", category="other")
        with pytest.raises(MqttRefusedError) as denied:
            device.publish(topics.up(fleet, fog, KEY, devices[1]), b"forged", category="other")
        assert denied.value.reason_code == 0x87
    finally:
        device.close()


def test_run_starts_brokers_that_bridge_and_refuse_intruders(
        fleet: tuple[Path, FleetPki, Path, Path, int, int], started: list[subprocess.Popen[bytes]]) -> None:
    tmp, pki, cloud, fog, cloud_port, fog_port = fleet
    for config in (cloud, fog):
        started.append(subprocess.Popen([str(HFFM), "broker", "run", "-c", str(config)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL))
    # The fog gateway's identity may read $SYS on its broker: the bridge's retained state says when it is up.
    context = pki.identity("fog-1").client_context()
    state = f"$SYS/broker/connection/hffm-bridge-{FLEET}-fog-1/state"
    last = None
    for _ in range(60):
        assert all(p.poll() is None for p in started), "hffm broker run exited"
        try:
            last = read_sys("127.0.0.1", fog_port, state, timeout=2.0, want=b"1", ssl_context=context)
        except (OSError, BrokerError):  # not listening yet
            last = None
            time.sleep(0.25)
        if last == b"1":
            break
    assert last == b"1", f"the TLS bridge did not connect (last state {last!r})"
    other = tmp / "foreign-ca"
    init_ca(other)
    issue(other, "dev-1", "device")
    assert_refusals(fog_port, pki, other, FLEET, "fog-1", FOGS["fog-1"])
    _connect(cloud_port, pki.identity("cloud"), "cloud").close()  # the cloud's own identity gets in (control)
    _operator_commands_speak_tls(pki, cloud, fog, fog_port)


def _operator_commands_speak_tls(pki: FleetPki, cloud: Path, fog: Path, fog_port: int) -> None:
    """``fleet status`` and ``job status`` on the secured brokers, with the TLS of a node config (-c) or of
    --tls-* options; without TLS the broker cannot be read."""
    device = _connect(fog_port, pki.identity("dev-1"), "dev-1-advert")
    try:
        advert = NodeState(fleet=FLEET, node="dev-1", role="device", fog="fog-1", online=True, last_seen=time.time())
        device.publish(topics.state(FLEET, "dev-1"), encode(advert), category="other", retain=True)
    finally:
        device.close()
    result = runner.invoke(app, ["fleet", "status", "-c", str(fog), "--format", "json", "--timeout", "5"])
    assert result.exit_code == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["broker"] == f"127.0.0.1:{fog_port}" and status["fleet"] == FLEET
    assert [n["node"] for n in status["nodes"]] == ["dev-1"] and status["nodes"][0]["online"]
    fog_tls = pki.identity("fog-1")
    result = runner.invoke(app, ["fleet", "status", "--port", str(fog_port), "--fleet", FLEET, "--format", "json",
                                 "--tls-ca", str(fog_tls.ca), "--tls-cert", str(fog_tls.cert),
                                 "--tls-key", str(fog_tls.key)])
    assert result.exit_code == 0 and "dev-1" in result.stdout, result.stderr
    result = runner.invoke(app, ["fleet", "status", "--port", str(fog_port), "--fleet", FLEET, "--tls-ca",
                                 str(fog_tls.ca)])
    assert result.exit_code == 2 and "--tls-cert" in result.stderr
    result = runner.invoke(app, ["fleet", "status", "--port", str(fog_port), "--fleet", FLEET, "--timeout", "2"])
    assert result.exit_code != 0 and result.stderr.startswith("hffm: error:"), result.stderr  # plain MQTT: refused
    result = runner.invoke(app, ["job", "status", "-c", str(cloud), "--format", "json", "--timeout", "1"])
    assert result.exit_code == 0 and json.loads(result.stdout)["fleet"] == FLEET, result.stderr

"""``hffm broker check`` on the secured links, with real mosquitto: a TLS fog with a TLS bridge to its neighbour, and
a D2D group's hub rendering its group's TLS broker; a member that is not the hub is refused with one line."""

from __future__ import annotations

import json
import os
import pwd
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from broker_config.acl import FleetSpec
from broker_config.fleet_pki import FleetPki, provision_fleet
from broker_config.topology import dump_topology, generate_topology
from hffm_cli.main import app

pytestmark = pytest.mark.integration
if shutil.which("mosquitto") is None and not os.access("/usr/sbin/mosquitto", os.X_OK):
    pytestmark = [pytest.mark.integration, pytest.mark.skip(reason="mosquitto is not installed")]

FLEET = "slc"
USER = pwd.getpwuid(os.geteuid()).pw_name  # pytest's 0700 tmp root: mosquitto must not drop to its own account
runner = CliRunner()


def hffm(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["broker", *args])
    return result.exit_code, result.stdout + result.stderr


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, FleetPki]:
    tmp = tmp_path_factory.mktemp("secure-links-cli")
    topology = generate_topology(2, 2, d2d_group_size=2, fog_ring=True, fleet=FLEET)
    (tmp / "topology.toml").write_text(dump_topology(topology))
    spec = FleetSpec.from_topology(topology)
    return tmp, provision_fleet(tmp / "fleet", FLEET, dict(spec.fogs), groups=spec.groups, links=spec.links)


def _tls(pki: FleetPki, node: str) -> str:
    issued = pki.pki.root / "issued"
    return f'[tls]\nca = "{pki.ca}"\ncert = "{issued / f"{node}.pem"}"\nkey = "{issued / f"{node}.key"}"\n'


def test_check_a_tls_fog_with_a_tls_peer_bridge(fleet: tuple[Path, FleetPki]) -> None:
    tmp, pki = fleet
    issued = pki.pki.root / "issued"
    config = tmp / "fog-1.toml"
    config.write_text(f"""
[fog]
id = "fog-1"
fleet = "{FLEET}"
devices = ["fog-1-dev-1", "fog-1-dev-2"]
{_tls(pki, "fog-1")}
[mosquitto]
data_dir = "broker-fog-1"
user = "{USER}"
cert = "{issued / 'broker-fog-1.pem'}"
key = "{issued / 'broker-fog-1.key'}"
crl = "{pki.crl}"
cloud_host = "127.0.0.1"
bridge_cert = "{issued / 'bridge-fog-1.pem'}"
bridge_key = "{issued / 'bridge-fog-1.key'}"
peer_bridge_cert = "{issued / 'bridge-peer-fog-1.pem'}"
peer_bridge_key = "{issued / 'bridge-peer-fog-1.key'}"
peers = {{fog-2 = "127.0.0.1:1884"}}
topology = "topology.toml"
""")
    code, out = hffm("check", "-c", str(config))
    assert code == 0 and "mutual TLS" in out, out
    code, out = hffm("render", "-c", str(config), "--format", "json")
    assert code == 0, out
    conf = Path(json.loads(out)["conf"]).read_text().splitlines()
    assert "connection fog-fog-1-to-fog-2" in conf and "address 127.0.0.1:1884" in conf
    assert (tmp / "broker-fog-1" / "tls-peer-fog-2.key").stat().st_mode & 0o777 == 0o600


def _device_config(tmp: Path, pki: FleetPki, device: str, mosquitto: str) -> Path:
    path = tmp / f"{device}.toml"
    path.write_text(f"""
[device]
id = "{device}"
fleet = "{FLEET}"
fog = "fog-1"
modalities = ["power"]
tasks = ["demand"]
[d2d]
port = 18860
group = ["fog-1-dev-1", "fog-1-dev-2"]
{_tls(pki, device)}
[mosquitto]
{mosquitto}
""")
    return path


def test_check_a_hub_devices_d2d_broker_and_refuse_a_member(fleet: tuple[Path, FleetPki]) -> None:
    tmp, pki = fleet
    issued = pki.pki.root / "issued"
    hub = _device_config(tmp, pki, "fog-1-dev-1", f"""data_dir = "broker-d2d"
user = "{USER}"
cert = "{issued / 'broker-d2d-fog-1-dev-1.pem'}"
key = "{issued / 'broker-d2d-fog-1-dev-1.key'}"
crl = "{pki.crl}"
topology = "topology.toml"
""")
    code, out = hffm("check", "-c", str(hub))
    assert code == 0 and "d2d broker 'd2d-fog-1-dev-1'" in out, out
    code, out = hffm("render", "-c", str(hub), "--format", "json")
    assert code == 0 and json.loads(out)["listener"] == "127.0.0.1:18860", out
    dynsec = json.loads((tmp / "broker-d2d" / "dynsec.json").read_text())
    assert {c["username"] for c in dynsec["clients"]} == {"fog-1-dev-1", "fog-1-dev-2"}
    member = _device_config(tmp, pki, "fog-1-dev-2", 'data_dir = "broker-x"\n')
    code, out = hffm("render", "-c", str(member))
    assert code == 2 and "runs no D2D broker" in out, out

"""``hffm broker render`` for the secured links (no broker started): a TLS fog broker's bridges to its neighbours
present the fog's peer-bridge certificate, the neighbour's generated ACL admits that identity for fogpeer only, and
a D2D group's hub renders its group's TLS broker with the group's access control."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker_config.acl import FleetSpec, acl_users, peer_bridge_id
from broker_config.fleet_pki import FleetPki, provision_fleet
from broker_config.install import rendered_files
from broker_config.node import broker_node_from
from broker_config.topology import dump_topology, generate_topology
from fog_gateway.config import FogConfig
from hffm_core.config import load_config
from hffm_core.errors import ConfigError

FLEET = "sl"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, FleetPki]:
    tmp = tmp_path_factory.mktemp("secure-links")
    topology = generate_topology(2, 2, d2d_group_size=2, fog_ring=True, fleet=FLEET)
    (tmp / "topology.toml").write_text(dump_topology(topology))
    spec = FleetSpec.from_topology(topology)
    pki = provision_fleet(tmp / "fleet", FLEET, dict(spec.fogs), groups=spec.groups, links=spec.links)
    return tmp, pki


def _fog_config(tmp: Path, pki: FleetPki, fog: str, extra: str = "") -> Path:
    issued = pki.pki.root / "issued"
    devices = [f"{fog}-dev-1", f"{fog}-dev-2"]
    path = tmp / f"{fog}.toml"
    path.write_text(f"""
[fog]
id = "{fog}"
fleet = "{FLEET}"
devices = {json.dumps(devices)}
[tls]
ca = "{pki.ca}"
cert = "{issued / f'{fog}.pem'}"
key = "{issued / f'{fog}.key'}"
[mosquitto]
data_dir = "broker-{fog}"
cert = "{issued / f'broker-{fog}.pem'}"
key = "{issued / f'broker-{fog}.key'}"
crl = "{pki.crl}"
cloud_host = "127.0.0.1"
bridge_cert = "{issued / f'bridge-{fog}.pem'}"
bridge_key = "{issued / f'bridge-{fog}.key'}"
topology = "topology.toml"
{extra}""")
    return path


def _node(path: Path, fog: str):  # noqa: ANN202 - a BrokerNode
    cfg = load_config(path, FogConfig)
    return broker_node_from(cfg, role="fog", name=fog, fleet=FLEET, config=path)


def test_a_tls_fog_bridges_to_its_neighbour_with_its_peer_bridge_certificate(
        fleet: tuple[Path, FleetPki]) -> None:
    tmp, pki = fleet
    issued = pki.pki.root / "issued"
    low = _fog_config(tmp, pki, "fog-1", f'peer_bridge_cert = "{issued / "bridge-peer-fog-1.pem"}"\n'
                                         f'peer_bridge_key = "{issued / "bridge-peer-fog-1.key"}"\n'
                                         'peers = {fog-2 = "127.0.0.1:18830"}\n')
    node = _node(low, "fog-1")
    lines = node.render().splitlines()
    assert "connection fog-fog-1-to-fog-2" in lines and "address 127.0.0.1:18830" in lines
    assert f"bridge_certfile {node.data_dir}/tls-peer-fog-2.pem" in lines
    assert lines.count("bridge_insecure false") == 2  # the cloud bridge and the peer bridge
    files = rendered_files(node)
    assert files["tls-peer-fog-2.key"][1] is True and files["tls-peer-fog-2.pem"][0] == pki.pki.cert(
        "bridge-peer-fog-1").read_bytes()
    dynsec = json.loads(files["dynsec.json"][0])
    assert {c["username"] for c in dynsec["clients"]} == {"fog-1", "fog-1-dev-1", "fog-1-dev-2"}

    high = _node(_fog_config(tmp, pki, "fog-2"), "fog-2")  # the higher id runs no peer bridge, but admits fog-1's
    assert "connection fog-fog-2-to-fog" not in high.render() and not high.peer_bridges
    clients = {c["username"] for c in json.loads(high.acl_json or "")["clients"]}
    assert clients == {"fog-2", "fog-2-dev-1", "fog-2-dev-2", peer_bridge_id("fog-1")}


def test_a_tls_fog_with_a_neighbour_needs_its_peer_bridge_certificate(fleet: tuple[Path, FleetPki]) -> None:
    tmp, pki = fleet
    path = _fog_config(tmp, pki, "fog-1", 'peers = {fog-2 = "127.0.0.1:18830"}\n')
    with pytest.raises(ConfigError, match="missing key 'peer_bridge_cert'"):
        _node(path, "fog-1")


def test_the_peer_bridge_identity_has_only_fogpeer_rights() -> None:
    spec = FleetSpec.from_topology(generate_topology(3, 2, d2d_group_size=2, fog_ring=True, fleet=FLEET))
    rules = acl_users(spec, "fog-2")[peer_bridge_id("fog-1")]
    kinds = {pattern.split("/")[3] for _access, pattern in rules if not pattern.startswith("$SYS")}
    assert kinds == {"fogpeer"}
    assert ("write", f"hffm/v1/{FLEET}/fogpeer/fog-1/#") in rules
    assert ("read", f"hffm/v1/{FLEET}/fogpeer/fog-2/#") in rules
    assert peer_bridge_id("fog-3") not in acl_users(spec, "fog-2")  # fog-2 runs its own bridge to fog-3
    assert set(acl_users(spec, "fog-3")) >= {peer_bridge_id("fog-1"), peer_bridge_id("fog-2")}


def test_d2d_acl_confines_each_member() -> None:
    spec = FleetSpec.of(FLEET, {"f": ["a", "b", "c", "x"]}, groups=[("a", "b", "c")])
    users = acl_users(spec, "d2d-a")
    assert set(users) == {"a", "b", "c"}  # x, outside the group, has no rights there
    writes = {p for access, p in users["b"] if access == "write"}
    assert writes == {f"hffm/v1/{FLEET}/{kind}/f/{to}/b" for kind in ("peer", "ack") for to in ("a", "c")}
    reads = {p for access, p in users["b"] if access == "read"}
    assert reads == {f"hffm/v1/{FLEET}/peer/f/b/+", f"hffm/v1/{FLEET}/ack/f/b/+"}
    assert ("read", "$SYS/#") in users["a"] and ("read", "$SYS/#") not in users["b"]  # the hub probes its broker


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"groups": [("a",)]}, "at least two devices"),
    ({"groups": [("a", "y")]}, "spans fogs"),
    ({"groups": [("a", "b"), ("b", "c")]}, "two D2D groups"),
    ({"groups": [("a", "zz")]}, "not devices"),
    ({"links": [("g", "f")]}, "lower id first"),
    ({"links": [("f", "nope")]}, "lower id first"),
])
def test_bad_groups_and_links_are_config_errors(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        FleetSpec.of(FLEET, {"f": ["a", "b", "c"], "g": ["y"]}, **kwargs)  # type: ignore[arg-type]


def test_certificate_ids_must_not_collide() -> None:
    with pytest.raises(ConfigError, match="certificate id 'bridge-peer-x' is used twice"):
        FleetSpec.of(FLEET, {"x": ["a"], "peer-x": ["b"], "y": ["c"]}, links=[("x", "y")])

"""Access control generated from the topology: who may publish and read what, on which broker (no network)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker_config.acl import (
    FleetSpec,
    acl_users,
    render_acl,
    render_dynsec,
    write_acl,
    write_dynsec,
)
from hffm_core.errors import ConfigError
from hffm_core.protocol import topics
from hffm_core.protocol.keys import ModuleKey

F = "f1"
SPEC = FleetSpec.of(F, {"fog-a": ["dev-1", "dev-2"], "fog-b": ["dev-3"]})
KEY = ModuleKey.head("activity")


def _matches(filter_: str, topic: str) -> bool:
    """MQTT wildcard matching ('+' one level, '#' the rest), as the broker applies an ACL pattern."""
    f_levels, t_levels = filter_.split("/"), topic.split("/")
    for i, level in enumerate(f_levels):
        if level == "#":
            return True
        if i >= len(t_levels) or (level != "+" and level != t_levels[i]):
            return False
    return len(f_levels) == len(t_levels)


def allowed(broker: str, user: str, access: str, topic: str) -> bool:
    rules = acl_users(SPEC, broker).get(user, [])
    return any(access in kind and _matches(pattern, topic) for kind, pattern in rules)


# (broker, user, access, topic, allowed)
MATRIX = [
    # a device: its own updates, state, resync and D2D sends; its fog's cluster/ctl, global, its D2D inbox
    ("fog-a", "dev-1", "write", topics.up(F, "fog-a", KEY, "dev-1"), True),
    ("fog-a", "dev-1", "write", topics.up(F, "fog-a", KEY, "dev-2"), False),
    ("fog-a", "dev-1", "write", topics.state(F, "dev-1"), True),
    ("fog-a", "dev-1", "write", topics.state(F, "dev-2"), False),
    ("fog-a", "dev-1", "write", topics.resync(F, "fog-a", "dev-1"), True),
    ("fog-a", "dev-1", "write", topics.resync(F, "fog-a", "dev-2"), False),
    ("fog-a", "dev-1", "write", topics.peer(F, "fog-a", "dev-2", "dev-1"), True),
    ("fog-a", "dev-1", "write", topics.peer(F, "fog-a", "dev-2", "dev-2"), False),
    ("fog-a", "dev-1", "write", topics.ack(F, "fog-a", "dev-2", "dev-1"), True),
    ("fog-a", "dev-1", "write", topics.cluster(F, "fog-a", KEY), False),
    ("fog-a", "dev-1", "write", topics.ctl(F, "fog-a"), False),
    ("fog-a", "dev-1", "write", topics.global_(F, KEY), False),
    ("fog-a", "dev-1", "read", topics.cluster(F, "fog-a", KEY), True),
    ("fog-a", "dev-1", "read", topics.cluster(F, "fog-b", KEY), False),
    ("fog-a", "dev-1", "read", topics.ctl(F, "fog-a"), True),
    ("fog-a", "dev-1", "read", topics.ctl(F, "cloud"), False),
    ("fog-a", "dev-1", "read", topics.global_(F, KEY), True),
    ("fog-a", "dev-1", "read", topics.peer(F, "fog-a", "dev-1", "dev-2"), True),
    ("fog-a", "dev-1", "read", topics.peer(F, "fog-a", "dev-2", "dev-1"), False),
    ("fog-a", "dev-1", "read", topics.up(F, "fog-a", KEY, "dev-2"), False),
    ("fog-a", "dev-1", "read", topics.state(F, "dev-2"), False),
    # a fog gateway: its own fog's topics only
    ("fog-a", "fog-a", "write", topics.cluster(F, "fog-a", KEY), True),
    ("fog-a", "fog-a", "write", topics.cluster(F, "fog-b", KEY), False),
    ("fog-a", "fog-a", "write", topics.ctl(F, "fog-a"), True),
    ("fog-a", "fog-a", "write", topics.ctl(F, "cloud"), False),
    ("fog-a", "fog-a", "write", topics.fogup(F, "fog-a", KEY), True),
    ("fog-a", "fog-a", "write", topics.fogup(F, "fog-b", KEY), False),
    ("fog-a", "fog-a", "write", topics.fogdone(F, "fog-a"), True),
    ("fog-a", "fog-a", "write", topics.resync(F, "cloud", "fog-a"), True),
    ("fog-a", "fog-a", "write", topics.resync(F, "cloud", "fog-b"), False),
    ("fog-a", "fog-a", "write", topics.global_(F, KEY), False),
    ("fog-a", "fog-a", "write", topics.up(F, "fog-a", KEY, "dev-1"), False),
    ("fog-a", "fog-a", "read", topics.up(F, "fog-a", KEY, "dev-1"), True),
    ("fog-a", "fog-a", "read", topics.up(F, "fog-b", KEY, "dev-3"), False),
    ("fog-a", "fog-a", "read", topics.state(F, "dev-1"), True),
    # every advert on its own broker (fleet status as the fog); no other fog's adverts are bridged in
    ("fog-a", "fog-a", "read", topics.state_filter(F), True),
    ("fog-a", "fog-a", "read", topics.resync(F, "fog-a", "dev-2"), True),
    ("fog-a", "fog-a", "read", topics.global_(F, KEY), True),
    ("fog-a", "fog-a", "read", topics.ctl(F, "cloud"), True),
    ("fog-a", "fog-a", "read", "$SYS/broker/connection/hffm-bridge-f1-fog-a/state", True),
    # the bridge on the cloud broker: exactly what fog.conf.tmpl forwards, narrowed to its fog
    ("cloud", "bridge-fog-a", "write", topics.fogup(F, "fog-a", KEY), True),
    ("cloud", "bridge-fog-a", "write", topics.fogup(F, "fog-b", KEY), False),
    ("cloud", "bridge-fog-a", "write", topics.fogdone(F, "fog-a"), True),
    ("cloud", "bridge-fog-a", "write", topics.fogdone(F, "fog-b"), False),
    ("cloud", "bridge-fog-a", "write", topics.resync(F, "cloud", "fog-a"), True),
    ("cloud", "bridge-fog-a", "write", topics.state(F, "dev-1"), True),
    ("cloud", "bridge-fog-a", "write", topics.state(F, "fog-a"), True),
    ("cloud", "bridge-fog-a", "write", topics.state(F, "dev-3"), False),
    ("cloud", "bridge-fog-a", "write", topics.global_(F, KEY), False),
    ("cloud", "bridge-fog-a", "write", topics.ctl(F, "cloud"), False),
    ("cloud", "bridge-fog-a", "write", "$SYS/broker/connection/hffm-bridge-f1-fog-a/state", True),
    ("cloud", "bridge-fog-a", "write", "$SYS/broker/connection/hffm-bridge-f1-fog-b/state", False),
    ("cloud", "bridge-fog-a", "read", topics.global_(F, KEY), True),
    ("cloud", "bridge-fog-a", "read", topics.ctl(F, "cloud"), True),
    ("cloud", "bridge-fog-a", "read", topics.metrics(F), True),
    ("cloud", "bridge-fog-a", "read", topics.fogup(F, "fog-b", KEY), False),
    # the cloud
    ("cloud", "cloud", "write", topics.global_(F, KEY), True),
    ("cloud", "cloud", "write", topics.ctl(F, "cloud"), True),
    ("cloud", "cloud", "write", topics.metrics(F), True),
    ("cloud", "cloud", "write", topics.fogup(F, "fog-a", KEY), False),
    ("cloud", "cloud", "read", topics.fogup(F, "fog-b", KEY), True),
    ("cloud", "cloud", "read", topics.fogdone(F, "fog-a"), True),
    ("cloud", "cloud", "read", topics.resync(F, "cloud", "fog-b"), True),
    ("cloud", "cloud", "read", topics.state(F, "dev-3"), True),
    ("cloud", "cloud", "read", topics.ctl_filter(F), True),  # job status as the cloud
    # users of one broker have no rights on another
    ("cloud", "dev-1", "write", topics.up(F, "fog-a", KEY, "dev-1"), False),
    ("fog-a", "dev-3", "write", topics.up(F, "fog-a", KEY, "dev-3"), False),
    ("fog-a", "bridge-fog-a", "write", topics.fogup(F, "fog-a", KEY), False),
    ("fog-b", "fog-a", "write", topics.cluster(F, "fog-a", KEY), False),
]


@pytest.mark.parametrize(("broker", "user", "access", "topic", "expected"), MATRIX)
def test_access_matrix(broker: str, user: str, access: str, topic: str, expected: bool) -> None:
    assert allowed(broker, user, access, topic) is expected


def test_each_broker_knows_only_its_own_users() -> None:
    assert set(acl_users(SPEC, "cloud")) == {"cloud", "bridge-fog-a", "bridge-fog-b"}
    assert set(acl_users(SPEC, "fog-a")) == {"fog-a", "dev-1", "dev-2"}
    assert set(acl_users(SPEC, "fog-b")) == {"fog-b", "dev-3"}
    with pytest.raises(ConfigError, match="unknown broker 'fog-c'"):
        acl_users(SPEC, "fog-c")


def test_acl_file_syntax() -> None:
    text = render_acl(SPEC, "fog-a")
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines[0] == "user fog-a"  # nothing for anonymous clients before the first user
    for line in lines:
        parts = line.split(" ")
        assert (parts[0] == "user" and len(parts) == 2) or (
            parts[0] == "topic" and parts[1] in ("read", "write") and len(parts) == 3), line
    assert "topic write hffm/v1/f1/up/fog-a/+/+/+/dev-1" in lines


def test_dynsec_config_carries_the_same_rules() -> None:
    config = json.loads(render_dynsec(SPEC, "cloud"))
    assert config["defaultACLAccess"] == {"publishClientSend": False, "publishClientReceive": False,
                                          "subscribe": False, "unsubscribe": True}
    assert [c["username"] for c in config["clients"]] == list(acl_users(SPEC, "cloud"))
    assert all("password" not in c for c in config["clients"])
    for role in config["roles"]:
        rules = acl_users(SPEC, "cloud")[role["rolename"]]
        want = {("publishClientSend", p) for a, p in rules if a == "write"}
        want |= {(kind, p) for a, p in rules if a == "read" for kind in ("subscribePattern", "publishClientReceive")}
        assert {(acl["acltype"], acl["topic"]) for acl in role["acls"]} == want
        assert all(acl["allow"] is True for acl in role["acls"])


def test_write_files(tmp_path: Path) -> None:
    assert write_acl(SPEC, "fog-b", tmp_path / "fog-b.acl").read_text() == render_acl(SPEC, "fog-b")
    assert json.loads(write_dynsec(SPEC, "fog-b", tmp_path / "fog-b.json").read_text())["clients"]
    with pytest.raises(ConfigError, match="cannot write ACL file"):
        write_acl(SPEC, "fog-b", tmp_path / "missing" / "x.acl")


@pytest.mark.parametrize(("fogs", "cloud", "match"), [
    ({}, "cloud", "has no fogs"),
    ({"fog-a": []}, "cloud", "fog 'fog-a' has no devices"),
    ({"fog-a": ["dev-1"], "fog-b": ["dev-1"]}, "cloud", "identity 'dev-1' is used twice"),
    ({"fog-a": ["fog-a"]}, "cloud", "identity 'fog-a' is used twice"),
    ({"fog-a": ["cloud"]}, "cloud", "identity 'cloud' is used twice"),
    ({"fog-a": ["bridge-fog-b"]}, "cloud", "reserved for bridge and broker"),
    ({"fog-a": ["broker-x"]}, "cloud", "reserved for bridge and broker"),
    ({"fog-a": ["Dev"]}, "cloud", "invalid node id 'Dev'"),
    ({"fog-a": ["dev-1"]}, "c/x", "invalid node id 'c/x'"),
    ({"f" * 60: ["dev-1"]}, "cloud", "invalid bridge id"),
])
def test_bad_topologies_are_config_errors(fogs: dict[str, list[str]], cloud: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        FleetSpec.of(F, fogs, cloud)

"""The topic table is the one source of each kind's facts: the parser, builders, routing, signer rules, the broker
ACLs and the bridge lines of the broker templates all agree with it (no network)."""

from __future__ import annotations

import re
import string
import typing
from pathlib import Path

import pytest

import broker_config
from broker_config.acl import FleetSpec, acl_users
from hffm_core.protocol import topics
from hffm_core.protocol.envelope import expected_signer
from hffm_core.protocol.keys import ModuleKey
from hffm_core.protocol.routing import MESSAGE_FOR_KIND
from hffm_core.protocol.topic_table import ROLES, TOPIC_SPECS, TOPIC_TABLE, bridge_topics

TEMPLATES = Path(broker_config.__file__).resolve().parent
FLEET, FOG, NEIGHBOUR = "f1", "fog-a", "fog-b"
KEY = ModuleKey.adapter("imu", "activity")
_TOPIC_LINE = re.compile(r"^topic (\S+) (in|out|both) ([012])$")

# One concrete topic per kind, from its builder.
BUILT = {
    "up": topics.up(FLEET, FOG, KEY, "dev-1"),
    "cluster": topics.cluster(FLEET, FOG, KEY),
    "fogup": topics.fogup(FLEET, FOG, KEY),
    "fogdone": topics.fogdone(FLEET, FOG),
    "global": topics.global_(FLEET, KEY),
    "ctl": topics.ctl(FLEET, FOG),
    "state": topics.state(FLEET, "dev-1"),
    "metrics": topics.metrics(FLEET),
    "resync": topics.resync(FLEET, FOG, "dev-1"),
    "ack": topics.ack(FLEET, FOG, "dev-1", FOG),
    "chunk": topics.chunk(FLEET, "cloud", FOG),
    "peer": topics.peer(FLEET, FOG, "dev-2", "dev-1"),
    "fogpeer": topics.fogpeer(FLEET, FOG, KEY),
}
SIGNER = {"up": "dev-1", "cluster": FOG, "fogup": FOG, "fogdone": FOG, "global": "cloud", "ctl": FOG,
          "state": "dev-1", "metrics": "cloud", "resync": "dev-1", "ack": FOG, "chunk": FOG, "peer": "dev-1",
          "fogpeer": FOG}


def template_topics(name: str, **values: str) -> list[tuple[str, str, int]]:
    """The ``topic <pattern> <direction> <qos>`` lines of a broker template, its placeholders filled in."""
    text = string.Template((TEMPLATES / name).read_text(encoding="utf-8")).safe_substitute(values)
    found = []
    for line in text.splitlines():
        if line.startswith("topic "):
            match = _TOPIC_LINE.fullmatch(line.strip())
            assert match, f"{name}: unexpected bridge line {line!r}"
            found.append((match[1], match[2], int(match[3])))
    return found


def test_the_table_names_every_kind_once_and_matches_the_topic_kind_literal() -> None:
    kinds = [spec.kind for spec in TOPIC_TABLE]
    assert len(kinds) == len(set(kinds)) == len(BUILT)
    assert set(kinds) == set(typing.get_args(topics.TopicKind)) == set(BUILT)


def test_the_fog_template_bridges_exactly_the_tables_cloud_routes() -> None:
    lines = template_topics("fog.conf.tmpl", fleet=FLEET, fog=FOG)
    assert sorted(lines) == sorted(bridge_topics(FLEET, FOG, link="cloud"))
    assert len(lines) == len(set(lines))


def test_the_peer_template_bridges_exactly_the_tables_peer_routes() -> None:
    lines = template_topics("fog_peer_bridge.conf.tmpl", fleet=FLEET, fog=FOG, neighbour=NEIGHBOUR)
    assert sorted(lines) == sorted(bridge_topics(FLEET, FOG, link="peer", neighbour=NEIGHBOUR))


@pytest.mark.parametrize("kind", sorted(TOPIC_SPECS))
def test_each_kind_parses_builds_routes_and_signs_by_its_row(kind: str) -> None:
    spec = TOPIC_SPECS[kind]
    parsed = topics.parse(BUILT[kind])
    assert parsed.kind == kind
    assert len(BUILT[kind].split("/")) == 4 + spec.arity
    assert topics.build(parsed) == BUILT[kind]
    assert MESSAGE_FOR_KIND[kind] is spec.message
    assert expected_signer(parsed) == SIGNER[kind]
    assert (parsed.module is not None) is spec.has_module


@pytest.mark.parametrize("spec", TOPIC_TABLE, ids=lambda s: s.kind)
def test_rows_are_consistent(spec: typing.Any) -> None:
    assert spec.qos == 1  # bridge topics and publishes are QoS 1 everywhere (QoS 0 loses messages on a bridge)
    assert spec.publishers and set(spec.publishers) <= set(ROLES)
    assert spec.signer in spec.segments or spec.signer == "cloud"
    writers = {g.role for g in spec.grants if g.access == "write"}
    assert writers <= set(spec.publishers), f"{spec.kind}: a role may write it that does not publish it"
    assert all(route.direction in ("in", "out") and route.link in ("cloud", "peer") for route in spec.bridges)


def test_the_bridge_acl_is_the_template_narrowed_to_its_fog() -> None:
    spec = FleetSpec.of(FLEET, {FOG: ["dev-1", "dev-2"], NEIGHBOUR: ["dev-3"]})
    rules = acl_users(spec, "cloud")[f"bridge-{FOG}"]
    lines = template_topics("fog.conf.tmpl", fleet=FLEET, fog=FOG)
    for access, pattern in rules:
        if pattern.startswith("$SYS/"):
            continue
        direction = "out" if access == "write" else "in"
        assert any(d == direction and topics.matches(line, pattern.replace("+", "x").replace("#", "x"))
                   for line, d, _ in lines), (access, pattern)
    assert {d for _, d, _ in lines} == {"in", "out"}
    assert ("write", topics.state(FLEET, "dev-3")) not in rules  # another fog's device

"""The topic scheme: exact strings, ``parse(build(t)) == t``, strict parsing and valid MQTT filters."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hffm_core.errors import DecodeError
from hffm_core.protocol import topics
from hffm_core.protocol.keys import ModuleKey
from hffm_core.protocol.topics import Topic, check_segment

ENC = ModuleKey.encoder("imu")
ADA = ModuleKey.adapter("image", "fall")
HEAD = ModuleKey.head("activity")

SEGMENTS = st.from_regex(r"[a-z0-9_-]{1,64}", fullmatch=True)
NAMES = st.from_regex(r"[a-z0-9][a-z0-9-]{0,62}", fullmatch=True)
KEYS = st.one_of(
    st.builds(ModuleKey.encoder, NAMES),
    st.builds(ModuleKey.adapter, NAMES, NAMES),
    st.builds(ModuleKey.head, NAMES),
)


def _topic_strategy() -> st.SearchStrategy[Topic]:
    def node_topic(kind: str) -> st.SearchStrategy[Topic]:
        return st.builds(Topic, fleet=SEGMENTS, kind=st.just(kind), node=SEGMENTS)

    return st.one_of(
        st.builds(Topic, fleet=SEGMENTS, kind=st.just("up"), fog=SEGMENTS, module=KEYS, node=SEGMENTS),
        st.builds(Topic, fleet=SEGMENTS, kind=st.sampled_from(["cluster", "fogup"]), fog=SEGMENTS, module=KEYS),
        st.builds(Topic, fleet=SEGMENTS, kind=st.just("global"), module=KEYS),
        st.builds(Topic, fleet=SEGMENTS, kind=st.just("fogdone"), fog=SEGMENTS),
        node_topic("ctl"),
        node_topic("state"),
        node_topic("metrics"),
    )


# --- builders: the exact wire strings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("built", "expected"),
    [
        (topics.up("f1", "fog-a", ENC, "dev-1"), "hffm/v1/f1/up/fog-a/imu/_/encoder/dev-1"),
        (topics.up("f1", "fog-a", HEAD, "dev-1"), "hffm/v1/f1/up/fog-a/_/activity/head/dev-1"),
        (topics.cluster("f1", "fog-a", ADA), "hffm/v1/f1/cluster/fog-a/image/fall/adapter"),
        (topics.fogup("f1", "fog-a", ENC), "hffm/v1/f1/fogup/fog-a/imu/_/encoder"),
        (topics.global_("f1", HEAD), "hffm/v1/f1/global/_/activity/head"),
        (topics.fogdone("f1", "fog-a"), "hffm/v1/f1/fogdone/fog-a"),
        (topics.ctl("f1", "cloud"), "hffm/v1/f1/ctl/cloud"),
        (topics.ctl("f1", "fog-a"), "hffm/v1/f1/ctl/fog-a"),
        (topics.state("f1", "dev-1"), "hffm/v1/f1/state/dev-1"),
        (topics.metrics("f1"), "hffm/v1/f1/metrics/cloud"),
        (topics.metrics("f1", "obs"), "hffm/v1/f1/metrics/obs"),
    ],
)
def test_builders_produce_the_documented_strings(built: str, expected: str) -> None:
    assert built == expected
    assert topics.build(topics.parse(built)) == built


@pytest.mark.parametrize(
    "topic",
    [
        Topic(fleet="f1", kind="up", fog="fog-a", module=ENC, node="dev-1"),
        Topic(fleet="f1", kind="up", fog="fog-a", module=ADA, node="dev_2"),
        Topic(fleet="f1", kind="up", fog="fog-a", module=HEAD, node="d"),
        Topic(fleet="f1", kind="cluster", fog="fog-a", module=ADA),
        Topic(fleet="f1", kind="fogup", fog="fog-b", module=HEAD),
        Topic(fleet="f1", kind="global", module=ENC),
        Topic(fleet="f1", kind="fogdone", fog="fog-a"),
        Topic(fleet="f1", kind="ctl", node="cloud"),
        Topic(fleet="f1", kind="state", node="dev-1"),
        Topic(fleet="f1", kind="metrics", node="cloud"),
    ],
    ids=lambda t: t.kind,
)
def test_parse_build_round_trip(topic: Topic) -> None:
    text = topics.build(topic)
    assert str(topic) == text
    assert topics.parse(text) == topic


@given(_topic_strategy())
def test_parse_build_round_trip_property(topic: Topic) -> None:
    text = topics.build(topic)
    assert topics.parse(text) == topic
    assert str(topics.parse(text)) == text


@pytest.mark.parametrize(
    "topic",
    [
        Topic(fleet="f1", kind="up", fog="fog-a", module=ENC),
        Topic(fleet="f1", kind="up", module=ENC, node="dev-1"),
        Topic(fleet="f1", kind="cluster", fog="fog-a"),
        Topic(fleet="f1", kind="global"),
        Topic(fleet="f1", kind="fogdone", node="fog-a"),
        Topic(fleet="f1", kind="ctl"),
        Topic(fleet="f1", kind="bogus", node="x"),
        Topic(fleet="f1", kind="state", node=""),
    ],
)
def test_build_rejects_incomplete_topics(topic: Topic) -> None:
    with pytest.raises(ValueError, match="incomplete topic"):
        topics.build(topic)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: topics.up("F1", "fog-a", ENC, "dev-1"), "invalid fleet 'F1'"),
        (lambda: topics.up("f1", "fog/a", ENC, "dev-1"), "invalid fog 'fog/a'"),
        (lambda: topics.up("f1", "fog-a", ENC, "+"), "invalid device '\\+'"),
        (lambda: topics.cluster("f1", "#", ENC), "invalid fog '#'"),
        (lambda: topics.fogup("f1", "", ENC), "invalid fog ''"),
        (lambda: topics.global_("", ENC), "invalid fleet ''"),
        (lambda: topics.fogdone("f1", "Fog"), "invalid fog 'Fog'"),
        (lambda: topics.ctl("f1", "a b"), "invalid node 'a b'"),
        (lambda: topics.state("f1", "dev\n"), "invalid node 'dev\\\\n'"),
        (lambda: topics.metrics("f1", "x" * 65), "invalid node"),
        (lambda: topics.up_filter("f1", "+"), "invalid fog '\\+'"),
        (lambda: topics.fogup_filter("f1", ""), "invalid fog ''"),
        (lambda: topics.global_filter("f+"), "invalid fleet 'f\\+'"),
        (lambda: topics.state_filter("#"), "invalid fleet '#'"),
    ],
)
def test_builders_reject_bad_segments(call: Callable[[], str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


# --- parse: strict -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "match"),
    [
        # wrong root
        ("", "is not under hffm/v1"),
        ("hffm/v1/f1", "is not under hffm/v1"),
        ("hffm/v2/f1/ctl/cloud", "is not under hffm/v1"),
        ("HFFM/v1/f1/ctl/cloud", "is not under hffm/v1"),
        ("/hffm/v1/f1/ctl/cloud", "is not under hffm/v1"),
        ("other/v1/f1/ctl/cloud", "is not under hffm/v1"),
        ("$SYS/broker/uptime", "is not under hffm/v1"),
        # unknown kind
        ("hffm/v1/f1/down/x", "unknown kind 'down'"),
        ("hffm/v1/f1/CTL/cloud", "unknown kind 'CTL'"),
        ("hffm/v1/f1/+/cloud", "unknown kind '\\+'"),
        ("hffm/v1/f1/#", "unknown kind '#'"),
        ("hffm/v1/f1/", "unknown kind ''"),
        # wrong segment count, one short and one long for each kind
        ("hffm/v1/f1/up/fog-a/imu/_/encoder", "takes 5 segments after it, got 4"),
        ("hffm/v1/f1/up/fog-a/imu/_/encoder/dev-1/x", "takes 5 segments after it, got 6"),
        ("hffm/v1/f1/cluster/fog-a/imu/_", "takes 4 segments after it, got 3"),
        ("hffm/v1/f1/cluster/fog-a/imu/_/encoder/x", "takes 4 segments after it, got 5"),
        ("hffm/v1/f1/fogup/fog-a/imu/_", "takes 4 segments after it, got 3"),
        ("hffm/v1/f1/global/imu/_", "takes 3 segments after it, got 2"),
        ("hffm/v1/f1/global/fog-a/imu/_/encoder", "takes 3 segments after it, got 4"),
        ("hffm/v1/f1/ctl", "takes 1 segments after it, got 0"),
        ("hffm/v1/f1/ctl/cloud/x", "takes 1 segments after it, got 2"),
        ("hffm/v1/f1/fogdone/fog-a/x", "takes 1 segments after it, got 2"),
        ("hffm/v1/f1/state", "takes 1 segments after it, got 0"),
        ("hffm/v1/f1/metrics/cloud/x", "takes 1 segments after it, got 2"),
        ("hffm/v1/f1/ctl/cloud/", "takes 1 segments after it, got 2"),
        # wildcards
        ("hffm/v1/+/ctl/cloud", "invalid fleet '\\+'"),
        ("hffm/v1/#/ctl/cloud", "invalid fleet '#'"),
        ("hffm/v1/f1/ctl/+", "invalid segment '\\+'"),
        ("hffm/v1/f1/ctl/#", "invalid segment '#'"),
        ("hffm/v1/f1/up/+/imu/_/encoder/dev-1", "invalid segment '\\+'"),
        ("hffm/v1/f1/up/fog-a/imu/_/encoder/#", "invalid segment '#'"),
        ("hffm/v1/f1/global/imu/+/encoder", "invalid segment '\\+'"),
        ("hffm/v1/f1/state/dev+1", "invalid segment 'dev\\+1'"),
        # empty segments
        ("hffm/v1//ctl/cloud", "invalid fleet ''"),
        ("hffm/v1/f1/ctl/", "invalid segment ''"),
        ("hffm/v1/f1/up/fog-a//_/encoder/dev-1", "invalid segment ''"),
        # uppercase, spaces, non-ASCII, control characters, length
        ("hffm/v1/F1/ctl/cloud", "invalid fleet 'F1'"),
        ("hffm/v1/f1/ctl/Cloud", "invalid segment 'Cloud'"),
        ("hffm/v1/f1/state/dev 1", "invalid segment 'dev 1'"),
        ("hffm/v1/f1/state/dév", "invalid segment 'dév'"),
        ("hffm/v1/f1/state/dev\n", "invalid segment 'dev\\\\n'"),
        ("hffm/v1/f1\n/state/dev", "invalid fleet 'f1\\\\n'"),
        ("hffm/v1/f1/state/dev\x00", "invalid segment"),
        ("hffm/v1/f1/state/" + "d" * 65, "invalid segment"),
        # bad module keys
        ("hffm/v1/f1/global/imu/fall/encoder", "an encoder's task must be '_'"),
        ("hffm/v1/f1/global/imu/fall/head", "a head's modality must be '_'"),
        ("hffm/v1/f1/global/_/_/head", "invalid task '_'"),
        ("hffm/v1/f1/global/_/fall/adapter", "invalid modality '_'"),
        ("hffm/v1/f1/global/imu/_/adapter", "invalid task '_'"),
        ("hffm/v1/f1/global/imu/_/decoder", "unknown module kind 'decoder'"),
        ("hffm/v1/f1/cluster/fog-a/imu/_/lora", "unknown module kind 'lora'"),
        ("hffm/v1/f1/fogup/fog-a/im_u/_/encoder", "invalid modality 'im_u'"),
        ("hffm/v1/f1/up/fog-a/-imu/_/encoder/dev-1", "invalid modality '-imu'"),
        ("hffm/v1/f1/up/fog-a/imu/fall/encoder/dev-1", "an encoder's task must be '_'"),
    ],
)
def test_parse_rejects(text: str, match: str) -> None:
    with pytest.raises(DecodeError, match=match) as info:
        topics.parse(text)
    assert repr(text) in str(info.value), "the message quotes the whole topic"


# --- check_segment -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["a", "_", "-", "0", "fog-a", "dev_01", "a" * 64])
def test_check_segment_accepts(value: str) -> None:
    assert check_segment(value, "fog") == value


@pytest.mark.parametrize(
    "value",
    ["", "A", "fogA", "a/b", "+", "#", "a+", "a#", "a b", "a.b", "a:b", "é", "a\n", "\na", "a\x00", "a" * 65, None, 3],
)
def test_check_segment_rejects_and_names_what(value: object) -> None:
    with pytest.raises(ValueError, match=f"invalid fog {re.escape(repr(value))}: must match"):
        check_segment(value, "fog")  # type: ignore[arg-type]


# --- filters -----------------------------------------------------------------------------------------------------


def assert_valid_filter(text: str) -> None:
    """MQTT 3.1.1 / 5 section 4.7: '#' only as the whole last level, '+' only as a whole level, no empty string."""
    assert text and len(text.encode()) <= 65535 and "\x00" not in text
    levels = text.split("/")
    for i, level in enumerate(levels):
        if "#" in level:
            assert level == "#" and i == len(levels) - 1, text
        if "+" in level:
            assert level == "+", text


mqtt_matches = topics.matches


FILTERS = {
    "up": topics.up_filter("f1", "fog-a"),
    "fogup-one": topics.fogup_filter("f1", "fog-a"),
    "fogup-all": topics.fogup_filter("f1"),
    "global": topics.global_filter("f1"),
    "state": topics.state_filter("f1"),
}


@pytest.mark.parametrize("name", sorted(FILTERS))
def test_filters_are_valid_mqtt_filters(name: str) -> None:
    assert_valid_filter(FILTERS[name])


def test_filters_match_what_they_should_and_nothing_else() -> None:
    assert FILTERS == {
        "up": "hffm/v1/f1/up/fog-a/#",
        "fogup-one": "hffm/v1/f1/fogup/fog-a/#",
        "fogup-all": "hffm/v1/f1/fogup/+/#",
        "global": "hffm/v1/f1/global/#",
        "state": "hffm/v1/f1/state/+",
    }
    cases = [
        ("up", topics.up("f1", "fog-a", ENC, "dev-1"), True),
        ("up", topics.up("f1", "fog-b", ENC, "dev-1"), False),
        ("up", topics.up("f2", "fog-a", ENC, "dev-1"), False),
        ("up", topics.cluster("f1", "fog-a", ENC), False),
        ("fogup-one", topics.fogup("f1", "fog-a", ADA), True),
        ("fogup-one", topics.fogup("f1", "fog-b", ADA), False),
        ("fogup-all", topics.fogup("f1", "fog-b", HEAD), True),
        ("fogup-all", topics.fogdone("f1", "fog-b"), False),
        ("global", topics.global_("f1", HEAD), True),
        ("global", topics.global_("f2", HEAD), False),
        ("state", topics.state("f1", "dev-1"), True),
        ("state", topics.state("f1", "fog-a"), True),
        ("state", topics.ctl("f1", "fog-a"), False),
    ]
    for name, topic, expected in cases:
        assert mqtt_matches(FILTERS[name], topic) is expected, (name, topic)


@given(SEGMENTS, st.one_of(st.none(), SEGMENTS))
def test_filter_helpers_are_valid_for_any_segments(fleet: str, fog: str | None) -> None:
    built = [topics.global_filter(fleet), topics.state_filter(fleet), topics.fogup_filter(fleet, fog)]
    if fog is not None:
        built.append(topics.up_filter(fleet, fog))
    for text in built:
        assert_valid_filter(text)
        assert text.startswith(f"hffm/v1/{fleet}/")


def test_parse_rejects_every_filter() -> None:
    for text in FILTERS.values():
        with pytest.raises(DecodeError):
            topics.parse(text)


# --- D2D (reserved) topics and the ACL filter builders ------------------------------------------------------


def test_d2d_topics_and_their_acl_filters() -> None:
    assert topics.peer("f1", "fog-a", "dev-2", "dev-1") == "hffm/v1/f1/peer/fog-a/dev-2/dev-1"
    assert topics.ack("f1", "fog-a", "dev-1", "dev-2") == "hffm/v1/f1/ack/fog-a/dev-1/dev-2"
    inbox = topics.d2d_inbox_filter("f1", "peer", "fog-a", "dev-2")
    sent = topics.d2d_sent_filter("f1", "peer", "fog-a", "dev-1")
    message = topics.peer("f1", "fog-a", "dev-2", "dev-1")
    assert mqtt_matches(inbox, message) and mqtt_matches(sent, message)
    assert not mqtt_matches(topics.d2d_inbox_filter("f1", "peer", "fog-a", "dev-1"), message)
    assert not mqtt_matches(topics.d2d_sent_filter("f1", "peer", "fog-a", "dev-2"), message)
    assert not mqtt_matches(topics.d2d_inbox_filter("f1", "ack", "fog-a", "dev-2"), message)
    with pytest.raises(ValueError, match="invalid D2D kind 'up'"):
        topics.d2d_inbox_filter("f1", "up", "fog-a", "dev-1")
    with pytest.raises(ValueError, match="invalid recipient"):
        topics.peer("f1", "fog-a", "dev/2", "dev-1")
    parsed = topics.parse("hffm/v1/f1/peer/fog-a/dev-2/dev-1")  # peer deltas carry ``ModuleUpdate``
    assert (parsed.kind, parsed.fog, parsed.to, parsed.node) == ("peer", "fog-a", "dev-2", "dev-1")
    assert topics.build(parsed) == topics.peer("f1", "fog-a", "dev-2", "dev-1")
    with pytest.raises(DecodeError, match="takes 3 segments"):
        topics.parse("hffm/v1/f1/peer/fog-a/dev-2")
    key = ModuleKey(kind="adapter", modality="imu", task="activity")
    parsed = topics.parse(topics.fogpeer("f1", "fog-a", key))
    assert (parsed.kind, parsed.fog, parsed.module) == ("fogpeer", "fog-a", key)
    assert topics.build(parsed) == topics.fogpeer("f1", "fog-a", key)
    assert mqtt_matches(topics.fogpeer_filter("f1", "fog-a"), topics.fogpeer("f1", "fog-a", key))
    assert not mqtt_matches(topics.fogpeer_filter("f1", "fog-b"), topics.fogpeer("f1", "fog-a", key))
    parsed = topics.parse(topics.ack("f1", "fog-a", "dev-2", "dev-1"))  # acks carry ``Ack``
    assert (parsed.kind, parsed.fog, parsed.to, parsed.node) == ("ack", "fog-a", "dev-2", "dev-1")
    assert topics.build(parsed) == topics.ack("f1", "fog-a", "dev-2", "dev-1")
    parsed = topics.parse(topics.chunk("f1", "cloud", "fog-a"))
    assert (parsed.kind, parsed.fog, parsed.node) == ("chunk", "cloud", "fog-a")
    assert topics.build(parsed) == topics.chunk("f1", "cloud", "fog-a")


def test_acl_filter_builders_match_exactly_their_topics() -> None:
    own = topics.device_up_filter("f1", "fog-a", "dev-1")
    assert own == "hffm/v1/f1/up/fog-a/+/+/+/dev-1"
    for key in (ENC, ADA, HEAD):
        assert mqtt_matches(own, topics.up("f1", "fog-a", key, "dev-1"))
        assert not mqtt_matches(own, topics.up("f1", "fog-a", key, "dev-2"))
        assert not mqtt_matches(own, topics.up("f1", "fog-b", key, "dev-1"))
        assert mqtt_matches(topics.cluster_filter("f1", "fog-a"), topics.cluster("f1", "fog-a", key))
        assert not mqtt_matches(topics.cluster_filter("f1", "fog-a"), topics.cluster("f1", "fog-b", key))
    assert mqtt_matches(topics.metrics_filter("f1"), topics.metrics("f1"))
    assert not mqtt_matches(topics.metrics_filter("f1"), topics.ctl("f1", "cloud"))


@given(SEGMENTS, SEGMENTS, SEGMENTS)
def test_acl_filter_builders_are_valid_filters(fleet: str, fog: str, device: str) -> None:
    built = [topics.device_up_filter(fleet, fog, device), topics.cluster_filter(fleet, fog),
             topics.metrics_filter(fleet)]
    built += [f(fleet, kind, fog, device) for kind in topics.RESERVED_KINDS
              for f in (topics.d2d_inbox_filter, topics.d2d_sent_filter)]
    for text in built:
        assert_valid_filter(text)
        assert text.startswith(f"hffm/v1/{fleet}/")

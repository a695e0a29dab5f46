"""ModuleKey: the three shapes of key, their string form, ordering, and every way a key can be malformed."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hffm_core.protocol.keys import (
    ANY,
    MODULE_KINDS,
    ModuleKey,
    check_name,
    modules_for,
)
from hffm_core.protocol.topics import check_segment

NAMES = st.from_regex(r"[a-z0-9][a-z0-9-]{0,62}", fullmatch=True)
KEYS = st.one_of(
    st.builds(ModuleKey.encoder, NAMES),
    st.builds(ModuleKey.adapter, NAMES, NAMES),
    st.builds(ModuleKey.head, NAMES),
)


def test_constructors_fill_the_any_slot() -> None:
    assert ModuleKey.encoder("imu") == ModuleKey(kind="encoder", modality="imu", task=ANY)
    assert ModuleKey.adapter("imu", "fall") == ModuleKey(kind="adapter", modality="imu", task="fall")
    assert ModuleKey.head("fall") == ModuleKey(kind="head", modality=ANY, task="fall")
    assert ANY == "_"
    assert MODULE_KINDS == ("encoder", "adapter", "head")


@pytest.mark.parametrize(
    ("key", "text"),
    [
        (ModuleKey.encoder("imu"), "encoder:imu:_"),
        (ModuleKey.adapter("image", "gesture-2"), "adapter:image:gesture-2"),
        (ModuleKey.head("fall"), "head:_:fall"),
        (ModuleKey.encoder("0"), "encoder:0:_"),
    ],
)
def test_str_and_parse_are_inverse(key: ModuleKey, text: str) -> None:
    assert str(key) == text
    assert ModuleKey.parse(text) == key


@given(KEYS)
def test_str_parse_round_trip_property(key: ModuleKey) -> None:
    assert ModuleKey.parse(str(key)) == key
    # Every part of a key is usable as a topic segment.
    for part in (key.kind, key.modality, key.task):
        assert check_segment(part, "part") == part


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "expected 'kind:modality:task'"),
        ("encoder:imu", "expected 'kind:modality:task'"),
        ("encoder:imu:_:x", "expected 'kind:modality:task'"),
        ("encoder/imu/_", "expected 'kind:modality:task'"),
        ("decoder:imu:_", "unknown module kind 'decoder'"),
        ("Encoder:imu:_", "unknown module kind 'Encoder'"),
        ("encoder:imu:fall", "an encoder's task must be '_'"),
        ("encoder:_:_", "invalid modality '_'"),
        ("encoder::_", "invalid modality ''"),
        ("head:imu:fall", "a head's modality must be '_'"),
        ("head:_:_", "invalid task '_'"),
        ("adapter:_:fall", "invalid modality '_'"),
        ("adapter:imu:_", "invalid task '_'"),
        ("adapter:IMU:fall", "invalid modality 'IMU'"),
        ("adapter:imu:Fall", "invalid task 'Fall'"),
        ("adapter:-imu:fall", "invalid modality '-imu'"),
        ("adapter:im_u:fall", "invalid modality 'im_u'"),
        ("adapter:imu\n:fall", r"invalid modality 'imu\\n'"),
        ("adapter:imu:fall\n", r"invalid task 'fall\\n'"),
        ("adapter: imu:fall", "invalid modality ' imu'"),
        ("adapter:imü:fall", "invalid modality 'imü'"),
        ("adapter:" + "a" * 64 + ":fall", "invalid modality"),
    ],
)
def test_parse_rejects_malformed_keys(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ModuleKey.parse(text)


@pytest.mark.parametrize("value", [None, 3, b"encoder:imu:_", ["encoder", "imu", "_"]])
def test_parse_rejects_non_strings(value: object) -> None:
    with pytest.raises(ValueError, match="invalid module key"):
        ModuleKey.parse(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "build",
    [
        lambda: ModuleKey.encoder(""),
        lambda: ModuleKey.encoder("IMU"),
        lambda: ModuleKey.adapter("imu", ANY),
        lambda: ModuleKey.head(ANY),
        lambda: ModuleKey(kind="encoder", modality=3, task=ANY),  # type: ignore[arg-type]
        lambda: ModuleKey(kind=None, modality="imu", task=ANY),  # type: ignore[arg-type]
    ],
)
def test_constructor_rejects_bad_combinations(build: Callable[[], ModuleKey]) -> None:
    with pytest.raises(ValueError):
        build()


@pytest.mark.parametrize("value", ["a", "0", "imu", "a-b", "a" * 63, "9-"])
def test_check_name_accepts(value: str) -> None:
    assert check_name(value, "task") == value


@pytest.mark.parametrize("value", ["", "_", "-a", "a_b", "A", "a" * 64, "a\n", "a b", "a/b", "a:b", None, 1])
def test_check_name_rejects_and_quotes_the_value(value: object) -> None:
    with pytest.raises(ValueError, match=f"invalid task {re.escape(repr(value))}"):
        check_name(value, "task")


def test_ordering_is_by_kind_then_modality_then_task() -> None:
    keys = [
        ModuleKey.head("b"),
        ModuleKey.encoder("z"),
        ModuleKey.adapter("imu", "b"),
        ModuleKey.head("a"),
        ModuleKey.adapter("imu", "a"),
        ModuleKey.encoder("a"),
        ModuleKey.adapter("audio", "z"),
    ]
    assert sorted(keys) == [
        ModuleKey.adapter("audio", "z"),
        ModuleKey.adapter("imu", "a"),
        ModuleKey.adapter("imu", "b"),
        ModuleKey.encoder("a"),
        ModuleKey.encoder("z"),
        ModuleKey.head("a"),
        ModuleKey.head("b"),
    ]
    assert ModuleKey.encoder("a") < ModuleKey.encoder("b")


@given(st.lists(KEYS, max_size=8))
def test_ordering_matches_tuple_ordering(keys: list[ModuleKey]) -> None:
    assert sorted(keys) == sorted(keys, key=lambda k: (k.kind, k.modality, k.task))


def test_keys_are_frozen_and_hashable() -> None:
    key = ModuleKey.encoder("imu")
    with pytest.raises(dataclasses.FrozenInstanceError):
        key.kind = "head"  # type: ignore[misc]
    assert len({key, ModuleKey.encoder("imu"), ModuleKey.parse("encoder:imu:_")}) == 1


def test_modules_for_lists_encoders_adapters_and_heads_once_sorted() -> None:
    keys = modules_for({"imu": ["fall", "activity"], "image": ["activity"]})
    assert keys == [
        ModuleKey.adapter("image", "activity"),
        ModuleKey.adapter("imu", "activity"),
        ModuleKey.adapter("imu", "fall"),
        ModuleKey.encoder("image"),
        ModuleKey.encoder("imu"),
        ModuleKey.head("activity"),
        ModuleKey.head("fall"),
    ]
    assert modules_for({}) == []
    assert modules_for({"imu": []}) == [ModuleKey.encoder("imu")]


def test_modules_for_rejects_bad_names() -> None:
    with pytest.raises(ValueError, match="invalid task 'Fall'"):
        modules_for({"imu": ["Fall"]})

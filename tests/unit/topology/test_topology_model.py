"""Topology values and queries: generate_topology's layouts, D2D groups, fog links and link lookup."""

from __future__ import annotations

from itertools import pairwise

import pytest

from broker_config.topology import (
    DEFAULT_LINKS,
    LINK_KINDS,
    Channel,
    DeviceNode,
    FogNode,
    LinkParams,
    Topology,
    generate_topology,
    parse_topology,
)
from hffm_core.errors import TopologyError


def test_generate_uses_the_demo_ids() -> None:
    topo = generate_topology(2, 3)
    assert sorted(topo.fogs) == ["fog-1", "fog-2"]
    # the same ids and fogs as hffm_lab.demo.plan.fleet_ids()
    expected = {f"fog-{f}-dev-{d}": f"fog-{f}" for f in (1, 2) for d in (1, 2, 3)}
    assert {d.id: d.fog for d in topo.devices.values()} == expected
    assert topo.fleet == "demo"
    assert all(not g for g in (topo.d2d_groups("fog-1"), topo.d2d_groups("fog-2"), topo.fog_links()))
    assert all(f.agg_every is None and f.link == DEFAULT_LINKS["fog_cloud"] for f in topo.fogs.values())


@pytest.mark.parametrize(
    ("devices", "k", "groups"),
    [
        (3, 0, []),
        (3, 1, []),
        (3, 2, [("dev-1", "dev-2")]),  # the last group (dev-3 alone) has no link
        (4, 2, [("dev-1", "dev-2"), ("dev-3", "dev-4")]),
        (5, 3, [("dev-1", "dev-2", "dev-3"), ("dev-4", "dev-5")]),
        (3, 5, [("dev-1", "dev-2", "dev-3")]),
    ],
)
def test_generate_d2d_groups_are_consecutive_chains(devices: int, k: int, groups: list[tuple[str, ...]]) -> None:
    topo = generate_topology(2, devices, d2d_group_size=k)
    for fog in ("fog-1", "fog-2"):
        expected = [tuple(f"{fog}-{d}" for d in g) for g in groups]
        assert topo.d2d_groups(fog) == expected
        for group in expected:  # a chain: each member linked to the next only
            for a, b in pairwise(group):
                assert b in topo.devices[a].neighbours and a in topo.devices[b].neighbours
            if len(group) > 2:
                assert group[2] not in topo.devices[group[0]].neighbours


@pytest.mark.parametrize(
    ("fogs", "links"),
    [
        (1, []),
        (2, [("fog-1", "fog-2")]),
        (3, [("fog-1", "fog-2"), ("fog-1", "fog-3"), ("fog-2", "fog-3")]),
        (4, [("fog-1", "fog-2"), ("fog-1", "fog-4"), ("fog-2", "fog-3"), ("fog-3", "fog-4")]),
    ],
)
def test_generate_fog_ring(fogs: int, links: list[tuple[str, str]]) -> None:
    assert generate_topology(fogs, 1, fog_ring=True).fog_links() == links
    assert generate_topology(fogs, 1).fog_links() == []


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((0, 3), {}, "fogs must be an integer >= 1"),
        ((2, 0), {}, "devices_per_fog must be an integer >= 1"),
        ((2, 3), {"d2d_group_size": -1}, "d2d_group_size must be an integer >= 0"),
        ((2, 3), {"fleet": "A B"}, "invalid fleet"),
        ((2, 3), {"agg_every": 0}, "agg_every must be an integer >= 1"),
    ],
)
def test_generate_refuses_bad_arguments(args: tuple[int, int], kwargs: dict, match: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(TopologyError, match=match):
        generate_topology(*args, **kwargs)


def _topology() -> Topology:
    """fog a: a1 - a2 - a3 (a chain), a4 - a5, a6 alone; fog b: b1; fog c; fogs a-b and b-c neighbours."""
    return parse_topology({
        "topology": {"fleet": "x"},
        "fog": [{"id": "a", "neighbours": ["b"]}, {"id": "c"}, {"id": "b", "neighbours": ["c"]}],
        "device": [{"id": "a3", "fog": "a", "neighbours": ["a2"]}, {"id": "a1", "fog": "a", "neighbours": ["a2"]},
                   {"id": "a2", "fog": "a"}, {"id": "a5", "fog": "a"}, {"id": "a4", "fog": "a", "neighbours": ["a5"]},
                   {"id": "a6", "fog": "a"}, {"id": "b1", "fog": "b"}],
    })


def test_groups_are_connected_components_sorted_hub_first() -> None:
    topo = _topology()
    assert topo.devices_of("a") == ["a1", "a2", "a3", "a4", "a5", "a6"]
    assert topo.devices_of("c") == []
    assert topo.d2d_groups("a") == [("a1", "a2", "a3"), ("a4", "a5")]
    assert topo.d2d_groups("b") == []
    assert topo.group_of("a3") == ("a1", "a2", "a3") and topo.group_of("a3")[0] == "a1"
    assert topo.group_of("a6") is None and topo.group_of("b1") is None
    assert topo.d2d_links() == [("a1", "a2"), ("a2", "a3"), ("a4", "a5")]
    assert topo.fog_links() == [("a", "b"), ("b", "c")]
    with pytest.raises(TopologyError, match="unknown fog 'z'"):
        topo.devices_of("z")
    with pytest.raises(TopologyError, match="unknown device 'z'"):
        topo.group_of("z")


def test_link_lookup_per_kind() -> None:
    topo = _topology()
    assert topo.link("device_device", "a1", "a3") == topo.devices["a1"].d2d_link  # same group, via the hub
    assert topo.link("device_fog", "a1", "a") == topo.link("device_fog", "a", "a1") == topo.devices["a1"].link
    assert topo.link("fog_fog", "b", "a") == topo.defaults["fog_fog"]
    assert topo.link("fog_cloud", "a", "cloud") == topo.link("fog_cloud", "cloud", "a") == topo.fogs["a"].link
    assert topo.link("device_cloud", "b1", "cloud") == topo.defaults["device_cloud"]


@pytest.mark.parametrize(
    ("kind", "a", "b", "match"),
    [
        ("device_device", "a1", "a4", "not in the same D2D group"),
        ("device_device", "a6", "a6", "not in the same D2D group"),
        ("device_device", "a1", "zz", "unknown device 'zz'"),
        ("device_fog", "a1", "b", "belongs to fog 'a', not 'b'"),
        ("fog_fog", "a", "c", "are not neighbours"),
        ("fog_fog", "a", "q", "unknown fog 'q'"),
        ("fog_cloud", "a", "b", "one end must be 'cloud'"),
        ("fog_cloud", "a1", "cloud", "unknown fog 'a1'"),
        ("device_cloud", "a", "cloud", "unknown device 'a'"),
        ("radio", "a", "b", "unknown link kind 'radio'"),
    ],
)
def test_link_lookup_refuses_what_is_not_a_link(kind: str, a: str, b: str, match: str) -> None:
    with pytest.raises(TopologyError, match=match):
        _topology().link(kind, a, b)


def test_values_validate_themselves() -> None:
    link = DEFAULT_LINKS["device_fog"]
    with pytest.raises(TopologyError, match="bandwidth_hz must be a finite number > 0"):
        LinkParams(bandwidth_hz=-1.0, tx_power_w=1.0, distance_m=1.0)
    with pytest.raises(TopologyError, match="path_loss_exponent"):
        Channel(path_loss_exponent=float("nan"))
    with pytest.raises(TopologyError, match="lists itself"):
        FogNode(id="f", neighbours=("f",), agg_every=None, link=link)
    with pytest.raises(TopologyError, match="agg_every"):
        FogNode(id="f", neighbours=(), agg_every=0, link=link)
    fog = FogNode(id="f", neighbours=(), agg_every=None, link=link)
    dev = DeviceNode(id="d", fog="g", neighbours=(), link=link, d2d_link=link)
    with pytest.raises(TopologyError, match="fog 'g' is not a fog"):
        Topology(fleet="x", fogs={"f": fog}, devices={"d": dev})
    with pytest.raises(TopologyError, match="defaults must name exactly"):
        Topology(fleet="x", fogs={"f": fog}, devices={}, defaults={"device_fog": link})
    with pytest.raises(TopologyError, match="must be a FogNode with id 'g'"):
        Topology(fleet="x", fogs={"g": fog}, devices={})
    assert sorted(Topology(fleet="x", fogs={"f": fog}, devices={}).defaults) == sorted(LINK_KINDS)

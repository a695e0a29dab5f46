"""Topology files: every rule the reader enforces, the round trip through dump_topology, and the shipped example."""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path
from typing import Any

import pytest

from broker_config.topology import (
    DEFAULT_LINKS,
    LinkParams,
    dump_topology,
    generate_topology,
    load_topology,
    parse_topology,
)
from hffm_core.errors import ConfigError, TopologyError

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "topology.toml"


def _doc() -> dict[str, Any]:
    """A valid document: 2 fogs x 2 devices, one D2D pair in fog a, the fogs neighbours."""
    return {
        "topology": {"fleet": "plant"},
        "fog": [{"id": "fa", "neighbours": ["fb"]}, {"id": "fb"}],
        "device": [
            {"id": "a1", "fog": "fa", "neighbours": ["a2"]},
            {"id": "a2", "fog": "fa"},
            {"id": "b1", "fog": "fb"},
            {"id": "b2", "fog": "fb"},
        ],
    }


def _edit(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    """_doc() with the item at ``path`` set to ``value`` (or deleted when value is ``...``)."""
    doc = copy.deepcopy(_doc())
    target = doc
    for step in path[:-1]:
        target = target.setdefault(step, {}) if isinstance(step, str) else target[step]
    if value is ...:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


def test_minimal_document_parses_with_defaults() -> None:
    topo = parse_topology(_doc())
    assert topo.fleet == "plant" and topo.name == ""
    assert topo.fogs["fa"].neighbours == ("fb",) and topo.fogs["fb"].neighbours == ("fa",)  # undirected
    assert topo.devices["a2"].neighbours == ("a1",)
    assert topo.fogs["fa"].agg_every is None
    assert topo.devices["a1"].link == DEFAULT_LINKS["device_fog"]
    assert topo.devices["a1"].d2d_link == DEFAULT_LINKS["device_device"]
    assert topo.fogs["fa"].link == DEFAULT_LINKS["fog_cloud"]


def test_partial_overrides_merge_over_the_kind_defaults() -> None:
    doc = _doc()
    doc["links"] = {"device_fog": {"distance_m": 50}}
    doc["device"][0]["link"] = {"tx_power_w": 0.5}
    doc["device"][0]["d2d_link"] = {"bandwidth_hz": 2e6}
    doc["fog"][0]["link"] = {"distance_m": 800.0}
    doc["fog"][0]["agg_every"] = 4
    topo = parse_topology(doc)
    assert topo.defaults["device_fog"] == LinkParams(bandwidth_hz=1e6, tx_power_w=0.2, distance_m=50.0)
    assert topo.devices["a1"].link == LinkParams(bandwidth_hz=1e6, tx_power_w=0.5, distance_m=50.0)
    assert topo.devices["a2"].link == topo.defaults["device_fog"]
    assert topo.devices["a1"].d2d_link == LinkParams(bandwidth_hz=2e6, tx_power_w=0.1, distance_m=10.0)
    assert topo.fogs["fa"].link == LinkParams(bandwidth_hz=10e6, tx_power_w=1.0, distance_m=800.0)
    assert topo.fogs["fa"].agg_every == 4


@pytest.mark.parametrize(
    ("path", "value", "match"),
    [
        (("extra",), 1, r"unknown key\(s\) \['extra'\]"),
        (("topology", "owner"), "x", r"\[topology\]: unknown key\(s\) \['owner'\]"),
        (("topology",), ..., r"missing table \[topology\]"),
        (("topology", "fleet"), ..., "missing key 'fleet'"),
        (("topology", "fleet"), "Plant A", "invalid fleet 'Plant A'"),
        (("topology", "name"), 3, "name must be a string"),
        (("channel", "noise_dbm"), -174.0, r"\[channel\]: unknown key"),
        (("channel", "path_loss_exponent"), 0.0, r"\[channel\]: path_loss_exponent must be a finite number > 0"),
        (("channel", "ref_gain_db"), math.inf, "ref_gain_db must be a finite number"),
        (("channel", "noise_dbm_per_hz"), math.nan, "noise_dbm_per_hz must be a finite number"),
        (("links", "fog_sky"), {}, r"\[links\]: unknown key\(s\) \['fog_sky'\]"),
        (("links", "device_fog"), {"power": 1.0}, r"\[links.device_fog\]: unknown key"),
        (("links", "device_fog"), {"bandwidth_hz": 0}, r"\[links.device_fog\]: bandwidth_hz must be a finite number > 0"),
        (("links", "fog_fog"), {"tx_power_w": -1.0}, "tx_power_w must be a finite number > 0, got -1.0"),
        (("links", "fog_cloud"), {"distance_m": math.inf}, "distance_m must be a finite number > 0"),
        (("links", "device_device"), {"distance_m": True}, "distance_m must be a number, got True"),
        (("links", "device_device"), 5, r"\[links.device_device\] must be a table"),
        (("fog",), [], r"no \[\[fog\]\] entry"),
        (("device",), [], r"no \[\[device\]\] entry"),
        (("fog",), {"id": "fa"}, r"fog must be an array of tables"),
        (("fog", 0, "colour"), "red", r"\[\[fog\]\] #1: unknown key\(s\) \['colour'\]"),
        (("fog", 1, "id"), ..., r"\[\[fog\]\] #2: missing key 'id'"),
        (("fog", 1, "id"), "fa", r"\[\[fog\]\] #2: duplicate fog id 'fa'"),
        (("fog", 1, "id"), "FB", r"\[\[fog\]\] #2: invalid id 'FB'"),
        (("fog", 1, "id"), "f/b", r"\[\[fog\]\] #2: invalid id 'f/b'"),
        (("fog", 1, "id"), "cloud", "'cloud' is the cloud's id"),
        (("fog", 0, "neighbours"), ["fa"], r"\[\[fog\]\] 'fa': neighbours: lists itself"),
        (("fog", 0, "neighbours"), ["fc"], r"\[\[fog\]\] 'fa': neighbours: unknown fog 'fc'"),
        (("fog", 0, "neighbours"), ["fb", "fb"], "lists 'fb' twice"),
        (("fog", 0, "neighbours"), ["a1"], "'a1' is not a fog"),
        (("fog", 0, "neighbours"), "fb", "neighbours must be a list of ids"),
        (("fog", 0, "agg_every"), 0, r"\[\[fog\]\] 'fa': agg_every must be an integer >= 1, got 0"),
        (("fog", 0, "agg_every"), 2.0, "agg_every must be an integer >= 1"),
        (("fog", 0, "agg_every"), True, "agg_every must be an integer >= 1"),
        (("fog", 0, "link"), {"distance_m": -5}, r"'fa': \[fog.link\]: distance_m must be a finite number > 0"),
        (("device", 0, "cpu"), 4, r"\[\[device\]\] #1: unknown key\(s\) \['cpu'\]"),
        (("device", 3, "id"), "a1", r"\[\[device\]\] #4: duplicate device id 'a1'"),
        (("device", 3, "id"), "fb", r"\[\[device\]\] #4: id 'fb' is already a fog's id"),
        (("device", 3, "id"), "b 2", "invalid id 'b 2'"),
        (("device", 0, "fog"), ..., r"\[\[device\]\] 'a1': missing key 'fog'"),
        (("device", 0, "fog"), "fz", r"\[\[device\]\] 'a1': fog 'fz' is not a \[\[fog\]\] of this topology"),
        (("device", 0, "neighbours"), ["a1"], r"'a1': neighbours: lists itself"),
        (("device", 0, "neighbours"), ["a9"], "unknown device 'a9'"),
        (("device", 0, "neighbours"), ["b1"], "'b1' is in fog 'fb', not 'fa'; D2D links stay within a fog"),
        (("device", 0, "neighbours"), ["fa"], "'fa' is not a device"),
        (("device", 0, "link"), {"bandwidth_hz": "1MHz"}, r"\[device.link\]: bandwidth_hz must be a number"),
        (("device", 0, "d2d_link"), {"tx_power_w": 0}, r"\[device.d2d_link\]: tx_power_w must be a finite number > 0"),
        (("device", 0, "d2d_link"), {"range": 3}, r"\[device.d2d_link\]: unknown key"),
    ],
)
def test_every_rule_names_the_entry_and_field(path: tuple[Any, ...], value: Any, match: str) -> None:
    with pytest.raises(TopologyError, match=match) as info:
        parse_topology(_edit(path, value), source="t.toml")
    assert str(info.value).startswith("t.toml")
    assert isinstance(info.value, ConfigError) and info.value.exit_code == 2


def test_load_reports_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(TopologyError, match="cannot read topology"):
        load_topology(missing)
    bad = tmp_path / "bad.toml"
    bad.write_text("[topology\n")
    with pytest.raises(TopologyError, match=f"{bad}: invalid TOML"):
        load_topology(bad)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('[topology]\nfleet = "x"\n[[fog]]\nid = "f"\n[[device]]\nid = "d"\nfog = "g"\n')
    with pytest.raises(TopologyError, match=rf"^{wrong}: \[\[device\]\] 'd': fog 'g'"):
        load_topology(wrong)


def test_example_file_loads() -> None:
    topo = load_topology(EXAMPLE)
    assert topo.fleet == "demo"
    assert sorted(topo.fogs) == ["fog-1", "fog-2"]
    assert [topo.devices_of(f) for f in ("fog-1", "fog-2")] == [
        ["fog-1-dev-1", "fog-1-dev-2", "fog-1-dev-3"], ["fog-2-dev-1", "fog-2-dev-2", "fog-2-dev-3"]]
    assert topo.d2d_groups("fog-1") == [("fog-1-dev-1", "fog-1-dev-2")]
    assert topo.d2d_groups("fog-2") == [("fog-2-dev-1", "fog-2-dev-2")]
    assert topo.fog_links() == [("fog-1", "fog-2")]
    assert topo.fogs["fog-1"].agg_every == 2 and topo.fogs["fog-2"].agg_every is None
    assert topo.fogs["fog-1"].link.distance_m == 3000.0
    assert topo.devices["fog-1-dev-2"].d2d_link.tx_power_w == 0.05


@pytest.mark.parametrize(
    "topo",
    [
        load_topology(EXAMPLE),
        generate_topology(3, 4, d2d_group_size=3, fog_ring=True, fleet="f", agg_every=3, name='quote " and \\ é'),
        generate_topology(1, 1),
    ],
    ids=["example", "generated", "tiny"],
)
def test_dump_round_trips(topo: Any) -> None:
    text = dump_topology(topo)
    again = parse_topology(tomllib.loads(text))
    assert again == topo
    assert dump_topology(again) == text


def test_dump_writes_only_the_overrides() -> None:
    doc = _doc()
    doc["device"][1]["link"] = {"distance_m": 30.0}
    text = dump_topology(parse_topology(doc))
    data = tomllib.loads(text)
    assert [("link" in d, "d2d_link" in d) for d in data["device"]] == [(False, False), (True, False), (False, False),
                                                                       (False, False)]
    assert sorted(data["links"]) == sorted(DEFAULT_LINKS)

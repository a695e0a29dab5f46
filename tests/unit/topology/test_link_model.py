"""The Shannon-rate link model against hand computations, and estimate()'s max-within-a-kind, sum-over-kinds rule."""

from __future__ import annotations

import math

import pytest

from broker_config.topology import (
    LINK_KINDS,
    Channel,
    LinkParams,
    estimate,
    generate_topology,
    shannon_rate_bps,
    transfer,
)
from broker_config.topology.link_model import channel_gain, noise_w_per_hz
from hffm_core.errors import TopologyError


def test_rate_matches_a_hand_computation() -> None:
    # device -> fog default: B = 1 MHz, P = 0.2 W, d = 100 m; alpha 3, -30 dB at 1 m, N0 = -174 dBm/Hz.
    link = LinkParams(bandwidth_hz=1e6, tx_power_w=0.2, distance_m=100.0)
    gain = 1e-3 * 100.0 ** -3  # 1e-9
    n0 = 1e-3 * 10 ** (-17.4)  # -174 dBm/Hz = 10^-17.4 mW/Hz = 3.981e-21 W/Hz
    snr = 0.2 * gain / (n0 * 1e6)  # 2e-10 / 3.981e-15 = 5.024e4
    assert channel_gain(link, Channel()) == pytest.approx(1e-9)
    assert noise_w_per_hz(Channel()) == pytest.approx(3.981e-21, rel=1e-3)
    assert snr == pytest.approx(50237.7, rel=1e-6)
    assert shannon_rate_bps(link, Channel()) == pytest.approx(1e6 * math.log2(1 + snr), rel=1e-12)
    assert shannon_rate_bps(link) == pytest.approx(15.6165e6, rel=1e-5)


def test_rate_follows_the_channel() -> None:
    link = LinkParams(bandwidth_hz=1e6, tx_power_w=1.0, distance_m=10.0)
    # alpha 2, gain 0 dB at 1 m, N0 = -30 dBm/Hz = 1e-6 W/Hz: SNR = 1 * 10^-2 / (1e-6 * 1e6) = 0.01
    chan = Channel(noise_dbm_per_hz=-30.0, path_loss_exponent=2.0, ref_gain_db=0.0)
    assert shannon_rate_bps(link, chan) == pytest.approx(1e6 * math.log2(1.01))
    farther = LinkParams(bandwidth_hz=1e6, tx_power_w=1.0, distance_m=20.0)
    assert shannon_rate_bps(farther) < shannon_rate_bps(link)


def test_transfer_time_and_energy() -> None:
    link = LinkParams(bandwidth_hz=1e6, tx_power_w=0.2, distance_m=100.0)
    rate = shannon_rate_bps(link)
    seconds, joules = transfer(link, Channel(), 1_000_000)
    assert seconds == pytest.approx(8e6 / rate)
    assert joules == pytest.approx(0.2 * seconds)
    assert transfer(link, None, 0) == (0.0, 0.0)
    with pytest.raises(ValueError, match="nbytes"):
        transfer(link, Channel(), -1)


def test_estimate_takes_the_max_within_a_kind_and_sums_kinds() -> None:
    topo = generate_topology(2, 2, d2d_group_size=2, fog_ring=True)
    chan = topo.channel
    dev_fog = {("device_fog", "fog-1-dev-1", "fog-1"): 1000, ("device_fog", "fog-1-dev-2", "fog-1"): 5000,
               ("device_fog", "fog-2-dev-1", "fog-2"): 3000}
    fog_cloud = {("fog_cloud", "fog-1", "cloud"): 2000, ("fog_cloud", "fog-2", "cloud"): 7000}
    d2d = {("device_device", "fog-1-dev-2", "fog-1-dev-1"): 400}
    result = estimate(topo, {**dev_fog, **fog_cloud, **d2d})

    def times(table: dict) -> list[tuple[float, float]]:  # type: ignore[type-arg]
        return [transfer(topo.link(*key), chan, n) for key, n in table.items()]

    per_kind = result["per_kind"]
    assert sorted(per_kind) == sorted(LINK_KINDS)
    for kind, table in (("device_fog", dev_fog), ("fog_cloud", fog_cloud), ("device_device", d2d)):
        pairs = times(table)
        assert per_kind[kind]["bytes"] == sum(table.values())
        assert per_kind[kind]["latency_s"] == pytest.approx(max(t for t, _ in pairs))
        assert per_kind[kind]["energy_j"] == pytest.approx(sum(e for _, e in pairs))
    assert per_kind["fog_fog"] == {"bytes": 0, "latency_s": 0.0, "energy_j": 0.0}
    assert per_kind["device_cloud"] == {"bytes": 0, "latency_s": 0.0, "energy_j": 0.0}
    # The slowest device_fog link is the one with 5000 bytes (all have the same rate here).
    assert per_kind["device_fog"]["latency_s"] == pytest.approx(8 * 5000 / shannon_rate_bps(topo.link(
        "device_fog", "fog-1-dev-2", "fog-1"), chan))
    assert result["latency_s"] == pytest.approx(sum(row["latency_s"] for row in per_kind.values()))
    assert result["energy_j"] == pytest.approx(sum(e for t in (dev_fog, fog_cloud, d2d) for _, e in times(t)))
    assert estimate(topo, {}) == {"latency_s": 0.0, "energy_j": 0.0, "per_kind": {
        k: {"bytes": 0, "latency_s": 0.0, "energy_j": 0.0} for k in LINK_KINDS}}


def test_star_costs_more_than_the_hierarchy_for_the_same_bytes() -> None:
    # With the default links, one update sent straight to the cloud is slower than device -> fog -> cloud.
    topo = generate_topology(1, 1)
    star = estimate(topo, {("device_cloud", "fog-1-dev-1", "cloud"): 10**6})
    tiers = estimate(topo, {("device_fog", "fog-1-dev-1", "fog-1"): 10**6, ("fog_cloud", "fog-1", "cloud"): 10**6})
    assert star["latency_s"] > tiers["latency_s"]


def test_estimate_refuses_an_unknown_link() -> None:
    topo = generate_topology(2, 2)
    with pytest.raises(TopologyError, match="not neighbours"):
        estimate(topo, {("fog_fog", "fog-1", "fog-2"): 10})

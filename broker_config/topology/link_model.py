"""Latency and energy estimates from a Shannon-rate link model, as in the HF-FM prototype (docs/topology.md).

A link's rate is ``B log2(1 + P g / (N0 B))`` with ``g = 10^(ref_gain_db / 10) d^(-alpha)``: bandwidth B (Hz),
transmit power P (W), distance d (m), path-loss exponent alpha, the gain at 1 m, and the noise density N0 (W/Hz,
from dBm/Hz). There is no fading: the estimates are deterministic. Sending ``n`` bytes takes ``8 n / rate`` seconds
and ``P`` times that in joules.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from broker_config.topology.model import LINK_KINDS, Channel, LinkParams, Topology

__all__ = ["LinkId", "channel_gain", "estimate", "noise_w_per_hz", "shannon_rate_bps", "transfer"]

# A link as (kind, a, b), e.g. ("device_fog", "fog-1-dev-2", "fog-1"); kind is one of LINK_KINDS.
LinkId = tuple[str, str, str]


def noise_w_per_hz(channel: Channel) -> float:
    """N0 in W/Hz: ``10^((dBm - 30) / 10)``; -174 dBm/Hz (thermal noise at 290 K) is 3.98e-21 W/Hz."""
    return 10.0 ** ((channel.noise_dbm_per_hz - 30.0) / 10.0)


def channel_gain(link: LinkParams, channel: Channel) -> float:
    """The link's power gain (linear): ``10^(ref_gain_db / 10) * distance_m^(-path_loss_exponent)``."""
    return 10.0 ** (channel.ref_gain_db / 10.0) * link.distance_m ** (-channel.path_loss_exponent)


def shannon_rate_bps(link: LinkParams, channel: Channel | None = None) -> float:
    """The link's rate in bit/s: ``B log2(1 + P g / (N0 B))`` (``channel`` defaults to :class:`Channel`())."""
    chan = channel if channel is not None else Channel()
    snr = link.tx_power_w * channel_gain(link, chan) / (noise_w_per_hz(chan) * link.bandwidth_hz)
    return link.bandwidth_hz * math.log2(1.0 + snr)


def transfer(link: LinkParams, channel: Channel | None, nbytes: int) -> tuple[float, float]:
    """Seconds and joules to send ``nbytes`` over ``link``: ``8 nbytes / rate`` and ``tx_power_w`` times that.

    Raises:
        ValueError: ``nbytes`` is negative.
    """
    if nbytes < 0:
        raise ValueError(f"nbytes must be >= 0, got {nbytes!r}")
    if nbytes == 0:
        return 0.0, 0.0
    seconds = 8.0 * nbytes / shannon_rate_bps(link, channel)
    return seconds, link.tx_power_w * seconds


def estimate(topology: Topology, link_bytes: Mapping[LinkId, int]) -> dict[str, Any]:
    """Latency and energy of moving ``link_bytes`` (bytes per link, both directions together) over ``topology``.

    The rule (docs/topology.md): links of one kind transmit in parallel on orthogonal channels, so a kind takes as
    long as its slowest link; the kinds are sequential tiers, so the latency is the sum over kinds; the energy is
    the sum over every link of its transmit power times its transfer time. Each link uses its own
    :meth:`Topology.link` parameters for all its bytes.

    Returns:
        ``{"latency_s", "energy_j", "per_kind": {kind: {"bytes", "latency_s", "energy_j"}}}``, with every kind of
        :data:`LINK_KINDS` in ``per_kind`` (zeros where no bytes moved).

    Raises:
        TopologyError: a link id that does not name a link of ``topology`` (see :meth:`Topology.link`).
        ValueError: a negative byte count.
    """
    per_kind: dict[str, dict[str, Any]] = {k: {"bytes": 0, "latency_s": 0.0, "energy_j": 0.0} for k in LINK_KINDS}
    for (kind, a, b), nbytes in link_bytes.items():
        seconds, joules = transfer(topology.link(kind, a, b), topology.channel, nbytes)
        row = per_kind[kind]
        row["bytes"] += int(nbytes)
        row["latency_s"] = max(row["latency_s"], seconds)
        row["energy_j"] += joules
    return {
        "latency_s": sum(row["latency_s"] for row in per_kind.values()),
        "energy_j": sum(row["energy_j"] for row in per_kind.values()),
        "per_kind": per_kind,
    }

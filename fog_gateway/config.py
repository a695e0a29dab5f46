"""The fog gateway's config (``hffm fog run -c fog.toml``): its devices, round rules, schedule and D2D bridge.
Loading and the shared sections: ``hffm_core/config.py``."""

from __future__ import annotations

import math
from dataclasses import field
from typing import Any

from hffm_core.config import (
    BrokerConfig,
    CodecSpec,
    MetricsConfig,
    ReliabilityConfig,
    _frozen,
    _positive_seconds,
)
from hffm_core.protocol.topics import check_segment
from hffm_core.resources import ResourceThresholds

LATE_UPDATES = ("reject", "next_round")  # what a fog does with an update for a closed round


@_frozen
class FogD2dConfig:
    """[d2d] of a fog (docs/topology.md): its devices' D2D groups, its fog neighbours, and the rates that rank
    relays. Empty: no D2D relays and no fog-to-fog exchange."""

    groups: list[list[str]] = field(default_factory=list)  # each a D2D group of this fog's devices
    uplink_rate_bps: dict[str, float] = field(default_factory=dict)  # device -> its fog link's rate (link model)
    neighbours: list[str] = field(default_factory=list)  # fogs whose cluster aggregates this fog mixes in
    neighbour_wait_s: float = 60.0  # how long a cluster round's close waits for the neighbours' aggregates

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for group in self.groups:
            if len(group) < 2 or seen & set(group) or len(set(group)) != len(group):
                raise ValueError(f"[d2d] groups must be disjoint lists of >= 2 devices, got {self.groups}")
            seen |= set(group)
        for dev, rate in self.uplink_rate_bps.items():
            if not (isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 0):
                raise ValueError(f"[d2d] uplink_rate_bps of {dev!r} must be a finite number > 0, got {rate!r}")
        _positive_seconds(self.neighbour_wait_s, "[d2d] neighbour_wait_s")


@_frozen
class FogSchedule:
    """[schedule] of a fog: E_agg, fixed or adaptive (fog_gateway/schedule.py states the rule)."""

    agg_every: int = 0  # cluster rounds per global round; 0 = the cloud's agg_every (never more than it)
    adaptive: bool = False  # pick E_agg each global round from the measured cluster-round and cloud-sync times
    sync_share: float = 0.25  # adaptive: cloud syncs may take this share of the time spent in cluster rounds

    def __post_init__(self) -> None:
        if isinstance(self.agg_every, bool) or not isinstance(self.agg_every, int) or self.agg_every < 0:
            raise ValueError(f"[schedule] agg_every must be an int >= 0 (0 = the cloud's), got {self.agg_every!r}")
        if not (math.isfinite(self.sync_share) and 0 < self.sync_share <= 10):
            raise ValueError(f"[schedule] sync_share must be in (0, 10], got {self.sync_share!r}")


@_frozen
class FogSection:
    id: str
    fleet: str
    devices: list[str]
    round_deadline_s: float = 600.0
    startup_timeout_s: float = 300.0
    aggregator: str = "fedavg"  # fedavg, median, trimmed_mean, krum (hffm_core/aggregation)
    aggregator_params: dict[str, object] = field(default_factory=dict)  # e.g. {trim_fraction = 0.2}
    max_participants_per_module: int = 0  # 0 = every eligible holder; else the N holders with the most samples
    # A module updates in a cluster round only when at least this many devices reported it (docs/reliability.md).
    min_participants: int = 1
    # An update for the cluster round that just closed: "reject" (answered expired) or "next_round" (folded into
    # the open round with weight num_samples * staleness_decay ** lag).
    late_updates: str = "reject"
    staleness_decay: float = 0.5
    # An open round waits this long, no more, for a participant whose advert (or last will) says it is offline
    # (D2D members that a group member may still relay for wait for the deadline); a new round does not wait.
    offline_grace_s: float = 10.0

    def __post_init__(self) -> None:
        check_segment(self.id, "fog id")
        check_segment(self.fleet, "fleet")
        _positive_seconds(self.round_deadline_s, "round_deadline_s")
        _positive_seconds(self.startup_timeout_s, "startup_timeout_s")
        _positive_seconds(self.offline_grace_s, "offline_grace_s")
        if self.max_participants_per_module < 0:
            raise ValueError("max_participants_per_module must be >= 0")
        if not self.devices:
            raise ValueError("a fog needs at least one device")
        for d in self.devices:
            check_segment(d, "device id")
        self._check_stragglers()

    def _check_stragglers(self) -> None:
        if isinstance(self.min_participants, bool) or not isinstance(self.min_participants, int) \
                or self.min_participants < 1:
            raise ValueError(f"min_participants must be an int >= 1, got {self.min_participants!r}")
        if self.min_participants > len(self.devices):
            raise ValueError(f"min_participants {self.min_participants} is above the fog's {len(self.devices)} "
                             "device(s): no module could ever be updated")
        cap = self.max_participants_per_module
        if 0 < cap < self.min_participants:
            raise ValueError(f"min_participants {self.min_participants} is above max_participants_per_module "
                             f"{cap}: no module could ever be updated")
        if self.late_updates not in LATE_UPDATES:
            raise ValueError(f"unknown late_updates {self.late_updates!r}; expected one of {list(LATE_UPDATES)}")
        decay = self.staleness_decay
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not (0 < decay <= 1):
            raise ValueError(f"staleness_decay must be a number in (0, 1], got {decay!r}")


@_frozen
class FogConfig:
    fog: FogSection
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    selection: ResourceThresholds = field(default_factory=ResourceThresholds)  # who may train, from adverts
    uplink: dict[str, CodecSpec] = field(default_factory=dict)  # fog -> cloud aggregates
    downlink: dict[str, CodecSpec] = field(default_factory=dict)  # fog -> devices cluster versions
    reliability: ReliabilityConfig = field(default_factory=ReliabilityConfig)  # outbox for aggregates to the cloud
    d2d: FogD2dConfig = field(default_factory=FogD2dConfig)  # [d2d]: device groups, relays, neighbour fogs
    schedule: FogSchedule = field(default_factory=FogSchedule)  # [schedule]: E_agg fixed or adaptive
    tls: dict[str, Any] = field(default_factory=dict)  # [tls] ca/cert/key: mutual TLS to the broker (security/tls.py)
    signing: dict[str, Any] = field(default_factory=dict)  # [signing]: Ed25519 envelopes (security/signing_config.py)
    state_dir: str = "state"
    metrics: MetricsConfig = field(default_factory=MetricsConfig)  # [metrics] listen: Prometheus /metrics
    metrics_file: str = ""
    base_dir: str = "."
    mosquitto: dict[str, Any] = field(default_factory=dict)  # [mosquitto]: this fog's broker (hffm broker, broker_node.py)



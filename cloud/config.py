"""The cloud's config (``hffm cloud run -c cloud.toml``): the fleet's fogs, tasks, rounds and merge rule, and the
held-out test files. Loading and the shared sections: ``hffm_core/config.py``."""

from __future__ import annotations

from dataclasses import field
from typing import Any

from hffm_core.config import (
    BrokerConfig,
    CodecSpec,
    MetricsConfig,
    ModelConfig,
    _frozen,
    _positive_seconds,
)
from hffm_core.protocol.messages import check_job_id
from hffm_core.protocol.topics import check_segment


@_frozen
class CloudSection:
    fleet: str
    fogs: list[str]
    modalities: list[str]
    tasks: list[str]
    rounds: int = 5
    agg_every: int = 2
    local_epochs: int = 1
    round_deadline_s: float = 600.0  # per cluster round (sent to the fogs); see cloud/service.py
    startup_timeout_s: float = 300.0
    db: str = "cloud.sqlite"
    # How the fogs' aggregates of a module are merged: fedavg (sample-weighted mean) or a robust rule of
    # hffm_core/aggregation (median, trimmed_mean, krum), with its parameters (norm_bound works with any rule).
    aggregator: str = "fedavg"
    aggregator_params: dict[str, object] = field(default_factory=dict)
    # The job's id, named in every announcement and version (docs/reliability.md, "Jobs"); "" = the one saved in
    # state_dir, or a fresh one for a new state_dir.
    job_id: str = ""

    def __post_init__(self) -> None:
        check_segment(self.fleet, "fleet")
        check_job_id(self.job_id)
        for f in self.fogs:
            check_segment(f, "fog id")
        if not self.fogs:
            raise ValueError("the cloud needs at least one fog")
        if self.rounds < 1 or self.agg_every < 1 or self.local_epochs < 1:
            raise ValueError("rounds, agg_every and local_epochs must be >= 1")
        _positive_seconds(self.round_deadline_s, "round_deadline_s")
        _positive_seconds(self.startup_timeout_s, "startup_timeout_s")


@_frozen
class CloudConfig:
    cloud: CloudSection
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    eval: dict[str, str] = field(default_factory=dict)  # task -> held-out test file (.npz)
    downlink: dict[str, CodecSpec] = field(default_factory=dict)  # cloud -> fogs global versions
    tls: dict[str, Any] = field(default_factory=dict)  # [tls] ca/cert/key: mutual TLS to the broker (security/tls.py)
    signing: dict[str, Any] = field(default_factory=dict)  # [signing]: Ed25519 envelopes (security/signing_config.py)
    state_dir: str = "state"  # signing counter and replay windows
    metrics: MetricsConfig = field(default_factory=MetricsConfig)  # [metrics] listen: Prometheus /metrics
    metrics_file: str = ""
    base_dir: str = "."
    mosquitto: dict[str, Any] = field(default_factory=dict)  # [mosquitto]: the cloud broker (hffm broker, broker_node.py)



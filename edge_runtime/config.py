"""The device's config (``hffm edge run -c device.toml``): its modalities, tasks and data files, training, D2D, and
the red-team attack mode. Loading and the shared sections: ``hffm_core/config.py``."""

from __future__ import annotations

from dataclasses import field
from typing import Any

from hffm_core.config import (
    BrokerConfig,
    CodecSpec,
    MetricsConfig,
    ModelConfig,
    ReliabilityConfig,
    _frozen,
    _positive_seconds,
)
from hffm_core.errors import ConfigError
from hffm_core.protocol.keys import check_name
from hffm_core.protocol.topics import check_segment
from hffm_core.resources import ResourceThresholds


@_frozen
class TrainingConfig:
    batch_size: int = 32
    lr: float = 1e-3
    threads: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.threads < 1 or not self.lr > 0:
            raise ValueError("batch_size and threads must be >= 1 and lr > 0")


@_frozen
class TaskData:
    train: str
    test: str = ""
    own_test: str = ""  # a test split drawn from this device's own label mix (per-device evaluation)


PERSONALIZATION_MODES = ("none", "replace", "replace+distill")


@_frozen
class PersonalizationConfig:
    """[personalization] (docs/personalization.md): TAP-style personal modules. ``mode``: none (the device ends
    with the global model only), replace (a personal copy of each module, replaced by an arriving version only
    when that improves validation accuracy by more than ``margin[kind]``), replace+distill (then, after the last
    round, the final global model distilled into it). ``val_fraction`` of each task's training data is held out
    for the validation metric (only when mode is not none)."""

    mode: str = "none"
    val_fraction: float = 0.15
    margin: dict[str, float] = field(default_factory=lambda: {"encoder": 0.01, "adapter": 0.01, "head": 0.02})
    distill_epochs: int = 2
    distill_weight: float = 1.0  # weight of the KL term next to the cross-entropy on the device's own labels
    temperature: float = 2.0
    distill_lr: float = 5e-4
    # The KL term is used for a task only where the global model is at most this far below the personal modules on
    # validation; elsewhere the distillation epochs train on the device's labels alone.
    teacher_floor: float = 0.1

    def __post_init__(self) -> None:
        if self.mode not in PERSONALIZATION_MODES:
            raise ValueError(f"[personalization] mode must be one of {list(PERSONALIZATION_MODES)}, "
                             f"got {self.mode!r}")
        if not 0.0 < self.val_fraction < 0.5:
            raise ValueError(f"[personalization] val_fraction must lie in (0, 0.5), got {self.val_fraction!r}")
        bad = sorted(set(self.margin) - {"encoder", "adapter", "head"})
        if bad:
            raise ValueError(f"[personalization] margin has unknown module kinds {bad}; expected encoder, "
                             "adapter, head")
        if any(not 0.0 <= float(v) < 1.0 for v in self.margin.values()):
            raise ValueError(f"[personalization] margins must lie in [0, 1), got {self.margin}")
        if self.distill_epochs < 1 or not self.distill_weight >= 0 or not self.temperature > 0 \
                or not self.distill_lr > 0:
            raise ValueError("[personalization] distill_epochs must be >= 1, distill_weight >= 0, temperature "
                             "and distill_lr > 0")
        if not 0.0 <= self.teacher_floor <= 1.0:
            raise ValueError(f"[personalization] teacher_floor must lie in [0, 1], got {self.teacher_floor!r}")

    def margin_of(self, kind: str) -> float:
        return float(self.margin.get(kind, 0.01))


@_frozen
class DeviceSection:
    id: str
    fleet: str
    fog: str
    modalities: list[str]
    tasks: list[str]

    def __post_init__(self) -> None:
        for value, what in ((self.id, "device id"), (self.fleet, "fleet"), (self.fog, "fog")):
            check_segment(value, what)
        for m in self.modalities:
            check_name(m, "modality")
        for t in self.tasks:
            check_name(t, "task")


@_frozen
class AttackConfig:
    """Red-team mode: this device sends poisoned deltas (edge_runtime/attacks.py). Off by default."""

    kind: str = "none"  # none, sign_flip, scale, noise
    factor: float = 0.0  # 0 = the attack's default (sign_flip 1, scale 100, noise 10)
    seed: int = 0

    def __post_init__(self) -> None:
        from edge_runtime.attacks import check_attack

        try:
            check_attack(self.kind, self.factor or None)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None


@_frozen
class D2dConfig:
    """[d2d] of a device (docs/topology.md): its D2D group and the group's D2D broker (on the group's hub device).
    Without a port the device has no D2D link and always sends to its fog."""

    host: str = "127.0.0.1"
    port: int = 0
    group: list[str] = field(default_factory=list)  # every device of the group, this one included
    wait_s: float = 60.0  # a relay waits this long after its own training for its members' deltas
    fallback_s: float = 120.0  # a member sends to its fog itself when its relay has not acked after this long

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError(f"[d2d] port must be in 0..65535 (0 = no D2D link), got {self.port}")
        _positive_seconds(self.wait_s, "[d2d] wait_s")
        _positive_seconds(self.fallback_s, "[d2d] fallback_s")
        if len(set(self.group)) != len(self.group):
            raise ValueError(f"[d2d] group lists a device twice: {self.group}")


@_frozen
class DeviceConfig:
    device: DeviceSection
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    data: dict[str, TaskData] = field(default_factory=dict)
    uplink: dict[str, CodecSpec] = field(default_factory=dict)  # per module kind; error feedback on lossy codecs
    resources: ResourceThresholds = field(default_factory=ResourceThresholds)  # skip/shorten training when crossed
    attack: AttackConfig = field(default_factory=AttackConfig)  # red-team mode for testing defences; off by default
    reliability: ReliabilityConfig = field(default_factory=ReliabilityConfig)  # outbox + retransmission
    telemetry_interval_s: float = 30.0  # how often the retained state advert is refreshed (> 0)
    tls: dict[str, Any] = field(default_factory=dict)  # [tls] ca/cert/key: mutual TLS to the broker (security/tls.py)
    signing: dict[str, Any] = field(default_factory=dict)  # [signing]: Ed25519 envelopes (security/signing_config.py)
    privacy: dict[str, Any] = field(default_factory=dict)  # [privacy.<kind>]: client-side DP (privacy/dp.py)
    d2d: D2dConfig = field(default_factory=D2dConfig)  # [d2d]: the device's D2D group and its broker
    mosquitto: dict[str, Any] = field(default_factory=dict)  # [mosquitto]: a hub's D2D broker (hffm broker, node.py)
    personalization: PersonalizationConfig = field(default_factory=PersonalizationConfig)  # personal modules
    state_dir: str = "state"  # residuals, module snapshot and status file live here
    metrics: MetricsConfig = field(default_factory=MetricsConfig)  # [metrics] listen: Prometheus /metrics
    metrics_file: str = ""
    base_dir: str = "."

    def __post_init__(self) -> None:
        _positive_seconds(self.telemetry_interval_s, "telemetry_interval_s")

    def check_tables(self, where: str, problems: list[str]) -> None:
        """Append the problems of the device's raw ``[privacy]`` tables (called when the config is loaded)."""
        if self.privacy:
            from edge_runtime.privacy.dp import parse_privacy

            parse_privacy(self.privacy, f"{where}: privacy", problems)



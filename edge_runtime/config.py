"""Tier configs: TOML files read with tomllib into frozen dataclasses.

Every unknown key, missing key and value of the wrong type is a :class:`ConfigError` naming the file, the key and the
bad value. Defaults live here, commented examples in ``examples/``.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from edge_runtime.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (JetPack 6): the same parser from PyPI
    import tomli as tomllib
from edge_runtime.protocol.keys import check_name
from edge_runtime.protocol.messages import check_job_id
from edge_runtime.protocol.topics import check_segment
from edge_runtime.resources import ResourceThresholds

T = TypeVar("T")
_frozen = dataclass(frozen=True, slots=True, kw_only=True)


def _positive_seconds(value: float, what: str) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{what} must be a finite number of seconds > 0, got {value!r}")


@_frozen
class BrokerConfig:
    """[broker]: where the node's MQTT broker listens. A refused or failed first connect is retried with backoff
    until ``connect_timeout_s`` after the process started; then the service exits with code 4."""

    host: str = "127.0.0.1"
    port: int = 1883
    connect_timeout_s: float = 15.0

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        _positive_seconds(self.connect_timeout_s, "connect_timeout_s")


ADAPTER_VARIANTS = ("lora", "ffa_lora")


@_frozen
class ModelConfig:
    backbone: str = "minilm"
    seed: int = 0
    lora_r: int = 8
    lora_alpha: int = 16
    # "lora": train and send A and B. "ffa_lora": A stays at its seeded initial value on every node and only B is
    # trained and sent (FFA-LoRA, Sun et al. 2024): half the adapter traffic, and FedAvg of B is exact for B A.
    adapter: str = "lora"

    def __post_init__(self) -> None:
        if self.adapter not in ADAPTER_VARIANTS:
            raise ValueError(f"unknown adapter {self.adapter!r}; expected one of {list(ADAPTER_VARIANTS)}")


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
class CodecSpec:
    """One module kind's codec: ``codec`` names it (see edge_runtime/compression), ``params`` its parameters."""

    codec: str = "fp32"
    params: dict[str, object] = field(default_factory=dict)


MODULE_KINDS = ("encoder", "adapter", "head")


def make_codecs(specs: dict[str, CodecSpec], where: str) -> dict[str, Any]:
    """Codec instances per module kind (``fp32`` for kinds not listed).

    Raises:
        ConfigError: an unknown module kind, codec or parameter.
    """
    from edge_runtime.compression import make_codec

    unknown = sorted(set(specs) - set(MODULE_KINDS))
    if unknown:
        raise ConfigError(f"{where}: unknown module kind(s) {unknown}; expected some of {list(MODULE_KINDS)}")
    out = {}
    for kind in MODULE_KINDS:
        spec = specs.get(kind, CodecSpec())
        try:
            out[kind] = make_codec(spec.codec, spec.params)
        except ConfigError as exc:
            raise ConfigError(f"{where}.{kind}: {exc}") from None
    return out


@_frozen
class TaskData:
    train: str
    test: str = ""


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
    """Red-team mode: this device sends poisoned deltas (edge_runtime/security/attacks.py). Off by default."""

    kind: str = "none"  # none, sign_flip, scale, noise
    factor: float = 0.0  # 0 = the attack's default (sign_flip 1, scale 100, noise 10)
    seed: int = 0

    def __post_init__(self) -> None:
        from edge_runtime.security.attacks import check_attack

        try:
            check_attack(self.kind, self.factor or None)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None


@_frozen
class MetricsConfig:
    """[metrics]: Prometheus ``/metrics`` of this node (docs/observability.md). Off while ``listen`` is empty. Off
    loopback it is served over mutual TLS with the node's ``[tls]`` files unless ``insecure = true``."""

    listen: str = ""  # "IP:PORT", e.g. "127.0.0.1:9101"
    insecure: bool = False
    cert: str = ""  # off loopback: a server certificate for the listen address (hffm certs issue ID --role broker)
    key: str = ""  # its key; the scraper's certificate must be signed by the [tls] ca

    def server_tls(self, tls: dict[str, Any], base_dir: str) -> Any:
        """The endpoint's TLS files (this cert and key, and ``[tls] ca`` for the scrapers), or None without a
        cert. Raises ValueError for a cert without a key or without ``[tls] ca``."""
        if not self.cert:
            return None
        if not self.key or "ca" not in tls:
            raise ValueError("[metrics] cert needs [metrics] key and [tls] ca (the CA of the scrapers' certificates)")
        from edge_runtime.security.tls import TlsSettings

        return TlsSettings(ca=resolve(base_dir, str(tls["ca"])), cert=resolve(base_dir, self.cert),
                           key=resolve(base_dir, self.key))

    def __post_init__(self) -> None:
        if self.listen:
            from edge_runtime.observability import parse_listen

            try:
                parse_listen(self.listen)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None


@_frozen
class ReliabilityConfig:
    """[reliability]: the on-disk outbox for device updates and fog aggregates (docs/reliability.md). With the
    outbox, a message stays in ``state_dir`` until the receiver's ack and is resent with exponential backoff;
    without it, each message is published once and only the broker's PUBACK is awaited."""

    outbox: bool = True
    backoff_base_s: float = 2.0  # first retransmission after this, then doubling
    backoff_max_s: float = 30.0  # cap on the retransmission interval

    def __post_init__(self) -> None:
        _positive_seconds(self.backoff_base_s, "backoff_base_s")
        if not self.backoff_base_s <= self.backoff_max_s <= 3600:
            raise ValueError(f"backoff_max_s must be in [backoff_base_s, 3600], got {self.backoff_max_s!r}")


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
    state_dir: str = "state"  # residuals, module snapshot and status file live here
    metrics: MetricsConfig = field(default_factory=MetricsConfig)  # [metrics] listen: Prometheus /metrics
    metrics_file: str = ""
    base_dir: str = "."

    def __post_init__(self) -> None:
        _positive_seconds(self.telemetry_interval_s, "telemetry_interval_s")


LATE_UPDATES = ("reject", "next_round")


@_frozen
class FogSection:
    id: str
    fleet: str
    devices: list[str]
    round_deadline_s: float = 600.0
    startup_timeout_s: float = 300.0
    aggregator: str = "fedavg"  # fedavg, median, trimmed_mean, krum (fog_gateway/aggregation)
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
    # fog_gateway/aggregation (median, trimmed_mean, krum), with its parameters (norm_bound works with any rule).
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


def read_toml(path: Path | str) -> dict[str, Any]:
    """Parse a TOML file. Raises ``ConfigError`` for an unreadable file or invalid TOML."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config {str(path)!r}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def load_config(path: Path | str, cls: type[T]) -> T:
    """Read ``path`` as TOML into ``cls`` (DeviceConfig, FogConfig or CloudConfig).

    Raises:
        ConfigError: unreadable file, invalid TOML, unknown/missing keys, wrong value types or invalid values —
            every problem found, one per line.
    """
    table = read_toml(path)
    table.setdefault("base_dir", str(Path(path).resolve().parent))
    return build(cls, table, str(path))


def build(cls: type[T], table: Any, where: str) -> T:
    """Build a config dataclass from a TOML table.

    Raises:
        ConfigError: listing every problem found (key path and bad value), one per line.
    """
    problems: list[str] = []
    result = collect(cls, table, where, problems)
    if not problems and hasattr(result, "signing"):
        from edge_runtime.security.wiring import check_tables

        check_tables(result, where, problems)
    if problems:
        raise ConfigError("\n".join(problems))
    return result  # type: ignore[return-value]


_BAD = object()


def collect(cls: type[T], table: Any, where: str, problems: list[str]) -> T | object:
    """Build ``cls`` from ``table``, appending every problem to ``problems``; returns a marker when any."""
    if not isinstance(table, dict):
        problems.append(f"{where}: expected a table, got {type(table).__name__}")
        return _BAD
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    before = len(problems)
    unknown = sorted(set(table) - set(fields))
    if unknown:
        problems.append(f"{where}: unknown key(s) {unknown}; expected some of {sorted(fields)}")
    missing = sorted(
        n for n, f in fields.items()
        if n not in table and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )
    if missing:
        problems.append(f"{where}: missing key(s) {missing}")
    kwargs = {name: _value(table[name], hints[name], f"{where}: {name}", problems) for name in table if name in fields}
    if len(problems) > before:
        return _BAD
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        problems.append(f"{where}: {exc}")
        return _BAD


def _value(value: Any, hint: Any, where: str, problems: list[str]) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return collect(hint, value, where, problems)  # type: ignore[arg-type]
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            problems.append(f"{where}: expected a list, got {value!r}")
            return _BAD
        return [_value(v, item, f"{where}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict:
        _key, item = typing.get_args(hint)
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a table, got {value!r}")
            return _BAD
        return {k: _value(v, item, f"{where}.{k}", problems) for k, v in value.items()}
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool, float) and (type(value) is not hint):
        problems.append(f"{where}: expected {hint.__name__}, got {value!r}")
        return _BAD
    return value


def resolve(base_dir: str, path: str) -> Path:
    """A path from a config, relative to the config file's folder unless absolute."""
    p = Path(path)
    return p if p.is_absolute() else Path(base_dir) / p

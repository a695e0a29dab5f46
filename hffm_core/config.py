"""Config loading shared by every tier: TOML files read with tomllib into frozen dataclasses, and the sections every
tier's config has ([broker], [model], codecs, [metrics], [reliability]).

Every unknown key, missing key and value of the wrong type is a :class:`ConfigError` naming the file, the key and the
bad value. Each tier's own config sits beside its tier (``edge_runtime/config.py``, ``fog_gateway/config.py``,
``cloud/config.py``); commented examples in ``examples/``.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from hffm_core.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (JetPack 6): the same parser from PyPI
    import tomli as tomllib

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


ADAPTER_VARIANTS = ("lora", "ffa_lora", "lora-sb")


@_frozen
class ModelConfig:
    backbone: str = "minilm"
    seed: int = 0
    lora_r: int = 8
    lora_alpha: int = 16
    # "lora": train and send A and B. "ffa_lora": A stays at its seeded initial value on every node and only B is
    # trained and sent (FFA-LoRA, Sun et al. 2024): half the adapter traffic, and FedAvg of B is exact for B A.
    # "lora-sb": A and B are frozen SVD factors of the pretrained weight (the same on every node) and only an
    # lora_r x lora_r matrix R between them is trained and sent (Fed-SB, arXiv 2502.15436): FedAvg of R is exact.
    adapter: str = "lora"
    # Comma-separated names of the backbone's linear layers that get adapters ("query,key,value,dense" for every
    # linear layer of a BERT block); "" = the backbone's default (query and value).
    lora_targets: str = ""

    def __post_init__(self) -> None:
        if self.adapter not in ADAPTER_VARIANTS:
            raise ValueError(f"unknown adapter {self.adapter!r}; expected one of {list(ADAPTER_VARIANTS)}")
        names = [n.strip() for n in self.lora_targets.split(",")] if self.lora_targets.strip() else []
        if any(not n.isidentifier() for n in names) or len(set(names)) != len(names):
            raise ValueError(f"lora_targets must be distinct comma-separated layer names, got {self.lora_targets!r}")

    @property
    def target_names(self) -> tuple[str, ...]:
        """``lora_targets`` as a tuple; empty for the backbone's default."""
        return tuple(n.strip() for n in self.lora_targets.split(",")) if self.lora_targets.strip() else ()


def cross_rank_refusal(model: ModelConfig) -> str:
    """Why a node with ``model`` cannot take a module version at a higher LoRA rank than its ``lora_r`` (mixed
    ranks, hffm_core/aggregation/ranks.py), or "" when it truncates one: only plain LoRA does. FFA-LoRA's frozen A
    and LoRA-SB's frozen SVD factors are drawn for one rank, so a fleet of those must share one ``lora_r``."""
    if model.adapter == "lora":
        return ""
    return (f"[model] adapter = {model.adapter!r} needs one lora_r on every node; mixed LoRA ranks need "
            "adapter = 'lora'")


@_frozen
class CodecSpec:
    """One module kind's codec: ``codec`` names it (see hffm_core/compression), ``params`` its parameters."""

    codec: str = "fp32"
    params: dict[str, object] = field(default_factory=dict)


def make_codecs(specs: dict[str, CodecSpec], where: str) -> Any:
    """The link's :class:`~hffm_core.compression.table.CodecTable`: a codec per module kind (``fp32`` for kinds not
    listed) and per more specific selector (``encoder:image``, ``head:digit``, ``adapter:image:digit``, ...).

    Raises:
        ConfigError: an invalid selector, an unknown codec or parameter.
    """
    from hffm_core.compression import make_codec
    from hffm_core.compression.table import CodecTable, check_selector

    built = {}
    for selector, spec in specs.items():
        try:
            check_selector(selector)
            built[selector] = make_codec(spec.codec, spec.params)
        except ConfigError as exc:
            raise ConfigError(f"{where}.{selector}: {exc}") from None
    return CodecTable(built, make_codec("fp32"))


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
        from hffm_core.security.tls import TlsSettings

        return TlsSettings(ca=resolve(base_dir, str(tls["ca"])), cert=resolve(base_dir, self.cert),
                           key=resolve(base_dir, self.key))

    def __post_init__(self) -> None:
        if self.listen:
            from hffm_core.observability import parse_listen

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
        from hffm_core.security.wiring import check_tables

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

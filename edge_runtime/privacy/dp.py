"""Client-side differential privacy for module deltas: clip the whole delta, add Gaussian noise, count the cost.

A device clips the delta of one module (all its tensors together, as one vector) to L2 norm ``clip`` and adds
N(0, (noise_multiplier * clip)^2) to every coordinate before it codes and sends the delta. Each device noises its
own update, so the guarantee holds against the fog and everyone after it, with no trusted aggregator: it is
client-level DP, where the protected "record" is the device's whole contribution to that module in one round.
Compression and error feedback that see only the noised delta are post-processing and cost nothing more.

The privacy spent after ``rounds`` participations is the Gaussian mechanism composed ``rounds`` times
(sample rate 1: a participating client always noises), converted from Rényi DP to (epsilon, delta) by Opacus'
RDP accountant. Opacus (and torch) is imported only when epsilon is asked for.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from hffm_core.errors import ConfigError, ModelError, check_table_keys
from hffm_core.protocol.keys import MODULE_KINDS

# Rényi orders searched for the best conversion: Opacus' defaults plus larger ones, which the optimum reaches when
# the noise is large and the rounds are few (with sample rate 1 the RDP curve is linear in the order).
RDP_ORDERS: tuple[float, ...] = (
    tuple(1 + x / 10.0 for x in range(1, 100)) + tuple(float(a) for a in range(12, 64))
    + tuple(float(a) for a in (64, 80, 96, 128, 160, 192, 256, 384, 512, 768, 1024, 2048, 4096))
)
_KEYS = ("clip", "noise_multiplier", "delta")


@dataclass(frozen=True, slots=True, kw_only=True)
class DpSettings:
    """One module kind's DP: the L2 clip norm C, the noise multiplier sigma (noise std = sigma * C) and delta."""

    clip: float
    noise_multiplier: float
    delta: float = 1e-5

    def __post_init__(self) -> None:
        """Raises ``ConfigError`` quoting the bad value."""
        if not (_number(self.clip) and math.isfinite(self.clip) and self.clip > 0):
            raise ConfigError(f"clip must be a finite number > 0, got {self.clip!r}")
        if not (_number(self.noise_multiplier) and math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise ConfigError(f"noise_multiplier must be a finite number >= 0, got {self.noise_multiplier!r}")
        if not (_number(self.delta) and 0 < self.delta < 1):
            raise ConfigError(f"delta must be a number in (0, 1), got {self.delta!r}")


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_dp(table: Any, where: str, problems: list[str]) -> DpSettings | None:
    """Validate one ``[privacy.<kind>]`` table (keys ``clip``, ``noise_multiplier``, ``delta``), appending each
    problem to ``problems``. Returns the settings, or None when there was any problem. Raises nothing."""
    before = len(problems)
    if (not check_table_keys(table, where, problems, allowed=_KEYS, required=("clip", "noise_multiplier"))
            or len(problems) > before):
        return None
    try:
        return DpSettings(**table)
    except ConfigError as exc:
        problems.append(f"{where}: {exc}")
        return None


def parse_privacy(table: Any, where: str, problems: list[str]) -> dict[str, DpSettings]:
    """Validate a ``[privacy]`` table of per-kind sub-tables (``[privacy.adapter]``, ...). Kinds left out send
    their deltas without DP. Appends problems; raises nothing."""
    if not isinstance(table, dict):
        problems.append(f"{where}: expected a table, got {type(table).__name__}")
        return {}
    out: dict[str, DpSettings] = {}
    for kind, sub in table.items():
        if kind not in MODULE_KINDS:
            problems.append(f"{where}: unknown module kind {kind!r}; expected some of {list(MODULE_KINDS)}")
            continue
        settings = parse_dp(sub, f"{where}.{kind}", problems)
        if settings is not None:
            out[kind] = settings
    return out


def delta_norm(delta: Mapping[str, np.ndarray]) -> float:
    """The L2 norm of a module delta: all its tensors together as one vector (accumulated in float64)."""
    return math.sqrt(sum(float(np.sum(np.square(np.asarray(a, dtype=np.float64)))) for a in delta.values()))


def privatize(delta: Mapping[str, np.ndarray], settings: DpSettings,
              rng: np.random.Generator | None = None) -> tuple[dict[str, np.ndarray], float]:
    """Clip ``delta`` to L2 norm ``settings.clip`` and add N(0, (sigma * clip)^2) noise to every coordinate.

    ``rng`` defaults to a generator seeded from the operating system's entropy. Pass a seeded one only in tests: a
    seed that anyone else can know lets them subtract the noise. Returns (the noised delta as float32, the norm
    before clipping).

    Raises:
        ModelError: a tensor holds NaN or Inf (it cannot be clipped).
    """
    for name, a in delta.items():
        if not np.all(np.isfinite(a)):
            raise ModelError(f"module delta tensor {name!r} holds NaN or Inf; refusing to privatise it")
    norm = delta_norm(delta)
    scale = min(1.0, settings.clip / norm) if norm > 0 else 1.0
    std = settings.noise_multiplier * settings.clip
    gen = rng if rng is not None else np.random.default_rng()
    out: dict[str, np.ndarray] = {}
    for name in sorted(delta):  # a fixed order: the same seed draws the same noise for the same tensor
        a = np.asarray(delta[name], dtype=np.float64) * scale
        if std > 0:
            a = a + gen.normal(0.0, std, size=a.shape)
        out[name] = a.astype(np.float32)
    return out, norm


def epsilon(rounds: int, settings: DpSettings) -> float:
    """The epsilon spent by ``rounds`` noised participations at ``settings.delta`` (inf without noise, 0 without
    rounds), from Opacus' RDP accountant with sample rate 1.

    Raises:
        ConfigError: ``rounds`` is not an int >= 0.
    """
    if not (isinstance(rounds, int) and not isinstance(rounds, bool) and rounds >= 0):
        raise ConfigError(f"rounds must be an int >= 0, got {rounds!r}")
    if rounds == 0:
        return 0.0
    if settings.noise_multiplier == 0:
        return math.inf
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(settings.noise_multiplier, 1.0, rounds)]
    with warnings.catch_warnings():  # "optimal order is the largest alpha": RDP_ORDERS already reach far
        warnings.simplefilter("ignore")
        return float(accountant.get_epsilon(delta=settings.delta, alphas=list(RDP_ORDERS)))


class PrivacyLedger:
    """Counts a device's noised participations per module kind and reports the (epsilon, delta) spent.

    A participation is one round in which the device sent a noised delta of a module of that kind. Modules of one
    kind are counted together, which is the conservative choice when one device holds several (each one's delta
    is noised on its own, and the counts add up as if they were one stream).
    """

    def __init__(self, settings: Mapping[str, DpSettings], counts: Mapping[str, int] | None = None) -> None:
        self.settings = dict(settings)
        self.counts: Counter[str] = Counter(counts or {})

    def record(self, kind: str, n: int = 1) -> None:
        """Count ``n`` participations of ``kind``. Raises ``ConfigError`` for a kind without DP settings."""
        if kind not in self.settings:
            raise ConfigError(f"no DP settings for module kind {kind!r}; have {sorted(self.settings)}")
        self.counts[kind] += n

    def spent(self, kind: str) -> tuple[float, float]:
        """(epsilon, delta) spent so far by ``kind``. Raises ``ConfigError`` for a kind without DP settings."""
        if kind not in self.settings:
            raise ConfigError(f"no DP settings for module kind {kind!r}; have {sorted(self.settings)}")
        s = self.settings[kind]
        return epsilon(self.counts[kind], s), s.delta

    def report(self) -> dict[str, dict[str, Any]]:
        """{kind: {"epsilon", "delta", "rounds", "clip", "noise_multiplier"}} for the metrics file (JSON: an
        infinite epsilon, no noise, is written as null)."""
        out: dict[str, dict[str, Any]] = {}
        for kind, s in sorted(self.settings.items()):
            eps, delta = self.spent(kind)
            out[kind] = {"epsilon": eps if math.isfinite(eps) else None, "delta": delta, "rounds": self.counts[kind], "clip": s.clip,
                         "noise_multiplier": s.noise_multiplier}
        return out


def privacy_settings(cfg: Any) -> dict[str, Any]:
    """{module kind: DpSettings} from a device config's ``[privacy.<kind>]`` tables (empty: no DP).

    Raises:
        ConfigError: an invalid table.
    """
    if not cfg.privacy:
        return {}
    problems: list[str] = []
    out = parse_privacy(cfg.privacy, "privacy", problems)
    if problems:
        raise ConfigError("\n".join(problems))
    return out

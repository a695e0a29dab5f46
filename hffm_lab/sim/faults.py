"""Failure injection for a simulated fleet: which virtual device drops out, goes slow, crashes (and rejoins) or runs
short of resources, and when, drawn from a seed so that a run can be repeated.

A :class:`FaultRates` names the share of devices that get each fault; :func:`draw_faults` gives each chosen device
one :class:`Fault` at a seeded (global round, cluster round). What each kind does (``hffm_lab/sim/device.py``):

- ``drop``: before training in its round the device leaves for good (disconnects with its last will: the fog's
  roster sees it offline and the round closes without it after ``[fog] offline_grace_s``).
- ``slow``: from its round on, it sends each round's updates ``slow_s`` seconds late.
- ``crash``: in its round it queues its updates in its outbox, then dies before sending them (disconnect with last
  will, in-memory state lost); ``rejoin_s`` later it comes back with the same state folder, reconnects, hears the
  round again and resends what its outbox holds (the fog applies each key once).
- ``skip``: in its round its telemetry says the battery is low, so the real resource rule
  (:func:`hffm_core.resources.decide`) skips the round and the device advertises the skip.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Any

from hffm_core.errors import ConfigError

KINDS = ("drop", "slow", "crash", "skip")


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultRates:
    """The share of devices (0..1 each, at most 1 together) that get each fault."""

    drop: float = 0.0
    slow: float = 0.0
    crash: float = 0.0
    skip: float = 0.0
    slow_s: float = 2.0
    rejoin_s: float = 3.0

    def __post_init__(self) -> None:
        shares = [self.drop, self.slow, self.crash, self.skip]
        if any(not math.isfinite(s) or s < 0 for s in shares) or sum(shares) > 1.0:
            raise ConfigError(f"fault shares must be >= 0 and sum to at most 1, got {dict(zip(KINDS, shares))}")
        if not (0 <= self.slow_s <= 600 and 0 <= self.rejoin_s <= 600):
            raise ConfigError(f"slow_s and rejoin_s must be in [0, 600], got {self.slow_s}, {self.rejoin_s}")

    @classmethod
    def parse(cls, text: str) -> FaultRates:
        """``"drop=0.02,crash=0.01,slow=0.05,skip=0.02,slow_s=2,rejoin_s=3"`` (any subset; empty: no faults).

        Raises:
            ConfigError: an unknown name or a value that is not a number in range.
        """
        values: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, _, raw = part.partition("=")
            if name not in (*KINDS, "slow_s", "rejoin_s"):
                raise ConfigError(f"unknown fault {name!r}; expected some of {[*KINDS, 'slow_s', 'rejoin_s']}")
            try:
                values[name] = float(raw)
            except ValueError:
                raise ConfigError(f"fault {name!r}: {raw!r} is not a number") from None
        return cls(**values)

    @property
    def any(self) -> bool:
        return self.drop + self.slow + self.crash + self.skip > 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    """One device's fault: what, and in which round (g, c)."""

    kind: str
    g: int
    c: int
    seconds: float = 0.0  # slow: the delay; crash: the time until it rejoins

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown fault kind {self.kind!r}; expected one of {list(KINDS)}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def draw_faults(devices: list[str], rates: FaultRates, *, rounds: int, agg_every: int, seed: int
                ) -> dict[str, Fault]:
    """Device -> its fault, for ``round(share * len(devices))`` devices of each kind, in seeded rounds. Round (1, 1)
    is spared (every device first joins the job), so a fault needs at least two cluster rounds in the job."""
    rng = random.Random(f"hffm-sim-faults/{seed}")
    slots = [(g, c) for g in range(1, rounds + 1) for c in range(1, agg_every + 1)][1:]
    if not slots or not rates.any:
        return {}
    pool = list(devices)
    rng.shuffle(pool)
    out: dict[str, Fault] = {}
    for kind in KINDS:
        count = round(getattr(rates, kind) * len(devices))
        for dev in pool[:count]:
            g, c = rng.choice(slots)
            seconds = rates.slow_s if kind == "slow" else rates.rejoin_s if kind == "crash" else 0.0
            out[dev] = Fault(kind=kind, g=g, c=c, seconds=seconds)
        pool = pool[count:]
    return out

"""The cloud's open global round, on disk, so that a cloud killed mid-round resumes it and applies each key once.

Two files in the cloud's ``state_dir``:

- ``cloud-round.sqlite`` (:class:`~hffm_core.delivery.durable_sum.DurableSums`): per module of round g, the
  weighted sum ``sum_f W_f * delta_f`` of the fogs' aggregates and the idempotency keys folded into it, committed in
  one transaction per aggregate; the cloud acks an aggregate only after that commit.
- ``cloud-round.json`` (written atomically): the round number, the fogs whose report counted, the reports still
  waiting for aggregates they name, and the keys refused.

With a robust merge rule (``[cloud] aggregator`` other than ``fedavg``, or a ``norm_bound``), each fog's aggregate
gets a bucket of its own (``g{round}/{module}/{fog}``), so the rule sees every fog's delta when the round closes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from hffm_core.atomic import write_json
from hffm_core.delivery.durable_sum import DurableSums
from hffm_core.errors import AggregationError, ConfigError
from hffm_core.protocol import ModuleKey

log = logging.getLogger(__name__)
State = dict[str, np.ndarray]


class CloudRoundState:
    """Durable state of the open global round (see the module docstring)."""

    def __init__(self, state_dir: Path, *, aggregator: str = "fedavg",
                 aggregator_params: dict[str, object] | None = None) -> None:
        """Raises: OutboxError: the SQLite file cannot be opened. ConfigError: an unknown rule or parameter."""
        from hffm_core.aggregation import make_aggregator

        self.rule = (aggregator, dict(aggregator_params or {}))
        make_aggregator(*self.rule)  # a bad name or parameter fails at start, not at the first merge
        self.per_fog = aggregator != "fedavg" or bool(self.rule[1].get("norm_bound"))
        self.merge_refused: dict[ModuleKey, str] = {}  # set by results(): modules the rule refused this round
        state_dir.mkdir(parents=True, exist_ok=True)
        self.sums = DurableSums(state_dir / "cloud-round.sqlite")
        self.meta_path = state_dir / "cloud-round.json"
        self.round = 0
        self.reported: set[str] = set()
        self.promised: dict[str, set[str]] = {}
        self.refused: set[str] = set()

    def load(self) -> int:
        """The round saved by a previous run (0 if none), with its reports and refusals.

        Raises:
            ConfigError: the file is unreadable (refusing to start rather than merge a round twice).
        """
        if not self.meta_path.exists():
            return 0
        try:
            raw = json.loads(self.meta_path.read_text())
            self.round = int(raw["round"])
            self.reported = {str(f) for f in raw["reported"]}
            self.promised = {str(f): {str(k) for k in keys} for f, keys in raw["promised"].items()}
            self.refused = {str(k) for k in raw["refused"]}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"cloud round state {str(self.meta_path)!r} is unreadable ({exc}); move it away to "
                              "start the job from scratch") from None
        return self.round

    def reset(self) -> None:
        """Start from scratch: no saved round, no sums, no keys."""
        self.sums.clear()
        self.open(0)

    def open(self, g: int) -> None:
        self.round, self.reported, self.promised, self.refused = g, set(), {}, set()
        self.save()

    def save(self) -> None:
        write_json(self.meta_path, {"round": self.round, "reported": sorted(self.reported),
                                    "promised": {f: sorted(k) for f, k in self.promised.items()},
                                    "refused": sorted(self.refused)})

    def bucket(self, key: ModuleKey) -> str:
        return f"g{self.round}/{key}"

    def add(self, key: ModuleKey, idem: str, delta: State, weight: float, fog: str = "") -> str:
        """Fold one aggregate into the round (``"added"``, ``"duplicate"`` or ``"closed"``); with a robust rule it
        is kept apart as ``fog``'s. Raises AggregationError for a bad weight or delta (nothing changed)."""
        bucket = f"{self.bucket(key)}/{fog}" if self.per_fog else self.bucket(key)
        return self.sums.add(bucket, idem, delta, weight)

    def seen(self, idem: str) -> bool:
        return self.sums.has(idem)

    def refuse(self, idem: str) -> None:
        self.refused.add(idem)
        self.save()

    def report(self, fog: str, keys: set[str]) -> None:
        self.promised[fog] = keys
        self.save()

    def check_reported(self, fog: str) -> bool:
        """Count ``fog`` as reported once every aggregate its report names is applied or refused."""
        keys = self.promised.get(fog)
        if keys is None or not all(k in self.refused or self.sums.has(k) for k in keys):
            return False
        del self.promised[fog]
        self.reported.add(fog)
        self.save()
        return True

    def settle_promised(self) -> set[str]:
        """Count every fog whose saved report names only aggregates already applied or refused; returns them.

        A restarted cloud calls this: a kill between a report's save (and ack) and its count would otherwise leave
        that fog uncounted until it sends again, which it never does once its report is acked."""
        return {fog for fog in sorted(self.promised) if self.check_reported(fog)}

    def results(self, keys: list[ModuleKey]) -> dict[ModuleKey, State]:
        """The merged delta of every module of the round that got an aggregate: FedAvg (sum / total weight), or
        the robust rule over the fogs' deltas. A module the rule refuses (outside its tolerance) is left out and
        named in ``merge_refused`` with the reason; it never falls back to a plain mean."""
        out: dict[ModuleKey, State] = {}
        self.merge_refused = {}
        for key in keys:
            if not self.per_fog:
                sums, weight, count = self.sums.result(self.bucket(key))
                if count and weight > 0:
                    out[key] = {n: a / weight for n, a in sums.items()}
                continue
            merged = self._robust(key)
            if merged is not None:
                out[key] = merged
        return out

    def _fog_buckets(self, key: ModuleKey) -> list[str]:
        prefix = f"{self.bucket(key)}/"
        return [b for b in self.sums.buckets() if b.startswith(prefix)]

    def _robust(self, key: ModuleKey) -> State | None:
        from hffm_core.aggregation import make_aggregator

        rule = make_aggregator(*self.rule)
        try:
            for bucket in self._fog_buckets(key):
                sums, weight, count = self.sums.result(bucket)
                if count and weight > 0:
                    rule.add({n: (a / weight).astype(np.float32) for n, a in sums.items()}, weight)
            if rule.count == 0:
                return None
            return rule.result()
        except AggregationError as exc:
            self.merge_refused[key] = str(exc)
            log.warning("cloud: %s refused to merge %s in round %d: %s", self.rule[0], key, self.round, exc)
            return None

    def close(self, keys: list[ModuleKey]) -> None:
        for key in keys:
            self.sums.close_bucket(self.bucket(key))
            for bucket in self._fog_buckets(key):
                self.sums.close_bucket(bucket)

    def close_files(self) -> None:
        self.sums.close()

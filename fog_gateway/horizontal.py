"""Fog-to-fog exchange between global rounds (docs/topology.md): after each cluster round but the last of a global
round, a fog shares its aggregate with its neighbour fogs on ``fogpeer/{fog}/{module}`` (carried by the fog-to-fog
Mosquitto bridges generated from the topology) and mixes theirs into its own before publishing the cluster version.

What travels is a fog's *own* cumulative delta of the module since the global round's start (before any mixing),
with the sample weight of its cluster round, as a ``FogAggregate`` with ``cluster_round = c``. Mixing is the
sample-weighted mean of the fog's own delta and those of the neighbours that sent one for the same (g, c, module):
``start + (W_own d_own + sum_n W_n d_n) / (W_own + sum_n W_n)``. Every fog of a global round starts from the same
global version, so the deltas are comparable.

Wait rule: a fog closing cluster round c waits until every neighbour has sent at least one aggregate for (g, c) and
every module that neighbour shared before, then ``SETTLE_S`` more (a fog publishes all its modules at once), or
until ``[d2d] neighbour_wait_s`` passed; then it mixes what it has. A neighbour that is down only costs the wait.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np

from hffm_core.protocol import FogAggregate, ModuleKey

State = dict[str, np.ndarray]
SETTLE_S = 1.0


class NeighbourMix:
    """Neighbour aggregates received, per (g, c, module) and fog; pure state, no I/O."""

    def __init__(self, node: str, neighbours: Sequence[str], *, wait_s: float) -> None:
        self.node = node
        self.neighbours = sorted(set(neighbours) - {node})
        self.wait_s = wait_s
        self.received: dict[tuple[int, int, ModuleKey], dict[str, tuple[State, float]]] = {}
        self.shared_before: dict[str, set[ModuleKey]] = {n: set() for n in self.neighbours}
        self.last_arrival: dict[tuple[int, int], float] = {}

    def offer(self, msg: FogAggregate, delta: State) -> bool:
        """Keep a neighbour's aggregate; False for a duplicate (already have it)."""
        slot = self.received.setdefault((msg.global_round, msg.cluster_round, msg.key), {})
        if msg.fog in slot:
            return False
        slot[msg.fog] = (delta, float(msg.total_weight))
        self.last_arrival[(msg.global_round, msg.cluster_round)] = time.monotonic()
        return True

    def ready(self, g: int, c: int, since: float, *, now: float | None = None) -> bool:
        """True once every neighbour has sent for (g, c) what it is expected to, plus the settle time, or once
        ``wait_s`` passed since ``since`` (when the fog's own cluster round closed)."""
        now = time.monotonic() if now is None else now
        if not self.neighbours or now >= since + self.wait_s:
            return True
        for fog in self.neighbours:
            sent = {k for (gg, cc, k), slot in self.received.items() if (gg, cc) == (g, c) and fog in slot}
            if not sent or not self.shared_before[fog] <= sent:
                return False
        return now >= self.last_arrival.get((g, c), now) + SETTLE_S

    def mix(self, g: int, c: int, key: ModuleKey, start: Mapping[str, np.ndarray], own_delta: Mapping[str, np.ndarray],
            own_weight: float) -> tuple[State, list[str]]:
        """The mixed state of ``key`` and the neighbours mixed in (those whose tensors match ``start``)."""
        slot = self.received.get((g, c, key), {})
        parts = [(own_delta, own_weight)]
        used = []
        for fog, (delta, weight) in sorted(slot.items()):
            if sorted(delta) == sorted(start) and all(np.shape(delta[n]) == np.shape(start[n]) for n in start):
                parts.append((delta, weight))
                used.append(fog)
            self.shared_before.setdefault(fog, set()).add(key)
        total = sum(w for _d, w in parts)
        mixed = {n: (np.asarray(start[n], dtype=np.float64)
                     + sum(w * np.asarray(d[n], dtype=np.float64) for d, w in parts) / total).astype(np.float32)
                 for n in start}
        return mixed, used

    def forget_before(self, g: int) -> None:
        self.received = {k: v for k, v in self.received.items() if k[0] >= g}
        self.last_arrival = {k: v for k, v in self.last_arrival.items() if k[0] >= g}

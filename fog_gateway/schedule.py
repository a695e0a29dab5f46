"""How many cluster rounds a fog runs per global round (E_agg): fixed, or adaptive from measured link costs.

- Fixed: ``[schedule] agg_every = N`` (1 <= N); 0 (the default) takes the cloud's ``agg_every`` from its plan.
- Adaptive (``[schedule] adaptive = true``): after each global round the fog knows two measured times: a cluster
  round (announcement to close: device training plus device<->fog transfers) and a cloud sync (its aggregates sent
  to the next global versions received: fog<->cloud transfers, the cloud's merge, and waiting for the other fogs).
  It picks ``E_agg = ceil(sync / (share * cluster))``, clamped to ``[1, cap]``: enough local rounds that cloud syncs
  take at most ``share`` (``[schedule] sync_share``, default 0.25) of the time spent in cluster rounds. The first
  global round uses the cap; the cap is the cloud's ``agg_every`` (the cloud sizes its round deadline for it), so a
  fog never runs more cluster rounds than the cloud waits for.

In either mode a fog never exceeds the cloud's ``agg_every``; a fog with a smaller E_agg sends upward sooner and
waits for the next global round.
"""

from __future__ import annotations

import math


class Schedule:
    def __init__(self, *, agg_every: int = 0, adaptive: bool = False, sync_share: float = 0.25) -> None:
        self.fixed = agg_every
        self.adaptive = adaptive
        self.sync_share = sync_share
        self.cluster_s: list[float] = []
        self.sync_s: list[float] = []
        self.chosen: list[int] = []

    def pick(self, cap: int) -> int:
        """E_agg for the global round about to start, given the cloud's ``agg_every`` (``cap``)."""
        if self.adaptive and self.cluster_s and self.sync_s:
            cluster = sum(self.cluster_s[-4:]) / len(self.cluster_s[-4:])
            sync = self.sync_s[-1]
            e = math.ceil(sync / (self.sync_share * max(cluster, 1e-3)))
        elif self.fixed > 0:
            e = self.fixed
        else:
            e = cap
        e = max(1, min(cap, e))
        self.chosen.append(e)
        return e

    def observe_cluster(self, seconds: float) -> None:
        self.cluster_s.append(max(0.0, seconds))

    def observe_sync(self, seconds: float) -> None:
        self.sync_s.append(max(0.0, seconds))

    def report(self) -> dict[str, object]:
        return {"adaptive": self.adaptive, "fixed": self.fixed, "chosen": list(self.chosen),
                "cluster_s": [round(s, 3) for s in self.cluster_s], "sync_s": [round(s, 3) for s in self.sync_s]}

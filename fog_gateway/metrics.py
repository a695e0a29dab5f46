"""The fog gateway's round gauges for /metrics (hffm_core/observability.py), read from its round engine and the
log of its closed cluster rounds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fog_gateway.round_engine import FogRound
from hffm_core.observability import Gauge, Histogram


def round_gauges(rnd: FogRound, rounds_log: Sequence[Mapping[str, Any]]) -> list[Gauge | Histogram]:
    logged = list(rounds_log)
    expected = set().union(*[set(v) for v in list(rnd.participants.values())]) if rnd.in_round else set()
    reporters = set().union(*[set(v) for v in list(rnd.book.reported.values())]) if rnd.in_round else set()
    return [
        Gauge(name="round", help="The round this tier is in (scope: global or cluster).",
              values={(("scope", "global"),): rnd.at.g, (("scope", "cluster"),): rnd.at.c}),
        Gauge(name="round_expected", help="Devices selected for the open cluster round.", values={(): len(expected)}),
        Gauge(name="round_participants", help="Devices whose update of the open cluster round is in.",
              values={(): len(reporters)}),
        Gauge(name="rounds_closed", help="Cluster rounds closed.", values={(): len(logged)}, counter=True),
        Gauge(name="updates_aggregated", help="Device updates folded into closed cluster rounds.",
              values={(): sum(r["updates"] for r in logged)}, counter=True),
        Gauge(name="late_updates_folded", help="Updates of a closed round folded into the next one.",
              values={(): rnd.late_folded}, counter=True),
        Histogram(name="cluster_round_seconds", help="Cluster round durations, from announcement to close.",
                  observations=tuple(r["seconds"] for r in logged if "seconds" in r)),
    ]

"""What a device reports and keeps about itself: the gauges of its ``/metrics`` endpoint, the extra sections of its
metrics file (final accuracy, rounds, outbox, D2D and privacy figures), its status file (read by ``hffm edge
status``) and its job file (the job a restarted device was in)."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edge_runtime.privacy.dp import PrivacyLedger
from hffm_core.observability import Gauge, Histogram
from hffm_core.protocol import ModuleKey
from hffm_core.resources import Decision

log = logging.getLogger(__name__)


def device_gauges(*, last_done: tuple[int, int], rounds_log: Sequence[Mapping[str, Any]],
                  telemetry: Mapping[str, float], outbox: Mapping[str, Any] | None,
                  privacy: PrivacyLedger | None) -> list[Gauge | Histogram]:
    """The device's own metrics: its last round, training times, resource sample, update outcomes (``outbox``: the
    reliable sender's stats, None without an outbox) and the privacy spent."""
    g, c = last_done
    out: list[Gauge | Histogram] = [
        Gauge(name="round", help="The last round this device trained (scope: global or cluster).",
              values={(("scope", "global"),): g, (("scope", "cluster"),): c}),
        Histogram(name="train_seconds", help="Local training time per round.",
                  observations=tuple(r["train_s"] for r in list(rounds_log))),
        Gauge(name="device_telemetry", help="The device's last resource sample (only the sensors it has).",
              values={(("sensor", k),): v for k, v in dict(telemetry).items()}),
    ]
    if outbox is not None:
        out.append(Gauge(name="updates", help="Updates by outcome: sent (tries), acked, stale (their round had "
                                              "closed), rejected, dropped (stale + rejected).",
                         values={(("outcome", k),): outbox[k] for k in ("sent", "acked", "stale", "rejected",
                                                                         "conflicts", "dropped")}, counter=True))
    if privacy is not None:
        out.append(Gauge(name="dp_epsilon", help="Differential privacy spent so far, per module kind.",
                         values={(("kind", k),): v["epsilon"] for k, v in privacy.report().items()
                                 if v["epsilon"] is not None}))
    return out


def device_report(*, final_accuracy: dict[str, float], rounds_log: list[dict[str, Any]], job: str | None,
                  stale_modules: list[str], outbox: dict[str, Any] | None, d2d: dict[str, Any] | None,
                  privacy: PrivacyLedger | None, own_accuracy: dict[str, float] | None = None,
                  personal: dict[str, Any] | None = None) -> dict[str, Any]:
    """The device's sections of the metrics file (``d2d``, ``privacy``, ``own_accuracy`` (the global model on the
    device's own test split) and ``personalization`` only where the device has them)."""
    out: dict[str, Any] = {"final_accuracy": final_accuracy, "rounds": rounds_log, "job": job,
                           "stale_modules": stale_modules, "outbox": outbox}
    if own_accuracy:
        out["own_accuracy"] = own_accuracy
    if personal is not None:
        out["personalization"] = personal
    if d2d is not None:
        out["d2d"] = d2d
    if privacy is not None:
        out["privacy"] = privacy.report()
    return out


def status_record(*, node: str, fog: str, fleet: str, state: str, broker: str, job: str | None, reason: str | None,
                  connected: bool, last_done: tuple[int, int], stamps: Mapping[ModuleKey, tuple[int, int]],
                  keys: Sequence[ModuleKey], outbox_depth: int | None, decision: Decision | None,
                  telemetry: dict[str, float]) -> dict[str, Any]:
    """The device's status file. ``connected``: whether the link is up and the agent neither crashed nor stopped;
    ``outbox_depth``: None without an outbox."""
    return {
        "device": node, "fog": fog, "fleet": fleet, "pid": os.getpid(), "state": state, "broker": broker,
        "job": job, "reason": reason,
        "link": {"connected": connected},
        "last_round": list(last_done) if last_done != (0, 0) else None,
        "modules": {str(k): list(s) for k, s in sorted(stamps.items())},
        "held_modules": [str(k) for k in keys],
        "outbox": {"depth": None, "note": "outbox disabled: each publish waits only for the broker's PUBACK"}
        if outbox_depth is None else {"depth": outbox_depth, "note": "updates not yet acked by the fog"},
        "decision": None if decision is None else
        {"action": decision.action, "fraction": decision.fraction, "reasons": list(decision.reasons)},
        "resources": telemetry, "updated_at": time.time(),
    }


def read_job_file(path: Path, node: str) -> str | None:
    """The job a previous run of device ``node`` was in (None: none, or an unreadable file, said in the log)."""
    if not path.exists():
        return None
    try:
        return str(json.loads(path.read_text())["job"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("device %s: job file %s unreadable (%s); waiting for the fog to name a job", node, path, exc)
        return None

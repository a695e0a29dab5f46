"""The report of a simulated run, from what each part wrote: the fogs' metrics files (each cluster round's
duration, announcement to close, and the deltas it applied), the simulator processes' results (what every device
queued, had acked, had dropped), the round clock and the resource sampler (``observer.py``).

Medians are over the measured rounds: every global round but the first when there are several (the first includes
start-up: brokers, the cloud's model, every device's first connect and advert).
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hffm_core.protocol import modules_for
from hffm_lab.sim.observer import RoundClock
from hffm_lab.sim.plan import SimFleet, SimOptions


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def expected_deltas(opts: SimOptions, fleet: SimFleet, modality_of: dict[str, str]) -> int:
    """Deltas a fault-free run applies: every device's every module in every cluster round."""
    per_round = sum(len(modules_for({m: [t for t in ts if modality_of[t] == m] for m in {modality_of[t] for t in ts}}))
                    for ts in fleet.device_tasks.values())
    return per_round * opts.rounds * opts.agg_every


def summarize(opts: SimOptions, fleet: SimFleet, *, clock: RoundClock, usage: dict[str, Any],
              problems: list[str]) -> dict[str, Any]:
    problems = list(problems)
    first = 2 if opts.rounds > 1 else 1
    cluster = []
    for fog in fleet.fogs:
        for row in _read(fleet.metrics_file(fog)).get("rounds", []):
            cluster.append({"fog": fog, **{k: row.get(k) for k in ("global_round", "cluster_round", "seconds",
                                                                     "updates", "modules_updated")}})
    workers = [_read(fleet.metrics_file(f"sim-worker-{i}")) for i in range(len(fleet.worker_specs))]
    totals: Counter[str] = Counter()
    for w in workers:
        totals.update(w.get("totals", {}))
        if w and not w.get("ok"):
            problems.append(f"simulator process {w.get('worker')}: unfinished devices {w.get('unfinished')[:5]} "
                            f"errors {w.get('errors', [])[:3]}")
    if len([w for w in workers if w]) < len(fleet.worker_specs):
        problems.append(f"only {len([w for w in workers if w])} of {len(fleet.worker_specs)} simulator processes "
                        "wrote a result")
    modality_of = json.loads(fleet.worker_specs[0].read_text())["modality_of"] if fleet.worker_specs else {}
    applied = sum(int(r["updates"] or 0) for r in cluster)
    queued, acked = totals["queued"], totals["acked_keys"]  # distinct keys (a restarted device may queue one again)
    stale, rejected = totals["sender_stale"], totals["sender_rejected"]
    lost = queued - acked - stale - rejected
    # Below 0: keys answered twice (a device that crashed between an 'applied' ack and its outbox commit resends
    # the key after it rejoins and hears 'expired' for it as well): reported, not a loss.
    answered_twice = max(0, -lost)
    lost = max(0, lost)
    expected = expected_deltas(opts, fleet, modality_of)
    if lost:
        problems.append(f"{lost} deltas queued by devices were neither applied nor answered (lost)")
    if applied < acked:
        problems.append(f"the fogs applied {applied} deltas but the devices hold {acked} 'applied' acks")
    if not opts.faults.any and applied < expected:
        problems.append(f"fewer deltas applied than planned: {applied} of {expected}")
    sent_at: dict[str, list[float]] = {}
    for w in workers:
        for at, (lo, hi) in w.get("sent_at", {}).items():
            old = sent_at.get(at, [lo, hi])
            sent_at[at] = [min(old[0], lo), max(old[1], hi)]
    for r in cluster:  # how long the devices took to hand the round's updates over, from the fog's announcement
        opened = clock.announced(r["fog"], r["global_round"], r["cluster_round"])
        window = sent_at.get(f"{r['fog']}/{r['global_round']}.{r['cluster_round']}")
        r["devices_sent_from_s"] = round(window[0] - opened, 3) if opened and window else None
        r["devices_sent_by_s"] = round(window[1] - opened, 3) if opened and window else None
    measured = [r for r in cluster if (r["global_round"] or 0) >= first and r["seconds"]]
    globals_ = clock.global_rounds()
    procs = usage.get("processes", {})
    update_bytes = totals["bytes_queued"] / queued if queued else 0.0
    fanin = [r["updates"] / r["seconds"] for r in measured if r["updates"]]
    device_rounds = max(1, totals["rounds_sent"])
    accuracy = _accuracy(fleet, workers) if opts.mode == "train" else None
    return {
        "accuracy": accuracy,
        "K": opts.devices, "fogs": opts.fogs, "mode": opts.mode, "rounds": opts.rounds, "agg_every": opts.agg_every,
        "processes": len(fleet.worker_specs), "per_process": opts.per_process, "backbone": opts.backbone,
        "faults": asdict(opts.faults),
        "cluster_round_s": median([r["seconds"] for r in measured]),
        "devices_sent_by_s": median([r["devices_sent_by_s"] for r in measured if r["devices_sent_by_s"] is not None]),
        # What of a cluster round is the fog's own: from the last device's hand-over to the fog's close.
        "fog_after_last_send_s": median([round(r["seconds"] - r["devices_sent_by_s"], 3) for r in measured
                                         if r["devices_sent_by_s"] is not None]),
        "global_round_s": median([g["seconds"] for g in globals_ if g["round"] >= first]),
        "fanin_per_s": median(fanin),
        "fanin_mb_per_s": round(median(fanin) * update_bytes / 1e6, 1) if fanin else None,
        "update_bytes": round(update_bytes), "device_bytes_per_round": round(totals["bytes_queued"] / device_rounds),
        "deltas": {"expected_without_faults": expected, "queued": queued, "applied_by_fogs": applied, "acked": acked,
                   "stale": stale, "rejected": rejected, "conflicts": totals["sender_conflicts"],
                   "retransmitted": totals["sender_retransmitted"], "requeued_after_restart": totals["requeued"],
                   "pending": totals["pending"], "lost": lost, "answered_twice": answered_twice},
        "devices": {k: totals[k] for k in ("rounds_sent", "skipped", "slowed", "crashed", "rejoined", "dropped_out",
                                           "not_selected", "resyncs", "no_base_version")},
        "fog_rss_mb": max((procs.get(f, {}).get("rss_peak_mb", 0.0) for f in fleet.fogs), default=0.0),
        "cloud_rss_mb": procs.get("cloud", {}).get("rss_peak_mb"),
        "journal_peak_bytes": usage.get("files_peak_bytes", {}),
        "resources": procs,
        "cluster_rounds": cluster, "global_rounds": globals_,
        "worker_connect_s": [w.get("connect_s") for w in workers if w],
        "problems": problems, "run_dir": str(fleet.run_dir),
    }


def _accuracy(fleet: SimFleet, workers: list[dict[str, Any]]) -> dict[str, Any]:
    """Train mode: the final global model's accuracy per task (the cloud's evaluation on the held-out test files)
    next to the local-only baseline (per task, the mean over the devices that hold it)."""
    rounds = _read(fleet.metrics_file("cloud")).get("rounds", [])
    federated = rounds[-1]["accuracy"] if rounds else {}
    per_task: dict[str, list[float]] = {}
    for w in workers:
        for accs in w.get("local_only", {}).values():
            for task, acc in accs.items():
                per_task.setdefault(task, []).append(acc)
    local = {t: round(statistics.mean(v), 4) for t, v in sorted(per_task.items())}
    fed_mean = statistics.mean(federated.values()) if federated else None
    local_mean = statistics.mean(local.values()) if local else None
    return {"federated": federated, "local_only": local, "federated_mean": fed_mean, "local_only_mean": local_mean,
            "per_round": [{"round": r["round"], "accuracy": r["accuracy"]} for r in rounds],
            "beats_local_only": None if fed_mean is None or local_mean is None else fed_mean > local_mean}

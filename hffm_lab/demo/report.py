"""The demo's report (the JSON contract in docs/architecture.md) and its tables.

A run whose figures are incomplete fails instead of under-counting: every process (cloud, fogs, devices) must have
left a readable metrics file, and every device must have reported in every cluster round of its fog, in every
global round (the fogs' ``rounds`` log with its ``reporters``, and each device's own ``rounds`` log).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from rich.console import Console
from rich.table import Table

from hffm_core.errors import HffmError
from hffm_core.protocol import RoundMetrics
from hffm_lab.demo.plan import DemoOptions, FleetPlan

LINKS = ("device_to_fog", "fog_to_device", "fog_to_cloud", "cloud_to_fog")
_LISTED = 12  # problems named in the error message (the report holds them all)


def _mean(values: dict[str, float]) -> float:
    return sum(values.values()) / len(values) if values else 0.0


def expected_nodes(plan: FleetPlan) -> list[str]:
    """Every process of the run that writes a metrics file when it ends: the cloud, each fog, each device."""
    fogs = set(plan.fog_of.values()) | set(plan.fog_configs)
    return ["cloud", *sorted(fogs), *sorted(plan.fog_of)]


def read_node_metrics(plan: FleetPlan) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Every node's metrics file (written when its process ends), and why each expected node
    (:func:`expected_nodes`) has none that can be read: ``({node: metrics}, {node: reason})``."""
    out: dict[str, dict[str, Any]] = {}
    missing: dict[str, str] = {}
    paths = {node: plan.metrics_file(node) for node in expected_nodes(plan)}
    paths.update({p.stem: p for p in sorted((plan.run_dir / "metrics").glob("*.json")) if p.stem not in paths})
    for node, path in paths.items():
        try:
            metrics = json.loads(path.read_text())
        except FileNotFoundError:
            missing[node] = f"no metrics file {path}"
            continue
        except (OSError, ValueError) as exc:
            missing[node] = f"unreadable metrics file {path}: {exc}"
            continue
        if not isinstance(metrics, dict):
            missing[node] = f"metrics file {path} holds a {type(metrics).__name__}, not an object"
            continue
        out[node] = metrics
    return out, missing


def participation(plan: FleetPlan, nodes: dict[str, dict[str, Any]], rounds: int) -> list[str]:
    """Where a device did not take part: a global round in which its fog closed no cluster round, a cluster round
    its fog closed without the device's update (``reporters``), a fog round missing from the device's own log.
    Nodes without metrics are skipped here (:func:`read_node_metrics` reports them)."""
    problems = []
    for fog in sorted(set(plan.fog_of.values())):
        if fog not in nodes:
            continue
        log = nodes[fog].get("rounds") or []
        members = sorted(d for d, f in plan.fog_of.items() if f == fog)
        held = {int(r["global_round"]) for r in log}
        if lacking := [g for g in range(1, rounds + 1) if g not in held]:
            problems.append(f"{fog} closed no cluster round in global round(s) {lacking}")
        for r in log:
            if absent := [d for d in members if d not in r.get("reporters", [])]:
                problems.append(f"{fog} closed round ({r['global_round']},{r['cluster_round']}) without {absent}")
        closed = {(int(r["global_round"]), int(r["cluster_round"])) for r in log}
        for dev in (d for d in members if d in nodes):
            done = {(int(r["global_round"]), int(r["cluster_round"])) for r in nodes[dev].get("rounds") or []}
            if gap := sorted(closed - done):
                problems.append(f"{dev} sent no update in round(s) {gap} of {fog}")
    return problems


def bytes_per_round(nodes: dict[str, dict[str, Any]], rounds: int) -> list[dict[str, int]]:
    """Payload bytes per link per global round, summed over the nodes that published them.

    A publish is counted under the round its node was in; the downlink that opens round 1 (version 0) is counted
    in round 1 and the final broadcast after the last round in the last round.
    """
    table = [{link: 0 for link in LINKS} for _ in range(rounds)]
    for node in nodes.values():
        for row in node.get("traffic", []):
            if row["category"] in LINKS:
                r = min(max(int(row["round"]), 1), rounds)
                table[r - 1][row["category"]] += int(row["bytes"])
    return table


def build_report(opts: DemoOptions, plan: FleetPlan, history: list[RoundMetrics],
                 baseline: dict[str, dict[str, float]], *, wall_s: float) -> dict[str, Any]:
    """The report of a finished run.

    Raises:
        HffmError: a process left no readable metrics file, or a device did not take part in every round
            (:func:`participation`); the report, with ``metrics_missing`` and ``participation``, is written to
            ``run_dir/report.json`` first.
    """
    nodes, missing = read_node_metrics(plan)
    absent = participation(plan, nodes, opts.rounds)
    traffic = bytes_per_round(nodes, opts.rounds)
    rounds = [{"round": m.global_round, "accuracy": dict(m.accuracy), "mean_accuracy": _mean(m.accuracy),
               "bytes": traffic[m.global_round - 1]} for m in history]
    local_only: dict[str, float] = {}
    for task in plan.tasks:
        accs = [acc[task] for acc in baseline.values() if task in acc]
        if accs:
            local_only[task] = sum(accs) / len(accs)
    final = dict(history[-1].accuracy) if history else {}
    config = {k: (str(v) if v is not None and not isinstance(v, (int, float, str, bool, dict)) else v)
              for k, v in asdict(opts).items()}
    devices = {
        dev: {"fog": plan.fog_of[dev], "tasks": plan.device_tasks[dev],
              "final_accuracy": nodes.get(dev, {}).get("final_accuracy", {}),
              "local_only_accuracy": {t: a for t, a in baseline.get(dev, {}).items() if not t.startswith("own:")}}
        for dev in sorted(plan.fog_of)
    }
    rejected = {node: m.get("rejected", {}) for node, m in nodes.items() if m.get("rejected")}
    report = {
        "config": config,
        "rounds": rounds,
        "final": {"accuracy": final, "mean_accuracy": _mean(final)},
        "baselines": {"local_only": {"accuracy": local_only, "mean_accuracy": _mean(local_only)}},
        "modalities": plan.modalities,
        "tasks": plan.tasks,
        "devices": devices,
        "per_device": per_device_report(plan, nodes, baseline),
        "rejected_messages": rejected,
        "metrics_missing": missing,
        "participation": {"complete": not absent, "problems": absent},
        "wall_s": round(wall_s, 1),
    }
    _fail_if_incomplete(report, plan)
    return report


def per_device_report(plan: FleetPlan, nodes: dict[str, dict[str, Any]], baseline: dict[str, dict[str, float]]
                      ) -> dict[str, Any]:
    """Each device on its own test split (its own label mix; docs/personalization.md): the global model, its
    personal modules (None with ``[personalization] mode = "none"``) and local-only training, averaged over its
    tasks; and the mean of each over the devices that have it."""
    rows = {}
    for dev in sorted(plan.fog_of):
        metrics = nodes.get(dev, {})
        personal = ((metrics.get("personalization") or {}).get("accuracy") or {}).get("own") or {}
        local = {t[4:]: a for t, a in baseline.get(dev, {}).items() if t.startswith("own:")}
        rows[dev] = {"global": _mean(metrics.get("own_accuracy") or {}) if metrics.get("own_accuracy") else None,
                     "personal": _mean(personal) if personal else None,
                     "local_only": _mean(local) if local else None,
                     "mode": (metrics.get("personalization") or {}).get("mode", "none")}
    mean = {}
    for kind in ("global", "personal", "local_only"):
        values = [r[kind] for r in rows.values() if r[kind] is not None]
        mean[kind] = sum(values) / len(values) if values else None
    return {"devices": rows, "mean": mean}


def _fail_if_incomplete(report: dict[str, Any], plan: FleetPlan) -> None:
    problems = [f"{node}: {why}" for node, why in report["metrics_missing"].items()]
    problems += report["participation"]["problems"]
    if not problems:
        return
    path = plan.run_dir / "report.json"
    path.write_text(json.dumps(report, indent=2))
    more = f"; and {len(problems) - _LISTED} more" if len(problems) > _LISTED else ""
    raise HffmError(f"the run's figures are incomplete: {'; '.join(problems[:_LISTED])}{more} (report: {path}; "
                    f"logs: {plan.run_dir / 'logs'})")


def print_tables(report: dict[str, Any], console: Console) -> None:
    rounds = Table(title="Federated rounds (global model on held-out test splits; MQTT payload bytes per link)")
    for col in ("round", "mean acc", *LINKS):
        rounds.add_column(col, justify="right")
    for r in report["rounds"]:
        rounds.add_row(str(r["round"]), f"{r['mean_accuracy']:.3f}", *(f"{r['bytes'][k]:,}" for k in LINKS))
    console.print(rounds)
    final = Table(title="Accuracy per task: local-only vs hierarchical federated")
    for col in ("task", "local-only", "federated", "gain"):
        final.add_column(col, justify="right")
    local, fed = report["baselines"]["local_only"]["accuracy"], report["final"]["accuracy"]
    for task in report["tasks"]:
        lo, fe = local.get(task), fed.get(task)
        gain = f"{(fe - lo) * 100:+.1f} pt" if lo is not None and fe is not None else "-"
        final.add_row(task, f"{lo:.3f}" if lo is not None else "-", f"{fe:.3f}" if fe is not None else "-", gain)
    lo_m, fe_m = report["baselines"]["local_only"]["mean_accuracy"], report["final"]["mean_accuracy"]
    final.add_row("[bold]mean", f"{lo_m:.3f}", f"{fe_m:.3f}", f"{(fe_m - lo_m) * 100:+.1f} pt")
    console.print(final)
    own = (report.get("per_device") or {}).get("mean") or {}
    if any(v is not None for v in own.values()):
        console.print("each device on its own test split, mean over devices: " + ", ".join(
            f"{k} {v:.3f}" for k, v in own.items() if v is not None))
    console.print(f"wall time {report['wall_s']:.0f} s; rejected messages: {report['rejected_messages'] or 'none'}")

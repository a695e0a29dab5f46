"""The demo's report (the JSON contract in docs/architecture.md) and its tables."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from rich.console import Console
from rich.table import Table

from edge_runtime.demo.plan import DemoOptions, FleetPlan
from edge_runtime.protocol import RoundMetrics

LINKS = ("device_to_fog", "fog_to_device", "fog_to_cloud", "cloud_to_fog")


def _mean(values: dict[str, float]) -> float:
    return sum(values.values()) / len(values) if values else 0.0


def read_node_metrics(plan: FleetPlan) -> dict[str, dict[str, Any]]:
    """Every node's metrics file (written when its process ends). Missing files are skipped."""
    out = {}
    for path in sorted((plan.run_dir / "metrics").glob("*.json")):
        out[path.stem] = json.loads(path.read_text())
    return out


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
    nodes = read_node_metrics(plan)
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
              "local_only_accuracy": baseline.get(dev, {})}
        for dev in sorted(plan.fog_of)
    }
    rejected = {node: m.get("rejected", {}) for node, m in nodes.items() if m.get("rejected")}
    return {
        "config": config,
        "rounds": rounds,
        "final": {"accuracy": final, "mean_accuracy": _mean(final)},
        "baselines": {"local_only": {"accuracy": local_only, "mean_accuracy": _mean(local_only)}},
        "modalities": plan.modalities,
        "tasks": plan.tasks,
        "devices": devices,
        "rejected_messages": rejected,
        "wall_s": round(wall_s, 1),
    }


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
    console.print(f"wall time {report['wall_s']:.0f} s; rejected messages: {report['rejected_messages'] or 'none'}")

"""The report of ``hffm bench personalization`` (the contract of issue 20) and its table.

``{"alpha": {"0.1": {"mean": {variant: 3-seed mean}, "spread": {variant: population std over seeds},
"per_device": [...], "per_seed": [...], "goals": {...}}, ...}, "mixed_rank": {...}}``; accuracies are fractions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

VARIANTS = ("local_only", "global", "replace", "replace_distill")
GAIN_PT = 3.0  # replace+distill over global, mean per-device accuracy, alpha 0.1 (issue 20)
SLACK_PT = 1.0  # replace+distill never below local-only on a device by more than this


def _goals(per_seed: Sequence[Mapping[str, Any]], mean: Mapping[str, float],
           per_device: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    worst_seed = min((d["replace_distill"] - d["local_only"]) * 100 for s in per_seed for d in s["per_device"])
    worst_mean = min((d["replace_distill"] - d["local_only"]) * 100 for d in per_device)
    gain = (mean["replace_distill"] - mean["global"]) * 100
    return {"gain_over_global_pt": round(gain, 2), "gain_goal_pt": GAIN_PT, "gain_met": gain >= GAIN_PT,
            "worst_vs_local_only_pt_seed_mean": round(worst_mean, 2),
            "worst_vs_local_only_pt_any_seed": round(worst_seed, 2),
            "never_below_local_only_met": worst_mean >= -SLACK_PT}


def build_report(opts: Any, cases: Sequence[Mapping[str, Any]],
                 mixed_rank: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Group the cases by alpha: per-seed records, per-device means over seeds, means and spreads."""
    out: dict[str, Any] = {}
    for alpha in sorted({c["alpha"] for c in cases}):
        mine = sorted((c for c in cases if c["alpha"] == alpha), key=lambda c: c["seed"])
        per_seed = [{"seed": c["seed"], "mean": c["mean"], "global_test_mean": c["global_test"]["mean"],
                     "global_test": c["global_test"]["accuracy"], "wall_s": c["wall_s"],
                     "per_device": [{k: v for k, v in d.items() if k != "per_task"} | {"per_task": d["per_task"]}
                                    for d in c["devices"]]} for c in mine]
        names = [d["device"] for d in mine[0]["devices"]]
        per_device = [{"device": n, **{v: float(np.mean([next(d[v] for d in c["devices"] if d["device"] == n)
                                                          for c in mine])) for v in VARIANTS}} for n in names]
        mean = {v: float(np.mean([c["mean"][v] for c in mine])) for v in VARIANTS}
        spread = {v: float(np.std([c["mean"][v] for c in mine])) for v in VARIANTS}
        out[f"{alpha:g}"] = {"mean": mean, "spread": spread, "seeds": [c["seed"] for c in mine],
                             "global_test_mean": float(np.mean([c["global_test"]["mean"] for c in mine])),
                             "per_device": per_device, "per_seed": per_seed,
                             "goals": _goals(per_seed, mean, per_device) if alpha <= 0.1 else {}}
    config = asdict(opts) if hasattr(opts, "__dataclass_fields__") else dict(opts)
    return {"alpha": out,
            "mixed_rank": dict(mixed_rank) if mixed_rank is not None else
            {"uniform": None, "mixed": None, "ranks": [4, 8, 16], "note": "not measured in this run"},
            "config": config}


def print_table(report: Mapping[str, Any], console: Console) -> None:
    for alpha, block in report["alpha"].items():
        table = Table(title=f"Per-device accuracy on each device's own test split, Dirichlet alpha {alpha} "
                            f"(mean over seeds {block['seeds']})")
        for col in ("device", "local-only", "global", "replace", "replace+distill"):
            table.add_column(col, justify="right")
        for d in block["per_device"]:
            table.add_row(d["device"], *(f"{d[v]:.3f}" for v in VARIANTS))
        m, s = block["mean"], block["spread"]
        table.add_row("[bold]mean", *(f"{m[v]:.3f} ± {s[v]:.3f}" for v in VARIANTS))
        console.print(table)
        if block["goals"]:
            console.print(f"alpha {alpha} goals: {block['goals']}")
    ranks = report.get("mixed_rank") or {}
    if ranks.get("mixed") is not None:
        console.print(f"mixed ranks {ranks['ranks']}: global test {ranks['mixed']:.3f} vs uniform rank "
                      f"{ranks['uniform_rank']} {ranks['uniform']:.3f} ({ranks['gap_pt']:+.2f} pt; at each rank "
                      f"{ {r: round(v, 3) for r, v in ranks['mixed_at_rank'].items()} }; seeds {ranks['seeds']})")


def cases_from_report(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The (alpha, seed) cases a report (or a ``.partial.json``) was built from, to merge the cases of several runs
    with :func:`build_report`."""
    cases = []
    for alpha, block in report["alpha"].items():
        for s in block["per_seed"]:
            cases.append({"alpha": float(alpha), "seed": s["seed"], "devices": s["per_device"], "mean": s["mean"],
                          "global_test": {"accuracy": s["global_test"], "mean": s["global_test_mean"]},
                          "wall_s": s["wall_s"]})
    return cases

"""``hffm bench topology``: the same M3T-Bench job as ``star``, ``hierarchical`` and ``hierarchical_d2d``.

Same data (partition by device id and seed), model, seed and total local epochs in every run: ``star`` runs
``rounds x agg_every`` global rounds of one cluster round each (devices <-> cloud every round); the hierarchical
runs ``rounds`` global rounds of ``agg_every`` cluster rounds. Every link runs through a counting proxy
(hffm_lab/demo/layout.py), so the bytes per link kind are measured on the wire; the link model
(broker_config/topology/link_model.py) turns them into latency and energy estimates. ``cloud_link_bytes`` is
everything that crosses into or out of the cloud tier: the device<->cloud links in ``star``, the fog<->cloud links
otherwise. Accuracy is the final global model's mean over tasks on the held-out test splits.

A run whose link kinds that must carry traffic (:data:`REQUIRED_KINDS`) measured zero bytes or none at all is a
FAILED row: its ratio would be meaningless. The report is written, then the command fails.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from broker_config.topology import dump_topology, generate_topology
from hffm_lab.bench import fail_if, save_report
from hffm_lab.demo import DemoOptions, run_demo

LAYOUT_ORDER = ("star", "hierarchical", "hierarchical_d2d")
BYTE_KINDS = ("device_device", "device_fog", "fog_fog", "fog_cloud", "device_cloud")
# HF-FM (arXiv 2509.03695), M3T-FFM prototype table: accuracy, latency and energy as the paper reports them
# (D2D simulated analytically there; measured here).
PAPER = {"star": {"accuracy_pct": 37.89, "latency_s": 12.10, "energy_j": 387_000.0},
         "hierarchical_d2d": {"accuracy_pct": 38.65, "latency_s": 3.66, "energy_j": 27_900.0, "e_agg": 8}}
GOAL_POINTS, GOAL_RATIO = 0.5, 8.0
# The link kinds every run of a layout sends its deltas over: zero bytes there means nothing was measured.
REQUIRED_KINDS = {"star": ("device_cloud",), "hierarchical": ("device_fog", "fog_cloud"),
                  "hierarchical_d2d": ("device_fog", "fog_cloud")}


def run_topology_bench(*, rounds: int, seed: int, report: Path | None, run_root: Path, agg_every: int = 8,
                       fogs: int = 2, devices_per_fog: int = 3, backbone: str = "minilm",
                       layouts: tuple[str, ...] = LAYOUT_ORDER, console: Console | None = None) -> dict[str, Any]:
    """Run each layout, print the table, write the JSON report; return it.

    Raises:
        HffmError: a run failed (its logs are under ``run_root``), or a run measured no bytes on a link kind it
            must use (the report is written first, with the row marked FAILED).
    """
    console = console or Console()
    run_root.mkdir(parents=True, exist_ok=True)
    topology = generate_topology(fogs, devices_per_fog, d2d_group_size=devices_per_fog, fog_ring=True, fleet="demo",
                                 name="bench")
    topo_file = run_root / "topology.toml"
    topo_file.write_text(dump_topology(topology))
    base = DemoOptions(fogs=fogs, devices_per_fog=devices_per_fog, seed=seed, backbone=backbone, baseline=False,
                       show_tables=False, topology=topo_file)
    runs = []
    for i, layout in enumerate(layouts, 1):
        star = layout == "star"
        opts = replace(base, layout=layout, run_dir=run_root / layout, rounds=rounds * agg_every if star else rounds,
                       agg_every=1 if star else agg_every)
        console.print(f"[bold]run {i}/{len(layouts)}: {layout} ({opts.rounds} global x {opts.agg_every} cluster "
                      "rounds)")
        result = run_demo(opts)
        links = result["links"]
        got = links.get("bytes") or {}
        measured = {k: int(got.get(k, 0)) for k in BYTE_KINDS}
        cloud = measured["device_cloud"] if star else measured["fog_cloud"]
        problems = bytes_problems(layout, got)
        runs.append({"topology": layout, "status": "FAILED" if problems else "ok", "problems": problems,
                     "mean_accuracy": result["final"]["mean_accuracy"],
                     "accuracy": result["final"]["accuracy"], "cloud_link_bytes": cloud, "bytes": measured,
                     "bytes_per_global_round": links["bytes_per_round"],
                     "est_latency_s": links["estimate"]["latency_s"], "est_energy_j": links["estimate"]["energy_j"],
                     "estimate_per_kind": links["estimate"]["per_kind"], "global_rounds": opts.rounds,
                     "agg_every": opts.agg_every, "rejected_messages": result["rejected_messages"],
                     "wall_s": result["wall_s"]})
    out = {"benchmark": "topology", "rounds": rounds, "agg_every": agg_every, "seed": seed, "backbone": backbone,
           "fogs": fogs, "devices_per_fog": devices_per_fog, "topology_file": str(topo_file), "runs": runs,
           "goal": goal_of(runs), "paper": PAPER}
    print_table(out, console)
    save_report(out, report, console)
    fail_if([f"{r['topology']}: {p}" for r in runs for p in r["problems"]], "topology benchmark", console)
    return out


def bytes_problems(layout: str, measured: dict[str, Any]) -> list[str]:
    """Why a run's bytes cannot be used: a link kind of :data:`REQUIRED_KINDS` missing from the measurement or
    at zero bytes (nothing crossed it, so nothing was measured); empty when the run measured what it must."""
    problems = []
    for kind in REQUIRED_KINDS.get(layout, ()):
        if kind not in measured:
            problems.append(f"no bytes measured on the {kind} links (missing from the link report)")
        elif not int(measured[kind]) > 0:
            problems.append(f"zero bytes measured on the {kind} links")
    return problems


def goal_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """hierarchical_d2d against star: accuracy gap and cloud-link byte ratio; ``{}`` without both runs, and not
    met (ratio None) when either run is FAILED."""
    by = {r["topology"]: r for r in runs}
    if "star" not in by or "hierarchical_d2d" not in by:
        return {}
    s, h = by["star"], by["hierarchical_d2d"]
    gap = (h["mean_accuracy"] - s["mean_accuracy"]) * 100
    if s["problems"] or h["problems"]:
        return {"accuracy_gap_points": gap, "cloud_link_ratio": None, "met": False}
    ratio = s["cloud_link_bytes"] / h["cloud_link_bytes"]
    return {"accuracy_gap_points": gap, "cloud_link_ratio": ratio, "met": gap >= -GOAL_POINTS and ratio >= GOAL_RATIO}


def print_table(out: dict[str, Any], console: Console) -> None:
    table = Table(title=f"Topology benchmark: M3T-Bench, {out['backbone']}, {out['fogs']} fogs x "
                        f"{out['devices_per_fog']} devices, {out['rounds']} global x {out['agg_every']} cluster rounds "
                        f"(star: {out['rounds'] * out['agg_every']} x 1), seed {out['seed']}; bytes measured on each link")
    for col in ("topology", "status", "mean acc", "cloud-link B", "dev<->dev", "dev<->fog", "fog<->fog", "fog<->cloud",
                "dev<->cloud", "est. latency s", "est. energy J"):
        table.add_column(col, justify="right")
    for r in out["runs"]:
        b = r["bytes"]
        table.add_row(r["topology"], r.get("status", "ok"), f"{r['mean_accuracy']:.4f}", f"{r['cloud_link_bytes']:,}",
                      *(f"{b[k]:,}" for k in BYTE_KINDS), f"{r['est_latency_s']:.2f}", f"{r['est_energy_j']:.2f}")
    console.print(table)
    if out["goal"]:
        g = out["goal"]
        ratio = "cloud-link ratio not measured" if g["cloud_link_ratio"] is None else \
            f"{g['cloud_link_ratio']:.1f}x fewer cloud-link bytes"
        console.print(f"hierarchical_d2d vs star: {g['accuracy_gap_points']:+.2f} points, {ratio}; goal "
                      f"(>= -{GOAL_POINTS} pt, >= {GOAL_RATIO:.0f}x) {'met' if g['met'] else 'NOT met'}")

"""``hffm bench reliability``: every fault of the fault-injection suite on the real tiers, the ledger workload's
queue overflow and oversized payloads at scale, and the negative control.

The kills and the link cut run on a real job (:mod:`hffm_lab.faults.tier_faults`: ``hffm edge|fog|cloud
run`` processes, tiny backbone, 2 fogs x 2 devices, 2 global rounds of 2 cluster rounds, real Mosquitto), each
injected once the job is provably under way. The queue overflow and the oversized payloads run the ledger workload
(:mod:`hffm_lab.faults.ledger_faults`: 2 fogs x 10 devices x ``rounds`` rounds). The negative control is the
queue overflow with every outbox disabled: the checker must see it lose deltas.

A row FAILS when a process ended unexpectedly (non-zero, a signal the harness did not send, or still running),
fewer keys were produced than planned, any was lost or applied twice, or the system never recovered; the negative
control fails when it errs or loses nothing. Any failure makes the command exit non-zero (after the report is
written). The report (a contract a checker reads)::

    {"faults": [{"fault": "cloud_broker_kill9_10s", "planned": n, "produced": n, "applied": n, "lost": n,
                 "duplicates_applied": n, "recovery_s": s, "process_exits": [], "failed": [], "wall_s": s}, ...],
     "negative_control": {"fault": ..., "planned": n, "produced": n, "applied": n, "lost": n, "failed": []},
     "slowdown": x, "failed": ["<fault>: <reason>", ...]}

``recovery_s``: seconds from the end of the fault until every key produced before that end was applied (null if
that never happened).
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from hffm_core.errors import HffmError
from hffm_lab.bench import fail_if, save_report
from hffm_lab.faults.calibrate import cpu_slowdown
from hffm_lab.faults.ledger_faults import negative_control, run_fault
from hffm_lab.faults.tier_faults import LONG_TIER_FAULTS, TIER_FAULTS, run_tier_fault
from hffm_lab.faults.tier_job import JOB_FLEET, JobShape

BENCH_SHAPE = JobShape(fleet=replace(JOB_FLEET, devices_per_fog=2, agg_every=2))  # two fogs, two rounds
LEDGER_FAULTS = ("burst_above_queue_limit", "oversized_payload")
COLUMNS = ("fault", "planned", "produced", "applied", "lost", "duplicates_applied", "recovery_s", "wall_s")


def _line(row: dict[str, Any]) -> str:
    verdict = "ok" if not row.get("failed") else "FAILED: " + "; ".join(row["failed"])
    return (f"{row['fault']}: planned {row.get('planned')}, produced {row.get('produced')}, lost {row.get('lost')}, "
            f"duplicates {row.get('duplicates_applied')}, recovery {row.get('recovery_s')} s, "
            f"{row.get('wall_s')} s: {verdict}")


def _table(out: dict[str, Any], console: Console) -> None:
    table = Table(title="Reliability under faults (real tiers and the ledger workload, real Mosquitto)")
    for col in (*COLUMNS, "process_exits", "verdict"):
        table.add_column(col, justify="left" if col in ("fault", "verdict") else "right", no_wrap=True)
    neg = out["negative_control"]
    for r in [*out["faults"], {**neg, "fault": "negative control"}]:
        verdict = "ok" if not r.get("failed") else "FAILED"  # the reasons are in the line above and the report
        table.add_row(*(str(r.get(c, "")) for c in COLUMNS), str(len(r.get("process_exits") or [])), verdict)
    # Not a terminal (a log file, CI): Rich would squeeze the table into 80 columns.
    (console if console.is_terminal else Console(width=150, file=console.file)).print(table)


def run_reliability_bench(*, rounds: int = 50, report: Path | None = None, work: Path = Path("runs/bench-reliability"),
                          long_outages: bool = False, console: Console | None = None) -> dict[str, Any]:
    """Run every real-tier fault (with ``long_outages`` also 60 s and 300 s cloud-broker outages), the ledger
    workload's queue overflow and oversized payloads at ``rounds`` rounds, and the negative control; print a line
    per fault as it finishes and a table; write ``report``.

    Raises:
        HffmError: any row or the negative control failed (the report is written first); the CLI exits 1.
        BrokerError: a broker could not be started.
    """
    console = console or Console()
    if work.exists():
        shutil.rmtree(work)
    slowdown = cpu_slowdown()
    console.print(f"slowdown against the reference box: x{slowdown} (waits are stretched by it)")
    faults: list[dict[str, Any]] = []
    for name in [*TIER_FAULTS, *(LONG_TIER_FAULTS if long_outages else ())]:
        console.print(f"{name}: starting a job of the real tiers")
        try:
            row = run_tier_fault(name, work / "tiers" / name, shape=BENCH_SHAPE, slowdown=slowdown,
                                 on_progress=console.print)
        except HffmError as exc:
            row = {"fault": name, "error": str(exc), "failed": [f"error: {exc}"]}
        faults.append(row)
        console.print(_line(row), soft_wrap=True)
    for name in LEDGER_FAULTS:
        console.print(f"ledger_{name}: starting the ledger workload ({rounds} rounds x 20 devices)")
        try:
            row = run_fault(name, work / "ledger" / name, rounds=rounds, slowdown=slowdown)
        except HffmError as exc:
            row = {"error": str(exc), "failed": [f"error: {exc}"]}
        faults.append({**row, "fault": f"ledger_{name}"})
        console.print(_line(faults[-1]), soft_wrap=True)
    console.print("negative control: the queue overflow with every outbox disabled")
    neg = negative_control(work / "negative_control", rounds=rounds, slowdown=slowdown)
    console.print(_line({**neg, "fault": f"negative control ({neg['fault']})"}), soft_wrap=True)
    failed = [f"{r['fault']}: {reason}" for r in faults for reason in r.get("failed", [])]
    failed += [f"negative control: {reason}" for reason in neg.get("failed", [])]
    out = {"faults": faults, "negative_control": neg, "slowdown": slowdown, "failed": failed}
    _table(out, console)
    save_report(out, report, console)
    fail_if(failed, "reliability benchmark", console)
    return out

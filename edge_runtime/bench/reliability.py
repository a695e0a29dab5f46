"""``hffm bench reliability``: every fault of the fault-injection suite at benchmark size, plus the negative control.

Each fault runs the ledger workload (:mod:`edge_runtime.reliability.workload`: 2 fogs x 10 devices, ``rounds``
rounds, every delta through the device outbox, the fog's durable sums and outbox, the bridge, and the cloud's
durable sums) on real Mosquitto processes, injects its fault, and counts what the cloud applied against the
devices' ledgers. The report (a contract a checker reads)::

    {"faults": [{"fault": "cloud_broker_kill9_10s", "produced": n, "applied": n, "lost": n,
                 "duplicates_applied": n, "recovery_s": s, "wall_s": s}, ...],
     "negative_control": {"fault": ..., "lost": n, "produced": n}}

``recovery_s``: seconds from the end of the fault until the cloud had applied every delta produced before it ended
(null if some never were).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from edge_runtime.bench import save_report
from edge_runtime.errors import HffmError
from edge_runtime.reliability.faults import FAULTS, LONG_FAULTS, run_all

MIN_DELTAS = 5000


def run_reliability_bench(*, rounds: int = 50, report: Path | None = None, work: Path = Path("runs/bench-reliability"),
                          long_outages: bool = False, console: Console | None = None) -> dict[str, Any]:
    """Run every fault (and, with ``long_outages``, 60 s and 300 s cloud-broker outages) and the negative control.

    Raises:
        HffmError: fewer than 5,000 deltas were produced in all (raise ``rounds``).
        BrokerError: a broker could not be started.
    """
    console = console or Console()
    if work.exists():
        shutil.rmtree(work)
    names = list(FAULTS) + (list(LONG_FAULTS) if long_outages else [])
    out = run_all(work, rounds=rounds, names=names,
                  on_result=lambda r: console.print(f"{r['fault']}: produced {r['produced']}, lost {r['lost']}, "
                                                    f"duplicates {r['duplicates_applied']}"))
    table = Table(title="Reliability under faults (2 fogs x 10 devices, real Mosquitto)")
    for col in ("fault", "produced", "applied", "lost", "duplicates_applied", "recovery_s", "wall_s"):
        table.add_column(col, justify="left" if col == "fault" else "right")
    for r in out["faults"]:
        table.add_row(*(str(r.get(c)) for c in ("fault", "produced", "applied", "lost", "duplicates_applied",
                                                 "recovery_s", "wall_s")))
    neg = out["negative_control"]
    table.add_row(f"negative control ({neg['fault']})", str(neg["produced"]), "", str(neg["lost"]), "", "", "")
    console.print(table)
    total = sum(r["produced"] for r in out["faults"]) + neg["produced"]
    out["total_deltas"] = total
    save_report(out, report, console)
    if total < MIN_DELTAS:
        raise HffmError(f"only {total} deltas were produced; the benchmark needs at least {MIN_DELTAS} "
                        f"(raise --rounds)")
    return out

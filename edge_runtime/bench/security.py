"""``hffm bench security``: the security figures side by side, from real parts.

- ``auth_matrix``: allow/deny cases on real mutual-TLS Mosquitto brokers with the generated access control
  (security/auth_matrix.py);
- ``tamper``: forged, altered, replayed, wrong-sender and revoked envelopes against a verifier, plus thousands of
  random byte edits (security/tamper.py);
- ``fuzz``: random bytes and structured msgpack against every wire type; a crash is any exception but DecodeError;
- ``poisoning``: the M3T-Bench federated job with 20 % attackers (one fog with five devices, one of which sends
  ``--attack``-poisoned deltas), once per aggregation rule at the fog, beside a run without attackers. Every device
  holds all four modalities, so each module has five holders: Krum (n > 2f + 2) and a 20 % trimmed mean (which
  must cover f/n) are inside their tolerance with f = 1. (Two fogs of five would leave the smallest task,
  BasicMotions with 56 training samples, fewer than the partition's 8 per holder.);
- ``sign_verify_ms_per_mb``: Ed25519 seal + open time per MB of payload (1 MiB messages).
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from edge_runtime.bench import save_report
from edge_runtime.demo import DemoOptions, run_demo

RULES: dict[str, dict[str, Any]] = {
    "fedavg": {},
    "median": {},
    "trimmed_mean": {"trim_fraction": 0.2},
    "krum": {"byzantine": 1, "multi": 3},
}


def run_security_bench(*, rounds: int, seed: int, report: Path | None, run_root: Path, attack: str = "scale",
                       rules: tuple[str, ...] = tuple(RULES), backbone: str = "minilm",
                       console: Console | None = None) -> dict[str, Any]:
    """Run every part, print the tables, write the JSON report; return it.

    Raises:
        HffmError: a broker or a poisoning run failed (logs under ``run_root``).
    """
    from edge_runtime.security.auth_matrix import run_auth_matrix
    from edge_runtime.security.fuzz import run_decode_fuzz
    from edge_runtime.security.measure import sign_verify_ms_per_mb
    from edge_runtime.security.tamper import run_tamper_cases

    console = console or Console()
    shutil.rmtree(run_root / "auth-matrix", ignore_errors=True)
    console.print("[bold]auth matrix on real mutual-TLS brokers")
    auth = run_auth_matrix(run_root / "auth-matrix")
    console.print("[bold]tamper cases")
    tamper = run_tamper_cases()
    console.print("[bold]decode fuzz")
    fuzz = run_decode_fuzz(seed=seed)
    cost = sign_verify_ms_per_mb((1 << 20,))[str(1 << 20)]
    poisoning = _poisoning(rounds=rounds, seed=seed, run_root=run_root, attack=attack, rules=rules,
                           backbone=backbone, console=console)
    out = {"benchmark": "security", "rounds": rounds, "seed": seed, "backbone": backbone, "attack": attack,
           "auth_matrix": auth, "tamper": tamper, "fuzz": fuzz, "poisoning": poisoning,
           "sign_verify_ms_per_mb": cost["seal_ms_per_mb"] + cost["open_ms_per_mb"],
           "seal_ms_per_mb": cost["seal_ms_per_mb"], "open_ms_per_mb": cost["open_ms_per_mb"],
           "envelope_overhead_bytes": cost["overhead_bytes"]}
    print_tables(out, console)
    save_report(out, report, console)
    return out


def _poisoning(*, rounds: int, seed: int, run_root: Path, attack: str, rules: tuple[str, ...], backbone: str,
               console: Console) -> list[dict[str, Any]]:
    base = DemoOptions(fogs=1, devices_per_fog=5, modalities_per_device=4, rounds=rounds, seed=seed,
                       backbone=backbone, baseline=False, show_tables=False)
    runs: list[tuple[str, str, DemoOptions]] = [("fedavg", "none", base)]
    for rule in rules:
        runs.append((rule, attack, replace(base, attackers_per_fog=1, attack={"kind": attack}, aggregator=rule,
                                           aggregator_params=dict(RULES[rule]))))
    out = []
    for i, (rule, kind, opts) in enumerate(runs, 1):
        console.print(f"[bold]poisoning run {i}/{len(runs)}: {rule}, attack {kind}")
        result = run_demo(replace(opts, run_dir=run_root / f"poisoning-{rule}-{kind}"))
        out.append({"aggregator": rule, "attack": kind, "attackers": 1 if kind != "none" else 0, "devices": 5,
                    "mean_accuracy": result["final"]["mean_accuracy"], "accuracy": result["final"]["accuracy"],
                    "rejected": result.get("rejected_messages", {}), "wall_s": result["wall_s"]})
    return out


def print_tables(out: dict[str, Any], console: Console) -> None:
    table = Table(title="Security benchmark")
    table.add_column("check")
    table.add_column("result", justify="right")
    table.add_row("auth matrix (real mutual-TLS brokers)", f"{out['auth_matrix']['passed']}/{out['auth_matrix']['total']} as expected")
    table.add_row("tamper / replay / forgery", f"{out['tamper']['rejected']}/{out['tamper']['total']} rejected")
    table.add_row("decode fuzz", f"{out['fuzz']['inputs']:,} inputs, {out['fuzz']['crashes']} crashes")
    table.add_row("Ed25519 seal + open", f"{out['sign_verify_ms_per_mb']:.2f} ms/MB")
    console.print(table)
    poison = Table(title=f"M3T-Bench with 20% attackers ({out['attack']}), {out['rounds']} rounds")
    for col in ("aggregator", "attack", "mean accuracy"):
        poison.add_column(col, justify="right")
    for run in out["poisoning"]:
        poison.add_row(run["aggregator"], run["attack"], f"{run['mean_accuracy']:.4f}")
    console.print(poison)

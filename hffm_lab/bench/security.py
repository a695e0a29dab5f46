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

Each poisoning run's ``devices``, ``attackers`` and ``poisoned_updates`` come from the run itself (its device
configs and the agents' logs: :func:`poisoning_census`). The benchmark fails, after writing its report, when an
attacked run sent no poisoned update (or an attacker sent none), the clean run sent any, or the auth matrix had a
case not as expected (its control included).
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import tomllib
from rich.console import Console
from rich.table import Table

from hffm_lab.bench import fail_if, save_report
from hffm_lab.demo import DemoOptions, run_demo

RULES: dict[str, dict[str, Any]] = {
    "fedavg": {},
    "median": {},
    "trimmed_mean": {"trim_fraction": 0.2},
    "krum": {"byzantine": 1, "multi": 3},
}
RED_TEAM = "RED-TEAM MODE"  # the agent logs it (at warning) once per poisoned delta it sends


def run_security_bench(*, rounds: int, seed: int, report: Path | None, run_root: Path, attack: str = "scale",
                       rules: tuple[str, ...] = tuple(RULES), backbone: str = "minilm",
                       console: Console | None = None) -> dict[str, Any]:
    """Run every part, print the tables, write the JSON report; return it.

    Raises:
        HffmError: a broker or a poisoning run failed (logs under ``run_root``), or a figure was not measured
            (:func:`security_problems`; the report is written first, with them under ``failures``).
    """
    from hffm_lab.security.auth_matrix import run_auth_matrix
    from hffm_lab.security.fuzz import run_decode_fuzz
    from hffm_lab.security.measure import sign_verify_ms_per_mb
    from hffm_lab.security.tamper import run_tamper_cases

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
    out["failures"] = security_problems(out)
    print_tables(out, console)
    save_report(out, report, console)
    fail_if(out["failures"], "security benchmark", console)
    return out


def security_problems(out: dict[str, Any]) -> list[str]:
    """Why the report does not show what it claims: auth-matrix cases not as expected; an attacked run without
    attackers, without poisoned updates or with an attacker that sent none; a clean run with poisoned updates."""
    problems = []
    auth = out["auth_matrix"]
    if auth["passed"] < auth["total"] or not auth.get("control_passed", True):
        failed = [c["name"] for c in auth["cases"] if not c["passed"]]
        problems.append(f"auth matrix: {len(failed)} of {auth['total']} cases not as expected: {failed}")
    for run in out["poisoning"]:
        name = f"poisoning run {run['aggregator']}/{run['attack']}"
        silent = sorted(set(run["attacker_ids"]) - set(run["poisoned_by"]))
        strays = sorted(set(run["poisoned_by"]) - set(run["attacker_ids"]))
        if not run["devices"]:
            problems.append(f"{name}: no device took part")
        if run["attack"] == "none" and (run["poisoned_updates"] or run["attackers"]):
            problems.append(f"{name}: the run without attackers sent {run['poisoned_updates']} poisoned update(s)")
        elif run["attack"] != "none" and not run["poisoned_updates"]:
            problems.append(f"{name}: no poisoned update was sent ({run['attackers']} attacker(s) configured)")
        elif run["attack"] != "none" and (silent or strays):
            problems.append(f"{name}: attackers that sent no poisoned update {silent}, poisoned updates from "
                            f"devices not configured to attack {strays}")
    return problems


def poisoning_census(run_dir: Path, devices: list[str]) -> dict[str, Any]:
    """Who attacked in a finished run and what they sent, from the run itself: ``attacker_ids``, the devices whose
    config has an ``[attack]`` table of a kind other than none; ``poisoned_by``, the number of poisoned deltas
    each device sent (its agent logs :data:`RED_TEAM` once per delta). A missing config or log counts as none."""
    attackers, poisoned = [], {}
    for dev in devices:
        config = run_dir / "configs" / f"{dev}.toml"
        table = tomllib.loads(config.read_text()) if config.exists() else {}
        if table.get("attack", {}).get("kind", "none") != "none":
            attackers.append(dev)
        log = run_dir / "logs" / f"{dev}.log"
        sent = log.read_text(errors="replace").count(RED_TEAM) if log.exists() else 0
        if sent:
            poisoned[dev] = sent
    return {"devices": len(devices), "attackers": len(attackers), "attacker_ids": attackers,
            "poisoned_updates": sum(poisoned.values()), "poisoned_by": poisoned}


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
        run_dir = run_root / f"poisoning-{rule}-{kind}"
        result = run_demo(replace(opts, run_dir=run_dir))
        out.append({"aggregator": rule, "attack": kind, **poisoning_census(run_dir, sorted(result["devices"])),
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
    for col in ("aggregator", "attack", "attackers / devices", "poisoned updates", "mean accuracy"):
        poison.add_column(col, justify="right")
    for run in out["poisoning"]:
        poison.add_row(run["aggregator"], run["attack"], f"{run['attackers']} / {run['devices']}",
                       f"{run['poisoned_updates']:,}", f"{run['mean_accuracy']:.4f}")
    console.print(poison)

"""``hffm bench security`` takes attackers and devices from the run and fails when no poisoned update was sent,
or when the auth matrix had a case not as expected."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import tomli_w
from rich.console import Console

from hffm_core.errors import HffmError
from hffm_lab.bench import security as bench

DEVICES = [f"fog-1-dev-{i}" for i in range(1, 6)]
AUTH_OK = {"passed": 13, "total": 13, "control_passed": True, "cases": [{"name": "c", "passed": True}] * 13}


def _fake_run(run_dir: Path, *, attacker: str | None, poisoned: int) -> None:
    for dev in DEVICES:
        config = run_dir / "configs" / f"{dev}.toml"
        config.parent.mkdir(parents=True, exist_ok=True)
        table = {"device": {"id": dev}, **({"attack": {"kind": "scale"}} if dev == attacker else {})}
        config.write_bytes(tomli_w.dumps(table).encode())
        log = run_dir / "logs" / f"{dev}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        lines = [f"device {dev}: round (1,1) trained 1.0 s"]
        if dev == attacker:
            lines += [f"WARNING device {dev}: RED-TEAM MODE: sending a scale-poisoned delta for head:_:digit in "
                      f"round (1,{c})" for c in range(1, poisoned + 1)]
        log.write_text("\n".join(lines) + "\n")


def _patch_parts(monkeypatch: pytest.MonkeyPatch, auth: dict, poisoned: int) -> None:
    from hffm_lab.security import auth_matrix, fuzz, measure, tamper

    def fake_demo(opts):  # type: ignore[no-untyped-def]
        attacker = DEVICES[-1] if opts.attackers_per_fog else None
        _fake_run(opts.run_dir, attacker=attacker, poisoned=poisoned)
        return {"devices": {d: {} for d in DEVICES}, "final": {"mean_accuracy": 0.5, "accuracy": {"digit": 0.5}},
                "rejected_messages": {}, "wall_s": 1.0}

    monkeypatch.setattr(bench, "run_demo", fake_demo)
    monkeypatch.setattr(auth_matrix, "run_auth_matrix", lambda workdir: auth)
    monkeypatch.setattr(tamper, "run_tamper_cases", lambda: {"rejected": 9, "total": 9})
    monkeypatch.setattr(fuzz, "run_decode_fuzz", lambda seed: {"inputs": 10, "crashes": 0})
    monkeypatch.setattr(measure, "sign_verify_ms_per_mb", lambda sizes: {
        str(1 << 20): {"seal_ms_per_mb": 1.0, "open_ms_per_mb": 1.0, "overhead_bytes": 100}})


def _bench(tmp_path: Path, report: Path | None = None) -> dict:
    return bench.run_security_bench(rounds=1, seed=0, report=report, run_root=tmp_path, rules=("fedavg", "krum"),
                                    console=Console(file=open(os.devnull, "w")))


def test_attackers_devices_and_poisoned_updates_come_from_the_run(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    _patch_parts(monkeypatch, AUTH_OK, poisoned=2)
    out = _bench(tmp_path)
    assert out["failures"] == []
    clean, *attacked = out["poisoning"]
    assert (clean["attack"], clean["attackers"], clean["devices"], clean["poisoned_updates"]) == ("none", 0, 5, 0)
    for run in attacked:
        assert run["attacker_ids"] == ["fog-1-dev-5"] and run["devices"] == 5
        assert run["poisoned_by"] == {"fog-1-dev-5": 2} and run["poisoned_updates"] == 2


def test_no_poisoned_update_fails_the_bench(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _patch_parts(monkeypatch, AUTH_OK, poisoned=0)
    report = tmp_path / "security.json"
    with pytest.raises(HffmError, match="security benchmark FAILED: poisoning run fedavg/scale: no poisoned update"):
        _bench(tmp_path / "runs", report)
    saved = json.loads(report.read_text())
    assert len(saved["failures"]) == 2 and saved["poisoning"][1]["attackers"] == 1  # fedavg and krum


def test_a_failed_auth_matrix_fails_the_bench(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cases = [{"name": "valid device certificate connects", "passed": False}] + [{"name": "c", "passed": False}] * 12
    _patch_parts(monkeypatch, {"passed": 0, "total": 13, "control_passed": False, "cases": cases}, poisoned=1)
    with pytest.raises(HffmError, match="auth matrix: 13 of 13 cases not as expected"):
        _bench(tmp_path)


def test_poisoned_updates_from_a_device_not_configured_to_attack_are_a_problem(tmp_path: Path) -> None:
    _fake_run(tmp_path, attacker="fog-1-dev-5", poisoned=1)
    census = bench.poisoning_census(tmp_path, DEVICES)
    (tmp_path / "configs" / "fog-1-dev-5.toml").write_text('[device]\nid = "fog-1-dev-5"\n')
    stray = bench.poisoning_census(tmp_path, DEVICES)
    assert census["attacker_ids"] == ["fog-1-dev-5"] and stray["attacker_ids"] == []
    run = {"aggregator": "krum", "attack": "scale", **stray}
    (problem,) = bench.security_problems({"auth_matrix": AUTH_OK, "poisoning": [run]})
    assert "no poisoned update was sent" not in problem and "not configured to attack ['fog-1-dev-5']" in problem

"""``hffm bench compression``: the same federated M3T-Bench job once per codec setting, side by side.

Every run uses the demo's defaults (backbone, fleet, partition, seed, rounds) and differs only in the codecs. For
each run the report gives the uplink payload bytes per global round — the devices' uplink, device -> fog, counted
where published — and the ratio against fp32; the fog -> cloud backhaul and the downlinks are reported beside it
with their own codecs; the final mean accuracy of the global model on the held-out test splits and its
change against fp32 in points, and the codec's encode/decode time per MB of fp32 input, measured on the real
module deltas of the fp32 run (final global modules minus their initial version).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from hffm_core.config import CodecSpec, make_codecs
from hffm_core.errors import ConfigError
from hffm_core.protocol import ModuleKey, ModuleVersion, decode, state_from_blobs
from hffm_lab.bench import save_report
from hffm_lab.bench.compression_report import (
    LINK_BYTES_PER_S,
    combine_seeds,
    judge_against_fp32,
    print_table,
    run_figures,
)
from hffm_lab.demo import DemoOptions, run_demo

__all__ = ["ADVERT_INTERVAL_S", "DEFAULT_SETTINGS", "HEADLINE", "LINK_BYTES_PER_S", "SETTINGS", "Setting",
           "codec_speed", "combine_seeds", "print_table", "real_deltas", "run_compression_bench", "select_settings"]

# Every run's devices refresh their state advert this often instead of the device default (30 s, about once per
# global round here): the same for every setting, and slower than the job, so adverts are about one at the start
# and one at the end per device. At 30 s they alone cap the ratio near 1,600x and are ~16% of a 250x uplink.
ADVERT_INTERVAL_S = 600.0
_TOPK_INT8 = {"codec": "topk", "params": {"fraction": 0.01, "values": "int8"}}
_LOWRANK8_INT4 = {"codec": "lowrank", "params": {"rank": 8, "loadings": "int4"}}


@dataclass(frozen=True)
class Setting:
    name: str
    uplink: Mapping[str, Mapping[str, Any]]  # devices -> fogs
    fog_uplink: Mapping[str, Mapping[str, Any]]  # fogs -> cloud
    downlink: Mapping[str, Mapping[str, Any]]
    # [model] keys that change what is trained and sent (e.g. FFA-LoRA adapters); {} = the demo's model.
    model: Mapping[str, Any] = field(default_factory=dict)


def _all(codec: str, **params: Any) -> dict[str, dict[str, Any]]:
    return {kind: {"codec": codec, "params": dict(params)} for kind in ("encoder", "adapter", "head")}


def _topk(fraction: float, head_fraction: float) -> dict[str, dict[str, Any]]:
    return {"encoder": {"codec": "topk", "params": {"fraction": fraction, "values": "int8"}},
            "adapter": {"codec": "topk", "params": {"fraction": fraction, "values": "int8"}},
            "head": {"codec": "topk", "params": {"fraction": head_fraction, "values": "int8"}}}


def _lowrank(encoder: int, adapter: int, head: int) -> dict[str, dict[str, Any]]:
    return {kind: {"codec": "lowrank", "params": {"rank": r}}
            for kind, r in (("encoder", encoder), ("adapter", adapter), ("head", head))}


def _lowrank_lora(other: int) -> dict[str, dict[str, Any]]:
    """Adapters: one component per LoRA A matrix, two per B matrix; encoders and heads: ``other`` components."""
    return {"encoder": {"codec": "lowrank", "params": {"rank": other}},
            "adapter": {"codec": "lowrank", "params": {"rank": 1, "rank_of": "lora_B:2"}},
            "head": {"codec": "lowrank", "params": {"rank": other}}}


def _lowrank_int4(encoder: int = 2, head: int = 2, **adapter: str) -> dict[str, dict[str, Any]]:
    """int4 loadings; two components per adapter matrix, ``encoder`` and ``head`` per encoder and head matrix;
    ``adapter``: further lowrank params for the adapters."""
    return {"encoder": {"codec": "lowrank", "params": {"rank": encoder, "loadings": "int4"}},
            "adapter": {"codec": "lowrank", "params": {"rank": 2, "loadings": "int4", **adapter}},
            "head": {"codec": "lowrank", "params": {"rank": head, "loadings": "int4"}}}


# Every linear layer of each transformer block (query, key, value and the three dense layers), not only q and v.
_ALL_LINEAR = "query,key,value,dense"


def _sb_model(r: int, alpha: int | None = None, targets: str = "") -> dict[str, Any]:
    """LoRA-SB adapters (hffm_model/lora_sb.py): only an r x r matrix R per LoRA layer is trained and sent;
    ``alpha`` (default ``2 r``, LoRA's usual) sets the scaling ``alpha / r`` of ``B R A``; ``targets`` the layers
    (``[model] lora_targets``; "" = query and value)."""
    return {"adapter": "lora-sb", "lora_r": r, "lora_alpha": alpha or 2 * r} | (
        {"lora_targets": targets} if targets else {})


def _sb_sign(encoder: int = 4, head: int = 4) -> dict[str, dict[str, Any]]:
    """Adapters (R only): sign codes of every element; encoders and heads: lowrank with int4 loadings."""
    return {"encoder": {"codec": "lowrank", "params": {"rank": encoder, "loadings": "int4"}},
            "adapter": {"codec": "sign", "params": {}},
            "head": {"codec": "lowrank", "params": {"rank": head, "loadings": "int4"}}}


def _sign(encoder: float, adapter: float, head: float) -> dict[str, dict[str, Any]]:
    return {kind: {"codec": "sign", "params": {"fraction": f}}
            for kind, f in (("encoder", encoder), ("adapter", adapter), ("head", head))}


# Lossy settings share the backhaul (fog -> cloud) and downlink codec, int8, so only the device uplink differs.
# Settings with a `model` also change what is trained and sent (FFA-LoRA: only B; a lower LoRA rank): their
# accuracy cost includes the parameterisation's own, which "fp32+ffa-r2" shows without any coding.
SETTINGS: tuple[Setting, ...] = (
    Setting("fp32", {}, {}, {}),
    Setting("fp16", _all("fp16"), _all("fp16"), _all("fp16")),
    Setting("int8", _all("int8"), _all("int8"), _all("int8")),
    Setting("topk1%+int8", _topk(0.01, 0.1), _all("int8"), _all("int8")),
    Setting("sign", _sign(1.0, 1.0, 1.0), _all("int8"), _all("int8")),
    Setting("sign+adapter10%", _sign(1.0, 0.1, 1.0), _all("int8"), _all("int8")),
    Setting("sign+adapter5%", _sign(1.0, 0.05, 1.0), _all("int8"), _all("int8")),
    Setting("sign-sparse", _sign(0.25, 0.1, 0.5), _all("int8"), _all("int8")),
    Setting("sign+ffa", _sign(1.0, 1.0, 1.0), _all("int8"), _all("int8"), {"adapter": "ffa_lora"}),
    Setting("sign+ffa-r2", _sign(1.0, 1.0, 1.0), _all("int8"), _all("int8"),
            {"adapter": "ffa_lora", "lora_r": 2, "lora_alpha": 4}),
    Setting("sign+lora-r1", _sign(1.0, 1.0, 1.0), _all("int8"), _all("int8"), {"lora_r": 1, "lora_alpha": 2}),
    Setting("fp32+ffa-r2", {}, {}, {}, {"adapter": "ffa_lora", "lora_r": 2, "lora_alpha": 4}),
    Setting("lowrank1", _lowrank(1, 1, 1), _all("int8"), _all("int8")),
    Setting("lowrank2", _lowrank(2, 2, 2), _all("int8"), _all("int8")),
    Setting("lowrank2+adapter1", _lowrank(2, 1, 2), _all("int8"), _all("int8")),
    Setting("lowrank1+adapter2", _lowrank(1, 2, 1), _all("int8"), _all("int8")),
    Setting("lowrank-lora", _lowrank_lora(2), _all("int8"), _all("int8")),
    Setting("lowrank-lora-lite", _lowrank_lora(1), _all("int8"), _all("int8")),
    Setting("lowrank2-pairA-int4", _lowrank_int4(pair="query.lora_A|value.lora_A"), _all("int8"), _all("int8")),
    Setting("lowrank2-int4", _lowrank_int4(), _all("int8"), _all("int8")),
    Setting("lowrank2-pairA3-int4", _lowrank_int4(pair="query.lora_A|value.lora_A", rank_of="lora_A:3"),
            _all("int8"), _all("int8")),
    Setting("lowrank-pairA-eh4", _lowrank_int4(4, 4, pair="query.lora_A|value.lora_A"), _all("int8"), _all("int8")),
    Setting("lora-sb8-sign-eh4", _sb_sign(), _all("int8"), _all("int8"), _sb_model(8)),
    Setting("lora-sb8-lowrank2-eh4", {**_sb_sign(), "adapter": {"codec": "lowrank", "params": {"rank": 2}}},
            _all("int8"), _all("int8"), _sb_model(8)),
    Setting("lora-sb8-sign-eh6", _sb_sign(6, 6), _all("int8"), _all("int8"), _sb_model(8)),
    Setting("lora-sb8a64-sign-eh4", _sb_sign(), _all("int8"), _all("int8"), _sb_model(8, 64)),
    Setting("lora-sb8a256-sign-eh4", _sb_sign(), _all("int8"), _all("int8"), _sb_model(8, 256)),
    Setting("lora-sb12-sign-eh4", _sb_sign(), _all("int8"), _all("int8"), _sb_model(12)),
    Setting("fp32+lora-sb8", {}, {}, {}, _sb_model(8)),
    Setting("fp32+lora-sb16", {}, {}, {}, _sb_model(16)),
    # LoRA-SB on every linear layer (36 R matrices of 6 x 6: 1,296 numbers): the control, the codec, and each half
    # of the codec alone (R fp32 with encoders and heads lowrank; R sign-coded with encoders and heads fp32).
    Setting("fp32+lora-sb6all", {}, {}, {}, _sb_model(6, targets=_ALL_LINEAR)),
    Setting("lora-sb6all-sign-eh4", _sb_sign(), _all("int8"), _all("int8"), _sb_model(6, targets=_ALL_LINEAR)),
    Setting("lora-sb6all-fp32R-eh4", {k: v for k, v in _sb_sign().items() if k != "adapter"}, _all("int8"),
            _all("int8"), _sb_model(6, targets=_ALL_LINEAR)),
    Setting("lora-sb6all-signR-fp32eh", {"adapter": _sb_sign()["adapter"]}, _all("int8"), _all("int8"),
            _sb_model(6, targets=_ALL_LINEAR)),
    Setting("lora-sb6all-sign-e4-hsign", {**_sb_sign(), "head": {"codec": "sign", "params": {}}}, _all("int8"),
            _all("int8"), _sb_model(6, targets=_ALL_LINEAR)),
    # Capacity: R on every linear layer at r = 12 and 16 (5,184 and 9,216 numbers per adapter), R sign-coded,
    # encoders and heads fp32; and r = 12 with half of R's signs per message (a seeded subset, error feedback).
    Setting("lora-sb12all-signR-fp32eh", {"adapter": _sb_sign()["adapter"]}, _all("int8"), _all("int8"),
            _sb_model(12, targets=_ALL_LINEAR)),
    Setting("lora-sb16all-signR-fp32eh", {"adapter": _sb_sign()["adapter"]}, _all("int8"), _all("int8"),
            _sb_model(16, targets=_ALL_LINEAR)),
    Setting("lora-sb12all-sign50R-fp32eh", {"adapter": {"codec": "sign", "params": {"fraction": 0.5}}},
            _all("int8"), _all("int8"), _sb_model(12, targets=_ALL_LINEAR)),
    # Spending the bytes the compact update header freed (2026-12-07): encoders lowrank 6 instead of 4; R at r = 8;
    # and encoders sign-coded too (every module kind sign-coded: the encoders' share of the loss, at ~175x).
    Setting("lora-sb6all-sign-e6-hsign", {**_sb_sign(6, 4), "head": {"codec": "sign", "params": {}}}, _all("int8"),
            _all("int8"), _sb_model(6, targets=_ALL_LINEAR)),
    Setting("lora-sb8all-sign-e4-hsign", {**_sb_sign(), "head": {"codec": "sign", "params": {}}}, _all("int8"),
            _all("int8"), _sb_model(8, targets=_ALL_LINEAR)),
    Setting("lora-sb6all-sign-esign-hsign", _all("sign"), _all("int8"), _all("int8"),
            _sb_model(6, targets=_ALL_LINEAR)),
    # Bytes where they pay (per-module codecs, 2026-12-07): every head at full rank (lowrank 12 >= any task's
    # classes, int4), which codes a head delta closer than its sign code for about the same bytes; the 8-column image
    # and power encoders at full rank (lowrank 8); the 60-column inertial and 12-column speech encoders at lowrank 4.
    Setting("lora-sb6all-sign-e4ip8-hfull",
            {**_sb_sign(4, 12), "encoder:image": _LOWRANK8_INT4, "encoder:power": _LOWRANK8_INT4}, _all("int8"),
            _all("int8"), _sb_model(6, targets=_ALL_LINEAR)),
    # More R in the same bytes (2026-12-07): r = 9 on every linear layer (2,916 numbers per adapter; central screen
    # 0.886 against 0.878 at r = 6), paid for by the inertial encoder at lowrank 2 (its task, activity, is solved).
    Setting("lora-sb9all-sign-e4i2-hsign",
            {**_sb_sign(), "encoder:inertial": {"codec": "lowrank", "params": {"rank": 2, "loadings": "int4"}},
             "head": {"codec": "sign", "params": {}}}, _all("int8"), _all("int8"), _sb_model(9, targets=_ALL_LINEAR)),
)
# The setting the README headlines (`--headline` runs fp32 and it, and marks it "headline": true in the report).
HEADLINE = "lora-sb9all-sign-e4i2-hsign"  # 258.0x at -0.47 pt over seeds 0-2, 8 rounds (2026-12-07)

# The default run (nine jobs, about 25 min on 2 idle CPU cores); --only picks any of SETTINGS.
DEFAULT_SETTINGS: tuple[Setting, ...] = tuple(
    s for s in SETTINGS if s.name in ("fp32", "fp16", "int8", "topk1%+int8", "sign", "lowrank1", "lowrank2",
                                      "lowrank2-pairA-int4", "lowrank-pairA-eh4"))


def select_settings(only: str, *, headline: bool = False) -> tuple[Setting, ...]:
    """The named subset of :data:`SETTINGS` (comma-separated), always led by fp32; :data:`DEFAULT_SETTINGS` if empty;
    fp32 and :data:`HEADLINE` with ``headline``.

    Raises:
        ConfigError: an unknown setting name, or ``headline`` together with a subset.
    """
    if headline:
        if only.strip():
            raise ConfigError("--headline runs fp32 and the headline setting; leave out --only")
        only = HEADLINE
    if not only.strip():
        return DEFAULT_SETTINGS
    by_name = {s.name: s for s in SETTINGS}
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ConfigError(f"unknown compression setting(s) {unknown}; expected some of {sorted(by_name)}")
    return (by_name["fp32"], *(by_name[n] for n in names if n != "fp32"))


def run_compression_bench(*, rounds: int, seed: int, report: Path | None, run_root: Path,
                          settings: tuple[Setting, ...] = DEFAULT_SETTINGS, backbone: str = "minilm",
                          seeds: int = 1, console: Console | None = None,
                          advert_interval_s: float = ADVERT_INTERVAL_S) -> dict[str, Any]:
    """Run every setting (with ``seeds`` > 1: once per seed ``seed, seed + 1, ...``, each against that seed's fp32
    run), print the table, write the JSON report; return it.

    With several seeds, each run's figures are the means over the seeds, and ``per_seed`` lists each seed's own;
    ``accuracy_delta_sd`` is the sample standard deviation of the accuracy change. A single run of this job moves
    by about a point for reasons unrelated to the codec, so a goal within a point needs several seeds to judge.

    Raises:
        HffmError: a run failed (its logs are under ``run_root``).
    """
    console = console or Console()
    seed_list = list(range(seed, seed + seeds))
    per_seed = [_run_seed(settings, rounds=rounds, seed=s, backbone=backbone, console=console,
                          run_root=run_root if seeds == 1 else run_root / f"seed-{s}",
                          advert_interval_s=advert_interval_s) for s in seed_list]
    runs = per_seed[0] if seeds == 1 else [combine_seeds([runs[i] for runs in per_seed], seed_list)
                                           for i in range(len(settings))]
    for run in runs:
        if run["codec"] == HEADLINE:
            run["headline"] = True
    out = {"benchmark": "compression", "rounds": rounds, "seed": seed, "seeds": seed_list, "backbone": backbone,
           "advert_interval_s": advert_interval_s, "target_share_of_fp32_final": 0.95,
           "headline": HEADLINE if any(r.get("headline") for r in runs) else None, "runs": runs}
    print_table(out, console)
    save_report(out, report, console)
    return out


def _run_seed(settings: tuple[Setting, ...], *, rounds: int, seed: int, backbone: str, run_root: Path,
              console: Console, advert_interval_s: float) -> list[dict[str, Any]]:
    """Every setting's run at one seed, with its ratio and accuracy change against the first (fp32) run."""
    base = DemoOptions(rounds=rounds, seed=seed, backbone=backbone, baseline=False, show_tables=False,
                       device={"telemetry_interval_s": advert_interval_s})
    runs: list[dict[str, Any]] = []
    deltas: dict[ModuleKey, dict[str, np.ndarray]] = {}
    for i, setting in enumerate(settings, 1):
        console.print(f"[bold]run {i}/{len(settings)}: {setting.name} (seed {seed})")
        opts = replace(base, run_dir=run_root / setting.name, uplink=dict(setting.uplink),
                       fog_uplink=dict(setting.fog_uplink), downlink=dict(setting.downlink), model=dict(setting.model))
        started = time.time()
        result = run_demo(opts)
        if not deltas:
            deltas = real_deltas(run_root / setting.name / "cloud.sqlite")
        n = len(result["rounds"])
        enc_ms, dec_ms = codec_speed(setting.uplink, deltas)
        runs.append({"codec": setting.name, "uplink": setting.uplink, "fog_uplink": setting.fog_uplink,
                     "downlink": setting.downlink, "model": dict(setting.model),
                     "uplink_bytes_per_round": int(sum(r["bytes"]["device_to_fog"] for r in result["rounds"]) / n),
                     "fog_to_cloud_bytes_per_round": int(sum(r["bytes"]["fog_to_cloud"] for r in result["rounds"]) / n),
                     "downlink_bytes_per_round": int(sum(r["bytes"]["fog_to_device"] + r["bytes"]["cloud_to_fog"]
                                                         for r in result["rounds"]) / len(result["rounds"])),
                     "mean_accuracy": result["final"]["mean_accuracy"], "accuracy": result["final"]["accuracy"],
                     "encode_ms_per_mb": enc_ms, "decode_ms_per_mb": dec_ms, "wall_s": result["wall_s"],
                     **run_figures(result, run_root / setting.name, started)})
    for run in runs:
        judge_against_fp32(run, runs[0])
    return runs


def real_deltas(db: Path) -> dict[ModuleKey, dict[str, np.ndarray]]:
    """Final minus initial state of every global module stored by a finished run."""
    con = sqlite3.connect(db)
    rows = con.execute("SELECT module, version, payload FROM module_versions ORDER BY module, version").fetchall()
    con.close()
    first: dict[str, bytes] = {}
    last: dict[str, bytes] = {}
    for module, _version, payload in rows:
        first.setdefault(module, payload)
        last[module] = payload
    out = {}
    for module in first:
        a = state_from_blobs(decode(first[module], ModuleVersion).tensors)
        b = state_from_blobs(decode(last[module], ModuleVersion).tensors)
        out[ModuleKey.parse(module)] = {n: (b[n] - a[n]).astype(np.float32) for n in a}
    return out


def codec_speed(uplink: Mapping[str, Mapping[str, Any]], deltas: Mapping[ModuleKey, dict[str, np.ndarray]],
                repeats: int = 5) -> tuple[float, float]:
    """Encode and decode ms per MB of fp32 input, over the given module deltas with each kind's codec; each module
    is coded as the runtime codes it (``module_codec``): fp32 tensor by tensor, any other codec as one flat vector
    with the module's layout."""
    codecs = make_codecs({sel: CodecSpec(codec=str(spec.get("codec", "fp32")), params=dict(spec.get("params", {})))
                          for sel, spec in uplink.items()}, "uplink")
    mb = sum(a.nbytes for state in deltas.values() for a in state.values()) / 1e6
    enc_s = dec_s = 0.0
    for _ in range(repeats):
        for key, state in deltas.items():
            codec = codecs.for_key(key)
            names = sorted(state)
            if codec.lossless:
                parts = [(codec, state[n]) for n in names]
            else:
                flat = np.concatenate([state[n].ravel() for n in names])
                parts = [(codec.with_layout([(n, state[n].shape) for n in names]), flat)]
            for part_codec, arr in parts:
                t0 = time.perf_counter()
                data = part_codec.encode(arr)
                t1 = time.perf_counter()
                part_codec.decode(data, arr.shape)
                t2 = time.perf_counter()
                enc_s, dec_s = enc_s + (t1 - t0), dec_s + (t2 - t1)
    return enc_s * 1000 / repeats / mb, dec_s * 1000 / repeats / mb

"""``hffm sim`` and ``hffm bench scale``: simulated fleets against the real tiers (:mod:`hffm_lab.sim`) and the scale
benchmark (:mod:`hffm_lab.bench.scale`); this module only wires options."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from hffm_cli.commands.common import LogLevelOpt, TimeLimitOpt, friendly_errors, setup_logging
from hffm_core.errors import ConfigError, HffmError


@friendly_errors
def sim(
    devices: Annotated[int, typer.Option("--devices", "-k", min=1, max=100_000, help="Virtual devices K.")] = 20,
    fogs: Annotated[int, typer.Option(min=1, max=64, help="Fogs (one Mosquitto + hffm fog run each).")] = 2,
    rounds: Annotated[int, typer.Option(min=1, max=1000, help="Global rounds.")] = 3,
    agg_every: Annotated[int, typer.Option(min=1, max=50, help="Cluster rounds per global round (E_agg).")] = 2,
    mode: Annotated[str, typer.Option(help="noop: real module layouts, synthetic deltas, no torch; train: one "
                                           "frozen backbone per process, each device trains on its M3T-Bench "
                                           "shard, then the local-only baseline.")] = "noop",
    backbone: Annotated[str, typer.Option(help="The cloud's backbone, which fixes the module layouts (minilm, "
                                               "tiny).")] = "minilm",
    adapter: Annotated[str, typer.Option(help="The cloud's [model] adapter: lora (r=8 A and B), ffa_lora or "
                                              "lora-sb (an r x r matrix per layer).")] = "lora",
    per_process: Annotated[int, typer.Option(min=1, max=150, help="Virtual devices per simulator process.")] = 100,
    faults: Annotated[str, typer.Option(help="Shares of devices that fail, e.g. 'drop=0.02,slow=0.05,crash=0.02,"
                                             "skip=0.02,slow_s=2,rejoin_s=3' (seeded).")] = "",
    seed: Annotated[int, typer.Option(help="Seed of holdings, sample counts and faults.")] = 0,
    backoff: Annotated[float, typer.Option(min=0, max=3600, help="Devices' first outbox resend after this many "
                                                                 "seconds, doubling (0: the real default, 2 s to "
                                                                 "30 s).")] = 0.0,
    outbox_sync: Annotated[str, typer.Option(help="Devices' outbox commits: FULL (a real device's: fsync each) or "
                                                  "NORMAL (no fsync; a process's devices share one disk).")]
    = "FULL",
    codec: Annotated[str, typer.Option(help="Device uplink codec for every module kind (fp32, fp16, int8, ...).")]
    = "fp32",
    run_dir: Annotated[Path | None, typer.Option(help="Folder for the run (default runs/sim-<time>; wiped first).")]
    = None,
    report: Annotated[Path | None, typer.Option(help="Write the JSON report here.")] = None,
    time_limit: TimeLimitOpt = 3600.0,
    log_level: LogLevelOpt = "warning",
) -> None:
    """Run K virtual devices (many per process, real device-side protocol code) against real fog and cloud
    processes over real Mosquitto; report round times, deltas applied and lost, RSS and CPU."""
    setup_logging(log_level)
    from hffm_lab.sim import FaultRates, SimOptions, run_sim

    opts = SimOptions(devices=devices, fogs=fogs, rounds=rounds, agg_every=agg_every, mode=mode, backbone=backbone,
                      adapter=adapter,
                      seed=seed, per_process=per_process, faults=FaultRates.parse(faults), uplink_codec=codec,
                      run_dir=run_dir, report=report, time_limit_s=time_limit, backoff_base_s=backoff,
                      backoff_max_s=backoff, outbox_sync=outbox_sync.upper())
    out = run_sim(opts)
    text = json.dumps(out, indent=1)
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(text)
    d = out["deltas"]
    typer.echo(f"sim K={devices} over {fogs} fog(s): cluster round {out['cluster_round_s']} s, global round "
               f"{out['global_round_s']} s, fan-in {out['fanin_per_s']} deltas/s per fog; deltas queued "
               f"{d['queued']}, applied {d['applied_by_fogs']}, lost {d['lost']}; fog RSS {out['fog_rss_mb']} MB; "
               f"devices {out['devices']}; run folder {out['run_dir']}")
    if out.get("accuracy"):
        acc = out["accuracy"]
        typer.echo(f"accuracy: federated {acc['federated_mean']}, local-only {acc['local_only_mean']} "
                   f"(beats local-only: {acc['beats_local_only']})")
    if out["problems"]:
        raise HffmError("sim FAILED: " + "; ".join(out["problems"]))


@friendly_errors
def bench_scale(
    ks: Annotated[str, typer.Option("--k", help="Comma-separated fleet sizes.")] = "10,50,200,500,1000",
    rounds: Annotated[int, typer.Option(min=1, max=20, help="Global rounds per run (the first is not measured).")]
    = 3,
    agg_every: Annotated[int, typer.Option(min=1, max=10, help="Cluster rounds per global round.")] = 1,
    backbone: Annotated[str, typer.Option(help="The cloud's backbone (fixes the module layouts).")] = "minilm",
    adapter: Annotated[str, typer.Option(help="The cloud's [model] adapter: lora, ffa_lora or lora-sb (the "
                                              "project's headline; 16.5 kB per update).")] = "lora-sb",
    per_process: Annotated[int | None, typer.Option(min=1, max=150, help="Virtual devices per simulator process "
                                                       "(default: K spread over one process per CPU core at "
                                                       "least, at most 100 each).")] = None,
    fogs_from_1000: Annotated[int, typer.Option(min=2, max=16, help="Fogs for K >= 1000 (one below).")] = 2,
    backoff: Annotated[float, typer.Option(min=0, max=3600, help="Devices' first outbox resend after this many "
                                                                 "seconds (0: the real default, 2 s doubling to "
                                                                 "30 s, whose resends swamp a fog whose round "
                                                                 "takes longer: docs/scaling.md).")] = 60.0,
    outbox_sync: Annotated[str, typer.Option(help="Devices' outbox commits: FULL (a real device's) or NORMAL (no "
                                                  "fsync; the simulated devices share one disk).")] = "NORMAL",
    flower_python: Annotated[str | None, typer.Option(help="Interpreter with flwr[simulation] for the Flower "
                                                           "column (default: this one if it has flwr, else "
                                                           "$HFFM_FLOWER_PYTHON).")] = None,
    report: Annotated[Path | None, typer.Option(help="Write the JSON report here (the plot goes beside it).")] = None,
    work: Annotated[Path, typer.Option(help="Folder for the runs.")] = Path("runs/bench-scale"),
    repeat: Annotated[int, typer.Option(min=1, max=10, help="Runs per K, one after the other: the row gives their "
                                                            "medians (losses summed, memory the largest) and each "
                                                            "run's figures.")] = 1,
    log_level: LogLevelOpt = "warning",
) -> None:
    """hffm (noop sim through the real fog and cloud) vs a naive paho round loop vs a Flower simulation, per K:
    round times, fan-in against the broker's ceiling, RSS and CPU, journal bytes."""
    setup_logging(log_level)
    from hffm_lab.bench.scale import run_scale_bench

    try:
        k_list = tuple(int(k) for k in ks.split(",") if k.strip())
    except ValueError:
        raise ConfigError(f"--k must be comma-separated integers, got {ks!r}") from None
    if not k_list or min(k_list) < 1:
        raise ConfigError(f"--k needs at least one size >= 1, got {ks!r}")
    run_scale_bench(ks=k_list, rounds=rounds, agg_every=agg_every, backbone=backbone, per_process=per_process,
                    fogs_from_1000=fogs_from_1000, report=report, work=work.resolve(),
                    flower_python_path=flower_python, backoff_s=backoff, outbox_sync=outbox_sync.upper(),
                    adapter=adapter, repeat=repeat)

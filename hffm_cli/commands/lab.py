"""``hffm demo`` and ``hffm bench ...``: the lab's runs (:mod:`hffm_lab`) from the command line; this module only
wires options."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hffm_cli.commands.common import (
    LogLevelOpt,
    TimeLimitOpt,
    friendly_errors,
    setup_logging,
)
from hffm_core.errors import ConfigError

bench_app = typer.Typer(help="Benchmarks: print a table and save the figures as JSON.", no_args_is_help=True)


@friendly_errors
def demo(
    fogs: Annotated[int, typer.Option(min=1, max=16, help="Fog nodes (one Mosquitto + gateway each).")] = 2,
    devices_per_fog: Annotated[int, typer.Option(min=1, max=32, help="Devices per fog.")] = 3,
    rounds: Annotated[int, typer.Option(min=1, max=100, help="Global rounds.")] = 4,
    local_epochs: Annotated[int, typer.Option(min=1, max=50, help="Local epochs per cluster round.")] = 1,
    agg_every: Annotated[int, typer.Option(min=1, max=50, help="Cluster rounds per global round (E_agg).")] = 2,
    backbone: Annotated[str, typer.Option(help="minilm (default), tiny (tests only) or a local HF model dir.")] = "minilm",
    seed: Annotated[int, typer.Option(help="Seed for data split, partition and init.")] = 0,
    alpha: Annotated[float, typer.Option(min=0.01, help="Dirichlet alpha of the non-IID label split.")] = 0.5,
    report: Annotated[Path | None, typer.Option(help="Write the JSON report here.")] = None,
    run_dir: Annotated[Path | None, typer.Option(help="Folder for configs, data, logs (default runs/demo-<time>).")] = None,
    secure: Annotated[bool, typer.Option(help="Mutual TLS, generated access control and signed envelopes.")] = False,
    layout: Annotated[str, typer.Option(help="star, hierarchical or hierarchical_d2d (docs/topology.md); other than "
                                             "hierarchical, links run through counting proxies.")] = "hierarchical",
    topology: Annotated[Path | None, typer.Option(help="Topology TOML (examples/topology.toml); default: generated "
                                                       "from --fogs and --devices-per-fog.")] = None,
    personalization: Annotated[str, typer.Option(help="Devices' [personalization] mode: none, replace or "
                                                       "replace+distill (docs/personalization.md).")] = "none",
    time_limit: TimeLimitOpt = 1800.0,
    log_level: LogLevelOpt = "warning",
) -> None:
    """Run the main job: cloud, fogs and devices as real processes over real Mosquitto brokers on M3T-Bench."""
    setup_logging(log_level)
    from hffm_lab.demo import DemoOptions, run_demo
    from hffm_lab.demo.layout import LAYOUTS

    from edge_runtime.config import PERSONALIZATION_MODES

    if layout not in LAYOUTS:
        raise ConfigError(f"--layout must be one of {list(LAYOUTS)}, got {layout!r}")
    if personalization not in PERSONALIZATION_MODES:
        raise ConfigError(f"--personalization must be one of {list(PERSONALIZATION_MODES)}, got {personalization!r}")
    device = {"personalization": {"mode": personalization}} if personalization != "none" else {}
    run_demo(DemoOptions(fogs=fogs, devices_per_fog=devices_per_fog, rounds=rounds, local_epochs=local_epochs,
                         agg_every=agg_every, backbone=backbone, seed=seed, alpha=alpha, report=report,
                         run_dir=run_dir, time_limit_s=time_limit, secure=secure, layout=layout, topology=topology,
                         device=device))


@bench_app.command("compression")
@friendly_errors
def bench_compression(
    rounds: Annotated[int, typer.Option(min=1, max=100, help="Global rounds per run (demo default).")] = 4,
    seed: Annotated[int, typer.Option(help="Seed (same for every run).")] = 0,
    report: Annotated[Path | None, typer.Option(help="Write the JSON report here.")] = None,
    backbone: Annotated[str, typer.Option(help="Backbone (demo default: minilm).")] = "minilm",
    run_root: Annotated[Path, typer.Option(help="Folder for each run's files.")] = Path("runs/bench-compression"),
    only: Annotated[str, typer.Option(help="Comma-separated subset of settings (fp32 is always run first).")] = "",
    seeds: Annotated[int, typer.Option(min=1, max=20, help="Run everything at this many seeds (--seed, --seed + 1, "
                                                           "...) and report means and spread.")] = 1,
    headline: Annotated[bool, typer.Option(help="Run fp32 and the README's headline setting (marked \"headline\": "
                                                "true in the report).")] = False,
    log_level: LogLevelOpt = "warning",
) -> None:
    """Run the demo's federated job once per codec setting; compare uplink bytes, accuracy and codec speed."""
    setup_logging(log_level)
    from hffm_lab.bench.compression import run_compression_bench, select_settings

    run_compression_bench(rounds=rounds, seed=seed, report=report, run_root=run_root.resolve(), backbone=backbone,
                          settings=select_settings(only, headline=headline), seeds=seeds)


@bench_app.command("security")
@friendly_errors
def bench_security(
    rounds: Annotated[int, typer.Option(min=1, max=100, help="Global rounds per poisoning run (demo default).")] = 4,
    seed: Annotated[int, typer.Option(help="Seed (same for every run).")] = 0,
    attack: Annotated[str, typer.Option(help="Attack of the poisoning runs: scale, sign_flip or noise.")] = "scale",
    report: Annotated[Path | None, typer.Option(help="Write the JSON report here.")] = None,
    backbone: Annotated[str, typer.Option(help="Backbone (demo default: minilm).")] = "minilm",
    run_root: Annotated[Path, typer.Option(help="Folder for each run's files.")] = Path("runs/bench-security"),
    log_level: LogLevelOpt = "warning",
) -> None:
    """Auth matrix on real TLS brokers, tamper cases, decode fuzz, signing cost, and M3T-Bench with 20% attackers
    under each aggregation rule."""
    setup_logging(log_level)
    from edge_runtime.attacks import check_attack
    from hffm_lab.bench.security import run_security_bench

    check_attack(attack, None)
    run_security_bench(rounds=rounds, seed=seed, attack=attack, report=report, run_root=run_root.resolve(),
                       backbone=backbone)


@bench_app.command("personalization")
@friendly_errors
def bench_personalization(
    alphas: Annotated[str, typer.Option(help="Comma-separated Dirichlet alphas.")] = "0.1,0.5",
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds; means and spread over them.")] = "0,1,2",
    rounds: Annotated[int, typer.Option(min=1, max=100, help="Global rounds (demo default).")] = 4,
    agg_every: Annotated[int, typer.Option(min=1, max=50, help="Cluster rounds per global round.")] = 2,
    backbone: Annotated[str, typer.Option(help="Backbone (demo default: minilm).")] = "minilm",
    workers: Annotated[int, typer.Option(min=1, max=8, help="Cases run at a time, one process each.")] = 1,
    report: Annotated[Path | None, typer.Option(help="Write the JSON report here.")] = None,
    mixed_rank: Annotated[bool, typer.Option(help="Also the mixed-rank fleet (LoRA ranks 4/8/16) vs uniform rank 8, "
                                                  "at the first alpha.")] = True,
    only_mixed_rank: Annotated[bool, typer.Option(help="Only the mixed-rank comparison.")] = False,
    log_level: LogLevelOpt = "warning",
) -> None:
    """Per device: local-only vs global vs personal modules (replace, replace+distill) on each device's own test
    split, 2 fogs x 3 devices on skewed M3T-Bench partitions (docs/personalization.md)."""
    setup_logging(log_level)
    from hffm_lab.bench.personalization import (
        PersonalizationOptions,
        parse_floats,
        parse_ints,
        run_personalization_bench,
    )

    run_personalization_bench(PersonalizationOptions(alphas=parse_floats(alphas), seeds=parse_ints(seeds),
                                                     rounds=rounds, agg_every=agg_every, backbone=backbone,
                                                     mixed_rank=mixed_rank, only_mixed_rank=only_mixed_rank),
                              report=report, workers=workers)


@bench_app.command("agent")
@friendly_errors
def bench_agent(
    report: Annotated[Path | None, typer.Option(help="Write the JSON report here.")] = None,
    backbone: Annotated[str, typer.Option(help="Backbone (demo default: minilm).")] = "minilm",
    work: Annotated[Path, typer.Option(help="Folder for the bench's brokers, configs and files.")] = Path(
        "runs/bench-agent"),
    log_level: LogLevelOpt = "warning",
) -> None:
    """Step-time overhead of the runtime, idle/peak RSS against torch+peft alone, ONNX parity."""
    setup_logging(log_level)
    from hffm_lab.bench.agent import run_agent_bench

    run_agent_bench(backbone=backbone, report=report, work=work.resolve())


@bench_app.command("topology")
@friendly_errors
def bench_topology(
    rounds: Annotated[int, typer.Option(min=1, max=100, help="Global rounds of the hierarchical runs.")] = 2,
    agg_every: Annotated[int, typer.Option(min=1, max=50, help="Cluster rounds per global round (E_agg); star runs "
                                                               "rounds x agg_every global rounds; 8 as in the "
                                                               "paper.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed (same for every run).")] = 0,
    report: Annotated[Path | None, typer.Option(help="Write the JSON report here.")] = None,
    backbone: Annotated[str, typer.Option(help="Backbone (demo default: minilm).")] = "minilm",
    run_root: Annotated[Path, typer.Option(help="Folder for each run's files.")] = Path("runs/bench-topology"),
    log_level: LogLevelOpt = "warning",
) -> None:
    """Run M3T-Bench as star, hierarchical and hierarchical_d2d; compare accuracy, bytes per link kind (measured
    by link proxies) and the link model's latency and energy."""
    setup_logging(log_level)
    from hffm_lab.bench.topology import run_topology_bench

    run_topology_bench(rounds=rounds, agg_every=agg_every, seed=seed, report=report, run_root=run_root.resolve(),
                       backbone=backbone)


@bench_app.command("fog-ingest")
@friendly_errors
def bench_fog_ingest(
    devices: Annotated[int, typer.Option(min=1, max=2000, help="Scripted devices, one update each.")] = 100,
    floats: Annotated[int, typer.Option(min=1, help="fp32 values per update (300,000 = 1.2 MB).")] = 300_000,
    repeats: Annotated[int, typer.Option(min=1, max=20, help="Off/on pairs.")] = 2,
    scrape_every: Annotated[float, typer.Option(min=0.05, help="Seconds between scrapes of /metrics when on.")] = 0.5,
    report: Annotated[Path | None, typer.Option(help="Write the JSON report here.")] = None,
    work: Annotated[Path, typer.Option(help="Folder for the runs.")] = Path("runs/bench-fog-ingest"),
    log_level: LogLevelOpt = "warning",
) -> None:
    """Fog ingest rate (a real hffm fog run process, scripted devices) with /metrics off and on, side by side."""
    setup_logging(log_level)
    from hffm_lab.bench.fog_ingest import run_fog_ingest_bench

    run_fog_ingest_bench(devices=devices, floats=floats, repeats=repeats, scrape_every_s=scrape_every,
                         report=report, work=work.resolve())


@bench_app.command("reliability")
@friendly_errors
def bench_reliability(
    report: Annotated[Path | None, typer.Option(help="Write the JSON report here.")] = None,
    rounds: Annotated[int, typer.Option(min=1, max=1000, help="Rounds of the two ledger-workload faults and the negative control (x 20 devices = deltas); the "
                                       "real-tier faults run a fixed 2 x 2-round job.")] = 50,
    long_outages: Annotated[bool, typer.Option(help="Also kill the cloud broker for 60 s and 300 s.")] = False,
    work: Annotated[Path, typer.Option(help="Folder for the brokers, ledgers and state (wiped first).")] = Path(
        "runs/bench-reliability"),
    log_level: LogLevelOpt = "warning",
) -> None:
    """Inject every fault (broker/gateway/cloud kill -9, link cut, queue overflow, oversized payload) and count
    lost and duplicated deltas end to end; a negative control runs without the outbox."""
    setup_logging(log_level)
    from hffm_lab.bench.reliability import run_reliability_bench

    run_reliability_bench(rounds=rounds, report=report, work=work.resolve(), long_outages=long_outages)

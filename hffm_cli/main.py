"""The ``hffm`` command line. The app only wires commands; each command's work lives in its own module.

Every :class:`HffmError` ends the command with one line on stderr and the error's exit code (see
``hffm --help`` and docs/architecture.md for the table). An ``OSError`` becomes a :class:`StorageError` line (disk
full, read-only); anything else is a bug: its traceback is logged, then one ``internal error`` line, exit 12.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from hffm_cli.commands.broker import broker_app
from hffm_cli.commands.certs import certs_app
from hffm_core.errors import (
    ALL_ERRORS,
    ConfigError,
    HffmError,
    InternalError,
    storage_error,
)

F = TypeVar("F", bound=Callable[..., Any])

EXIT_CODES_HELP = "Exit codes: 0 ok; " + "; ".join(f"{e.exit_code} {e.help}" for e in ALL_ERRORS)
app = typer.Typer(help=f"hffm: hierarchical federated fine-tuning over MQTT. {EXIT_CODES_HELP}.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
edge_app = typer.Typer(help="The device agent.", no_args_is_help=True)
fog_app = typer.Typer(help="The fog gateway.", no_args_is_help=True)
cloud_app = typer.Typer(help="The cloud service.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks: print a table and save the figures as JSON.", no_args_is_help=True)
config_app = typer.Typer(help="Config files.", no_args_is_help=True)
fleet_app = typer.Typer(help="The fleet as its brokers see it.", no_args_is_help=True)
job_app = typer.Typer(help="The running job, as the cloud's broker sees it.", no_args_is_help=True)
app.add_typer(edge_app, name="edge")
app.add_typer(fog_app, name="fog")
app.add_typer(cloud_app, name="cloud")
app.add_typer(bench_app, name="bench")
app.add_typer(config_app, name="config")
app.add_typer(fleet_app, name="fleet")
app.add_typer(job_app, name="job")
app.add_typer(certs_app, name="certs")
app.add_typer(broker_app, name="broker")

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="TOML config file (see examples/).")]
TimeLimitOpt = Annotated[float, typer.Option(help="Give up (exit 9) after this many seconds.")]
LogLevelOpt = Annotated[str, typer.Option(help="Logging level: debug, info, warning, error.")]
FormatOpt = Annotated[str, typer.Option("--format", help="Output format: text or json.")]


def check_format(fmt: str) -> str:
    if fmt not in ("text", "json"):
        raise typer.BadParameter(f"unknown format {fmt!r}; expected 'text' or 'json'", param_hint="--format")
    return fmt


def setup_logging(level: str) -> None:
    numeric = getattr(logging, level.upper(), None)
    if not isinstance(numeric, int):
        raise typer.BadParameter(f"unknown log level {level!r}")
    logging.basicConfig(level=numeric, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("transformers", "peft", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def friendly_errors(func: F) -> F:
    """Turn an :class:`HffmError` into one line on stderr and its exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except HffmError as exc:
            typer.echo(f"hffm: error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("hffm: interrupted", err=True)
            raise typer.Exit(130) from None
        except OSError as exc:  # a full or read-only disk, a missing folder: name the cause, no traceback
            err = storage_error(exc)
            typer.echo(f"hffm: error: {err}", err=True)
            raise typer.Exit(err.exit_code) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as exc:  # a bug: the traceback goes to the log, the operator gets one line and a code
            logging.getLogger("hffm").error("internal error", exc_info=exc)
            typer.echo(f"hffm: error: internal error: {type(exc).__name__}: {exc} (a bug; the traceback is "
                       f"above)", err=True)
            raise typer.Exit(InternalError.exit_code) from None

    return wrapper  # type: ignore[return-value]


@edge_app.command("run")
@friendly_errors
def edge_run(config: ConfigOpt, time_limit: TimeLimitOpt = 24 * 3600.0, log_level: LogLevelOpt = "info") -> None:
    """Run the device agent: train held modules each round, publish deltas to the fog."""
    setup_logging(log_level)
    from edge_runtime.agent import run_edge

    run_edge(config, time_limit_s=time_limit)


@edge_app.command("status")
@friendly_errors
def edge_status(config: ConfigOpt, fmt: FormatOpt = "text") -> None:
    """Modules held and their versions, last round, link state, resources (from the agent's status file)."""
    from hffm_cli.commands.ops import edge_status as run

    run(config, fmt=check_format(fmt))


@edge_app.command("export")
@friendly_errors
def edge_export(
    config: ConfigOpt,
    task: Annotated[str, typer.Option(help="The task whose personalised model to export.")],
    out: Annotated[Path, typer.Option(help="The .onnx file to write.")],
    modules: Annotated[Path | None, typer.Option(help="Module snapshot (default: the agent's, in state_dir).")] = None,
    source: Annotated[str, typer.Option(help="local: the personalised modules as trained on this device; "
                                             "fleet: the versions last received from the fog.")] = "local",
    fmt: FormatOpt = "text",
) -> None:
    """Merge the device's LoRA into the backbone and export encoder + backbone + head of TASK to ONNX."""
    setup_logging("warning")
    from hffm_cli.commands.ops import edge_export as run

    result = run(config, task=task, out=out, modules=modules, source=source)
    if check_format(fmt) == "json":
        typer.echo(json.dumps(result))
    else:
        typer.echo(f"wrote {result['onnx']} ({result['bytes']:,} B) in {result['export_s']} s; parity on "
                   f"{result['parity_rows']} rows: max abs diff {result['max_abs_diff']:.2e}, argmax agreement "
                   f"{result['argmax_agreement']:.4f}")


@edge_app.command("infer")
@friendly_errors
def edge_infer(
    model: Annotated[Path, typer.Option(help="An .onnx file from 'hffm edge export'.")],
    input: Annotated[Path, typer.Option(help="A task data file (.npz, see README).")],
    predictions: Annotated[bool, typer.Option(help="Include every prediction in the JSON output.")] = False,
    fmt: FormatOpt = "text",
) -> None:
    """Run an exported model with onnxruntime on a data file; print accuracy (and predictions)."""
    from hffm_cli.commands.ops import edge_infer as run

    run(model, input, fmt=check_format(fmt), labels=predictions)


@config_app.command("check")
@friendly_errors
def config_check(
    file: Annotated[Path, typer.Argument(help="A device, fog or cloud TOML config.")],
    check_files: Annotated[bool, typer.Option(help="Also require every data/eval file to exist.")] = False,
    fmt: FormatOpt = "text",
) -> None:
    """Validate a config and name every bad or unknown key (exit 0 valid, 2 invalid). Needs no torch."""
    from hffm_cli.commands.ops import config_check as run

    code = run(file, check_files=check_files, fmt=check_format(fmt))
    if code:
        raise typer.Exit(code)


# Operator commands on a secured broker: mutual TLS from these options or from a node config's [tls] (-c).
NodeConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="A device, fog or cloud config: its "
                                                    "\\[broker], fleet and \\[tls] are the defaults.")]
TlsCaOpt = Annotated[Path | None, typer.Option("--tls-ca", help="The fleet CA (PEM) the broker's certificate must "
                                               "chain to.")]
TlsCertOpt = Annotated[Path | None, typer.Option("--tls-cert", help="Client certificate (PEM) of an identity the "
                                                 "broker lets read state/# (a fog on its broker, the cloud).")]
TlsKeyOpt = Annotated[Path | None, typer.Option("--tls-key", help="Its private key (PEM).")]


@fleet_app.command("status")
@friendly_errors
def fleet_status(
    host: Annotated[str | None, typer.Option(help="Broker host (a fog's or the cloud's; default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Broker port (default 1883).")] = None,
    fleet: Annotated[str | None, typer.Option(help="Fleet name (default demo).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to collect retained adverts.")] = 3.0,
    watch: Annotated[bool, typer.Option(help="Keep the table live (Ctrl-C ends it).")] = False,
    interval: Annotated[float, typer.Option(min=0.2, help="With --watch: seconds between refreshes.")] = 2.0,
    count: Annotated[int, typer.Option(min=0, help="With --watch: stop after this many refreshes (0: never).")] = 0,
    fmt: FormatOpt = "text",
    config: NodeConfigOpt = None,
    tls_ca: TlsCaOpt = None,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
) -> None:
    """Which nodes are online, what they hold, when they were last seen (retained state adverts)."""
    from hffm_cli.fleet_status import broker_target, show_fleet

    target = broker_target(config=config, host=host, port=port, fleet=fleet, tls_ca=tls_ca, tls_cert=tls_cert,
                           tls_key=tls_key)
    if watch:
        from hffm_cli.commands.watch import watch_fleet

        watch_fleet(target.host, target.port, target.fleet, interval_s=interval, count=count, fmt=check_format(fmt),
                    tls=target.tls)
        return
    show_fleet(target, timeout_s=timeout, fmt=check_format(fmt))


@app.command("dashboard")
@friendly_errors
def dashboard(
    host: Annotated[str, typer.Option(help="Broker host (the cloud's broker sees the whole fleet).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Broker port.")] = 1883,
    fleet: Annotated[str, typer.Option(help="Fleet name.")] = "demo",
    listen: Annotated[str, typer.Option(help="Serve the page here (loopback only: the page has no login).")] = (
        "127.0.0.1:8765"),
    metrics: Annotated[list[str] | None, typer.Option(help="NODE=URL of a tier's /metrics, for bytes per link "
                                                            "(repeatable).")] = None,
    run_for: Annotated[float, typer.Option(help="Stop after this many seconds (0: until Ctrl-C or SIGTERM).")] = 0.0,
    log_level: LogLevelOpt = "info",
) -> None:
    """Serve a live page of the fleet: nodes online, round timeline, accuracy and bytes per link per round."""
    setup_logging(log_level)
    from hffm_cli.commands.watch import run_dashboard

    run_dashboard(host=host, port=port, fleet=fleet, listen=listen, metrics=metrics or [], run_for=run_for)


@job_app.command("status")
@friendly_errors
def job_status(
    host: Annotated[str | None, typer.Option(help="Broker host (the cloud's broker sees the whole fleet; default "
                                                  "127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Broker port (default 1883).")] = None,
    fleet: Annotated[str | None, typer.Option(help="Fleet name (default demo).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to collect the retained messages.")] = 2.0,
    watch: Annotated[bool, typer.Option(help="Keep printing (Ctrl-C ends it); the ETA needs two rounds seen.")] = False,
    interval: Annotated[float, typer.Option(min=0.2, help="With --watch: seconds between prints.")] = 5.0,
    count: Annotated[int, typer.Option(min=0, help="With --watch: stop after this many prints (0: never).")] = 0,
    fmt: FormatOpt = "text",
    config: NodeConfigOpt = None,
    tls_ca: TlsCaOpt = None,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
) -> None:
    """The running job: global round, progress, devices online, last accuracy per task, ETA."""
    from hffm_cli.commands.watch import job_status as run
    from hffm_cli.fleet_status import broker_target

    target = broker_target(config=config, host=host, port=port, fleet=fleet, tls_ca=tls_ca, tls_cert=tls_cert,
                           tls_key=tls_key)
    run(target.host, target.port, target.fleet, timeout_s=timeout, watch=watch, interval_s=interval, count=count,
        fmt=check_format(fmt), tls=target.tls)


@fog_app.command("run")
@friendly_errors
def fog_run(config: ConfigOpt, time_limit: TimeLimitOpt = 24 * 3600.0, log_level: LogLevelOpt = "info") -> None:
    """Run a fog gateway: aggregate its devices' deltas per module, send aggregates to the cloud."""
    setup_logging(log_level)
    from fog_gateway.service import run_fog

    run_fog(config, time_limit_s=time_limit)


@cloud_app.command("run")
@friendly_errors
def cloud_run(config: ConfigOpt, time_limit: TimeLimitOpt = 24 * 3600.0, log_level: LogLevelOpt = "info") -> None:
    """Run the cloud service: merge fog aggregates, publish global modules, evaluate."""
    setup_logging(log_level)
    from cloud.service import run_cloud

    run_cloud(config, time_limit_s=time_limit)


@app.command("demo")
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
    time_limit: TimeLimitOpt = 1800.0,
    log_level: LogLevelOpt = "warning",
) -> None:
    """Run the main job: cloud, fogs and devices as real processes over real Mosquitto brokers on M3T-Bench."""
    setup_logging(log_level)
    from hffm_lab.demo import DemoOptions, run_demo
    from hffm_lab.demo.layout import LAYOUTS

    if layout not in LAYOUTS:
        raise ConfigError(f"--layout must be one of {list(LAYOUTS)}, got {layout!r}")
    run_demo(DemoOptions(fogs=fogs, devices_per_fog=devices_per_fog, rounds=rounds, local_epochs=local_epochs,
                         agg_every=agg_every, backbone=backbone, seed=seed, alpha=alpha, report=report,
                         run_dir=run_dir, time_limit_s=time_limit, secure=secure, layout=layout, topology=topology))


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
    log_level: LogLevelOpt = "warning",
) -> None:
    """Run the demo's federated job once per codec setting; compare uplink bytes, accuracy and codec speed."""
    setup_logging(log_level)
    from hffm_lab.bench.compression import run_compression_bench, select_settings

    run_compression_bench(rounds=rounds, seed=seed, report=report, run_root=run_root.resolve(), backbone=backbone,
                          settings=select_settings(only), seeds=seeds)


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


def main() -> None:
    app()


if __name__ == "__main__":
    main()

"""``hffm edge|fog|cloud|config``: run a tier from its config, the device's status, ONNX export and inference, and
the config check. The work lives in the tiers and in :mod:`hffm_cli.commands.ops`; this module only wires options."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from hffm_cli.commands.common import (
    ConfigOpt,
    FormatOpt,
    LogLevelOpt,
    TimeLimitOpt,
    check_format,
    friendly_errors,
    setup_logging,
)
from hffm_core.errors import ConfigError

edge_app = typer.Typer(help="The device agent.", no_args_is_help=True)
fog_app = typer.Typer(help="The fog gateway.", no_args_is_help=True)
cloud_app = typer.Typer(help="The cloud service.", no_args_is_help=True)
config_app = typer.Typer(help="Config files.", no_args_is_help=True)


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
    model: Annotated[str | None, typer.Option("--model", help="personal: the personal modules ([personalization]); "
                                                              "global: the fleet's versions (= --source fleet).")
                     ] = None,
    fmt: FormatOpt = "text",
) -> None:
    """Merge the device's LoRA into the backbone and export encoder + backbone + head of TASK to ONNX."""
    setup_logging("warning")
    from hffm_cli.commands.ops import edge_export as run

    if model not in (None, "personal", "global"):
        raise ConfigError(f"--model must be 'personal' or 'global', got {model!r}")
    source = {"personal": "personal", "global": "fleet"}.get(model or "", source)
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

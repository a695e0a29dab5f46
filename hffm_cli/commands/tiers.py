"""``hffm edge|fog|cloud|config``: run a tier from its config, the device's status, ONNX export and inference, and
the config check. The work lives in the tiers and in :mod:`hffm_cli.commands.ops`; this module only wires options."""

from __future__ import annotations

import json
from collections.abc import Callable
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


def _run_command(app: typer.Typer, load: Callable[[], Callable[..., None]]) -> None:
    """Add ``run`` to ``app``: set up logging, then run the tier from its config (``-c``) until ``--time-limit``.
    ``load`` imports the tier's entry point (late: a fog gateway installs without torch); its docstring is the
    command's help."""

    @app.command("run", help=load.__doc__)
    @friendly_errors
    def run(config: ConfigOpt, time_limit: TimeLimitOpt = 24 * 3600.0, log_level: LogLevelOpt = "info") -> None:
        setup_logging(log_level)
        load()(config, time_limit_s=time_limit)


def _edge() -> Callable[..., None]:
    """Run the device agent: train held modules each round, publish deltas to the fog."""
    from edge_runtime.agent import run_edge

    return run_edge


def _fog() -> Callable[..., None]:
    """Run a fog gateway: aggregate its devices' deltas per module, send aggregates to the cloud."""
    from fog_gateway.service import run_fog

    return run_fog


def _cloud() -> Callable[..., None]:
    """Run the cloud service: merge fog aggregates, publish global modules, evaluate."""
    from cloud.service import run_cloud

    return run_cloud


_run_command(edge_app, _edge)
_run_command(fog_app, _fog)
_run_command(cloud_app, _cloud)


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

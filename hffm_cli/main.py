"""The ``hffm`` command line. The app only wires commands; each command's work lives in its own module.

Every :class:`HffmError` ends the command with one line on stderr and the error's exit code (see
``hffm --help`` and docs/architecture.md for the table). An ``OSError`` becomes a :class:`StorageError` line (disk
full, read-only); anything else is a bug: its traceback is logged, then one ``internal error`` line, exit 12.
"""

from __future__ import annotations

import typer

from hffm_cli.commands.broker import broker_app
from hffm_cli.commands.certs import certs_app
from hffm_cli.commands.fleet import dashboard, fleet_app, job_app
from hffm_cli.commands.lab import bench_app, demo
from hffm_cli.commands.scale import bench_scale, sim
from hffm_cli.commands.tiers import cloud_app, config_app, edge_app, fog_app
from hffm_core.errors import ALL_ERRORS

EXIT_CODES_HELP = "Exit codes: 0 ok; " + "; ".join(f"{e.exit_code} {e.help}" for e in ALL_ERRORS)
app = typer.Typer(help=f"hffm: hierarchical federated fine-tuning over MQTT. {EXIT_CODES_HELP}.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(edge_app, name="edge")
app.add_typer(fog_app, name="fog")
app.add_typer(cloud_app, name="cloud")
app.add_typer(bench_app, name="bench")
app.add_typer(config_app, name="config")
app.add_typer(fleet_app, name="fleet")
app.add_typer(job_app, name="job")
app.add_typer(certs_app, name="certs")
app.add_typer(broker_app, name="broker")
app.command("dashboard")(dashboard)
app.command("demo")(demo)
app.command("sim")(sim)
bench_app.command("scale")(bench_scale)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

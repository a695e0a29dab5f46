"""``hffm fleet status``, ``hffm job status`` and ``hffm dashboard``: the fleet and its job as the brokers see them
(:mod:`hffm_cli.fleet_status`, :mod:`hffm_cli.commands.watch`); this module only wires options.

The two status commands take the same options (a broker, once or ``--watch``-ed); :func:`_status_command` declares
them once, with each command's defaults and help, and hands the resolved broker and the options to its ``show``.
"""

# No ``from __future__ import annotations``: typer reads the options' help and defaults from annotations that
# :func:`_status_command` builds from its arguments, so they must be evaluated where they are written.

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import typer

from hffm_cli.commands.common import (
    FormatOpt,
    LogLevelOpt,
    NodeConfigOpt,
    TlsCaOpt,
    TlsCertOpt,
    TlsKeyOpt,
    check_format,
    friendly_errors,
    setup_logging,
)

if TYPE_CHECKING:
    from hffm_cli.fleet_status import BrokerTarget

fleet_app = typer.Typer(help="The fleet as its brokers see it.", no_args_is_help=True)
job_app = typer.Typer(help="The running job, as the cloud's broker sees it.", no_args_is_help=True)


@dataclass(frozen=True, slots=True)
class _Shown:
    """How a status command shows: once (collecting for ``timeout_s``) or every ``interval_s`` with ``watch``."""

    timeout_s: float
    watch: bool
    interval_s: float
    count: int
    fmt: str


def _status_command(show: Callable[["BrokerTarget", _Shown], None], *, host_help: str, timeout_s: float,
                    timeout_help: str, watch_help: str, interval_s: float, shown: str) -> Callable[..., None]:
    """A status command: a broker (``--host``/``--port``/``--fleet``, or ``-c`` and ``--tls-*``), then ``show``.
    ``shown`` names what ``--watch`` repeats ("refreshes", "prints"); the command's help is ``show``'s docstring."""

    @friendly_errors
    def command(
        host: Annotated[str | None, typer.Option(help=host_help)] = None,
        port: Annotated[int | None, typer.Option(help="Broker port (default 1883).")] = None,
        fleet: Annotated[str | None, typer.Option(help="Fleet name (default demo).")] = None,
        timeout: Annotated[float, typer.Option(help=timeout_help)] = timeout_s,
        watch: Annotated[bool, typer.Option(help=watch_help)] = False,
        interval: Annotated[float, typer.Option(min=0.2, help=f"With --watch: seconds between {shown}.")] = interval_s,
        count: Annotated[int, typer.Option(min=0, help=f"With --watch: stop after this many {shown} (0: never).")] = 0,
        fmt: FormatOpt = "text",
        config: NodeConfigOpt = None,
        tls_ca: TlsCaOpt = None,
        tls_cert: TlsCertOpt = None,
        tls_key: TlsKeyOpt = None,
    ) -> None:
        from hffm_cli.fleet_status import broker_target

        target = broker_target(config=config, host=host, port=port, fleet=fleet, tls_ca=tls_ca, tls_cert=tls_cert,
                               tls_key=tls_key)
        show(target, _Shown(timeout_s=timeout, watch=watch, interval_s=interval, count=count, fmt=check_format(fmt)))

    command.__doc__ = show.__doc__
    return command


def _show_fleet(target: "BrokerTarget", shown: _Shown) -> None:
    """Which nodes are online, what they hold, when they were last seen (retained state adverts)."""
    if shown.watch:
        from hffm_cli.commands.watch import watch_fleet

        watch_fleet(target.host, target.port, target.fleet, interval_s=shown.interval_s, count=shown.count,
                    fmt=shown.fmt, tls=target.tls)
        return
    from hffm_cli.fleet_status import show_fleet

    show_fleet(target, timeout_s=shown.timeout_s, fmt=shown.fmt)


def _show_job(target: "BrokerTarget", shown: _Shown) -> None:
    """The running job: global round, progress, devices online, last accuracy per task, ETA."""
    from hffm_cli.commands.watch import job_status

    job_status(target.host, target.port, target.fleet, timeout_s=shown.timeout_s, watch=shown.watch,
               interval_s=shown.interval_s, count=shown.count, fmt=shown.fmt, tls=target.tls)


fleet_status = fleet_app.command("status")(_status_command(
    _show_fleet, host_help="Broker host (a fog's or the cloud's; default 127.0.0.1).", timeout_s=3.0,
    timeout_help="Seconds to collect retained adverts.", watch_help="Keep the table live (Ctrl-C ends it).",
    interval_s=2.0, shown="refreshes"))
job_status = job_app.command("status")(_status_command(
    _show_job, host_help="Broker host (the cloud's broker sees the whole fleet; default 127.0.0.1).", timeout_s=2.0,
    timeout_help="Seconds to collect the retained messages.",
    watch_help="Keep printing (Ctrl-C ends it); the ETA needs two rounds seen.", interval_s=5.0, shown="prints"))


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

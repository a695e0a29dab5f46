"""``hffm fleet status``, ``hffm job status`` and ``hffm dashboard``: the fleet and its job as the brokers see them
(:mod:`hffm_cli.fleet_status`, :mod:`hffm_cli.commands.watch`); this module only wires options."""

from __future__ import annotations

from typing import Annotated

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

fleet_app = typer.Typer(help="The fleet as its brokers see it.", no_args_is_help=True)
job_app = typer.Typer(help="The running job, as the cloud's broker sees it.", no_args_is_help=True)


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

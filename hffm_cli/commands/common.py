"""What every ``hffm`` command shares: the common options, ``--format`` and ``--log-level`` handling, and the
decorator that turns our errors into one line on stderr and an exit code (see :mod:`hffm_cli.main`)."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from hffm_core.errors import HffmError, InternalError, storage_error

F = TypeVar("F", bound=Callable[..., Any])

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


# A bad option or argument (typer.BadParameter and the other usage errors) is typer's to print, with exit 2: the
# base class of those, whether typer raises click's own exceptions or those of the click it carries (typer >= 0.16).
_UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")

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
        except (typer.Exit, typer.Abort, SystemExit, _UsageError):  # a bad option (typer.BadParameter): exit 2
            raise
        except Exception as exc:  # a bug: the traceback goes to the log, the operator gets one line and a code
            logging.getLogger("hffm").error("internal error", exc_info=exc)
            typer.echo(f"hffm: error: internal error: {type(exc).__name__}: {exc} (a bug; the traceback is "
                       f"above)", err=True)
            raise typer.Exit(InternalError.exit_code) from None

    return wrapper  # type: ignore[return-value]


# Operator commands on a secured broker: mutual TLS from these options or from a node config's [tls] (-c).
NodeConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="A device, fog or cloud config: its "
                                                    "\\[broker], fleet and \\[tls] are the defaults.")]
TlsCaOpt = Annotated[Path | None, typer.Option("--tls-ca", help="The fleet CA (PEM) the broker's certificate must "
                                               "chain to.")]
TlsCertOpt = Annotated[Path | None, typer.Option("--tls-cert", help="Client certificate (PEM) of an identity the "
                                                 "broker lets read state/# (a fog on its broker, the cloud).")]
TlsKeyOpt = Annotated[Path | None, typer.Option("--tls-key", help="Its private key (PEM).")]

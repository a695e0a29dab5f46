"""``hffm certs``: the fleet's certificate authority (init, issue, revoke, list). The work is in
:mod:`broker_config.pki`; this module only parses options and prints.

An :class:`HffmError` ends a command with one line on stderr and its exit code, as everywhere in ``hffm``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from hffm_cli.commands.common import friendly_errors
from hffm_core.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])

certs_app = typer.Typer(help="The fleet's certificate authority: mutual-TLS identities for brokers and nodes.",
                        no_args_is_help=True)

PkiOpt = Annotated[Path, typer.Option("--pki", help="The PKI folder (ca.pem, crl.pem, issued/, index.json).")]
FormatOpt = Annotated[str, typer.Option("--format", help="Output format: text or json.")]


friendly = friendly_errors  # the CLI's error contract: one line, the error's exit code (commands/common.py)


@certs_app.command("init")
@friendly
def certs_init(
    pki: PkiOpt = Path("pki"),
    days: Annotated[int, typer.Option(min=1, max=36500, help="CA validity in days.")] = 3650,
    name: Annotated[str, typer.Option(help="The CA's common name.")] = "hffm fleet CA",
) -> None:
    """Create a CA (ca.pem, ca.key with mode 0600), an empty CRL and an empty index in PKI."""
    from broker_config.pki import init_ca

    created = init_ca(pki, name=name, days=days)
    typer.echo(f"created CA {name!r} in {created.root} (ca.pem, ca.key, crl.pem), valid {days} days")


@certs_app.command("issue")
@friendly
def certs_issue(
    node_id: Annotated[str, typer.Argument(metavar="ID", help="Node id = certificate CN = broker user name.")],
    role: Annotated[str, typer.Option(help="device, fog, cloud, bridge (id bridge-<fog>) or broker "
                                           "(id broker-<name>).")],
    pki: PkiOpt = Path("pki"),
    days: Annotated[int, typer.Option(min=1, max=36500, help="Validity in days.")] = 365,
    host: Annotated[list[str] | None, typer.Option(help="Subject alternative name (IP or DNS), repeatable; "
                                                         "brokers default to 127.0.0.1 and localhost.")] = None,
    fmt: FormatOpt = "text",
) -> None:
    """Issue a certificate and a key (mode 0600) for ID, signed by the CA in PKI."""
    from broker_config.pki import Pki, issue

    record = issue(pki, node_id, role, days=days, hosts=host or ())
    paths = Pki(pki)
    if _format(fmt) == "json":
        typer.echo(json.dumps({**record.as_row(), "cert": str(paths.cert(node_id)), "key": str(paths.key(node_id))}))
        return
    typer.echo(f"issued {role} certificate {node_id!r} (serial {record.serial}, valid until {record.not_after}): "
               f"{paths.cert(node_id)}, {paths.key(node_id)}")


@certs_app.command("revoke")
@friendly
def certs_revoke(
    node_id: Annotated[str, typer.Argument(metavar="ID", help="The node id whose current certificate to revoke.")],
    pki: PkiOpt = Path("pki"),
    crl_days: Annotated[int, typer.Option(min=1, max=36500, help="Days until the new CRL's next update.")] = 365,
) -> None:
    """Revoke ID's certificate and rewrite crl.pem; restart the brokers (they read the CRL at start)."""
    from broker_config.pki import Pki, revoke

    record = revoke(pki, node_id, crl_days=crl_days)
    typer.echo(f"revoked {node_id!r} (serial {record.serial}); rewrote {Pki(pki).crl}: copy it to the brokers and "
               "restart them")


@certs_app.command("signing-key")
@friendly
def certs_signing_key(
    node_id: Annotated[str, typer.Argument(metavar="ID", help="The node id the key signs for.")],
    keys: Annotated[Path, typer.Option("--keys", help="Folder for ID.key (0600) and ID.pub.")] = Path("keys"),
) -> None:
    """Create ID's Ed25519 signing key for signed envelopes; enrol ID.pub on the nodes that read ID's messages."""
    from hffm_core.protocol.topics import check_segment
    from hffm_core.security.signing import generate_signing_key

    try:
        check_segment(node_id, "node id")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    pub = generate_signing_key(keys / f"{node_id}.key")
    typer.echo(f"wrote {keys / (node_id + '.key')} (0600) and {pub}: copy {pub.name} into each reader's enrolled "
               "folder")


@certs_app.command("list")
@friendly
def certs_list(pki: PkiOpt = Path("pki"), fmt: FormatOpt = "text") -> None:
    """Every certificate the CA issued: id, role, serial, expiry, revocation."""
    from broker_config.pki import list_certs

    rows = [record.as_row() for record in list_certs(pki)]
    if _format(fmt) == "json":
        typer.echo(json.dumps({"pki": str(pki), "certs": rows}, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"certificates in {pki}")
    for column in ("id", "role", "serial", "not_after", "revoked"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(row["id"], row["role"], row["serial"], row["not_after"],
                      row["revoked_at"] or "no")
    Console().print(table)


def _format(fmt: str) -> str:
    if fmt not in ("text", "json"):
        raise typer.BadParameter(f"unknown format {fmt!r}; expected 'text' or 'json'", param_hint="--format")
    return fmt

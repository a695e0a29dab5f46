"""``hffm broker render|run|check``: a fog's or the cloud's own Mosquitto broker (or a D2D group's, on its hub
device), from that node's config.

The model (the ``[mosquitto]`` table, the fleet, TLS and the generated ACL) is :mod:`broker_config.node`; the
text comes from ``broker_config/`` through :func:`broker_config.process.render_config`, as for the test harness
and the Ansible roles. This module parses options, prints, checks and starts mosquitto.

An :class:`HffmError` ends a command with one line on stderr and its exit code (a bad config: 2).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import ssl
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from hffm_cli.commands.certs import friendly
from hffm_core.errors import BrokerError, ConfigError

if TYPE_CHECKING:
    from broker_config.node import BrokerNode

broker_app = typer.Typer(help="A fog's, the cloud's or a D2D group hub's own Mosquitto broker, rendered from the "
                              "node's config (its mosquitto table) and the fleet's topology: mutual TLS, CRL and "
                              "generated ACL unless insecure.", no_args_is_help=True)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="The fog's, the cloud's or a D2D hub device's TOML "
                                                                "config (its mosquitto table, see examples/).")]
TopologyOpt = Annotated[Path | None, typer.Option(help="The fleet's topology TOML (overrides the mosquitto table's "
                                                       "topology); the cloud's ACL needs it.")]
OutOpt = Annotated[Path | None, typer.Option("--out", help="Where to write mosquitto.conf (default: "
                                                           "<data_dir>/mosquitto.conf).")]
InsecureOpt = Annotated[bool, typer.Option("--allow-insecure", help="Accept insecure = true on a listener that is "
                                                                    "not loopback (warned about on every start).")]
FormatOpt = Annotated[str, typer.Option("--format", help="Output format: text or json.")]
_ERROR_LINE = re.compile(r"(Error[^\n]*)")


@broker_app.command("render")
@friendly
def broker_render(config: ConfigOpt, topology: TopologyOpt = None, out: OutOpt = None,
                  allow_insecure: InsecureOpt = False, fmt: FormatOpt = "text") -> None:
    """Write mosquitto.conf and the files it names (TLS copies, dynsec.json) into the data dir; a file is
    rewritten only when it differs, and the output says which changed."""
    from broker_config.install import install_rendered

    node = load_broker_node(config, topology=topology, allow_insecure=allow_insecure)
    _warn(node)
    result = install_rendered(node, out)
    if _format(fmt) == "json":
        typer.echo(json.dumps({"conf": str(result.conf), "data_dir": str(node.data_dir), "role": node.role,
                               "listener": f"{node.listen_host}:{node.port}", "tls": node.tls is not None,
                               "changed": result.changed}))
        return
    state = f"{len(result.changed)} file(s) changed" if result.changed else "unchanged"
    typer.echo(f"rendered the {node.role} broker {node.name!r} ({_security(node)}, listener {node.listen_host}:"
               f"{node.port}): {result.conf}, {state}")


@broker_app.command("check")
@friendly
def broker_check(config: ConfigOpt, topology: TopologyOpt = None, allow_insecure: InsecureOpt = False,
                 start: Annotated[bool, typer.Option(help="Also start the rendered config once on a free loopback "
                                                          "port (no bridge leaves the machine).")] = True) -> None:
    """Validate: the mosquitto table, the TLS files (certificate and key match, signed by the CA, valid now,
    CRL current), and a test start of mosquitto on loopback. Exit 0 valid, 2 invalid with one line."""

    node = load_broker_node(config, topology=topology, allow_insecure=allow_insecure)
    _warn(node)
    if node.tls is not None:
        _check_tls_files(node)
    if start:
        _test_start(node)
    typer.echo(f"ok: the {node.role} broker {node.name!r} of {config} ({_security(node)}, listener "
               f"{node.listen_host}:{node.port})" + (", started on loopback" if start else ""))


@broker_app.command("run")
@friendly
def broker_run(config: ConfigOpt, topology: TopologyOpt = None, out: OutOpt = None,
               allow_insecure: InsecureOpt = False) -> None:
    """Render (as render does), then replace this process with mosquitto on the rendered config (foreground; a
    service manager such as systemd supervises it and signals only it)."""
    from broker_config.install import install_rendered
    from broker_config.process import find_mosquitto

    node = load_broker_node(config, topology=topology, allow_insecure=allow_insecure)
    _warn(node)
    result = install_rendered(node, out)
    exe = find_mosquitto()
    typer.echo(f"hffm: starting {exe} -c {result.conf} ({_security(node)})", err=True)
    os.execv(exe, [exe, "-c", str(result.conf)])


def _security(node: BrokerNode) -> str:
    return "mutual TLS, CRL, generated ACL" if node.tls is not None else "INSECURE: anonymous MQTT"


def _warn(node: BrokerNode) -> None:
    if node.exposed_insecure:
        typer.echo(f"hffm: warning: the broker of {node.source} listens on "
                   f"{node.listen_host}:{node.port} with insecure = true: plain MQTT, "
                   "anonymous clients may read and publish every topic (allowed by --allow-insecure)", err=True)


def _check_tls_files(node: BrokerNode) -> None:
    """The listener's, the bridge's and the peer bridges' certificates: each matches its key, is signed by the CA and
    valid now; the CRL is signed by the CA and current.

    Raises:
        ConfigError: naming the file and the problem.
    """
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature

    tls = node.tls
    where = f"{node.source}: [mosquitto]"
    try:
        ca = x509.load_pem_x509_certificate(Path(tls.ca).read_bytes())
        crl = x509.load_pem_x509_crl(Path(tls.crl).read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{where}: cannot load the CA {str(tls.ca)!r} or the CRL {str(tls.crl)!r}: {exc}") from None
    now = dt.datetime.now(dt.timezone.utc)
    if not crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
        raise ConfigError(f"{where}: the CRL {str(tls.crl)!r} is not signed by the CA {str(tls.ca)!r}")
    next_update = crl.next_update_utc
    if next_update is not None and next_update < now:
        raise ConfigError(f"{where}: the CRL {str(tls.crl)!r} expired on {next_update.isoformat()} (mosquitto then "
                          "refuses every client): re-sign it with hffm certs revoke or write_crl")
    pairs = [("cert", tls.cert, tls.key)]
    bridge = node.bridge
    if bridge is not None and bridge.tls is not None:
        pairs.append(("bridge_cert", bridge.tls.cert, bridge.tls.key))
    peer = next((p.tls for p in node.peer_bridges if p.tls is not None), None)  # one identity for all of them
    if peer is not None:
        pairs.append(("peer_bridge_cert", peer.cert, peer.key))
    for key, cert_path, key_path in pairs:
        try:
            ssl.create_default_context().load_cert_chain(str(cert_path), str(key_path))
            cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
        except (OSError, ValueError, ssl.SSLError) as exc:
            raise ConfigError(f"{where}: {key}: {str(cert_path)!r} with key {str(key_path)!r}: {exc}") from None
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise ConfigError(f"{where}: {key}: {str(cert_path)!r} is not signed by the CA {str(tls.ca)!r} "
                              f"({type(exc).__name__})") from None
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise ConfigError(f"{where}: {key}: {str(cert_path)!r} is valid only from "
                              f"{cert.not_valid_before_utc.isoformat()} to {cert.not_valid_after_utc.isoformat()}")


def _test_start(node: BrokerNode) -> None:
    """Start the rendered config once in a scratch data dir on a free loopback port, with every bridge pointed at
    a closed loopback port (nothing connects out, and the real bridge's session on the cloud is left alone).

    Raises:
        ConfigError: mosquitto refused the config (its first error line is quoted).
    """
    import dataclasses

    from broker_config.broker_tls import BrokerTls
    from broker_config.process import MosquittoProcess, free_port
    from broker_config.render import BridgeSpec

    scratch = Path(tempfile.mkdtemp(prefix="hffm-broker-check-"))
    scratch.chmod(0o711)  # mosquitto, started as root, drops to its own user, which must reach the data dir
    try:
        tls = node.tls
        if tls is not None:
            acl = scratch / "acl-source.json"
            acl.write_text(node.acl_json or "", encoding="utf-8")
            tls = BrokerTls(ca=tls.ca, cert=tls.cert, key=tls.key, crl=tls.crl, acl=acl, probe=tls.probe)
        bridge = node.bridge
        if bridge is not None:
            bridge = BridgeSpec(fleet=bridge.fleet, fog=bridge.fog, cloud_host="127.0.0.1", cloud_port=free_port(),
                                tls=bridge.tls)
        peers = [dataclasses.replace(p, host="127.0.0.1", port=free_port()) for p in node.peer_bridges]
        proc = MosquittoProcess(name=f"check-{node.name}", role=node.role,
                                data_dir=scratch / "data", bridge=bridge, fleet=node.fleet, tls=tls,
                                limits=node.limits, peer_bridges=peers)
        try:
            proc.start(timeout=15.0)
        except BrokerError as exc:
            found = _ERROR_LINE.search(str(exc))
            detail = found.group(1) if found else str(exc).splitlines()[0]
            raise ConfigError(f"{node.source}: mosquitto refused the rendered config: {detail}") from None
        finally:
            proc.stop()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _format(fmt: str) -> str:
    if fmt not in ("text", "json"):
        raise typer.BadParameter(f"unknown format {fmt!r}; expected 'text' or 'json'", param_hint="--format")
    return fmt


def load_broker_node(config: Path, *, topology: Path | None = None, allow_insecure: bool = False) -> BrokerNode:
    """Read a fog, cloud or hub device config and its ``[mosquitto]`` table into a ``broker_config.node.BrokerNode``.

    Raises:
        ConfigError: not a fog, cloud or device config, or what :func:`broker_config.node.broker_node_from` raises.
    """
    from broker_config.node import broker_node_from
    from cloud.config import CloudConfig
    from fog_gateway.config import FogConfig
    from hffm_core.config import load_config, read_toml

    raw = read_toml(config)
    if "fog" in raw:
        cfg: Any = load_config(config, FogConfig)
        role, name, fleet = "fog", cfg.fog.id, cfg.fog.fleet
    elif "cloud" in raw:
        cfg = load_config(config, CloudConfig)
        role, name, fleet = "cloud", "cloud", cfg.cloud.fleet
    elif "device" in raw:  # the hub of a D2D group runs the group's broker
        from broker_config.acl import d2d_broker_name
        from edge_runtime.config import DeviceConfig

        cfg = load_config(config, DeviceConfig)
        role, name, fleet = "d2d", d2d_broker_name(cfg.device.id), cfg.device.fleet
    else:
        raise ConfigError(f"{config}: not a fog, cloud or device config (no [fog], [cloud] or [device] table); only "
                          "fogs, the cloud and a D2D group's hub device run an hffm broker")
    return broker_node_from(cfg, role=role, name=name, fleet=fleet, config=config, topology=topology,
                            allow_insecure=allow_insecure)

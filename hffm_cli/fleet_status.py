"""``hffm fleet status``: what the retained ``state/{node}`` adverts on a broker say about the fleet.

Every node publishes its advert retained (devices also on a timer, with telemetry) and leaves a last-will advert
with ``online = false``, so a fresh subscriber learns who is online, what each holds and when it was last seen.

Operator commands (``fleet status``, ``job status``) reach a secured broker with mutual TLS: ``--tls-ca/--tls-cert/
--tls-key``, or the ``[tls]`` of a node config given with ``-c`` (:func:`broker_target`), whose ``[broker]`` and
fleet are the defaults too. The identity must be one the broker's ACL lets read ``state/#``: a fog gateway on its
fog's broker, the cloud on the cloud broker (broker_config/acl.py).
"""

from __future__ import annotations

import json
import os
import queue
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from hffm_core.errors import ConfigError, DecodeError
from hffm_core.protocol import NodeState, decode, topics
from hffm_core.security.signing import unwrap_unverified
from hffm_core.security.tls import TlsSettings
from hffm_core.transport import MqttTransport

DEFAULT_HOST, DEFAULT_PORT, DEFAULT_FLEET = "127.0.0.1", 1883, "demo"


@dataclass(frozen=True, slots=True)
class BrokerTarget:
    """Where an operator command connects, and as whom (None: plain MQTT)."""

    host: str
    port: int
    fleet: str
    tls: TlsSettings | None


def broker_target(*, config: Path | None, host: str | None, port: int | None, fleet: str | None,
                  tls_ca: Path | None, tls_cert: Path | None, tls_key: Path | None) -> BrokerTarget:
    """Resolve an operator command's broker: explicit options first, then the node config's ``[broker]``, fleet and
    ``[tls]`` (a device, fog or cloud config), then 127.0.0.1:1883, fleet ``demo``, plain MQTT.

    Raises:
        ConfigError: only some of the three TLS files given, a file missing, or an unreadable or invalid config.
    """
    given = {"--tls-ca": tls_ca, "--tls-cert": tls_cert, "--tls-key": tls_key}
    if any(given.values()) and not all(given.values()):
        raise ConfigError(f"give all of --tls-ca, --tls-cert and --tls-key, or none (missing: "
                          f"{[k for k, v in given.items() if v is None]})")
    base: dict[str, Any] = {"host": DEFAULT_HOST, "port": DEFAULT_PORT, "fleet": DEFAULT_FLEET, "tls": None}
    if config is not None:
        base = _from_config(config)
    tls = base["tls"]
    if tls_ca is not None and tls_cert is not None and tls_key is not None:
        for flag, path in given.items():
            if not Path(path).is_file():  # type: ignore[arg-type]
                raise ConfigError(f"{flag}: file {str(path)!r} does not exist")
        tls = TlsSettings(ca=tls_ca, cert=tls_cert, key=tls_key)
    return BrokerTarget(host=host or base["host"], port=port or base["port"], fleet=fleet or base["fleet"], tls=tls)


def _from_config(path: Path) -> dict[str, Any]:
    from cloud.config import CloudConfig
    from edge_runtime.config import DeviceConfig
    from fog_gateway.config import FogConfig
    from hffm_core.config import load_config, read_toml
    from hffm_core.security.tls import parse_tls

    raw = read_toml(path)
    kinds = {"device": DeviceConfig, "fog": FogConfig, "cloud": CloudConfig}
    kind = next((k for k in kinds if k in raw), None)
    if kind is None:
        raise ConfigError(f"{path}: not a device, fog or cloud config (no [device], [fog] or [cloud] table)")
    cfg: Any = load_config(path, kinds[kind])
    problems: list[str] = []
    tls = parse_tls(cfg.tls or None, f"{path}: tls", problems, base_dir=cfg.base_dir)
    if problems:
        raise ConfigError("\n".join(problems))
    return {"host": cfg.broker.host, "port": cfg.broker.port, "fleet": getattr(cfg, kind).fleet, "tls": tls}


def show_fleet(target: BrokerTarget, *, timeout_s: float, fmt: str) -> None:
    """``hffm fleet status``: print the fleet's adverts as a table or JSON.

    Raises:
        TransportError: the broker cannot be reached or refused the subscription.
    """
    rows = fleet_rows(read_fleet(target.host, target.port, target.fleet, timeout_s=timeout_s, tls=target.tls))
    if fmt == "json":
        print(json.dumps({"fleet": target.fleet, "broker": f"{target.host}:{target.port}", "nodes": rows}, indent=1))
    else:
        print_fleet(rows, Console())


def read_advert(payload: bytes) -> NodeState | None:
    """The advert in a ``state/{node}`` payload, or None when it does not decode. A signed fleet seals its adverts;
    status only displays them, so the envelope is opened unchecked."""
    try:
        return decode(unwrap_unverified(payload), NodeState)
    except DecodeError:
        return None


def read_fleet(host: str, port: int, fleet: str, *, timeout_s: float = 3.0, quiet_s: float = 0.5,
               tls: TlsSettings | None = None) -> list[NodeState]:
    """Collect the retained adverts of ``fleet`` (bounded: at most ``timeout_s``; ends early ``quiet_s`` after the
    last advert arrived). Undecodable adverts are skipped.

    Raises:
        TransportError: the broker cannot be reached.
    """
    inbox: queue.Queue[bytes] = queue.Queue()
    client = MqttTransport(client_id=f"hffm-status-{os.getpid()}", host=host, port=port,
                           on_message=lambda _t, payload, _r: inbox.put(payload), timeout_s=timeout_s, tls=tls)
    client.connect()
    states: dict[str, NodeState] = {}
    try:
        client.subscribe([topics.state_filter(fleet)])
        end = time.monotonic() + timeout_s
        last = time.monotonic()
        while time.monotonic() < end and (not states or time.monotonic() - last < quiet_s):
            try:
                payload = inbox.get(timeout=0.1)
            except queue.Empty:
                continue
            state = read_advert(payload)
            if state is None:
                continue
            states[state.node] = state
            last = time.monotonic()
    finally:
        client.close()
    return [states[n] for n in sorted(states)]


def fleet_rows(states: list[NodeState], *, now: float | None = None) -> list[dict[str, Any]]:
    now = time.time() if now is None else now
    return [{
        "node": s.node, "role": s.role, "fog": s.fog, "online": s.online,
        "last_seen": s.last_seen or None, "age_s": round(now - s.last_seen, 1) if s.last_seen else None,
        "modalities": list(s.modalities), "tasks": list(s.tasks), "modules": [str(k) for k in s.modules],
        "versions": {k: list(v) for k, v in s.versions.items()}, "telemetry": dict(s.telemetry),
        "status": s.status, "backbone": s.backbone,
    } for s in states]


def print_fleet(rows: list[dict[str, Any]], console: Console) -> None:
    console.print(fleet_table(rows))


def fleet_table(rows: list[dict[str, Any]], title: str = "hffm fleet") -> Table:
    table = Table(title=title)
    for col in ("node", "role", "fog", "online", "last seen", "tasks", "modules", "cpu %", "mem free %",
                "temp C", "battery %", "status"):
        table.add_column(col)
    for r in rows:
        t = r["telemetry"]

        def fmt(name: str, t: dict[str, float] = t) -> str:
            return f"{t[name]:.0f}" if name in t else "absent"

        table.add_row(r["node"], r["role"], r["fog"], "yes" if r["online"] else "[red]no",
                      f"{r['age_s']:.0f} s ago" if r["age_s"] is not None else "-", ",".join(r["tasks"]),
                      str(len(r["modules"])), fmt("cpu_percent"), fmt("mem_free_percent"), fmt("cpu_temp_c"),
                      fmt("battery_percent"), r["status"])
    return table

"""``hffm fleet status``: what the retained ``state/{node}`` adverts on a broker say about the fleet.

Every node publishes its advert retained (devices also on a timer, with telemetry) and leaves a last-will advert
with ``online = false``, so a fresh subscriber learns who is online, what each holds and when it was last seen.
"""

from __future__ import annotations

import os
import queue
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from edge_runtime.errors import DecodeError
from edge_runtime.protocol import NodeState, decode, topics
from edge_runtime.security.signing import unwrap_unverified
from edge_runtime.transport import MqttTransport


def read_fleet(host: str, port: int, fleet: str, *, timeout_s: float = 3.0, quiet_s: float = 0.5) -> list[NodeState]:
    """Collect the retained adverts of ``fleet`` (bounded: at most ``timeout_s``; ends early ``quiet_s`` after the
    last advert arrived). Undecodable adverts are skipped.

    Raises:
        TransportError: the broker cannot be reached.
    """
    inbox: queue.Queue[bytes] = queue.Queue()
    client = MqttTransport(client_id=f"hffm-status-{os.getpid()}", host=host, port=port,
                           on_message=lambda _t, payload, _r: inbox.put(payload), timeout_s=timeout_s)
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
            try:
                # A signed fleet seals its adverts; status only displays them, so the envelope is opened unchecked.
                state = decode(unwrap_unverified(payload), NodeState)
            except DecodeError:
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

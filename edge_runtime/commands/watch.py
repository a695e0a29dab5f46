"""Live views of a running fleet: ``hffm fleet status --watch`` (a table that stays current) and ``hffm dashboard``
(the browser page). Both only subscribe; neither publishes."""

from __future__ import annotations

import json
import os
import queue
import signal
import threading
import time

from rich.console import Console
from rich.live import Live

from edge_runtime.errors import ConfigError, DecodeError
from edge_runtime.protocol import NodeState, decode, topics
from edge_runtime.security.signing import unwrap_unverified
from edge_runtime.transport import MqttTransport


def watch_fleet(host: str, port: int, fleet: str, *, interval_s: float, count: int, fmt: str) -> None:
    """Keep the fleet table current from the retained adverts and their updates; redraw every ``interval_s``
    (``count`` refreshes, 0 = until Ctrl-C). JSON: one line per refresh.

    Raises:
        TransportError: the broker cannot be reached.
    """
    from edge_runtime.fleet_status import fleet_rows, fleet_table

    inbox: queue.Queue[bytes] = queue.Queue()
    client = MqttTransport(client_id=f"hffm-watch-{os.getpid()}", host=host, port=port, timeout_s=5.0,
                           on_message=lambda _t, payload, _r: inbox.put(payload))
    client.connect()
    states: dict[str, NodeState] = {}

    def drain() -> None:
        while True:
            try:
                payload = inbox.get_nowait()
            except queue.Empty:
                return
            try:
                state = decode(unwrap_unverified(payload), NodeState)
            except DecodeError:
                continue
            states[state.node] = state

    def view() -> object:
        rows = fleet_rows([states[n] for n in sorted(states)])
        online = sum(1 for r in rows if r["online"])
        return fleet_table(rows, title=f"hffm fleet {fleet} @ {host}:{port}: {online} of {len(rows)} online "
                                       f"({time.strftime('%H:%M:%S')}, every {interval_s:g} s)")

    try:
        client.subscribe([topics.state_filter(fleet)])
        refreshes = 0
        if fmt == "json":
            while count == 0 or refreshes < count:
                time.sleep(interval_s)
                drain()
                refreshes += 1
                print(json.dumps({"fleet": fleet, "t": time.time(),
                                  "nodes": fleet_rows([states[n] for n in sorted(states)])}), flush=True)
            return
        with Live(view(), console=Console(), refresh_per_second=4, transient=False) as live:
            while count == 0 or refreshes < count:
                time.sleep(interval_s)
                drain()
                refreshes += 1
                live.update(view())
    finally:
        client.close()


def run_dashboard(*, host: str, port: int, fleet: str, listen: str, metrics: list[str], run_for: float) -> None:
    """Serve the page until Ctrl-C, SIGTERM or ``run_for`` seconds.

    Raises:
        ConfigError: a bad ``--metrics`` entry or ``--listen``. TransportError: the broker cannot be reached.
    """
    from edge_runtime.dashboard.server import Dashboard

    urls = {}
    for entry in metrics:
        node, sep, url = entry.partition("=")
        if not sep or not node or not url.startswith(("http://", "https://")):
            raise ConfigError(f"--metrics must be NODE=http://HOST:PORT/metrics, got {entry!r}")
        urls[node] = url
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    board = Dashboard(host=host, port=port, fleet=fleet, listen=listen, metrics_urls=urls)
    print(f"hffm dashboard of fleet {fleet}: {board.url}", flush=True)
    try:
        stop.wait(run_for if run_for > 0 else None)
    finally:
        board.close()

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

from hffm_core.errors import ConfigError
from hffm_core.protocol import NodeState, topics
from hffm_core.security.signing import unwrap_unverified
from hffm_core.security.tls import TlsSettings
from hffm_core.transport import MqttTransport


def watch_fleet(host: str, port: int, fleet: str, *, interval_s: float, count: int, fmt: str,
                tls: TlsSettings | None = None) -> None:
    """Keep the fleet table current from the retained adverts and their updates; redraw every ``interval_s``
    (``count`` refreshes, 0 = until Ctrl-C). JSON: one line per refresh.

    Raises:
        TransportError: the broker cannot be reached.
    """
    from hffm_cli.fleet_status import fleet_rows, fleet_table, read_advert

    inbox: queue.Queue[bytes] = queue.Queue()
    client = MqttTransport(client_id=f"hffm-watch-{os.getpid()}", host=host, port=port, timeout_s=5.0,
                           on_message=lambda _t, payload, _r: inbox.put(payload), tls=tls)
    client.connect()
    states: dict[str, NodeState] = {}

    def drain() -> None:
        while True:
            try:
                payload = inbox.get_nowait()
            except queue.Empty:
                return
            state = read_advert(payload)
            if state is not None:
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
    from cloud.dashboard.server import Dashboard

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


class _JobFeed:
    """A subscriber that feeds a FleetView with the fleet's adverts, announcements and the cloud's metrics."""

    def __init__(self, host: str, port: int, fleet: str, tls: TlsSettings | None = None) -> None:
        from cloud.dashboard.view import FleetView

        self.view = FleetView(fleet=fleet)
        self.inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.client = MqttTransport(client_id=f"hffm-job-{os.getpid()}", host=host, port=port, timeout_s=5.0,
                                    on_message=lambda t, p, _r: self.inbox.put((t, p)), tls=tls)
        self.client.connect()
        self.client.subscribe([topics.state_filter(fleet), topics.ctl_filter(fleet), topics.metrics(fleet)])

    def drain(self, wait_s: float) -> int:
        from hffm_core.errors import HffmError
        from hffm_core.protocol.routing import decode_message

        taken, end = 0, time.monotonic() + wait_s
        while True:
            try:
                topic, payload = self.inbox.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                return taken
            try:
                _parsed, msg = decode_message(topic, unwrap_unverified(payload))
            except HffmError:
                continue
            taken += 1
            self.view.on_message(msg)


def _job_text(status: dict[str, object]) -> str:
    acc = status["last_accuracy"]
    eta = status["eta_s"]
    return "\n".join([
        f"fleet {status['fleet']}  job {status['job'] or '(not announced)'}",
        ("finished" if status["finished"] else f"global round {status['global_round']} of {status['total_rounds']}")
        + f"  ({status['rounds_done']} done, {float(status['progress']):.0%})",  # type: ignore[arg-type]
        f"devices online {status['devices_online']} of {status['devices']}, fogs online {status['fogs_online']}",
        "last accuracy: " + ("none yet" if acc is None else
                             f"round {acc['round']}: mean {acc['mean']:.3f} " +  # type: ignore[index]
                             " ".join(f"{t}={v:.3f}" for t, v in sorted(acc["tasks"].items()))),  # type: ignore[index]
        "ETA: " + ("unknown (seen fewer than two rounds open; use --watch)" if eta is None else f"{eta:.0f} s"),
    ])


def job_status(host: str, port: int, fleet: str, *, timeout_s: float, watch: bool, interval_s: float,
               count: int, fmt: str, tls: TlsSettings | None = None) -> None:
    """Print the job's round, progress, participants, last accuracy and ETA; with ``watch``, keep it current.

    Raises:
        TransportError: the broker cannot be reached.
    """
    feed = _JobFeed(host, port, fleet, tls)
    try:
        feed.drain(timeout_s)
        refreshes = 0
        while True:
            status = feed.view.job_status()
            if fmt == "json":
                print(json.dumps(status), flush=True)
            else:
                Console().print(_job_text(status))
            refreshes += 1
            if not watch or (count and refreshes >= count):
                return
            feed.drain(interval_s)
    finally:
        feed.client.close()

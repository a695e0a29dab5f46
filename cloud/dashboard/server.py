"""``hffm dashboard``: a live page of one fleet, served from the fleet's own retained messages.

One MQTT subscriber (state adverts, round announcements, the cloud's metrics) feeds a :class:`FleetView`; an HTTP
server on its own thread serves the page (``static/index.html``, no CDN: it works offline), the view as JSON at
``/api/state`` (the page polls it every second) and ``/healthz``. With ``metrics_urls`` it also reads each tier's
Prometheus ``/metrics`` every few seconds for bytes sent per link, so the page can plot bytes per link per round.

Signed fleets seal their messages; the dashboard only displays them, so it opens envelopes unchecked, as
``hffm fleet status`` does. It never publishes.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import TYPE_CHECKING, Any

from cloud.dashboard.view import FleetView
from hffm_core.errors import ConfigError, HffmError
from hffm_core.observability import is_loopback, parse_listen
from hffm_core.protocol import topics
from hffm_core.protocol.routing import decode_message
from hffm_core.security.signing import unwrap_unverified
from hffm_core.transport import MqttTransport

if TYPE_CHECKING:
    from hffm_core.security.tls import TlsSettings

log = logging.getLogger(__name__)
SCRAPE_EVERY_S = 2.0


def _page() -> bytes:
    return resources.files("cloud.dashboard").joinpath("static/index.html").read_bytes()


def link_totals(text: str) -> dict[str, float]:
    """``hffm_sent_bytes_total{link="..."} N`` lines of a Prometheus text page -> {link: N}."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith('hffm_sent_bytes_total{link="'):
            link, _, value = line[len('hffm_sent_bytes_total{link="'):].partition('"} ')
            try:
                out[link] = float(value)
            except ValueError:
                continue
    return out


class Dashboard:
    """The subscriber, the view and the HTTP server of one fleet's page. :meth:`close` stops all three."""

    def __init__(self, *, host: str, port: int, fleet: str, listen: str = "127.0.0.1:0",
                 tls: TlsSettings | None = None, metrics_urls: dict[str, str] | None = None,
                 connect_timeout_s: float = 15.0) -> None:
        """Raises: ConfigError: a bad ``listen`` (or one off loopback: the page has no authentication);
        TransportError: the broker cannot be reached."""
        http_host, http_port = parse_listen(listen)
        if not is_loopback(http_host):
            raise ConfigError(f"dashboard listen {listen!r} is not loopback: the page has no authentication; "
                              "reach it through an SSH tunnel or a reverse proxy with TLS")
        self.view = FleetView(fleet=fleet)
        self.metrics_urls = dict(metrics_urls or {})
        self._inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._stop = threading.Event()
        self.transport = MqttTransport(client_id=f"hffm-dashboard-{os.getpid()}", host=host, port=port, tls=tls,
                                       on_message=lambda t, p, _r: self._inbox.put((t, p)),
                                       connect_timeout_s=connect_timeout_s)
        self.transport.connect()
        self.transport.subscribe([topics.state_filter(fleet), topics.ctl_filter(fleet), topics.metrics(fleet)])
        self._http = ThreadingHTTPServer((http_host, http_port), _handler(self))
        self.url = f"http://{http_host}:{self._http.server_address[1]}/"
        self._threads = [threading.Thread(target=self._http.serve_forever, name="dashboard-http", daemon=True),
                         threading.Thread(target=self._consume, name="dashboard-mqtt", daemon=True)]
        for thread in self._threads:
            thread.start()
        log.info("dashboard of fleet %s: %s (broker %s:%d)", fleet, self.url, host, port)

    def _consume(self) -> None:
        next_scrape = 0.0
        while not self._stop.is_set():
            try:
                topic, payload = self._inbox.get(timeout=0.2)
            except queue.Empty:
                pass
            else:
                self._apply(topic, payload)
            if self.metrics_urls and time.monotonic() >= next_scrape:
                next_scrape = time.monotonic() + SCRAPE_EVERY_S
                self._scrape()

    def _apply(self, topic: str, payload: bytes) -> None:
        try:
            _parsed, msg = decode_message(topic, unwrap_unverified(payload))
        except HffmError as exc:
            self.view.on_rejected(topic, str(exc))
            return
        self.view.on_message(msg)

    def _scrape(self) -> None:
        for node, url in self.metrics_urls.items():
            try:
                with urllib.request.urlopen(url, timeout=2.0) as response:  # noqa: S310 - a tier's own /metrics
                    self.view.on_link_totals(node, link_totals(response.read().decode()))
            except OSError as exc:
                log.debug("dashboard: cannot scrape %s (%s): %s", node, url, exc)

    def close(self) -> None:
        self._stop.set()
        self._http.shutdown()
        self._http.server_close()
        for thread in self._threads:
            thread.join(timeout=5.0)
        self.transport.close()


def _handler(dashboard: Dashboard) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            if self.path in ("/", "/index.html"):
                self._send(200, "text/html; charset=utf-8", _page())
            elif self.path == "/api/state":
                self._send(200, "application/json", json.dumps(dashboard.view.snapshot()).encode())
            elif self.path == "/healthz":
                self._send(200, "text/plain", b"ok\n")
            else:
                self._send(404, "text/plain", b"not found\n")

        def _send(self, code: int, kind: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("dashboard http: " + fmt, *args)

    return Handler

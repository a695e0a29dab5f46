"""Prometheus ``/metrics`` for every tier (``[metrics] listen``), read from the service at scrape time.

Nothing is counted twice and nothing is added to the message path: a custom collector reads what the service already
keeps (the traffic meter, the accepted/rejected counters, the inbox, the outbox) when Prometheus scrapes, so the
cost is paid by the scrape, not by the fog's ingest loop. Each tier adds its own figures (rounds, participants,
accuracy) through :meth:`hffm_core.service.Service.observe`.

Series follow Prometheus conventions: an ``hffm_`` prefix, ``_total`` for counters, ``_bytes`` and ``_seconds`` units,
and no device id as a label (the node is the scrape target; per-device detail is in the retained adverts).
The process's own RSS and CPU come from prometheus_client's ``process_*`` series.

Off loopback the endpoint is served over mutual TLS with the node's ``[tls]`` files (the scraper presents a
certificate of the fleet CA) unless ``[metrics] insecure = true`` says otherwise.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hffm_core.errors import ConfigError

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from hffm_core.security.tls import TlsSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Gauge:
    """One tier-specific figure: ``hffm_<name>`` with ``help``, one value per label set."""

    name: str
    help: str
    values: Mapping[tuple[tuple[str, str], ...], float]  # ((label, value), ...) -> value; () for no labels
    counter: bool = False  # a monotonically growing count: exposed as ``hffm_<name>_total``


@dataclass(frozen=True, slots=True, kw_only=True)
class Histogram:
    """Durations a tier logged (e.g. its rounds): ``hffm_<name>`` as a Prometheus histogram built at scrape time."""

    name: str
    help: str
    observations: tuple[float, ...]
    buckets: tuple[float, ...] = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)


@dataclass(frozen=True, slots=True, kw_only=True)
class Observation:
    """What a service reports at scrape time (:meth:`Service.observe`)."""

    role: str
    node: str
    fleet: str
    connected: bool
    accepted: Mapping[str, int]
    rejected: Mapping[str, int]
    sent: Mapping[str, tuple[int, int]]  # link category -> (bytes, messages) published
    received: Mapping[str, tuple[int, int]]  # topic kind -> (bytes, messages) delivered to this node
    inbox_depth: int
    outbox_depth: int | None = None
    extra: tuple[Gauge | Histogram, ...] = field(default_factory=tuple)


def metrics_server_tls(cfg: Any) -> TlsSettings | None:
    """The ``/metrics`` TLS files of a tier config (``[metrics] cert/key`` and ``[tls] ca``), or None.

    Raises:
        ConfigError: a cert without a key or without ``[tls] ca``.
    """
    try:
        return cfg.metrics.server_tls(cfg.tls, cfg.base_dir)  # type: ignore[no-any-return]
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:9101"`` -> ("127.0.0.1", 9101). Raises ConfigError for anything else (a name, no port)."""
    host, sep, port = listen.rpartition(":")
    try:
        ipaddress.ip_address(host.strip("[]"))
        number = int(port)
    except ValueError:
        number = -1
    if not sep or not 0 <= number < 65536:
        raise ConfigError(f"[metrics] listen must be 'IP:PORT' (e.g. '127.0.0.1:9101'), got {listen!r}")
    return host.strip("[]"), number


def is_loopback(host: str) -> bool:
    return ipaddress.ip_address(host).is_loopback


class _ServiceCollector:
    """A prometheus_client collector that asks the service for an :class:`Observation` at every scrape."""

    def __init__(self, observe: Callable[[], Observation]) -> None:
        self._observe = observe

    def collect(self) -> Iterator[object]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        try:
            obs = self._observe()
        except Exception:  # noqa: BLE001 - a scrape must never take the service down
            log.exception("metrics: observing the service failed")
            return
        info = GaugeMetricFamily("hffm_node_info", "The node behind this endpoint (value 1).",
                                 labels=["role", "node", "fleet"])
        info.add_metric([obs.role, obs.node, obs.fleet], 1)
        yield info
        yield GaugeMetricFamily("hffm_broker_connected", "1 while the MQTT connection to the broker is up.",
                                value=int(obs.connected))
        yield _counter(CounterMetricFamily, "hffm_messages_accepted", "Messages handled, by topic kind.", "kind",
                       obs.accepted)
        yield _counter(CounterMetricFamily, "hffm_messages_rejected",
                       "Messages refused (logged and counted, nothing applied), by reason.", "reason", obs.rejected)
        yield _counter(CounterMetricFamily, "hffm_sent_bytes", "Payload bytes published, by link.", "link",
                       {k: b for k, (b, _m) in obs.sent.items()})
        yield _counter(CounterMetricFamily, "hffm_sent_messages", "Messages published, by link.", "link",
                       {k: m for k, (_b, m) in obs.sent.items()})
        yield _counter(CounterMetricFamily, "hffm_received_bytes", "Payload bytes delivered, by topic kind.", "kind",
                       {k: b for k, (b, _m) in obs.received.items()})
        yield _counter(CounterMetricFamily, "hffm_received_messages", "Messages delivered, by topic kind.", "kind",
                       {k: m for k, (_b, m) in obs.received.items()})
        yield GaugeMetricFamily("hffm_inbox_depth", "Messages received and not yet handled.", value=obs.inbox_depth)
        if obs.outbox_depth is not None:
            yield GaugeMetricFamily("hffm_outbox_depth", "Messages on disk waiting for the receiver's ack.",
                                    value=obs.outbox_depth)
        for gauge in obs.extra:
            yield _extra(gauge)


def _counter(cls: type, name: str, help_: str, label: str, values: Mapping[str, int]) -> object:
    family = cls(name, help_, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


def _extra(gauge: Gauge | Histogram) -> object:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    if isinstance(gauge, Histogram):
        counts = [sum(1 for v in gauge.observations if v <= le) for le in gauge.buckets]
        buckets = [(str(float(le)), c) for le, c in zip(gauge.buckets, counts, strict=True)]
        buckets.append(("+Inf", len(gauge.observations)))
        return HistogramMetricFamily(f"hffm_{gauge.name}", gauge.help, buckets=buckets,
                                     sum_value=float(sum(gauge.observations)))

    labels = sorted({name for key in gauge.values for name, _v in key})
    cls = CounterMetricFamily if gauge.counter else GaugeMetricFamily
    family = cls(f"hffm_{gauge.name}", gauge.help, labels=labels)
    for key, value in gauge.values.items():
        by_name = dict(key)
        family.add_metric([by_name.get(n, "") for n in labels], value)
    return family


class MetricsServer:
    """``/metrics`` of one service on its own thread; :meth:`close` stops it."""

    def __init__(self, listen: str, observe: Callable[[], Observation], *, tls: TlsSettings | None = None,
                 insecure: bool = False) -> None:
        """Raises: ConfigError: a bad ``listen``, a non-loopback address without ``[tls]`` and without
        ``insecure``, or a port that cannot be bound."""
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.process_collector import ProcessCollector

        host, port = parse_listen(listen)
        secure = tls is not None or (not is_loopback(host) and not insecure)  # TLS files given: TLS, anywhere
        if secure and tls is None:
            raise ConfigError(f"[metrics] listen {listen!r} is not loopback: serving it needs mutual TLS "
                              "([metrics] cert and key: a server certificate for that address, e.g. `hffm certs "
                              "issue NODE-metrics --role broker --host IP`; [tls] ca checks the scrapers), or "
                              "[metrics] insecure = true to serve plain HTTP")
        if not is_loopback(host) and insecure:
            log.warning("metrics: serving plain HTTP on %s without TLS ([metrics] insecure = true)", listen)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_ServiceCollector(observe))  # type: ignore[arg-type]
        ProcessCollector(registry=self.registry)
        tls_args = {} if tls is None else {
            "certfile": str(tls.cert), "keyfile": str(tls.key), "client_cafile": str(tls.ca),
            "client_auth_required": True}
        try:
            self._server, self._thread = start_http_server(port, host, registry=self.registry, **tls_args)
        except OSError as exc:
            raise ConfigError(f"[metrics] cannot listen on {listen!r}: {exc.strerror or exc}") from None
        self.port = int(self._server.server_address[1])
        self.url = f"{'https' if secure else 'http'}://{host}:{self.port}/metrics"
        log.info("metrics: serving %s", self.url)

    def close(self) -> None:
        server: WSGIServer = self._server
        server.shutdown()  # returns once the serving thread's loop has ended
        server.server_close()
        self._thread.join(timeout=5.0)

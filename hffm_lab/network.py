"""One counting TCP proxy per link of a topology, so that the bytes on each link are measured, not guessed.

A client that should use link ``(kind, a, b)`` connects to ``LinkNetwork.add(kind, a, b, broker_port)`` instead of
the broker's port; the proxy (:class:`~hffm_lab.faults.proxy.LinkProxy`) forwards and counts every byte
(the whole MQTT stream: payloads, topics, headers, acks and keepalives), and can cut the link for fault tests.
Loopback only; threads only; bounded waits.
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import TYPE_CHECKING

from broker_config.topology.link_model import LinkId
from broker_config.topology.model import LINK_KINDS, Topology
from hffm_core.errors import TopologyError
from hffm_lab.faults.proxy import LinkProxy

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11

__all__ = ["LinkNetwork"]


class LinkNetwork:
    """The proxies of one topology's links, keyed by link id ``(kind, a, b)`` exactly as given to :meth:`add`."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self._lock = threading.Lock()
        self._proxies: dict[LinkId, LinkProxy] = {}
        self._stopped = False

    def add(self, kind: str, a: str, b: str, target_port: int) -> int:
        """Start a proxy for link ``(kind, a, b)`` in front of ``127.0.0.1:target_port``; return the local port
        the link's client should connect to.

        Raises:
            TopologyError: the topology has no such link (:meth:`Topology.link`), the link already has a proxy, or
                the network was stopped.
            ValueError: ``target_port`` is not in 1..65535.
        """
        self.topology.link(kind, a, b)
        if isinstance(target_port, bool) or not isinstance(target_port, int) or not 1 <= target_port <= 65535:
            raise ValueError(f"target_port must be an integer in 1..65535, got {target_port!r}")
        key = (kind, a, b)
        with self._lock:
            if self._stopped:
                raise TopologyError("this LinkNetwork was stopped; make a new one")
            if key in self._proxies:
                raise TopologyError(f"link {key} already has a proxy (port {self._proxies[key].port})")
            proxy = LinkProxy(target_port).start()
            self._proxies[key] = proxy
        return proxy.port

    def port(self, kind: str, a: str, b: str) -> int:
        """The local port of link ``(kind, a, b)``'s proxy.

        Raises:
            KeyError: no proxy was added for this link id.
        """
        return self._proxy((kind, a, b)).port

    def links(self) -> list[LinkId]:
        """The link ids with a proxy, in the order they were added."""
        with self._lock:
            return list(self._proxies)

    def counts(self) -> dict[LinkId, int]:
        """Bytes each link has forwarded so far, both directions together."""
        with self._lock:
            proxies = dict(self._proxies)
        return {key: proxy.bytes_up + proxy.bytes_down for key, proxy in proxies.items()}

    def counts_by_kind(self) -> dict[str, int]:
        """Bytes forwarded so far per link kind; every kind of :data:`LINK_KINDS` is present (0 if it has no link)."""
        totals = dict.fromkeys(LINK_KINDS, 0)
        for (kind, _a, _b), nbytes in self.counts().items():
            totals[kind] += nbytes
        return totals

    def cut(self, kind: str, a: str, b: str) -> None:
        """Drop the link's connections and refuse new ones until :meth:`restore`.

        Raises:
            KeyError: no proxy was added for this link id.
        """
        self._proxy((kind, a, b)).cut()

    def restore(self, kind: str, a: str, b: str) -> None:
        """Accept connections on the link again.

        Raises:
            KeyError: no proxy was added for this link id.
        """
        self._proxy((kind, a, b)).restore()

    def stop(self) -> None:
        """Stop every proxy (their counts stay readable). Idempotent."""
        with self._lock:
            self._stopped = True
            proxies = list(self._proxies.values())
        for proxy in proxies:
            proxy.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _proxy(self, key: LinkId) -> LinkProxy:
        with self._lock:
            proxy = self._proxies.get(key)
        if proxy is None:
            raise KeyError(f"no proxy for link {key}; add() it first")
        return proxy

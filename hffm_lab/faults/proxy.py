"""A small pausable TCP proxy on loopback, to cut a link in fault tests (``tc netem`` is not available here).

``LinkProxy(target_port).start()`` listens on a free 127.0.0.1 port and forwards each connection to
``127.0.0.1:target_port``. :meth:`LinkProxy.cut` closes every open connection and refuses new ones (accepted, then
closed at once) until :meth:`LinkProxy.restore`: to both ends it looks like a link that went down. Threads only,
bounded waits, loopback only.

It also counts the bytes it forwards, in each direction (:attr:`LinkProxy.bytes_up`, :attr:`LinkProxy.bytes_down`):
``hffm_lab.network.LinkNetwork`` measures each link of a topology this way.
"""

from __future__ import annotations

import logging
import socket
import threading

log = logging.getLogger(__name__)
_HOST = "127.0.0.1"


class LinkProxy:
    """Forward ``127.0.0.1:port`` -> ``127.0.0.1:target_port``; cut and restore on demand."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._server = socket.create_server((_HOST, 0))
        self._server.settimeout(0.2)
        self.port = int(self._server.getsockname()[1])
        self._cut = threading.Event()
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._count_lock = threading.Lock()
        self._up = 0  # client -> upstream
        self._down = 0  # upstream -> client
        self._thread = threading.Thread(target=self._accept_loop, name=f"proxy-{self.port}", daemon=True)

    def start(self) -> LinkProxy:
        self._thread.start()
        return self

    @property
    def bytes_up(self) -> int:
        """Bytes forwarded from clients to the upstream so far (all connections, TCP payload only)."""
        with self._count_lock:
            return self._up

    @property
    def bytes_down(self) -> int:
        """Bytes forwarded from the upstream to clients so far (all connections, TCP payload only)."""
        with self._count_lock:
            return self._down

    def cut(self) -> None:
        """Drop every connection and refuse new ones until :meth:`restore`."""
        self._cut.set()
        self._close_all()
        log.info("proxy %d -> %d: link cut", self.port, self.target_port)

    def restore(self) -> None:
        self._cut.clear()
        log.info("proxy %d -> %d: link restored", self.port, self.target_port)

    def stop(self) -> None:
        self._stopped.set()
        self._close_all()
        self._thread.join(timeout=2.0)
        self._server.close()

    def _close_all(self) -> None:
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _addr = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._cut.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection((_HOST, self.target_port), timeout=2.0)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._conns |= {client, upstream}
            for src, dst, up in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pipe, args=(src, dst, up), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while not self._cut.is_set() and (data := src.recv(65536)):
                dst.sendall(data)
                with self._count_lock:
                    if up:
                        self._up += len(data)
                    else:
                        self._down += len(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)

"""A minimal read-only MQTT 3.1.1 reader for a broker's retained ``$SYS`` topics (bridge state, counters).

Used by :mod:`broker_config.process` to see whether a fog broker's bridge is connected: mosquitto 2.0 logs
nothing on the fog side when a bridge connects, and the broker harness must not depend on the transport layer (the
only importer of paho). It speaks just CONNECT, SUBSCRIBE (QoS 0), PUBLISH (read) and DISCONNECT, over TCP or, with
an SSL context (a client certificate the broker's ACL lets read ``$SYS``), over TLS.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import time

from hffm_core.errors import BrokerError

__all__ = ["read_sys"]


def read_sys(host: str, port: int, topic: str, *, timeout: float, want: bytes | None = None,
             ssl_context: ssl.SSLContext | None = None) -> bytes | None:
    """Subscribe (MQTT 3.1.1, QoS 0, clean session) to one retained ``$SYS`` topic and return its payload: the
    first one seen, or with ``want`` the first equal to it. None if nothing matching arrived in ``timeout`` s.
    With ``ssl_context`` the connection is TLS (the broker's certificate must name ``host``).

    Raises:
        OSError: the connection or the TLS handshake failed (ssl.SSLError is an OSError).
        BrokerError: the broker refused the connection or sent garbage.
    """
    deadline = time.monotonic() + timeout
    client_id = f"hffm-sys-probe-{os.getpid()}-{time.monotonic_ns() % 10**9}".encode()
    connect = b"\x00\x04MQTT\x04\x02\x00\x0a" + _mqtt_str(client_id)
    subscribe = b"\x00\x01" + _mqtt_str(topic.encode()) + b"\x00"
    last: bytes | None = None
    with _connect(host, port, timeout, ssl_context) as sock:
        sock.sendall(_packet(0x10, connect))
        kind, body = _recv_packet(sock, deadline)
        if kind != 0x20 or len(body) < 2 or body[1] != 0:
            raise BrokerError(f"broker {host}:{port} refused the $SYS probe (CONNACK {body.hex()})")
        sock.sendall(_packet(0x82, subscribe))
        while time.monotonic() < deadline:
            try:
                kind, body = _recv_packet(sock, deadline)
            except TimeoutError:
                break
            if kind & 0xF0 != 0x30:
                continue
            (tlen,) = struct.unpack_from("!H", body)
            offset = 2 + tlen + (2 if kind & 0x06 else 0)
            if body[2 : 2 + tlen].decode("utf-8", "replace") == topic:
                last = body[offset:]
                if want is None or last == want:
                    break
        try:
            sock.sendall(b"\xe0\x00")
        except OSError:
            pass
    return last


def _connect(host: str, port: int, timeout: float, context: ssl.SSLContext | None) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    if context is None:
        return sock
    try:
        return context.wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise


def _mqtt_str(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def _packet(header: int, body: bytes) -> bytes:
    length, encoded = len(body), bytearray()
    while True:
        byte, length = length % 128, length // 128
        encoded.append(byte | (0x80 if length else 0))
        if not length:
            return bytes([header]) + bytes(encoded) + body


def _recv_packet(sock: socket.socket, deadline: float) -> tuple[int, bytes]:
    header = _recv_exact(sock, 1, deadline)[0]
    length, shift = 0, 0
    for _ in range(4):
        byte = _recv_exact(sock, 1, deadline)[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return header, _recv_exact(sock, length, deadline)
    raise BrokerError("malformed MQTT remaining length from the broker")


def _recv_exact(sock: socket.socket, size: int, deadline: float) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out reading from the broker")
        sock.settimeout(left)
        chunk = sock.recv(size - len(buf))
        if not chunk:
            raise BrokerError("the broker closed the connection")
        buf += chunk
    return bytes(buf)

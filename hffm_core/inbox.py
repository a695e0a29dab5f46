"""The queue between paho's network thread and a service's main thread.

Bounded (``limit`` > 0, the fog gateway): a full inbox makes paho's thread wait, which stops it reading the socket,
so the broker holds the backlog of a burst (also where the broker does not keep to MQTT 5 Receive Maximum, as
Mosquitto 2.0.11 does not after the first PUBACK); it never waits while the main thread waits for a PUBACK or
SUBACK (``awaiting()``), which paho's thread must read, and a QoS 0 message that finds it full is dropped and
counted. With ``decode``, paho's thread also decodes each message (msgpack and the tensors' SHA-256 check) before
queueing it, off the main thread's path; a decode error travels with the delivery and is handled in order there.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

# topic, payload, retained, PUBACK token (None: auto-acked or QoS 0), the decoded (Topic, message) or its error
Delivery = tuple[str, bytes, bool, "tuple[int, int] | None", Any]


class Inbox:
    """Deliveries from paho's thread (:meth:`put`) to the main thread (:meth:`get`, :meth:`get_nowait`)."""

    def __init__(self, limit: int = 0, *, awaiting: Callable[[], bool] = lambda: False,
                 decode: Callable[[str, bytes], Any] | None = None) -> None:
        self.limit = limit
        self.dropped = 0  # QoS 0 messages dropped because the bounded inbox was full
        self._awaiting = awaiting
        self._decode = decode
        self._queue: queue.Queue[Delivery] = queue.Queue()
        self._room = threading.Condition()  # notified whenever the main thread takes a delivery

    def qsize(self) -> int:
        return self._queue.qsize()

    def put(self, topic: str, payload: bytes, retain: bool, ack: tuple[int, int] | None = None) -> None:
        """paho's thread: queue one delivery (waiting for room when bounded; see the module docstring)."""
        if self.limit:
            if (ack is None or ack[1] == 0) and self._queue.qsize() >= self.limit:
                self.dropped += 1
                return
            with self._room:
                while self._queue.qsize() >= self.limit and not self._awaiting():
                    self._room.wait(0.05)
        decoded = None
        if self._decode is not None and not topic.startswith("$SYS/"):
            try:
                decoded = self._decode(topic, payload)
                payload = b""  # the decoded message is what is handled: do not hold both
            except Exception as exc:  # noqa: BLE001 - handled (and counted) in order by the main thread
                decoded = exc
        self._queue.put((topic, payload, retain, ack, decoded))

    def get(self, timeout: float | None = None) -> Delivery:
        """The next delivery. Raises ``queue.Empty`` after ``timeout`` seconds without one (None: waits)."""
        return self._took(self._queue.get(timeout=timeout))

    def get_nowait(self) -> Delivery:
        """The next delivery if one is ready. Raises ``queue.Empty`` otherwise."""
        return self._took(self._queue.get_nowait())

    def _took(self, item: Delivery) -> Delivery:
        if self.limit:
            with self._room:
                self._room.notify()
        return item

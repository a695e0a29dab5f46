"""The fog's application-level acks that wait for the journal's commit (group commit: docs/reliability.md).

An update's ``applied`` ack may leave only once the update is on disk. The gateway commits a batch of updates in one
transaction after handling the batch's messages, so their acks wait here until then. While any ack waits, later
ones wait too (an ``applied`` duplicate of a staged update must not be acked before that update is committed, and
acks keep their order); with nothing staged, an ack leaves at once.
"""

from __future__ import annotations

from collections.abc import Callable

MAX_KEYS = 1024  # the most keys one Ack message carries


class HeldAcks:
    """Acks to send after the next commit; ``send(device, keys, status)`` publishes one Ack message."""

    def __init__(self, send: Callable[[str, list[str], str], None]) -> None:
        self._send = send
        self._held: list[tuple[str, str, str]] = []  # (device, key, status), in order

    def __len__(self) -> int:
        return len(self._held)

    def put(self, device: str, key: str, status: str, *, staged: bool) -> None:
        """Ack ``key`` to ``device``: now, or after the commit when updates are ``staged`` or acks already wait."""
        if staged or self._held:
            self._held.append((device, key, status))
        else:
            self._send(device, [key], status)

    def release(self) -> None:
        """The commit is done: send what waited, one Ack per device and status (at most MAX_KEYS keys each)."""
        held, self._held = self._held, []
        groups: dict[tuple[str, str], list[str]] = {}
        for device, key, status in held:
            groups.setdefault((device, status), []).append(key)
        for (device, status), keys in groups.items():
            for i in range(0, len(keys), MAX_KEYS):
                self._send(device, keys[i:i + MAX_KEYS], status)

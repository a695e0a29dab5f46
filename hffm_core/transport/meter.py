"""Counts MQTT payload bytes where they are published, per global round and traffic category."""

from __future__ import annotations

import threading
from collections import defaultdict

# The four links of the hierarchy; every publish is counted under one of them (or "other").
CATEGORIES = ("device_to_fog", "fog_to_device", "fog_to_cloud", "cloud_to_fog", "device_to_device", "fog_to_fog",
              "other")


class TrafficMeter:
    """Thread-safe byte and message counters keyed by (round, category). ``round`` is set by the service."""

    def __init__(self, node: str = "") -> None:
        self.node = node
        self.round = 0
        self._lock = threading.Lock()
        self._bytes: dict[tuple[int, str], int] = defaultdict(int)
        self._messages: dict[tuple[int, str], int] = defaultdict(int)

    def add(self, category: str, nbytes: int) -> None:
        if category not in CATEGORIES:
            raise ValueError(f"unknown traffic category {category!r}; expected one of {CATEGORIES}")
        with self._lock:
            self._bytes[(self.round, category)] += nbytes
            self._messages[(self.round, category)] += 1

    def total(self, category: str) -> int:
        with self._lock:
            return sum(v for (_r, c), v in self._bytes.items() if c == category)

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            rows = [
                {"round": r, "category": c, "bytes": b, "messages": self._messages[(r, c)]}
                for (r, c), b in sorted(self._bytes.items())
            ]
        return {"node": self.node, "traffic": rows}

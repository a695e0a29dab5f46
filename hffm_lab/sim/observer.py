"""What a simulated run is measured with, from outside the tiers: a round clock (an MQTT subscriber to the round
announcements on the cloud broker and on each fog broker) and a resource sampler (psutil: RSS and CPU time of
each tier process and broker, and the size of each fog's round journal on disk)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from hffm_core.protocol import RoundControl, decode, topics
from hffm_core.transport import MqttTransport


@dataclass(slots=True)
class Announcement:
    at: float  # time.monotonic() when it arrived
    wall: float  # time.time() then (to compare with other processes' clocks)
    node: str  # "cloud" or the fog
    g: int
    c: int
    final: bool


class RoundClock:
    """Records each round announcement as it arrives (``ctl/cloud`` on the cloud broker, ``ctl/{fog}`` on each fog
    broker). A retained announcement seen at subscribe time is an old one and is left out."""

    def __init__(self, fleet: str, cloud_port: int, fog_ports: dict[str, int]) -> None:
        self.fleet = fleet
        self.seen: list[Announcement] = []
        self._lock = threading.Lock()
        self.clients = []
        for node, port, topic in [("cloud", cloud_port, topics.ctl(fleet, "cloud")),
                                  *((f, p, topics.ctl(fleet, f)) for f, p in fog_ports.items())]:
            client = MqttTransport(client_id=f"sim-clock-{node}", host="127.0.0.1", port=port,
                                   on_message=self._on(node), timeout_s=30.0)
            client.connect()
            client.subscribe([topic])
            self.clients.append(client)

    def _on(self, node: str) -> Callable[[str, bytes, bool], None]:
        def handler(_topic: str, payload: bytes, retain: bool) -> None:
            now = time.monotonic()
            ctl = decode(payload, RoundControl)
            with self._lock:
                if retain and not any(a.node == node for a in self.seen):
                    return  # a previous job's announcement, delivered at subscribe time
                self.seen.append(Announcement(now, time.time(), node, ctl.global_round, ctl.cluster_round,
                                              ctl.final))
        return handler

    def global_rounds(self) -> list[dict[str, Any]]:
        """Each global round g the cloud announced and closed (the next announcement): its wall time."""
        with self._lock:
            cloud = [a for a in self.seen if a.node == "cloud"]
        first: dict[int, float] = {}
        for a in cloud:
            first.setdefault(a.g, a.at)
        return [{"round": g, "seconds": round(first[g + 1] - first[g], 3)} for g in sorted(first) if g + 1 in first]

    def announced(self, node: str, g: int, c: int) -> float | None:
        """Wall time (time.time()) of ``node``'s first announcement of round (g, c), if seen."""
        with self._lock:
            return next((a.wall for a in self.seen if a.node == node and (a.g, a.c) == (g, c)), None)

    def close(self) -> None:
        for client in self.clients:
            client.close()


@dataclass
class Usage:
    rss_peak_mb: float = 0.0
    rss_last_mb: float = 0.0
    cpu_s: float = 0.0
    samples: list[tuple[float, float]] = field(default_factory=list)  # (monotonic, rss MB)


class Sampler:
    """Samples RSS and CPU time of named processes (by PID; the group ``workers`` sums its members) and the peak
    on-disk size of named files (each with its ``-wal`` and ``-shm``) every ``every_s``, on a thread."""

    def __init__(self, every_s: float = 0.5) -> None:
        self.every_s = every_s
        self.pids: dict[str, list[int]] = {}
        self.files: dict[str, Path] = {}
        self.usage: dict[str, Usage] = {}
        self.file_peak: dict[str, int] = {}
        self._procs: dict[int, psutil.Process] = {}
        self._cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sim-sampler", daemon=True)

    def watch(self, name: str, pid: int | None) -> None:
        if pid is None:
            return
        self.pids.setdefault(name, []).append(pid)
        try:
            self._procs[pid] = psutil.Process(pid)
        except psutil.Error:
            pass

    def watch_file(self, name: str, path: Path) -> None:
        self.files[name] = path

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=10.0)
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sample()

    def _sample(self) -> None:
        now = time.monotonic()
        for name, pids in list(self.pids.items()):
            rss = 0.0
            for pid in pids:
                proc = self._procs.get(pid)
                if proc is None:
                    continue
                try:
                    with proc.oneshot():
                        rss += proc.memory_info().rss / 1e6
                        t = proc.cpu_times()
                        self._cpu[pid] = t.user + t.system
                except psutil.Error:
                    continue
            use = self.usage.setdefault(name, Usage())
            use.cpu_s = round(sum(self._cpu.get(p, 0.0) for p in pids), 2)
            if rss > 0:
                use.rss_last_mb = round(rss, 1)
                use.rss_peak_mb = round(max(use.rss_peak_mb, rss), 1)
                use.samples.append((now, round(rss, 1)))
        for name, path in self.files.items():
            size = sum(p.stat().st_size for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists())
            self.file_peak[name] = max(self.file_peak.get(name, 0), size)

    def report(self) -> dict[str, Any]:
        return {"processes": {n: {"rss_peak_mb": u.rss_peak_mb, "rss_last_mb": u.rss_last_mb, "cpu_s": u.cpu_s}
                              for n, u in self.usage.items()},
                "files_peak_bytes": dict(self.file_peak)}

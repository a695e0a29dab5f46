"""What the dashboard shows, built from the fleet's own messages; no MQTT, no HTTP (tested on its own).

Inputs: retained state adverts (``state/+``: the fleet as fogs -> devices, online, modules, resources), round
announcements (``ctl/+``: the job's round timeline), the cloud's per-round metrics (``metrics/cloud``: accuracy per
task), rejections the dashboard itself saw, and, where the tiers serve ``/metrics``, their byte counters (bytes per
link per global round). :meth:`FleetView.snapshot` is the JSON the page polls.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from hffm_core.protocol import NodeState, RoundControl, RoundMetrics

EVENTS_KEPT = 200


@dataclass
class FleetView:
    fleet: str
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    accuracy: dict[int, dict[str, float]] = field(default_factory=dict)  # global round -> task -> accuracy
    total_rounds: int = 0
    global_round: int = 0
    cluster_rounds: dict[str, int] = field(default_factory=dict)  # fog -> its current cluster round
    finished: bool = False
    job: str = ""
    bytes_by_round: dict[int, dict[str, int]] = field(default_factory=dict)  # global round -> link -> bytes
    round_opened: dict[int, float] = field(default_factory=dict)  # global round -> when this view saw it open
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=EVENTS_KEPT))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _last_link_totals: dict[tuple[str, str], float] = field(default_factory=dict, repr=False)

    def _event(self, kind: str, text: str) -> None:
        self.events.append({"t": time.time(), "kind": kind, "text": text})

    def on_message(self, msg: object) -> None:
        """Take any fleet message: adverts, announcements and the cloud's metrics move the view; others are ignored."""
        if isinstance(msg, NodeState):
            self.on_state(msg)
        elif isinstance(msg, RoundControl):
            self.on_control(msg)
        elif isinstance(msg, RoundMetrics):
            self.on_metrics(msg)

    def on_state(self, msg: NodeState) -> None:
        with self._lock:
            before = self.nodes.get(msg.node)
            self.nodes[msg.node] = {
                "node": msg.node, "role": msg.role, "fog": msg.fog, "online": msg.online, "status": msg.status,
                "modules": [str(k) for k in msg.modules], "modalities": list(msg.modalities),
                "tasks": list(msg.tasks), "telemetry": dict(msg.telemetry), "last_seen": msg.last_seen,
                "job": getattr(msg, "job", ""),
            }
            if before is None or before["online"] != msg.online:
                self._event("node", f"{msg.role} {msg.node} {'online' if msg.online else 'offline'}"
                                    f"{': ' + msg.status if msg.status and not msg.online else ''}")

    def on_control(self, msg: RoundControl) -> None:
        with self._lock:
            self.total_rounds = max(self.total_rounds, msg.total_rounds)
            self.job = getattr(msg, "job", "") or self.job
            if msg.sender == "cloud":
                if msg.final and not self.finished:
                    self.finished = True
                    self._event("round", "the cloud announced the end of the job")
                elif not msg.final and msg.global_round != self.global_round:
                    self.global_round = msg.global_round
                    self.round_opened.setdefault(msg.global_round, time.time())
                    self._event("round", f"global round {msg.global_round} of {msg.total_rounds} opened")
            elif not msg.final and self.cluster_rounds.get(msg.sender) != msg.cluster_round:
                self.cluster_rounds[msg.sender] = msg.cluster_round
                self._event("round", f"{msg.sender}: cluster round ({msg.global_round},{msg.cluster_round})")

    def on_metrics(self, msg: RoundMetrics) -> None:
        with self._lock:
            self.total_rounds = max(self.total_rounds, msg.total_rounds)
            if msg.global_round not in self.accuracy:
                mean = sum(msg.accuracy.values()) / len(msg.accuracy) if msg.accuracy else 0.0
                self._event("accuracy", f"global round {msg.global_round}: mean accuracy {mean:.3f}")
            self.accuracy[msg.global_round] = dict(msg.accuracy)

    def on_rejected(self, topic: str, reason: str) -> None:
        with self._lock:
            self._event("fault", f"rejected a message on {topic}: {reason}")

    def on_link_totals(self, node: str, totals: dict[str, float]) -> None:
        """A tier's cumulative bytes sent per link (from its /metrics): the growth since the last reading is
        booked to the current global round."""
        with self._lock:
            booked = self.bytes_by_round.setdefault(max(1, self.global_round), {})
            for link, total in totals.items():
                grown = total - self._last_link_totals.get((node, link), 0.0)
                self._last_link_totals[(node, link)] = total
                if grown > 0:
                    booked[link] = booked.get(link, 0) + int(grown)

    def eta_s(self) -> float | None:
        """Seconds until the job ends at the pace of the rounds this view saw open (None: fewer than two seen)."""
        seen = sorted(self.round_opened.items())
        if self.finished:
            return 0.0
        if len(seen) < 2 or not self.total_rounds:
            return None
        per_round = (seen[-1][1] - seen[0][1]) / (seen[-1][0] - seen[0][0])
        return max(0.0, per_round * (self.total_rounds - self.global_round + 1) - (time.time() - seen[-1][1]))

    def job_status(self) -> dict[str, Any]:
        """The job at a glance: round, progress, participants, last accuracy, ETA (``hffm job status``)."""
        with self._lock:
            devices = [n for n in self.nodes.values() if n["role"] == "device"]
            last = max(self.accuracy) if self.accuracy else None
            eta = self.eta_s()
            done = self.total_rounds if self.finished else max(0, self.global_round - 1)
            return {
                "fleet": self.fleet, "job": self.job, "finished": self.finished, "global_round": self.global_round,
                "total_rounds": self.total_rounds, "rounds_done": done,
                "progress": round(done / self.total_rounds, 3) if self.total_rounds else 0.0,
                "devices_online": sum(1 for n in devices if n["online"]), "devices": len(devices),
                "fogs_online": sum(1 for n in self.nodes.values() if n["role"] == "fog" and n["online"]),
                "last_accuracy": None if last is None else {"round": last, "tasks": self.accuracy[last],
                                                            "mean": sum(self.accuracy[last].values()) /
                                                            max(1, len(self.accuracy[last]))},
                "eta_s": None if eta is None else round(eta, 1),
            }

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            fogs: dict[str, dict[str, Any]] = {}
            for node in sorted(self.nodes.values(), key=lambda n: n["node"]):
                if node["role"] == "fog":
                    fogs.setdefault(node["node"], {"devices": []})["fog"] = node
            for node in sorted(self.nodes.values(), key=lambda n: n["node"]):
                if node["role"] == "device":
                    fogs.setdefault(node["fog"], {"devices": []})["devices"].append(node)
            rounds = sorted(self.accuracy)
            return {
                "fleet": self.fleet, "job": self.job, "global_round": self.global_round,
                "total_rounds": self.total_rounds, "finished": self.finished,
                "cluster_rounds": dict(self.cluster_rounds),
                "fogs": [{"id": f, "fog": v.get("fog"), "devices": v["devices"]} for f, v in sorted(fogs.items())],
                "online": sum(1 for n in self.nodes.values() if n["online"]), "nodes": len(self.nodes),
                "accuracy": [{"round": r, "tasks": self.accuracy[r],
                              "mean": sum(self.accuracy[r].values()) / max(1, len(self.accuracy[r]))}
                             for r in rounds],
                "bytes": [{"round": r, "links": dict(v)} for r, v in sorted(self.bytes_by_round.items())],
                "events": list(self.events)[-50:],
                "now": time.time(),
            }

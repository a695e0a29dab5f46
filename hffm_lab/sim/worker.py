"""One simulator process: the virtual devices of one spec file (``plan.py``), each with its own MQTT connection, and
one loop that decodes what their connections receive and drives them (``device.py``).

Run as ``python -m hffm_lab.sim.worker SPEC.json``. It raises its soft RLIMIT_NOFILE to the hard limit (each
device holds a socket, paho's wake-up pair and its outbox's SQLite files), connects its devices, and runs until
every device has finished the job, dropped out for good, or the time limit passed. It then writes its result JSON
(``spec["result"]``: per-device counters and totals) and exits 0, or 1 when the time ran out or a device could not
connect. ``noop`` imports no torch; ``train`` builds one model per process (``train.py``) and, after the job, the
local-only baseline of each of its devices.
"""

from __future__ import annotations

import functools
import json
import logging
import queue
import resource
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hffm_core.atomic import write_json
from hffm_core.config import CodecSpec, make_codecs
from hffm_core.errors import DecodeError, HffmError
from hffm_core.protocol.routing import decode_message
from hffm_core.protocol.topics import Topic
from hffm_lab.sim.device import Synth, VirtualDevice

log = logging.getLogger(__name__)
TICK_S = 0.1


def raise_nofile() -> int:
    """Raise this process's soft descriptor limit to its hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return int(target)
    return int(soft)


@functools.lru_cache(maxsize=64)
def _decode_shared(topic: str, payload: bytes) -> tuple[Topic, Any]:
    """Decode each distinct (topic, payload) once per process: every virtual device subscribed to a fog's retained
    module version or round announcement gets the same immutable message (real devices decode in parallel, each on
    its own CPU; here they share one). A bad payload raises DecodeError every time (errors are not cached)."""
    return decode_message(topic, payload)


class Worker:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.trainer = None
        if spec["mode"] == "train":  # one frozen backbone for every device of this process
            from hffm_lab.sim.train import SharedTrainer

            self.trainer = SharedTrainer(backbone=spec["backbone"], seed=int(spec["seed"]),
                                         modality_of=spec["modality_of"], data_dir=Path(spec["data_dir"]),
                                         adapter=spec.get("adapter", "lora"))
        self.inbox: queue.SimpleQueue[tuple[VirtualDevice, str, bytes, bool]] = queue.SimpleQueue()
        codecs = make_codecs({k: CodecSpec(codec=spec["codec"]) for k in ("encoder", "adapter", "head")}
                             if spec["codec"] != "fp32" else {}, "sim uplink")
        synth = Synth(int(spec["seed"]) * 1000 + int(spec["worker"]))
        state_dir = Path(spec["state_dir"])
        state_dir.mkdir(parents=True, exist_ok=True)
        self.devices = [VirtualDevice(d, fleet=spec["fleet"], modality_of=spec["modality_of"], state_dir=state_dir,
                                      deliver=self._deliver, codecs=codecs, synth=synth,
                                      telemetry_interval_s=float(spec["telemetry_interval_s"]),
                                      trainer=self.trainer, backoff=spec.get("backoff"),
                                      outbox_sync=spec.get("outbox_sync", "FULL"))
                        for d in spec["devices"]]
        self.bad_messages: Counter[str] = Counter()

    def _deliver(self, device: VirtualDevice, topic: str, payload: bytes, _retain: bool) -> None:
        self.inbox.put((device, topic, payload, _retain))

    def connect_all(self) -> list[str]:
        """Connect every device (a few at a time); returns the errors of those that could not."""
        errors = []
        with ThreadPoolExecutor(max_workers=8) as pool:
            for dev, exc in zip(self.devices, pool.map(self._connect, self.devices), strict=True):
                if exc is not None:
                    errors.append(f"{dev.node}: {exc}")
                    dev.gone = True
        return errors

    @staticmethod
    def _connect(dev: VirtualDevice) -> str | None:
        try:
            dev.connect()
            return None
        except HffmError as exc:
            return str(exc)

    def run(self, time_limit_s: float) -> bool:
        """Drive the devices until all are done; False when the time ran out."""
        end = time.monotonic() + time_limit_s
        next_tick = 0.0
        while any(not (d.finished or d.gone) for d in self.devices):
            now = time.monotonic()
            if now > end:
                return False
            try:
                dev, topic, payload, _retain = self.inbox.get(timeout=max(0.0, min(TICK_S, next_tick - now)))
            except queue.Empty:
                pass
            else:
                try:
                    parsed, message = _decode_shared(topic, payload)
                    dev.handle(parsed, message)
                except DecodeError as exc:
                    self.bad_messages[type(exc).__name__] += 1
                    log.warning("device %s: rejected a message on %s: %s", dev.node, topic, exc)
                else:
                    dev.tick(time.monotonic())  # act on it now (a round's announcement), as the real agent does
            now = time.monotonic()
            if now >= next_tick:
                for d in self.devices:
                    d.tick(now)
                next_tick = now + TICK_S
        return True

    def local_only(self) -> dict[str, dict[str, float]]:
        """Train mode, after the job: each device alone for the job's sessions, accuracy on the test files."""
        if self.trainer is None:
            return {}
        sessions = int(self.spec["rounds"]) * int(self.spec["agg_every"])
        return {d.node: self.trainer.local_only(d.node, d.tasks, d.keys, sessions, 1) for d in self.devices}


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    spec = json.loads(Path(argv[0]).read_text())
    nofile = raise_nofile()
    started = time.monotonic()
    worker = Worker(spec)
    errors = worker.connect_all()
    connected_s = time.monotonic() - started
    ok = worker.run(float(spec["time_limit_s"])) if not errors else False
    devices = {d.node: d.close() for d in worker.devices}
    local_only = worker.local_only() if ok else {}
    sent: dict[str, list[float]] = {}
    for d in worker.devices:
        for at, t in d.sent_at.items():
            lo, hi = sent.get(at, [t, t])
            sent[at] = [min(lo, t), max(hi, t)]
    totals: Counter[str] = Counter()
    for counters in devices.values():
        totals.update({k: v for k, v in counters.items() if isinstance(v, int)})
    unfinished = sorted(d.node for d in worker.devices if not d.finished and not (d.gone and d.stats["dropped_out"]))
    write_json(Path(spec["result"]), {"worker": spec["worker"], "ok": ok and not unfinished, "nofile": nofile,
                                      "connect_s": round(connected_s, 3), "errors": errors, "unfinished": unfinished,
                                      "bad_messages": dict(worker.bad_messages), "totals": dict(totals),
                                      "local_only": local_only, "sent_at": sent,
                                      "devices": devices})
    return 0 if ok and not unfinished else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The plain-MQTT columns of ``hffm bench scale``, with the same MQTT client code hffm uses
(:class:`~hffm_core.transport.MqttTransport`: paho, MQTT 5, QoS 1) and nothing else:

- :func:`ceiling`: one publisher pushes N payloads of the update size as fast as paho and the broker take them, one
  subscriber counts them: the broker's pub->sub rate, the most any fan-in through that broker can reach.
- :func:`naive_rounds`: the naive round loop of a federated job. A server publishes the round's model (``down``
  payloads of the update size on one topic, which the broker fans out to every client, as hffm's fog publishes a
  module's new version once for all its holders); each of K clients, once it holds them, answers with the same
  messages (count and size) a simulated hffm device sends in a cluster round; the round ends when the server holds
  all of them. No outbox, no acks beyond the broker's PUBACK, no aggregation, no journal. With ``down = 0`` the
  server sends only ``go`` (upload only, no model). The clients are spread over processes (``python -m
  hffm_lab.bench.scale_paho PORT FIRST COUNT MSGS SIZE DOWN``), as the simulator's are.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from hffm_core.errors import HffmError
from hffm_core.transport import MqttTransport

GO, STOP, UP, DOWN = "naive/go", "naive/stop", "naive/up", "naive/down"
PER_PROCESS = 150


class _Counter:
    def __init__(self) -> None:
        self.count = 0
        self.target = 0
        self.last = 0.0
        self.done = threading.Event()
        self.lock = threading.Lock()

    def on(self, _topic: str, _payload: bytes, _retain: bool) -> None:
        with self.lock:
            self.count += 1
            self.last = time.monotonic()
            if self.count >= self.target:
                self.done.set()

    def arm(self, target: int) -> None:
        with self.lock:
            self.count, self.target = 0, target
            self.done.clear()


def ceiling(port: int, *, size: int, messages: int = 300, timeout_s: float = 300.0) -> dict[str, Any]:
    """Pub->sub rate of ``messages`` QoS 1 payloads of ``size`` bytes through the broker on ``port``.

    Raises:
        HffmError: not every message arrived within ``timeout_s``.
    """
    counter = _Counter()
    sub = MqttTransport(client_id="scale-ceiling-sub", host="127.0.0.1", port=port, on_message=counter.on)
    pub = MqttTransport(client_id="scale-ceiling-pub", host="127.0.0.1", port=port, on_message=lambda *a: None)
    try:
        sub.connect()
        sub.subscribe(["ceiling/#"])
        pub.connect()
        payload = os.urandom(size)
        counter.arm(messages)
        started = time.monotonic()
        for i in range(messages):
            while not pub.try_publish(f"ceiling/{i % 16}", payload, category="other"):
                time.sleep(0.001)
        if not counter.done.wait(timeout_s):
            raise HffmError(f"ceiling: {counter.count} of {messages} messages arrived in {timeout_s:.0f} s")
        seconds = counter.last - started
        return {"messages": messages, "size": size, "seconds": round(seconds, 3),
                "per_s": round(messages / seconds, 1), "mb_per_s": round(messages * size / seconds / 1e6, 1)}
    finally:
        pub.close()
        sub.close()


def naive_rounds(port: int, *, clients: int, msgs: int, size: int, rounds: int, work: Path, down: int = 0,
                 timeout_s: float = 600.0) -> dict[str, Any]:
    """Run ``rounds`` naive rounds of ``clients`` clients (each round first sends ``down`` model payloads of
    ``size`` to all of them); returns each round's seconds and the median of all but the first.

    Raises:
        HffmError: a client process failed to start or a round did not complete within ``timeout_s``.
    """
    counter = _Counter()
    server = MqttTransport(client_id="naive-server", host="127.0.0.1", port=port, on_message=counter.on,
                           timeout_s=60.0)
    server.connect()
    server.subscribe([f"{UP}/#"])
    model = os.urandom(size)
    work.mkdir(parents=True, exist_ok=True)
    procs = []
    try:
        for first in range(0, clients, PER_PROCESS):
            count = min(PER_PROCESS, clients - first)
            log = open(work / f"naive-clients-{first}.log", "wb")  # noqa: SIM115 - closed with the process below
            procs.append((subprocess.Popen([sys.executable, "-m", "hffm_lab.bench.scale_paho", str(port), str(first),
                                            str(count), str(msgs), str(size), str(down)], stdout=subprocess.PIPE,
                                           stderr=log), log))
        for proc, _log in procs:  # each prints "ready" once its clients are connected and subscribed
            line = proc.stdout.readline() if proc.stdout is not None else b""
            if line.strip() != b"ready":
                raise HffmError(f"naive paho clients failed to start (exit {proc.poll()})")
        times = []
        for r in range(1, rounds + 1):
            counter.arm(clients * msgs)
            started = time.monotonic()
            server.publish(GO, str(r).encode(), category="other")
            for i in range(down):
                server.publish(f"{DOWN}/{i}", model, category="other")
            if not counter.done.wait(timeout_s):
                raise HffmError(f"naive round {r}: {counter.count} of {clients * msgs} messages in {timeout_s:.0f} s")
            times.append(round(counter.last - started, 3))
        measured = times[1:] or times
        return {"rounds": times, "round_s": round(statistics.median(measured), 3),
                "fanin_per_s": round(clients * msgs / statistics.median(measured), 1)}
    finally:
        server.publish(STOP, b"stop", category="other")
        for proc, log in procs:
            try:
                proc.wait(30.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10.0)
            log.close()
        server.close()


def _clients(port: int, first: int, count: int, msgs: int, size: int, down: int = 0) -> int:
    payload = os.urandom(size)
    stop = threading.Event()
    transports: list[MqttTransport] = []

    def on_message(client_id: str) -> Any:
        got = [0]  # model payloads held this round

        def send() -> None:
            me = transports[int(client_id.rsplit("-", 1)[1]) - first]
            for i in range(msgs):
                me.try_publish(f"{UP}/{client_id}/{i}", payload, category="other")

        def handler(topic: str, _payload: bytes, retain: bool) -> None:
            if retain:
                return
            if topic == STOP:
                stop.set()
            elif topic == GO:
                got[0] = 0
                if not down:
                    send()
            elif topic.startswith(DOWN):
                got[0] += 1
                if got[0] == down:  # the whole model is here (one connection: in order after GO)
                    send()
        return handler

    for i in range(first, first + count):
        cid = f"naive-{i}"
        t = MqttTransport(client_id=cid, host="127.0.0.1", port=port, on_message=on_message(cid), timeout_s=60.0,
                          connect_timeout_s=120.0)
        transports.append(t)
        t.connect()
        t.subscribe([GO, STOP, f"{DOWN}/#"])
    print("ready", flush=True)
    stop.wait(3600.0)
    for t in transports:
        t.close()
    return 0


if __name__ == "__main__":
    sys.exit(_clients(*(int(a) for a in sys.argv[1:7])))

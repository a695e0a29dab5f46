"""Backpressure on a real Mosquitto: with MQTT 5 Receive Maximum n and PUBACKs sent only after handling, the broker
has at most n messages out to the client and holds the rest of a burst; the fog gateway's service uses this."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from broker_config.process import MosquittoProcess
from fog_gateway.service import FogGateway
from hffm_core import service as service_module
from hffm_core.service import INBOX_SLACK, Service
from hffm_core.transport import MqttTransport

pytestmark = pytest.mark.integration


def _wait(predicate, timeout_s: float) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_receive_maximum_is_asked_for_and_pubacks_wait_for_handling(tmp_path: Path, slowdown: float) -> None:
    """The broker sends Receive Maximum messages and waits for a PUBACK. (Mosquitto 2.0.11 then releases up to n
    more per PUBACK of the oldest, so the bounded inbox below is what holds on this broker.)"""
    tokens: list[tuple[int, int]] = []

    def on(_topic: str, _payload: bytes, _retain: bool, *, ack: tuple[int, int]) -> None:
        tokens.append(ack)

    with MosquittoProcess(name="c", role="cloud", data_dir=tmp_path / "c") as broker:
        broker.start()
        sub = MqttTransport(client_id="held-sub", host="127.0.0.1", port=broker.port, on_message=on,
                            receive_maximum=4)
        pub = MqttTransport(client_id="burst-pub", host="127.0.0.1", port=broker.port, on_message=lambda *_: None)
        try:
            sub.connect()
            sub.subscribe(["bench/held/#"])
            pub.connect()
            for i in range(20):
                pub.publish(f"bench/held/{i}", b"x" * 1000, category="other")  # the broker took each one
            assert _wait(lambda: len(tokens) >= 4, 10 * slowdown)
            time.sleep(0.5 * slowdown)
            assert len(tokens) == 4, "no more than Receive Maximum unacknowledged messages are sent"
            acked = 0
            while acked < 20:  # handle the rest as they come
                assert _wait(lambda: len(tokens) > acked, 10 * slowdown), f"stalled at {acked}"
                sub.ack(tokens[acked])
                acked += 1
            assert len(tokens) == 20
        finally:
            sub.close()
            pub.close()


class _Slow(Service):
    """A service with a bounded inbox whose handling is slow; it records the inbox's depth."""

    role = "test"
    receive_maximum = 4
    batch_max = 8

    def __init__(self, port: int, expected: int) -> None:
        super().__init__(node="slow", host="127.0.0.1", port=port)
        self.expected, self.handled, self.deepest = expected, 0, 0

    def subscriptions(self) -> list[str]:
        return ["bench/burst/#"]

    def dispatch(self, topic: str, payload: bytes, *, retained: bool = False, decoded: object = None) -> None:
        self.deepest = max(self.deepest, self._inbox.qsize())
        time.sleep(0.005)
        self.handled += 1
        self.done = self.handled >= self.expected


def test_a_burst_waits_on_the_broker_not_in_the_service(tmp_path: Path, slowdown: float,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_module, "INBOX_SLACK", 0)
    with MosquittoProcess(name="c", role="cloud", data_dir=tmp_path / "c") as broker:
        broker.start()
        svc = _Slow(broker.port, 300)
        runner = threading.Thread(target=svc.run, kwargs={"time_limit_s": 120 * slowdown}, daemon=True)
        runner.start()
        assert _wait(lambda: svc.transport.connected and svc.transport._filters, 20 * slowdown)
        time.sleep(0.3)
        pub = MqttTransport(client_id="burst-pub", host="127.0.0.1", port=broker.port, on_message=lambda *_: None)
        try:
            pub.connect()
            for i in range(300):
                pub.publish(f"bench/burst/{i}", b"x" * 10_000, category="other")
            runner.join(timeout=120 * slowdown)
        finally:
            pub.close()
        assert svc.handled == 300 and svc.deepest <= 4, f"inbox held up to {svc.deepest} messages"


def test_the_fog_gateway_asks_for_backpressure_and_a_bounded_inbox() -> None:
    assert FogGateway.receive_maximum > 0 and FogGateway.batch_max > 1
    assert Service.receive_maximum == 0 and Service.batch_max == 1, "the other tiers keep one message per turn"
    assert INBOX_SLACK < 1000

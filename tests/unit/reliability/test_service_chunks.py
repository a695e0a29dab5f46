"""Service.dispatch reassembles chunked payloads (signed piece by piece) and hands the whole message to the handler;
pieces that lie about their publisher are refused and counted. SealingTransport.try_publish seals every try."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import hffm_core.service as service_module
from hffm_core.delivery.chunking import split
from hffm_core.protocol import (
    ModuleKey,
    ModuleUpdate,
    blobs_from_state,
    encode,
    tensors_sha256,
    topics,
)
from hffm_core.protocol.topics import Topic
from hffm_core.security.signing import Signer, Verifier
from hffm_core.service import Service
from hffm_core.transport import TrafficMeter

FLEET, FOG = "fleet-1", "fog-a"
KEY = ModuleKey.adapter("imu", "activity")


class FakeTransport:
    def __init__(self, *, meter: TrafficMeter, **_: Any) -> None:
        self.meter, self.sent, self.connected = meter, [], True

    def try_publish(self, topic: str, payload: bytes, *, category: str, **_: Any) -> bool:
        self.sent.append((topic, payload))
        return True


class Fog(Service):
    role = "fog"
    fleet = FLEET

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(node=FOG, host="127.0.0.1", port=1, **kwargs)
        self.got: list[ModuleUpdate] = []

    def handle(self, topic: Topic, message: Any) -> None:
        assert topic.kind == "up"
        self.got.append(message)


@pytest.fixture(autouse=True)
def fake_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_module, "MqttTransport", FakeTransport)


def _update(device: str) -> bytes:
    tensors = blobs_from_state({"w": np.arange(20_000, dtype=np.float32)})  # 80 KB
    return encode(ModuleUpdate(fleet=FLEET, sender=device, fog=FOG, key=KEY, global_round=1, cluster_round=1,
                               base=(0, 0), num_samples=3, train_loss=0.1, tensors=tensors,
                               sha256=tensors_sha256(tensors), idempotency_key=f"{FLEET}/{device}/1.1/{KEY}"))


def _pieces(device: str, sender: str | None = None) -> list[tuple[str, bytes]]:
    return split(fleet=FLEET, sender=sender or device, target=FOG, topic=topics.up(FLEET, FOG, KEY, device),
                 payload=_update(device), max_packet=16_384)


def test_signed_chunks_are_reassembled_into_one_update() -> None:
    key = Ed25519PrivateKey.generate()
    fog = Fog(verifier=Verifier(keys={"dev-1": key.public_key()}))
    dev = Signer(signer_id="dev-1", private_key=key)
    pieces = _pieces("dev-1")
    assert len(pieces) >= 5
    for topic, data in reversed(pieces):
        fog.dispatch(topic, dev.seal(topic, data))
    assert [m.sender for m in fog.got] == ["dev-1"] and not fog.rejected
    np.testing.assert_array_equal(np.frombuffer(fog.got[0].tensors[0].data, np.float32), np.arange(20_000))


def test_chunks_naming_another_publisher_are_refused() -> None:
    fog = Fog()
    for topic, data in _pieces("dev-2", sender="dev-1"):  # dev-1's pieces carrying dev-2's update
        fog.dispatch(topic, data)
    assert fog.got == [] and fog.rejected["decode"] == 1


def test_send_ack_and_try_publish_are_sealed_fresh_each_time() -> None:
    key = Ed25519PrivateKey.generate()
    fog = Fog(signer=Signer(signer_id=FOG, private_key=key))
    fog.send_ack(FOG, "dev-1", ["k1"])
    fog.send_ack(FOG, "dev-1", ["k1"])
    receiver = Verifier(keys={FOG: key.public_key()})
    assert len(fog.transport.inner.sent) == 2
    for topic, sealed in fog.transport.inner.sent:  # two tries, two sequence numbers: neither is a replay
        assert topic == topics.ack(FLEET, FOG, "dev-1", FOG)
        assert receiver.open(topic, sealed)[0] == FOG

"""The relay side of D2D on a real D2D broker: members publish their coded deltas on ``peer/{fog}/{relay}/{member}``,
the relay (the device's D2D object, edge_runtime/d2d/device.py, with a stub of its uplink to the fog) averages
them with its own, and the update it sends equals the sample-weighted mean computed directly; each member is acked
on the D2D broker, and a resent delta is acked again but never sent twice."""

from __future__ import annotations

import queue
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from broker_config.process import MosquittoProcess, free_port
from edge_runtime.config import D2dConfig
from edge_runtime.d2d.device import DeviceD2d
from edge_runtime.d2d.link import PeerLink
from hffm_core.compression import make_codec
from hffm_core.compression.module_codec import pack, unpack
from hffm_core.protocol import (
    Ack,
    ModuleKey,
    ModuleUpdate,
    RoundControl,
    decode,
    encode,
    topics,
)
from hffm_core.protocol.routing import decode_message
from hffm_core.transport import MqttTransport, TrafficMeter

pytestmark = pytest.mark.integration
KEY = ModuleKey(kind="adapter", modality="imu", task="activity")
FLEET, FOG = "demo", "fog-1"
SHAPES = {"lora_a": (4, 8), "lora_b": (8, 4)}


class StubUplink:
    """The device's way to its fog, without torch or a broker: updates sent to the fog are recorded."""

    connected = True

    def __init__(self, node: str) -> None:
        self.node = node
        self.sent: list[ModuleUpdate] = []

    def build(self, key: ModuleKey, delta: dict[str, np.ndarray], samples: int, loss: float, g: int, c: int, *,
              covers: tuple[str, ...] = ()) -> ModuleUpdate:
        packed, _ = pack(delta, make_codec("fp32"))
        return ModuleUpdate(fleet=FLEET, sender=self.node, fog=FOG, key=key, global_round=g, cluster_round=c,
                            base=(0, 0), num_samples=samples, train_loss=loss, covers=covers,
                            idempotency_key=f"{FLEET}/{self.node}/{g}.{c}/{key}", **packed.fields())

    def send(self, update: ModuleUpdate, payload: bytes | None = None) -> int:
        self.sent.append(update)
        return 0

    def resend(self, key: str, topic: str, payload: bytes, round_: int) -> None:
        raise AssertionError(f"no fallback expected, got one for {key}")

    def save_feedback(self) -> None:
        pass


def _member_update(dev: str, delta: dict[str, np.ndarray], n: int) -> ModuleUpdate:
    packed, _ = pack(delta, make_codec("fp32"))
    return ModuleUpdate(fleet=FLEET, sender=dev, fog=FOG, key=KEY, global_round=1, cluster_round=1, base=(0, 0),
                        num_samples=n, train_loss=0.0, idempotency_key=f"{FLEET}/{dev}/1.1/{KEY}", **packed.fields())


def test_relay_sends_the_weighted_mean_of_its_groups_deltas(tmp_path: Path) -> None:
    port = free_port()
    broker = MosquittoProcess(name="d2d", role="d2d", port=port, data_dir=tmp_path / "b", fleet=FLEET)
    inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
    acks: queue.Queue[Ack] = queue.Queue()
    group = ["dev-1", "dev-2", "dev-3"]
    with broker:
        broker.start()
        link = PeerLink(D2dConfig(port=port, group=group, wait_s=30.0), fleet=FLEET, fog=FOG, node="dev-1",
                        state_dir=tmp_path, meter=TrafficMeter("dev-1"),
                        on_message=lambda t, p, _r: inbox.put((t, p)))
        uplink = StubUplink("dev-1")
        relay = DeviceD2d(link, uplink=uplink, layouts={KEY: SHAPES}, rejected=Counter())
        relay.connect()
        members = {}
        for dev in ("dev-2", "dev-3"):
            members[dev] = MqttTransport(client_id=f"test-{dev}", host="127.0.0.1", port=port,
                                         on_message=lambda _t, p, _r: acks.put(decode(p, Ack)))
            members[dev].connect()
            members[dev].subscribe([topics.ack_filter(FLEET, FOG, dev)])
        try:
            relay.on_round(RoundControl(fleet=FLEET, sender=FOG, global_round=1, cluster_round=1, total_rounds=1,
                                     agg_every=1, local_epochs=1, deadline_s=60.0,
                                     relays={str(KEY): {"dev-2": "dev-1", "dev-3": "dev-1"}}))
            rng = np.random.default_rng(zlib.crc32(b"d2d"))
            deltas = {d: {n: rng.normal(size=s).astype(np.float32) for n, s in SHAPES.items()} for d in group}
            samples = {"dev-1": 40, "dev-2": 25, "dev-3": 7}
            relay.hold((1, 1, KEY), deltas["dev-1"], samples["dev-1"], 0.5, {"dev-2", "dev-3"})
            payloads = {d: encode(_member_update(d, deltas[d], samples[d])) for d in ("dev-2", "dev-3")}
            for dev, payload in payloads.items():
                members[dev].publish(topics.peer(FLEET, FOG, "dev-1", dev), payload, category="device_to_device")
            for _ in range(2):
                topic, payload = inbox.get(timeout=10)
                parsed, message = decode_message(topic, payload)
                relay.on_peer(parsed, message)
            relay.tick()
            (update,) = uplink.sent
            assert update.covers == ("dev-1", "dev-2", "dev-3") and update.num_samples == 72
            got = unpack(update, {n: s for n, s in SHAPES.items()})
            total = sum(samples.values())
            for name in SHAPES:
                direct = sum(samples[d] * deltas[d][name].astype(np.float64) for d in group) / total
                np.testing.assert_allclose(got[name], direct, rtol=1e-5, atol=1e-6)
            acked = {acks.get(timeout=10).to for _ in range(2)}
            assert acked == {"dev-2", "dev-3"}
            # dev-2's outbox resends (its ack was late): acked again, nothing more goes to the fog
            members["dev-2"].publish(topics.peer(FLEET, FOG, "dev-1", "dev-2"), payloads["dev-2"],
                                     category="device_to_device")
            parsed, message = decode_message(*inbox.get(timeout=10))
            relay.on_peer(parsed, message)
            relay.tick()
            assert len(uplink.sent) == 1 and acks.get(timeout=10).to == "dev-2"
        finally:
            for transport in members.values():
                transport.close()
            link.close()

"""The relay side of D2D on a real D2D broker: members publish their coded deltas on ``peer/{fog}/{relay}/{member}``,
the relay (the agent's D2D half, edge_runtime/d2d/device.py, around a stub of the agent without a model) averages
them with its own, and the update it sends equals the sample-weighted mean computed directly; each member is acked
on the D2D broker, and a resent delta is acked again but never sent twice."""

from __future__ import annotations

import queue
import zlib
from pathlib import Path

import numpy as np
import pytest

from broker_config.process import MosquittoProcess, free_port
from edge_runtime.config import D2dConfig
from edge_runtime.d2d.device import D2dDevice
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


class _Model:
    def get_module_state(self, key: ModuleKey) -> dict[str, np.ndarray]:
        return {n: np.zeros(s, np.float32) for n, s in SHAPES.items()}


class StubRelay(D2dDevice):
    """The agent's attributes the D2D half uses, without torch: sends to the fog are recorded."""

    def __init__(self, node: str, link: PeerLink, state_dir: Path) -> None:
        self.node, self.fog, self.fleet, self.d2d = node, FOG, FLEET, link
        self.keys, self.model = [KEY], _Model()
        self.transport, self.outbox, self.feedback = None, None, None
        self.residuals_path, self.rejected, self.cfg = state_dir / "r.npz", {}, None
        self.sent: list[ModuleUpdate] = []
        self.ctl: RoundControl | None = None

    def _to_fog(self, update: ModuleUpdate, payload: bytes | None = None) -> int:
        self.sent.append(update)
        return 0

    def _build_update(self, key: ModuleKey, delta: dict[str, np.ndarray], samples: int, loss: float, g: int,
                      c: int, *, covers: tuple[str, ...] = ()) -> ModuleUpdate:
        packed, _ = pack(delta, make_codec("fp32"))
        return ModuleUpdate(fleet=FLEET, sender=self.node, fog=FOG, key=key, global_round=g, cluster_round=c,
                            base=(0, 0), num_samples=samples, train_loss=loss, covers=covers,
                            idempotency_key=f"{FLEET}/{self.node}/{g}.{c}/{key}", **packed.fields())


class _Saver:
    def save(self, path: Path) -> None:
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
        relay = StubRelay("dev-1", link, tmp_path)
        relay.feedback = _Saver()
        link.connect()
        members = {}
        for dev in ("dev-2", "dev-3"):
            members[dev] = MqttTransport(client_id=f"test-{dev}", host="127.0.0.1", port=port,
                                         on_message=lambda _t, p, _r: acks.put(decode(p, Ack)))
            members[dev].connect()
            members[dev].subscribe([topics.ack_filter(FLEET, FOG, dev)])
        try:
            relay.ctl = RoundControl(fleet=FLEET, sender=FOG, global_round=1, cluster_round=1, total_rounds=1,
                                     agg_every=1, local_epochs=1, deadline_s=60.0,
                                     relays={str(KEY): {"dev-2": "dev-1", "dev-3": "dev-1"}})
            rng = np.random.default_rng(zlib.crc32(b"d2d"))
            deltas = {d: {n: rng.normal(size=s).astype(np.float32) for n, s in SHAPES.items()} for d in group}
            samples = {"dev-1": 40, "dev-2": 25, "dev-3": 7}
            link.desk.open_bucket((1, 1, KEY), deltas["dev-1"], samples["dev-1"], 0.5, {"dev-2", "dev-3"})
            payloads = {d: encode(_member_update(d, deltas[d], samples[d])) for d in ("dev-2", "dev-3")}
            for dev, payload in payloads.items():
                members[dev].publish(topics.peer(FLEET, FOG, "dev-1", dev), payload, category="device_to_device")
            for _ in range(2):
                topic, payload = inbox.get(timeout=10)
                parsed, message = decode_message(topic, payload)
                relay._on_peer(parsed, message)
            relay._d2d_tick()
            (update,) = relay.sent
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
            relay._on_peer(parsed, message)
            relay._d2d_tick()
            assert len(relay.sent) == 1 and acks.get(timeout=10).to == "dev-2"
        finally:
            for transport in members.values():
                transport.close()
            link.close()

"""A virtual device of the simulator, without a broker: it learns its module layouts from the first versions the fog
publishes, sends one update per module per round through its outbox, clears them on the fog's ack, and carries out
its fault (crash and rejoin with the outbox intact, a resource skip advertised, a drop for good)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hffm_core.config import make_codecs
from hffm_core.downlink import VersionPublisher
from hffm_core.protocol import (
    Ack,
    ModuleUpdate,
    NodeState,
    RoundControl,
    decode,
    modules_for,
    topics,
)
from hffm_core.protocol.routing import decode_message
from hffm_lab.sim.device import Synth, VirtualDevice

FLEET, FOG, JOB = "sim", "fog-1", "job-1"
MODALITY_OF = {"digit": "image", "speaker": "speech"}


class FakeTransport:
    """Stands in for MqttTransport: records what is published; ``close(with_will=True)`` is a crash."""

    instances: list[FakeTransport] = []

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.connected = True
        self.connections = 1
        self.max_packet_size = 0
        self.sent: list[tuple[str, bytes, bool]] = []
        self.closed_with_will: bool | None = None
        FakeTransport.instances.append(self)

    def connect(self) -> None: ...

    def subscribe(self, filters: list[str]) -> None:
        self.filters = filters

    def try_publish(self, topic: str, payload: bytes, *, category: str, retain: bool = False, expiry_s: int = 0) -> bool:
        self.sent.append((topic, payload, retain))
        return True

    def publish(self, topic: str, payload: bytes, *, category: str, retain: bool = False) -> None:
        self.sent.append((topic, payload, retain))

    def close(self, *, with_will: bool = False) -> None:
        self.connected = False
        self.closed_with_will = with_will

    def updates(self) -> list[ModuleUpdate]:
        return [decode_message(t, p)[1] for t, p, _ in self.sent if "/up/" in t]  # sent for their topic

    def adverts(self) -> list[NodeState]:
        return [decode(p, NodeState) for t, p, _ in self.sent if "/state/" in t]


def _device(tmp_path: Path, fault: dict[str, Any] | None = None) -> VirtualDevice:
    FakeTransport.instances = []
    spec = {"id": "fog-1-dev-0001", "fog": FOG, "port": 1, "tasks": ["digit", "speaker"],
            "modalities": ["image", "speech"], "samples": {"digit": 50, "speaker": 30}, "fault": fault}
    dev = VirtualDevice(spec, fleet=FLEET, modality_of=MODALITY_OF, state_dir=tmp_path, deliver=lambda *a: None,
                        codecs=make_codecs({}, "test"), synth=Synth(0), telemetry_interval_s=60.0, transport_factory=FakeTransport)
    dev.connect()
    return dev


def _feed(dev: VirtualDevice, topic: str, payload: bytes) -> None:
    parsed, message = decode_message(topic, payload)
    dev.handle(parsed, message)


def _round(dev: VirtualDevice, g: int, c: int) -> None:
    """The fog's side of a round: stage-0 versions of every module (full state), then the announcement."""
    from hffm_core.protocol import encode

    pub = VersionPublisher(fleet=FLEET, sender=FOG, codecs={}, job=JOB)
    for key in dev.keys:
        pub.true[key] = {"w": np.zeros((3, 4), np.float32), "b": np.ones(4, np.float32)}
        _feed(dev, topics.cluster(FLEET, FOG, key), encode(pub.version(key, (g, c - 1))))
    ctl = RoundControl(fleet=FLEET, sender=FOG, global_round=g, cluster_round=c, total_rounds=3, agg_every=2,
                       local_epochs=1, deadline_s=60.0, job=JOB)
    _feed(dev, topics.ctl(FLEET, FOG), encode(ctl))


def _ack(dev: VirtualDevice, keys: list[str]) -> None:
    from hffm_core.protocol import encode

    ack = Ack(fleet=FLEET, sender=FOG, to=dev.node, keys=tuple(keys), status="applied")
    _feed(dev, topics.ack(FLEET, FOG, dev.node, FOG), encode(ack))


def test_one_update_per_module_shaped_like_the_fogs_version_then_acked(tmp_path: Path) -> None:
    dev = _device(tmp_path)
    assert dev.keys == modules_for({"image": ["digit"], "speech": ["speaker"]})
    assert FakeTransport.instances[0].adverts()[0].modules == tuple(dev.keys)
    _round(dev, 1, 1)
    dev.tick(1.0)  # queue and pump
    sent = FakeTransport.instances[0].updates()
    assert sorted(u.key for u in sent) == sorted(dev.keys)
    for u in sent:
        assert (u.global_round, u.cluster_round, u.base, u.codec) == (1, 1, (1, 0), "fp32")
        assert {t.name: tuple(t.shape) for t in u.tensors} == {"w": (3, 4), "b": (4,)}
        assert u.num_samples == {"encoder": 50 if u.key.modality == "image" else 30}.get(u.key.kind,
                                                                                         50 if u.key.task == "digit"
                                                                                         else 30)
    _ack(dev, [u.idempotency_key for u in sent])
    stats = dev.close()
    assert stats["queued"] == len(dev.keys) and stats["sender_acked"] == len(dev.keys) and stats["pending"] == 0


def test_synthetic_deltas_repeat_for_the_same_tag() -> None:
    state = {"w": np.zeros((2, 5), np.float32)}
    a, b = Synth(1).delta(state, "d/1.1/k"), Synth(1).delta(state, "d/1.1/k")
    assert np.array_equal(a["w"], b["w"]) and a["w"].dtype == np.float32 and np.abs(a["w"]).max() > 0


def test_crash_keeps_the_outbox_and_the_rejoined_device_resends_it(tmp_path: Path) -> None:
    dev = _device(tmp_path, {"kind": "crash", "g": 1, "c": 1, "seconds": 2.0})
    _round(dev, 1, 1)
    dev.tick(10.0)
    first = FakeTransport.instances[0]
    assert first.closed_with_will is True and first.updates() == []  # died before sending: the will fires
    assert dev.outbox.pending() == len(dev.keys)
    dev.tick(11.0)
    assert len(FakeTransport.instances) == 1  # not yet
    dev.tick(12.5)  # rejoin: a new connection
    assert len(FakeTransport.instances) == 2
    _round(dev, 1, 1)  # the retained versions and announcement arrive again
    dev.tick(13.0)
    resent = FakeTransport.instances[1].updates()
    assert sorted(u.key for u in resent) == sorted(dev.keys)
    _ack(dev, [u.idempotency_key for u in resent])
    stats = dev.close()
    assert (stats["crashed"], stats["rejoined"], stats["queued"], stats["sender_acked"]) == (1, 1, len(dev.keys),
                                                                                          len(dev.keys))


def test_a_resource_skip_is_advertised_and_sends_nothing(tmp_path: Path) -> None:
    dev = _device(tmp_path, {"kind": "skip", "g": 1, "c": 1, "seconds": 0.0})
    _round(dev, 1, 1)
    dev.tick(1.0)
    t = FakeTransport.instances[0]
    assert t.updates() == []
    skip = [a for a in t.adverts() if a.skip is not None]
    assert skip and skip[-1].skip == (1, 1) and "battery_percent" in skip[-1].status


def test_a_drop_leaves_for_good(tmp_path: Path) -> None:
    dev = _device(tmp_path, {"kind": "drop", "g": 1, "c": 1, "seconds": 0.0})
    _round(dev, 1, 1)
    dev.tick(1.0)
    dev.tick(100.0)
    assert dev.gone and len(FakeTransport.instances) == 1 and FakeTransport.instances[0].closed_with_will
    assert dev.close()["dropped_out"] == 1

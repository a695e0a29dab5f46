"""The fog gateway on real Mosquitto: scripted devices and a scripted cloud (numpy only, no model).

Checks that the gateway aggregates per module only among the holders, publishes cluster versions, sends its
aggregate and round report upward through the real bridge, and survives garbage on an update topic.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from hffm_testing import FLEET, Brokers, Client

from fog_gateway.config import FogConfig, FogSection
from fog_gateway.service import FogGateway
from hffm_core.config import BrokerConfig
from hffm_core.protocol import (
    GLOBAL_STAGE,
    Ack,
    FogAggregate,
    FogRoundReport,
    ModuleKey,
    ModuleUpdate,
    ModuleVersion,
    NodeState,
    RoundControl,
    blobs_from_state,
    decode,
    encode,
    tensors_sha256,
    topics,
)

pytestmark = pytest.mark.integration
HEAD = ModuleKey.head("digit")
ENC = ModuleKey.encoder("image")
ONLY_A = ModuleKey.head("speaker")


def _version(key: ModuleKey, state: dict[str, np.ndarray], g: int) -> bytes:
    blobs = blobs_from_state(state)
    return encode(ModuleVersion(fleet=FLEET, sender="cloud", key=key, global_round=g, stage=GLOBAL_STAGE,
                                tensors=blobs, sha256=tensors_sha256(blobs)))


def _update(dev: str, key: ModuleKey, delta: dict[str, np.ndarray], n: int) -> bytes:
    blobs = blobs_from_state(delta)
    return encode(ModuleUpdate(fleet=FLEET, sender=dev, fog="fog-1", key=key, global_round=1, cluster_round=1,
                               base=(1, 0), num_samples=n, train_loss=0.1, tensors=blobs,
                               sha256=tensors_sha256(blobs), idempotency_key=f"{dev}/{key}"))


def test_fog_gateway_aggregates_holders_and_survives_garbage(brokers: Brokers, tmp_path: Path) -> None:
    cfg = FogConfig(fog=FogSection(id="fog-1", fleet=FLEET, devices=["dev-a", "dev-b"], round_deadline_s=60,
                                   startup_timeout_s=30),
                    broker=BrokerConfig(port=brokers.fog.port), metrics_file=str(tmp_path / "fog.json"),
                    state_dir=str(tmp_path / "state"))
    gateway = FogGateway(cfg)
    thread = threading.Thread(target=gateway.run, kwargs={"time_limit_s": 60}, daemon=True)
    cloud = Client("test-cloud", brokers.cloud.port)
    device = Client("test-devices", brokers.fog.port)
    try:
        cloud.transport.subscribe([topics.fogup_filter(FLEET), topics.fogdone_filter(FLEET)])
        device.transport.subscribe([f"hffm/v1/{FLEET}/cluster/fog-1/#", topics.ctl(FLEET, "fog-1")])
        thread.start()
        zero = {"w": np.zeros((2, 3), np.float32)}
        for key in (HEAD, ENC, ONLY_A):
            cloud.publish(topics.global_(FLEET, key), _version(key, zero, 0), retain=True)
        adverts = {"dev-a": (HEAD, ENC, ONLY_A), "dev-b": (HEAD, ENC)}
        for dev, keys in adverts.items():
            advert = NodeState(fleet=FLEET, node=dev, role="device", fog="fog-1", online=True, modules=keys)
            device.publish(topics.state(FLEET, dev), encode(advert), retain=True)
        plan = RoundControl(fleet=FLEET, sender="cloud", global_round=1, cluster_round=0, total_rounds=1,
                            agg_every=1, local_epochs=1, deadline_s=60)
        cloud.publish(topics.ctl(FLEET, "cloud"), encode(plan), retain=True)
        device.expect(lambda t, p: t == topics.ctl(FLEET, "fog-1") and decode(p, RoundControl).cluster_round == 1)

        # Garbage and a forged update on update topics: rejected and counted, the round goes on.
        device.publish(topics.up(FLEET, "fog-1", HEAD, "dev-a"), b"\x93garbage")
        device.publish(topics.up(FLEET, "fog-1", ONLY_A, "dev-b"),
                       _update("dev-b", ONLY_A, {"w": np.ones((2, 3), np.float32)}, 5))  # dev-b does not hold it
        da, db = np.full((2, 3), 1.0, np.float32), np.full((2, 3), 4.0, np.float32)
        device.publish(topics.up(FLEET, "fog-1", HEAD, "dev-a"), _update("dev-a", HEAD, {"w": da}, 10))
        device.publish(topics.up(FLEET, "fog-1", HEAD, "dev-b"), _update("dev-b", HEAD, {"w": db}, 30))
        device.publish(topics.up(FLEET, "fog-1", ENC, "dev-a"), _update("dev-a", ENC, {"w": da}, 10))
        device.publish(topics.up(FLEET, "fog-1", ENC, "dev-b"), _update("dev-b", ENC, {"w": db}, 30))
        device.publish(topics.up(FLEET, "fog-1", ONLY_A, "dev-a"), _update("dev-a", ONLY_A, {"w": da}, 10))

        aggregates: dict[ModuleKey, FogAggregate] = {}
        while True:
            topic, payload = cloud.expect(lambda t, p: "/fogup/" in t or "/fogdone/" in t)
            if "/fogdone/" in topic:
                report = decode(payload, FogRoundReport)
                break
            agg = decode(payload, FogAggregate)
            aggregates[agg.key] = agg
        expected = (10 * 1.0 + 30 * 4.0) / 40  # the sample-weighted mean of the two holders' deltas
        for key in (HEAD, ENC):
            got = np.frombuffer(aggregates[key].tensors[0].data, np.float32)
            np.testing.assert_allclose(got, expected, rtol=1e-6)
            assert aggregates[key].total_weight == 40 and aggregates[key].num_devices == 2
        only_a = np.frombuffer(aggregates[ONLY_A].tensors[0].data, np.float32)
        np.testing.assert_allclose(only_a, 1.0)  # aggregated among its single holder only
        assert aggregates[ONLY_A].num_devices == 1
        assert set(report.modules) == {HEAD, ENC, ONLY_A} and report.devices == ("dev-a", "dev-b")

        # dev-a's first ack was lost, so it retransmits after the round closed: it must hear "applied" (not
        # "expired", which would make it drop an update that counted), and the update must not count twice.
        device.transport.subscribe([topics.ack_filter(FLEET, "fog-1", "dev-a")])
        device.publish(topics.up(FLEET, "fog-1", HEAD, "dev-a"), _update("dev-a", HEAD, {"w": da}, 10))
        _t, payload = device.expect(lambda t, p: t == topics.ack(FLEET, "fog-1", "dev-a", "fog-1"))
        ack = decode(payload, Ack)
        assert (ack.keys, ack.status) == ((f"dev-a/{HEAD}",), "applied")
    finally:
        final = RoundControl(fleet=FLEET, sender="cloud", global_round=2, cluster_round=0, total_rounds=1,
                             agg_every=1, local_epochs=1, deadline_s=60, final=True)
        for key in (HEAD, ENC, ONLY_A):
            cloud.publish(topics.global_(FLEET, key), _version(key, {"w": np.zeros((2, 3), np.float32)}, 1),
                          retain=True)
        cloud.publish(topics.ctl(FLEET, "cloud"), encode(final), retain=True)
        thread.join(timeout=20)
        cloud.close()
        device.close()
    assert not thread.is_alive(), "the gateway did not finish after the final round announcement"
    # Read once the gateway thread has ended: its counters are updated after the handler that sent the report.
    assert gateway.rejected["decode"] == 1  # the garbage
    assert gateway.rejected["DecodeError"] == 1  # the update from a non-holder
    assert gateway.accepted["up"] == 6  # five updates and the retransmission, which was only re-acked
    assert gateway.rejected["duplicate"] == 1


def test_fog_selects_participants_from_adverts_and_closes_on_skip(brokers: Brokers, tmp_path: Path) -> None:
    """dev-hot advertises a CPU temperature above the fog's limit: it is left out of the participants. dev-skip
    sits the round out (skip notice): the round closes on dev-ok's update alone, long before its 60 s deadline."""
    from hffm_core.resources import ResourceThresholds

    devices = ["dev-hot", "dev-ok", "dev-skip"]
    cfg = FogConfig(fog=FogSection(id="fog-1", fleet=FLEET, devices=devices, round_deadline_s=60,
                                   startup_timeout_s=30),
                    selection=ResourceThresholds(max_cpu_temp_c=80.0),
                    broker=BrokerConfig(port=brokers.fog.port), state_dir=str(tmp_path / "state"))
    gateway = FogGateway(cfg)
    thread = threading.Thread(target=gateway.run, kwargs={"time_limit_s": 60}, daemon=True)
    cloud = Client("test-cloud-2", brokers.cloud.port)
    device = Client("test-devices-2", brokers.fog.port)
    try:
        cloud.transport.subscribe([topics.fogdone_filter(FLEET)])
        device.transport.subscribe([topics.ctl(FLEET, "fog-1")])
        thread.start()
        cloud.publish(topics.global_(FLEET, HEAD), _version(HEAD, {"w": np.zeros((2, 3), np.float32)}, 0),
                      retain=True)
        temps = {"dev-hot": 91.0, "dev-ok": 45.0, "dev-skip": 50.0}
        for dev in devices:
            advert = NodeState(fleet=FLEET, node=dev, role="device", fog="fog-1", online=True, modules=(HEAD,),
                               telemetry={"cpu_temp_c": temps[dev]})
            device.publish(topics.state(FLEET, dev), encode(advert), retain=True)
        cloud.publish(topics.ctl(FLEET, "cloud"), encode(RoundControl(
            fleet=FLEET, sender="cloud", global_round=1, cluster_round=0, total_rounds=1, agg_every=1,
            local_epochs=1, deadline_s=60)), retain=True)
        _topic, payload = device.expect(lambda t, p: decode(p, RoundControl).cluster_round == 1)
        ctl = decode(payload, RoundControl)
        assert ctl.participants == {str(HEAD): ("dev-ok", "dev-skip")}
        skip = NodeState(fleet=FLEET, node="dev-skip", role="device", fog="fog-1", online=True, modules=(HEAD,),
                         skip=(1, 1), status="skipped round (1,1): battery_percent 9.0 < min 20.0")
        device.publish(topics.state(FLEET, "dev-skip"), encode(skip), retain=True)
        device.publish(topics.up(FLEET, "fog-1", HEAD, "dev-hot"),  # not selected: rejected
                       _update("dev-hot", HEAD, {"w": np.ones((2, 3), np.float32)}, 10))
        device.publish(topics.up(FLEET, "fog-1", HEAD, "dev-ok"),
                       _update("dev-ok", HEAD, {"w": np.full((2, 3), 2.0, np.float32)}, 10))
        _topic, payload = cloud.expect(lambda t, p: "/fogdone/" in t, timeout=15)
        assert decode(payload, FogRoundReport).devices == ("dev-ok",)
    finally:
        cloud.publish(topics.global_(FLEET, HEAD), _version(HEAD, {"w": np.zeros((2, 3), np.float32)}, 1),
                      retain=True)
        cloud.publish(topics.ctl(FLEET, "cloud"), encode(RoundControl(
            fleet=FLEET, sender="cloud", global_round=2, cluster_round=0, total_rounds=1, agg_every=1,
            local_epochs=1, deadline_s=60, final=True)), retain=True)
        thread.join(timeout=20)
        cloud.close()
        device.close()
    assert gateway.rejected["DecodeError"] == 1  # the unselected device's update


def test_robust_rule_outside_its_tolerance_refuses_and_the_gateway_goes_on(brokers: Brokers, tmp_path: Path) -> None:
    """Krum with f=1 needs more than 4 updates; with 2 it refuses: the module is not updated or sent upward (never
    silently averaged), the refusal is counted, and the round still closes and reports."""
    cfg = FogConfig(fog=FogSection(id="fog-1", fleet=FLEET, devices=["dev-a", "dev-b"], round_deadline_s=60,
                                   startup_timeout_s=30, aggregator="krum", aggregator_params={"byzantine": 1}),
                    broker=BrokerConfig(port=brokers.fog.port), state_dir=str(tmp_path / "state"))
    gateway = FogGateway(cfg)
    thread = threading.Thread(target=gateway.run, kwargs={"time_limit_s": 60}, daemon=True)
    cloud = Client("test-cloud-3", brokers.cloud.port)
    device = Client("test-devices-3", brokers.fog.port)
    try:
        cloud.transport.subscribe([topics.fogup_filter(FLEET), topics.fogdone_filter(FLEET)])
        device.transport.subscribe([topics.ctl(FLEET, "fog-1")])
        thread.start()
        cloud.publish(topics.global_(FLEET, HEAD), _version(HEAD, {"w": np.zeros((2, 3), np.float32)}, 0),
                      retain=True)
        for dev in ("dev-a", "dev-b"):
            advert = NodeState(fleet=FLEET, node=dev, role="device", fog="fog-1", online=True, modules=(HEAD,))
            device.publish(topics.state(FLEET, dev), encode(advert), retain=True)
        cloud.publish(topics.ctl(FLEET, "cloud"), encode(RoundControl(
            fleet=FLEET, sender="cloud", global_round=1, cluster_round=0, total_rounds=1, agg_every=1,
            local_epochs=1, deadline_s=60)), retain=True)
        device.expect(lambda t, p: decode(p, RoundControl).cluster_round == 1)
        for dev in ("dev-a", "dev-b"):
            device.publish(topics.up(FLEET, "fog-1", HEAD, dev), _update(dev, HEAD, {"w": np.ones((2, 3), np.float32)}, 5))
        topic, payload = cloud.expect(lambda t, p: "/fogup/" in t or "/fogdone/" in t, timeout=15)
        assert "/fogdone/" in topic, "a refused module must not be sent upward"
        assert decode(payload, FogRoundReport).modules == ()
    finally:
        cloud.publish(topics.ctl(FLEET, "cloud"), encode(RoundControl(
            fleet=FLEET, sender="cloud", global_round=2, cluster_round=0, total_rounds=1, agg_every=1,
            local_epochs=1, deadline_s=60, final=True)), retain=True)
        thread.join(timeout=20)
        cloud.close()
        device.close()
    assert gateway.rejected["aggregation_refused"] == 1 and gateway.accepted["up"] == 2

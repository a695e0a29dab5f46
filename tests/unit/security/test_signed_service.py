"""A Service with a signer and a verifier, fed through dispatch() with no broker: what is sealed, what is refused
and counted, and that refused messages never reach the handler. Also the [signing] config table and the cost probe."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import hffm_core.service as service_module
from hffm_core.protocol import (
    ModuleKey,
    ModuleUpdate,
    NodeState,
    blobs_from_state,
    codec,
    decode,
    encode,
    tensors_sha256,
    topics,
)
from hffm_core.protocol.envelope import SignedEnvelope
from hffm_core.protocol.topics import Topic
from hffm_core.security.signing import Signer, Verifier, generate_signing_key
from hffm_core.security.signing_config import (
    make_signer,
    make_verifier,
    parse_signing,
)
from hffm_core.service import Service
from hffm_core.transport import TrafficMeter
from hffm_lab.security.measure import sign_verify_ms_per_mb

FLEET, FOG = "fleet-1", "fog-a"
KEY = ModuleKey.adapter("imu", "activity")


class FakeTransport:
    """Stands in for MqttTransport: records publishes and counts their bytes like the real one does."""

    def __init__(self, *, meter: TrafficMeter, will: tuple[str, bytes] | None = None, **_: Any) -> None:
        self.meter, self.will, self.sent = meter, will, []
        self.connected = True

    def publish(self, topic: str, payload: bytes, *, category: str, retain: bool = False, qos: int = 1) -> None:
        self.sent.append((topic, payload))
        self.meter.add(category, len(payload))


class Fog(Service):
    role = "fog"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(node=FOG, host="127.0.0.1", port=1, **kwargs)
        self.updates: list[tuple[str, int]] = []

    def handle(self, topic: Topic, message: Any) -> None:
        self.updates.append((message.sender, message.global_round))


@pytest.fixture(autouse=True)
def fake_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_module, "MqttTransport", FakeTransport)


@pytest.fixture(scope="module")
def keys() -> dict[str, Ed25519PrivateKey]:
    return {n: Ed25519PrivateKey.generate() for n in ("dev-1", "dev-2", FOG, "cloud")}


def update(device: str, g: int = 1) -> bytes:
    tensors = blobs_from_state({"w": np.ones(4, dtype=np.float32)})
    return encode(ModuleUpdate(fleet=FLEET, sender=device, fog=FOG, key=KEY, global_round=g, cluster_round=1,
                               base=(0, 0), num_samples=3, train_loss=0.1, tensors=tensors,
                               sha256=tensors_sha256(tensors), idempotency_key=f"{FLEET}/{device}/{g}.1/{KEY}"))


def test_dispatch_refuses_and_counts_forgeries_without_touching_state(keys: dict[str, Ed25519PrivateKey]) -> None:
    fog = Fog(verifier=Verifier(keys={n: k.public_key() for n, k in keys.items()}))
    dev1, dev2 = (Signer(signer_id=d, private_key=keys[d]) for d in ("dev-1", "dev-2"))
    up1, up2 = topics.up(FLEET, FOG, KEY, "dev-1"), topics.up(FLEET, FOG, KEY, "dev-2")
    good = dev1.seal(up1, update("dev-1"))
    fog.dispatch(up1, good)
    assert fog.updates == [("dev-1", 1)] and fog.accepted["up"] == 1

    raw = codec.wire_map(dev1.seal(up1, update("dev-1", 2)), SignedEnvelope)
    raw["signature"] = bytes([raw["signature"][0] ^ 1]) + raw["signature"][1:]
    tampered = msgpack.packb(codec.wire_array(raw, SignedEnvelope), use_bin_type=True)
    # dev-2 signs a message that claims to come from dev-1, on its own topic: the topic check passes, the header not.
    impostor = dev2.seal(up2, update("dev-1", 5))
    for topic, data in [(up1, update("dev-1", 3)), (up1, tampered), (up1, good),
                        (up2, dev1.seal(up2, update("dev-2", 4))), (up2, impostor), (up1, b"\xc1junk")]:
        fog.dispatch(topic, data)
    assert fog.updates == [("dev-1", 1)] and fog.accepted["up"] == 1
    assert dict(fog.rejected) == {"unsigned": 1, "tampered": 1, "replayed": 1, "wrong_sender": 2, "decode": 1}


def test_a_retained_redelivery_reaches_the_handler_again(keys: dict[str, Ed25519PrivateKey]) -> None:
    fog = Fog(verifier=Verifier(keys={"dev-1": keys["dev-1"].public_key()}))
    fog.handle = lambda topic, message: fog.updates.append((message.node, 0))  # type: ignore[method-assign]
    topic = topics.state(FLEET, "dev-1")
    sealed = Signer(signer_id="dev-1", private_key=keys["dev-1"]).seal(
        topic, encode(NodeState(fleet=FLEET, node="dev-1", role="device", fog=FOG, online=True)))
    fog.dispatch(topic, sealed)
    fog.dispatch(topic, sealed, retained=True)  # resubscribe after a reconnect
    fog.dispatch(topic, sealed)
    assert fog.updates == [("dev-1", 0), ("dev-1", 0)] and dict(fog.rejected) == {"replayed": 1}


def test_without_a_verifier_plain_messages_are_accepted_as_before() -> None:
    fog = Fog()
    fog.dispatch(topics.up(FLEET, FOG, KEY, "dev-1"), update("dev-1"))
    assert fog.updates == [("dev-1", 1)] and not fog.rejected


def test_publishes_and_the_will_are_sealed_and_the_meter_counts_sealed_bytes(keys: dict[str, Ed25519PrivateKey]) -> None:
    state_topic = topics.state(FLEET, FOG)
    offline = encode(NodeState(fleet=FLEET, node=FOG, role="fog", fog=FOG, online=False))
    fog = Fog(signer=Signer(signer_id=FOG, private_key=keys[FOG]), will=(state_topic, offline))
    receiver = Verifier(keys={FOG: keys[FOG].public_key()})
    will_topic, will_payload = fog.transport.will
    assert will_topic == state_topic and receiver.open(state_topic, will_payload) == (FOG, offline)

    cluster = topics.ctl(FLEET, FOG)
    fog.transport.publish(cluster, b"inner", category="fog_to_device", retain=True)
    (topic, sealed), = fog.transport.inner.sent
    assert topic == cluster and decode(sealed, SignedEnvelope).payload == b"inner"
    assert receiver.open(cluster, sealed) == (FOG, b"inner")
    assert fog.meter.total("fog_to_device") == len(sealed) > len(b"inner")


# -- [signing] config ---------------------------------------------------------------------------------------------
def _signing_dir(tmp_path: Path) -> Path:
    enrolled = tmp_path / "enrolled"
    enrolled.mkdir()
    generate_signing_key(tmp_path / "fog-a.key")
    for node in ("dev-1", "cloud"):
        generate_signing_key(tmp_path / "gen" / f"{node}.key")
        (enrolled / f"{node}.pub").write_bytes((tmp_path / "gen" / f"{node}.pub").read_bytes())
    return tmp_path


def test_parse_signing_and_build(tmp_path: Path) -> None:
    base = _signing_dir(tmp_path)
    problems: list[str] = []
    settings = parse_signing({"key": "fog-a.key", "enrolled": "enrolled", "revoked": ["dev-9"], "replay_window": 128},
                             "fog.toml [signing]", problems, base_dir=base)
    assert problems == [] and settings is not None
    assert settings.key_file == base / "fog-a.key" and settings.revoked == ("dev-9",)
    signer = make_signer(settings, FOG, base / "state")
    verifier = make_verifier(settings, FOG, base / "state")
    assert verifier.signers == ["cloud", "dev-1"] and verifier.replay.window == 128
    signer.seal(topics.ctl(FLEET, FOG), b"x")
    assert (base / "state" / "fog-a-signing-seq.json").exists()


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ({"key": "fog-a.key", "enrolled": "enrolled", "extra": 1}, r"unknown key\(s\) \['extra'\]"),
        ({"enrolled": "enrolled"}, r"missing key\(s\) \['key'\]"),
        ({"key": "nope.key", "enrolled": "enrolled"}, "key: file '.*nope.key' does not exist"),
        ({"key": "fog-a.key", "enrolled": "nowhere"}, "enrolled: folder '.*nowhere' does not exist"),
        ({"key": "fog-a.key", "enrolled": "gen"}, None),  # gen/ holds .pub files too: fine
        ({"key": "fog-a.key", "enrolled": "enrolled", "revoked": "dev-1"}, "revoked: expected a list"),
        ({"key": "fog-a.key", "enrolled": "enrolled", "revoked": ["Bad"]}, "invalid revoked signer id 'Bad'"),
        ({"key": "fog-a.key", "enrolled": "enrolled", "replay_window": 0}, "replay_window: expected an int"),
        ({"key": "fog-a.key", "enrolled": "enrolled", "replay_window": True}, "replay_window: expected an int"),
        ({"key": 3, "enrolled": "enrolled"}, "key: expected a path, got 3"),
        ([], "expected a table"),
    ],
)
def test_parse_signing_problems(tmp_path: Path, table: Any, match: str | None) -> None:
    base = _signing_dir(tmp_path)
    problems: list[str] = []
    settings = parse_signing(table, "x.toml [signing]", problems, base_dir=base)
    if match is None:
        assert problems == [] and settings is not None
        return
    assert settings is None and len(problems) >= 1
    assert any(p.startswith("x.toml [signing]") for p in problems)
    assert any(re.search(match, p) for p in problems), problems


def test_parse_signing_empty_enrolled_folder(tmp_path: Path) -> None:
    base = _signing_dir(tmp_path)
    (base / "empty").mkdir()
    problems: list[str] = []
    assert parse_signing({"key": "fog-a.key", "enrolled": "empty"}, "w", problems, base_dir=base) is None
    assert problems == ["w: enrolled: folder '" + str(base / "empty") + "' holds no '<signer>.pub' key"]


def test_sign_verify_cost_probe() -> None:
    result = sign_verify_ms_per_mb((1024, 65536), repeats=2)
    assert set(result) == {"1024", "65536"}
    for row in result.values():
        assert row["seal_ms"] > 0 and row["open_ms"] > 0 and 100 < row["overhead_bytes"] < 300

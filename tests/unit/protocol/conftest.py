"""Factories for one valid instance of every wire message type, and helpers to hand-craft bad payloads.

Tests reach these through session-scoped fixtures (``make``, ``wire_of``, ``pack``) so that Hypothesis tests may
use them too. A factory takes keyword overrides; it recomputes ``sha256`` when it is given new ``tensors``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import pytest

from hffm_core.protocol import codec
from hffm_core.protocol.keys import ModuleKey
from hffm_core.protocol.messages import (
    Ack,
    Chunk,
    FogAggregate,
    FogRoundReport,
    ModuleUpdate,
    ModuleVersion,
    NodeState,
    ResyncRequest,
    RoundControl,
    RoundMetrics,
    TensorBlob,
    blobs_from_state,
    tensors_sha256,
)

FLEET = "fleet-1"
FOG = "fog-a"
DEVICE = "dev-01"
JOB = "20261206T101500-9f3a1c"


def sample_state(seed: int = 0) -> dict[str, np.ndarray]:
    """A small module state covering 0-d, empty and multi-dim tensors of float and int dtypes."""
    rng = np.random.default_rng(seed)
    return {
        "weight": rng.standard_normal((2, 3, 2)).astype(np.float32),
        "bias": rng.standard_normal(4).astype(np.float32),
        "scale": np.array(1.5 + seed, dtype=np.float64),
        "half": rng.standard_normal((3,)).astype(np.float16),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "codes": rng.integers(-128, 128, size=(3, 1), dtype=np.int8),
        "pixels": rng.integers(0, 256, size=(2, 2), dtype=np.uint8),
        "short": np.array([-3, 7], dtype=np.int16),
        "index": np.arange(5, dtype=np.int32),
        "count": np.array(2**40 + seed, dtype=np.int64),
    }


def sample_blobs(seed: int = 0) -> tuple[TensorBlob, ...]:
    return blobs_from_state(sample_state(seed))


def _with_tensors(fields: dict[str, Any], overrides: dict[str, Any], seed: int) -> dict[str, Any]:
    tensors = overrides.get("tensors", sample_blobs(seed))
    fields["tensors"] = tensors
    fields["sha256"] = tensors_sha256(tensors)
    fields.update(overrides)
    return fields


def module_update(**overrides: Any) -> ModuleUpdate:
    fields: dict[str, Any] = {
        "fleet": FLEET,
        "sender": DEVICE,
        "fog": FOG,
        "key": ModuleKey.adapter("imu", "activity"),
        "global_round": 3,
        "cluster_round": 2,
        "base": (3, 1),
        "num_samples": 128,
        "train_loss": 0.4375,
        "idempotency_key": f"{DEVICE}:3:2:adapter:imu:activity",
    }
    return ModuleUpdate(**_with_tensors(fields, overrides, seed=1))


def module_version(**overrides: Any) -> ModuleVersion:
    fields: dict[str, Any] = {
        "fleet": FLEET,
        "sender": "cloud",
        "key": ModuleKey.encoder("image"),
        "global_round": 4,
        "stage": 1_000_000,
        "job": JOB,
    }
    return ModuleVersion(**_with_tensors(fields, overrides, seed=2))


def fog_aggregate(**overrides: Any) -> FogAggregate:
    fields: dict[str, Any] = {
        "fleet": FLEET,
        "fog": FOG,
        "key": ModuleKey.head("activity"),
        "global_round": 4,
        "total_weight": 512.5,
        "num_devices": 3,
        "idempotency_key": f"{FOG}:4:head:_:activity",
    }
    return FogAggregate(**_with_tensors(fields, overrides, seed=3))


def fog_round_report(**overrides: Any) -> FogRoundReport:
    fields: dict[str, Any] = {
        "fleet": FLEET,
        "fog": FOG,
        "global_round": 4,
        "modules": (ModuleKey.adapter("imu", "activity"), ModuleKey.encoder("imu"), ModuleKey.head("activity")),
        "devices": (DEVICE, "dev-02", "dev_03"),
        "cluster_rounds": 2,
    }
    fields.update(overrides)
    return FogRoundReport(**fields)


def round_control(**overrides: Any) -> RoundControl:
    fields: dict[str, Any] = {
        "fleet": FLEET,
        "sender": "cloud",
        "global_round": 4,
        "cluster_round": 0,
        "total_rounds": 10,
        "agg_every": 2,
        "local_epochs": 1,
        "deadline_s": 30.5,
        "final": True,
        "job": JOB,
    }
    fields.update(overrides)
    return RoundControl(**fields)


def node_state(**overrides: Any) -> NodeState:
    fields: dict[str, Any] = {
        "fleet": FLEET,
        "node": DEVICE,
        "role": "device",
        "fog": FOG,
        "online": True,
        "modules": (ModuleKey.encoder("imu"), ModuleKey.head("activity")),
        "num_samples": {"activity": 128, "fall": 0},
        "backbone": "tiny-cnn",
        "job": JOB,
    }
    fields.update(overrides)
    return NodeState(**fields)


def round_metrics(**overrides: Any) -> RoundMetrics:
    fields: dict[str, Any] = {
        "fleet": FLEET,
        "global_round": 4,
        "total_rounds": 10,
        "accuracy": {"activity": 0.8125, "fall": 1.0, "gesture": 0.0},
        "fogs_reported": (FOG, "fog-b"),
        "modules_updated": 5,
    }
    fields.update(overrides)
    return RoundMetrics(**fields)


def resync_request(**overrides: Any) -> ResyncRequest:
    fields: dict[str, Any] = {
        "fleet": FLEET,
        "sender": DEVICE,
        "target": FOG,
        "modules": (ModuleKey.adapter("imu", "activity"), ModuleKey.head("activity")),
    }
    fields.update(overrides)
    return ResyncRequest(**fields)


def ack(**overrides: Any) -> Ack:
    fields: dict[str, Any] = {"fleet": FLEET, "sender": FOG, "to": DEVICE,
                              "keys": (f"{FLEET}/{DEVICE}/3.2/adapter:imu:activity",), "status": "applied"}
    fields.update(overrides)
    return Ack(**fields)


def chunk(**overrides: Any) -> Chunk:
    import hashlib

    data = overrides.pop("data", b"\x00\x01chunk-bytes")
    fields: dict[str, Any] = {"fleet": FLEET, "sender": DEVICE, "topic": f"hffm/v1/{FLEET}/up/{FOG}/imu/activity/adapter/{DEVICE}",
                              "payload_sha256": "ab" * 32, "index": 1, "count": 3, "total_size": 40, "data": data,
                              "sha256": hashlib.sha256(data).hexdigest()}
    fields.update(overrides)
    return Chunk(**fields)


FACTORIES: dict[type, Callable[..., Any]] = {
    ModuleUpdate: module_update,
    ModuleVersion: module_version,
    FogAggregate: fog_aggregate,
    FogRoundReport: fog_round_report,
    RoundControl: round_control,
    NodeState: node_state,
    RoundMetrics: round_metrics,
    ResyncRequest: resync_request,
    Ack: ack,
    Chunk: chunk,
}


def make_message(cls: type, **overrides: Any) -> Any:
    """One valid instance of ``cls`` with ``overrides`` applied (a bad override raises from the constructor)."""
    return FACTORIES[cls](**overrides)


def wire_dict(message: object) -> dict[str, Any]:
    """The wire map of ``message`` (the map form of its positional encoding), ready to be tampered with and packed
    again: the codec decodes the map form with the same checks as the positional one."""
    raw = codec.wire_map(codec.encode(message), type(message))
    assert isinstance(raw, dict)
    return raw


def wire_list(message: object) -> list[Any]:
    """The unpacked positional wire form of ``message``: ``[TYPE, schema, <further fields>]``."""
    raw = msgpack.unpackb(codec.encode(message), raw=False)
    assert isinstance(raw, list)
    return raw


def pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


@pytest.fixture(scope="session")
def make() -> Callable[..., Any]:
    return make_message


@pytest.fixture(scope="session")
def sample() -> Callable[[int], dict[str, np.ndarray]]:
    return sample_state


@pytest.fixture(scope="session")
def wire_of() -> Callable[[object], dict[str, Any]]:
    return wire_dict


@pytest.fixture(scope="session", name="pack")
def pack_fixture() -> Callable[[object], bytes]:
    return pack


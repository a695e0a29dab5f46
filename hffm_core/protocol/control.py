"""Wire types that carry no tensors: round announcements, node adverts, metrics, resync requests, acks and chunks.

The module-carrying types are in :mod:`hffm_core.protocol.messages`, which re-exports these. Encoding and decoding
live in :mod:`hffm_core.protocol.codec`.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import field
from typing import ClassVar

from hffm_core.protocol.checks import (
    JOB_SCHEMA_VERSION,
    MAX_KEY_LEN,
    RANKS_SCHEMA_VERSION,
    SCHEMA_VERSION,
    check,
    check_fields,
    check_job_id,
    check_segments,
    check_stamp,
    finite_nonneg,
    nonneg_int,
    wire_type,
)
from hffm_core.protocol.keys import ModuleKey, check_name

ACK_STATUSES = ("applied", "expired", "rejected", "conflict")
MAX_ACK_KEYS = 1024
MAX_CHUNKS = 65_535
MAX_CHUNKED_PAYLOAD = 256 * 1024 * 1024
_HEX64 = re.compile(r"[0-9a-f]{64}")


def _check_module_map(mapping: dict[str, object]) -> None:
    for key in mapping:
        ModuleKey.parse(key)


@wire_type
class RoundControl:
    """Round announcement: cloud -> fogs on ``ctl/cloud`` (stage 0), fog -> devices on ``ctl/{fog}`` (stage >= 1).

    ``final`` tells every tier the job is over after this message (devices evaluate and stop).
    """

    TYPE: ClassVar[str] = "round_control"
    schema: int = JOB_SCHEMA_VERSION
    fleet: str
    sender: str
    global_round: int
    cluster_round: int
    total_rounds: int
    agg_every: int
    local_epochs: int
    deadline_s: float
    final: bool = False
    # module key -> the devices selected to train and send it this round; empty = every holder.
    participants: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # D2D: module key -> {device: the relay device of its group that sends the group's averaged delta}. A device
    # not listed (or listed as its own relay) sends to the fog itself.
    relays: dict[str, dict[str, str]] = field(default_factory=dict)
    # The job this announcement belongs to: the cloud names it, fogs pass it on. A node ignores announcements of
    # another job than the one it is in (docs/reliability.md, "Jobs").
    job: str = ""

    def __post_init__(self) -> None:
        check_fields(self, segments=("fleet", "sender"),
                     nonneg=("global_round", "cluster_round", "total_rounds", "agg_every", "local_epochs"))
        check_job_id(self.job)
        _check_module_map(self.participants)
        for devices in self.participants.values():
            check_segments(devices, "participant")
        _check_module_map(self.relays)
        for routes in self.relays.values():
            check_segments(routes, "relayed device")
            check_segments(routes.values(), "relay")
        check(self.agg_every >= 1, "agg_every must be >= 1")
        finite_nonneg(self.deadline_s, "deadline_s")
        check(isinstance(self.final, bool), f"final must be a bool, got {self.final!r}")


@wire_type
class NodeState:
    """A node's retained advert on ``state/{node}``: role, what it holds (capability advert), telemetry, status.

    ``telemetry`` holds only the sensors the node has (an absent sensor is absent, never 0). ``skip`` names the
    round (global, cluster) a device sits out for lack of resources; ``status`` says why in words.
    """

    TYPE: ClassVar[str] = "node_state"
    schema: int = RANKS_SCHEMA_VERSION
    fleet: str
    node: str
    role: str
    fog: str
    online: bool
    modules: tuple[ModuleKey, ...] = ()
    num_samples: dict[str, int] = field(default_factory=dict)
    backbone: str = ""
    modalities: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ()
    versions: dict[str, tuple[int, int]] = field(default_factory=dict)  # module key -> version stamp held
    telemetry: dict[str, float] = field(default_factory=dict)
    last_seen: float = 0.0  # unix time of this advert
    status: str = ""
    skip: tuple[int, int] | None = None
    job: str = ""  # the job the node is in; "" = none yet (and in a last will, written before any job is known)
    # LoRA ranks: a device's own ``[model] lora_r``; a fog's, the ranks it serves (its devices' and the global one).
    lora_ranks: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        check_fields(self, segments=("fleet", "node", "fog"))
        check_job_id(self.job)
        for rank in self.lora_ranks:
            check(type(rank) is int and 0 < rank <= 4096, f"lora_ranks must be ints in 1..4096, got {rank!r}")
        for value in (*self.modalities, *self.tasks):
            check_name(value, "modality/task")
        _check_module_map(self.versions)
        for key, stamp in self.versions.items():
            check_stamp(stamp, f"versions[{key!r}]")
        for name, value in self.telemetry.items():
            check(isinstance(name, str) and 0 < len(name) <= 64, f"bad telemetry name {name!r}")
            check(isinstance(value, float) and math.isfinite(value), f"telemetry {name!r} must be a finite float")
        finite_nonneg(self.last_seen, "last_seen")
        check(len(self.status) <= 1024, "status longer than 1024 characters")
        if self.skip is not None:
            check_stamp(self.skip, "skip")
        check(self.role in ("device", "fog", "cloud"), f"unknown role {self.role!r}")
        check(isinstance(self.online, bool), f"online must be a bool, got {self.online!r}")
        for task, count in self.num_samples.items():
            check_name(task, "task")
            nonneg_int(count, f"num_samples[{task!r}]")


@wire_type
class RoundMetrics:
    """cloud -> observers after each global round: accuracy per task of the global model on held-out data."""

    TYPE: ClassVar[str] = "round_metrics"
    schema: int = SCHEMA_VERSION
    fleet: str
    global_round: int
    total_rounds: int
    accuracy: dict[str, float]
    fogs_reported: tuple[str, ...]
    modules_updated: int

    def __post_init__(self) -> None:
        check_fields(self, segments=("fleet",), nonneg=("global_round", "total_rounds", "modules_updated"))
        check_segments(self.fogs_reported, "fog")
        for task, acc in self.accuracy.items():
            check_name(task, "task")
            check(isinstance(acc, float) and 0.0 <= acc <= 1.0, f"accuracy[{task!r}] must be in [0, 1]")


@wire_type
class ResyncRequest:
    """receiver -> publisher on ``resync/{target}/{sender}``: send me the full state of these modules."""

    TYPE: ClassVar[str] = "resync_request"
    schema: int = SCHEMA_VERSION
    fleet: str
    sender: str
    target: str
    modules: tuple[ModuleKey, ...]

    def __post_init__(self) -> None:
        check_fields(self, segments=("fleet", "sender", "target"))
        check(0 < len(self.modules) <= 1024, "a resync request names 1..1024 modules")


@wire_type
class Ack:
    """Application-level acknowledgement on ``ack/{fog}/{to}/{sender}``: ``sender`` durably handled ``keys``.

    ``applied``: the updates (idempotency keys) are in the receiver's durable state, now or earlier (a retransmit
    is acknowledged again). ``expired``: the round they belong to is closed; the sender drops them and logs it.
    ``rejected``: the receiver will never take them (checked and refused); the sender drops them and logs it.
    """

    TYPE: ClassVar[str] = "ack"
    schema: int = SCHEMA_VERSION
    fleet: str
    sender: str
    to: str
    keys: tuple[str, ...]
    status: str = "applied"

    def __post_init__(self) -> None:
        check_fields(self, segments=("fleet", "sender", "to"))
        check(isinstance(self.keys, tuple) and 0 < len(self.keys) <= MAX_ACK_KEYS,
              f"an ack names 1..{MAX_ACK_KEYS} keys, got {len(self.keys) if isinstance(self.keys, tuple) else '?'}")
        for key in self.keys:
            check(isinstance(key, str) and 0 < len(key) <= MAX_KEY_LEN, f"bad idempotency key {key!r}")
        check(self.status in ACK_STATUSES, f"unknown ack status {self.status!r}; expected one of {ACK_STATUSES}")


@wire_type
class Chunk:
    """One piece of a payload too large for the broker's packet limit, on ``chunk/{target}/{sender}``.

    ``topic`` is where the whole payload would have gone; ``payload_sha256`` names and checks the whole payload,
    ``sha256`` this piece. Pieces ``0..count-1`` concatenated in order are the payload (``total_size`` bytes).
    """

    TYPE: ClassVar[str] = "chunk"
    schema: int = SCHEMA_VERSION
    fleet: str
    sender: str
    topic: str
    payload_sha256: str
    index: int
    count: int
    total_size: int
    data: bytes
    sha256: str

    def __post_init__(self) -> None:
        check_fields(self, segments=("fleet", "sender"), nonneg=("count", "index", "total_size"))
        check(isinstance(self.topic, str) and 0 < len(self.topic) <= 1024, "chunk topic must be 1..1024 chars")
        check(f"/{self.fleet}/chunk/" not in self.topic, f"a chunk cannot carry a chunk topic {self.topic!r}")
        check(isinstance(self.payload_sha256, str) and _HEX64.fullmatch(self.payload_sha256) is not None,
              f"bad payload_sha256 {self.payload_sha256!r}")
        check(0 < self.count <= MAX_CHUNKS, f"count must be in 1..{MAX_CHUNKS}, got {self.count}")
        check(self.index < self.count, f"index {self.index} is not below count {self.count}")
        check(self.total_size <= MAX_CHUNKED_PAYLOAD, f"total_size {self.total_size} exceeds {MAX_CHUNKED_PAYLOAD}")
        check(isinstance(self.data, bytes) and len(self.data) <= self.total_size,
              f"chunk of {len(self.data)} bytes exceeds total_size {self.total_size}")
        check(hashlib.sha256(self.data).hexdigest() == self.sha256, "sha256 does not match the chunk's data")

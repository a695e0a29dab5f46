"""Wire message types: frozen dataclasses with a schema version, checked in ``__post_init__``.

This module holds the types that carry a module's tensors (device updates, module versions, fog aggregates) and the
fog's round report, and re-exports the rest: the control types (:mod:`hffm_core.protocol.control`), the tensor
types (:mod:`hffm_core.protocol.tensors`) and the shared checks (:mod:`hffm_core.protocol.checks`). Encoding and
decoding live in :mod:`hffm_core.protocol.codec`; nothing here touches msgpack. A module's state or delta is a
tuple of :class:`TensorBlob` (bytes + dtype + shape, never pickled) with a SHA-256 over their bytes.
"""

from __future__ import annotations

import math
from dataclasses import field
from typing import ClassVar

from hffm_core.protocol.checks import (
    JOB_SCHEMA_VERSION,
    MAX_JOB_LEN,
    MAX_KEY_LEN,
    SCHEMA_VERSION,
    check,
    check_fields,
    check_job_id,
    check_key,
    check_segments,
    check_stamp,
    finite_nonneg,
    is_number,
    wire_type,
)
from hffm_core.protocol.control import (
    ACK_STATUSES,
    MAX_ACK_KEYS,
    MAX_CHUNKED_PAYLOAD,
    MAX_CHUNKS,
    Ack,
    Chunk,
    NodeState,
    ResyncRequest,
    RoundControl,
    RoundMetrics,
)
from hffm_core.protocol.keys import ModuleKey
from hffm_core.protocol.tensors import (
    ALLOWED_DTYPES,
    MAX_DIMS,
    RAW_CODEC,
    EncodedTensor,
    TensorBlob,
    blobs_from_state,
    check_tensor_fields,
    state_from_blobs,
    tensors_sha256,
)

__all__ = [
    "ACK_STATUSES", "ALLOWED_DTYPES", "GLOBAL_STAGE", "JOB_SCHEMA_VERSION", "MAX_ACK_KEYS", "MAX_CHUNKED_PAYLOAD",
    "MAX_CHUNKS", "MAX_COVERS", "MAX_DIMS", "MAX_JOB_LEN", "MAX_KEY_LEN", "MESSAGE_TYPES", "RAW_CODEC",
    "SCHEMA_VERSION", "Ack", "Chunk", "EncodedTensor", "FogAggregate", "FogRoundReport", "ModuleUpdate",
    "ModuleVersion", "NodeState", "ResyncRequest", "RoundControl", "RoundMetrics", "TensorBlob", "blobs_from_state",
    "check_job_id", "state_from_blobs", "tensors_sha256",
]

# Version stamp of a module: (global_round, stage). Stage 0..E_agg are the fog's cluster versions within a global
# round (0 = the global version it started from); the cloud's global version of round g is (g, GLOBAL_STAGE).
GLOBAL_STAGE = 1_000_000
MAX_COVERS = 1024  # devices one D2D relay update may stand for


@wire_type
class ModuleUpdate:
    """device -> fog: the delta of one module after local training, against ``base`` (a version stamp)."""

    TYPE: ClassVar[str] = "module_update"
    schema: int = SCHEMA_VERSION
    fleet: str
    sender: str
    fog: str
    key: ModuleKey
    global_round: int
    cluster_round: int
    base: tuple[int, int]
    num_samples: int
    train_loss: float
    tensors: tuple[TensorBlob, ...] = ()
    encoded: tuple[EncodedTensor, ...] = ()
    codec: str = RAW_CODEC
    codec_params: dict[str, int | float | str] = field(default_factory=dict)
    sha256: str
    idempotency_key: str
    # D2D (docs/topology.md): the devices whose deltas this update averages (weighted by their samples), when a
    # relay device sends it for its group; empty = the sender's own delta only.
    covers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_fields(self, segments=("fleet", "sender", "fog"), nonneg=("global_round", "cluster_round"),
                     positive=("num_samples",), stamps=("base",))
        check_segments(self.covers, "covered device")
        check(len(set(self.covers)) == len(self.covers) <= MAX_COVERS,
              f"covers must name at most {MAX_COVERS} distinct devices")
        check(is_number(self.train_loss) and math.isfinite(self.train_loss), "train_loss must be finite")
        check_key(self.idempotency_key)
        check_tensor_fields(self.tensors, self.encoded, self.codec, self.codec_params, self.sha256)

    @staticmethod
    def default_key(fleet: str, sender: str, global_round: int, cluster_round: int, key: ModuleKey | str) -> str:
        """The idempotency key of a sender's own update of ``key`` in round (g, c). The codec sends an update that
        carries exactly this key with an empty one, and the receiver derives it again from the signed fields."""
        return f"{fleet}/{sender}/{global_round}.{cluster_round}/{key}"


@wire_type
class ModuleVersion:
    """fog -> devices (cluster) or cloud -> all (global): the full state of one module at ``stamp``."""

    TYPE: ClassVar[str] = "module_version"
    schema: int = JOB_SCHEMA_VERSION
    fleet: str
    sender: str
    key: ModuleKey
    global_round: int
    stage: int
    delta_base: tuple[int, int] | None = None  # None: full state; else a delta against the version at this stamp
    tensors: tuple[TensorBlob, ...] = ()
    encoded: tuple[EncodedTensor, ...] = ()
    codec: str = RAW_CODEC
    codec_params: dict[str, int | float | str] = field(default_factory=dict)
    sha256: str
    job: str = ""  # the job this version belongs to (the cloud's job id); "" = not named

    def __post_init__(self) -> None:
        check_fields(self, segments=("fleet", "sender"), nonneg=("global_round", "stage"))
        check_job_id(self.job)
        if self.delta_base is not None:
            check_stamp(self.delta_base, "delta_base")
        check_tensor_fields(self.tensors, self.encoded, self.codec, self.codec_params, self.sha256)

    @property
    def stamp(self) -> tuple[int, int]:
        return (self.global_round, self.stage)


@wire_type
class FogAggregate:
    """fog -> cloud: the fog's delta of one module over a global round, with the weight behind it."""

    TYPE: ClassVar[str] = "fog_aggregate"
    schema: int = SCHEMA_VERSION
    fleet: str
    fog: str
    key: ModuleKey
    global_round: int
    total_weight: float
    num_devices: int
    # 0: the fog's delta over the whole global round (fog -> cloud); c >= 1: its delta after cluster round c, shared
    # with neighbour fogs on ``fogpeer`` (docs/topology.md).
    cluster_round: int = 0
    tensors: tuple[TensorBlob, ...] = ()
    encoded: tuple[EncodedTensor, ...] = ()
    codec: str = RAW_CODEC
    codec_params: dict[str, int | float | str] = field(default_factory=dict)
    sha256: str
    idempotency_key: str

    def __post_init__(self) -> None:
        check_fields(self, segments=("fleet", "fog"), nonneg=("global_round", "cluster_round"),
                     positive=("num_devices",))
        finite_nonneg(self.total_weight, "total_weight")
        check(self.total_weight > 0, "total_weight must be > 0")
        check_key(self.idempotency_key)
        check_tensor_fields(self.tensors, self.encoded, self.codec, self.codec_params, self.sha256)

    @staticmethod
    def default_key(fleet: str, fog: str, global_round: int, cluster_round: int, key: ModuleKey | str) -> str:
        """The idempotency key of a fog's aggregate of ``key``: over global round g (``cluster_round`` 0, to the
        cloud) or after cluster round c (to neighbour fogs). Sent empty when the aggregate carries exactly this."""
        stamp = f"{global_round}" if cluster_round == 0 else f"{global_round}.{cluster_round}"
        return f"{fleet}/{fog}/{stamp}/{key}"


@wire_type
class FogRoundReport:
    """fog -> cloud, after its aggregates of a global round: which modules it sent, from how many devices."""

    TYPE: ClassVar[str] = "fog_round_report"
    schema: int = SCHEMA_VERSION
    fleet: str
    fog: str
    global_round: int
    modules: tuple[ModuleKey, ...]
    devices: tuple[str, ...]
    cluster_rounds: int

    def __post_init__(self) -> None:
        check_fields(self, segments=("fleet", "fog"), nonneg=("global_round", "cluster_rounds"))
        check_segments(self.devices, "device")


MESSAGE_TYPES: tuple[type, ...] = (
    ModuleUpdate,
    ModuleVersion,
    FogAggregate,
    FogRoundReport,
    RoundControl,
    NodeState,
    RoundMetrics,
    ResyncRequest,
    Ack,
    Chunk,
)

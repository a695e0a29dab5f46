"""Wire message types: frozen dataclasses with a schema version, checked in ``__post_init__``.

Encoding and decoding live in :mod:`hffm_core.protocol.codec`; nothing here touches msgpack. Tensors travel as
:class:`TensorBlob` (bytes + dtype + shape), never pickled. A module's state or delta is a tuple of blobs, one per
named parameter, with a SHA-256 over their bytes.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from hffm_core.errors import DecodeError
from hffm_core.protocol.keys import ModuleKey, check_name
from hffm_core.protocol.topics import check_segment

SCHEMA_VERSION = 1
# The types that name the job they belong to (RoundControl, ModuleVersion, NodeState) gained a ``job`` field in
# schema 2; every other type is still at SCHEMA_VERSION. A type's version is the default of its ``schema`` field.
JOB_SCHEMA_VERSION = 2
MAX_JOB_LEN = 64
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,%d}" % (MAX_JOB_LEN - 1))
ALLOWED_DTYPES = ("float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64")
MAX_DIMS = 8
# Version stamp of a module: (global_round, stage). Stage 0..E_agg are the fog's cluster versions within a global
# round (0 = the global version it started from); the cloud's global version of round g is (g, GLOBAL_STAGE).
GLOBAL_STAGE = 1_000_000
# Module messages carry raw TensorBlobs under this codec name, and EncodedTensors under any other.
RAW_CODEC = "fp32"
_CODEC_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")

MAX_KEY_LEN = 512  # characters of an idempotency key
MAX_COVERS = 1024  # devices one D2D relay update may stand for
_frozen = dataclass(frozen=True, slots=True, kw_only=True)


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


def _nonneg_int(value: object, what: str) -> None:
    _check(isinstance(value, int) and not isinstance(value, bool) and value >= 0, f"{what} must be an int >= 0")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_key(value: object) -> None:
    _check(isinstance(value, str) and 0 < len(value) <= MAX_KEY_LEN,
           f"idempotency_key must be a non-empty string of at most {MAX_KEY_LEN} characters")


def check_job_id(value: object, *, allow_empty: bool = True) -> None:
    """Raises ``ValueError`` unless ``value`` is a job id: 1..64 of ``[A-Za-z0-9._-]``, starting with a letter or digit
    (or, with ``allow_empty``, the empty string: a node that has not learned its job yet)."""
    ok = isinstance(value, str) and ((allow_empty and value == "") or _JOB_ID.fullmatch(value) is not None)
    _check(ok, f"job id must be 1..{MAX_JOB_LEN} characters of [A-Za-z0-9._-] starting with a letter or digit"
               f"{' (or empty)' if allow_empty else ''}, got {value!r}")


def _finite_nonneg(value: object, what: str) -> None:
    ok = _is_number(value) and math.isfinite(value) and value >= 0  # type: ignore[arg-type]
    _check(ok, f"{what} must be a finite number >= 0, got {value!r}")


@_frozen
class TensorBlob:
    """One named tensor: raw little-endian bytes, a dtype name and a shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    data: bytes

    def __post_init__(self) -> None:
        _check(isinstance(self.name, str) and 0 < len(self.name) <= 256, f"bad tensor name {self.name!r}")
        _check(self.dtype in ALLOWED_DTYPES, f"tensor {self.name!r}: dtype {self.dtype!r} not in {ALLOWED_DTYPES}")
        _check(isinstance(self.shape, tuple), f"tensor {self.name!r}: shape must be a tuple")
        _check(len(self.shape) <= MAX_DIMS, f"tensor {self.name!r}: more than {MAX_DIMS} dims")
        _check(isinstance(self.data, bytes), f"tensor {self.name!r}: data must be bytes")
        for dim in self.shape:
            _nonneg_int(dim, f"tensor {self.name!r} shape entry")
        expected = math.prod(self.shape) * np.dtype(self.dtype).itemsize
        _check(
            len(self.data) == expected,
            f"tensor {self.name!r}: {len(self.data)} data bytes, shape {self.shape} x {self.dtype} needs {expected}",
        )

    @classmethod
    def from_array(cls, name: str, array: np.ndarray) -> TensorBlob:
        arr = np.asarray(array, order="C")  # ascontiguousarray turns 0-d into (1,)
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        return cls(name=name, dtype=str(arr.dtype), shape=tuple(int(d) for d in arr.shape), data=arr.tobytes())

    def to_array(self) -> np.ndarray:
        """A writable numpy copy. Raises ``ValueError`` when a float tensor holds NaN or Inf."""
        arr = np.frombuffer(self.data, dtype=np.dtype(self.dtype).newbyteorder("<")).reshape(self.shape).copy()
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ValueError(f"tensor {self.name!r} holds NaN or Inf")
        return arr


def tensors_sha256(tensors: tuple[TensorBlob, ...], encoded: tuple[EncodedTensor, ...] = ()) -> str:
    """SHA-256 over every raw blob's name, dtype, shape and bytes, then every encoded tensor's, in order."""
    digest = hashlib.sha256()
    parts = [(f"{b.name}|{b.dtype}|", b.shape, b.data) for b in tensors]
    parts += [(f"{e.name}|codec|", e.shape, e.data) for e in encoded]
    for head, shape, data in parts:
        # Length-prefixed framing: no two different tensor lists can produce the same byte stream.
        header = (head + ",".join(map(str, shape))).encode()
        digest.update(len(header).to_bytes(4, "little") + header + len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def blobs_from_state(state: dict[str, np.ndarray]) -> tuple[TensorBlob, ...]:
    """Blobs for a module state, sorted by name so that every tier hashes the same bytes."""
    return tuple(TensorBlob.from_array(name, state[name]) for name in sorted(state))


def state_from_blobs(tensors: tuple[TensorBlob, ...]) -> dict[str, np.ndarray]:
    """Inverse of :func:`blobs_from_state`.

    Raises:
        DecodeError: duplicate names, or a float tensor holding NaN or Inf.
    """
    out: dict[str, np.ndarray] = {}
    for blob in tensors:
        if blob.name in out:
            raise DecodeError(f"duplicate tensor name {blob.name!r}")
        try:
            out[blob.name] = blob.to_array()
        except ValueError as exc:
            raise DecodeError(str(exc)) from None
    return out


@_frozen
class EncodedTensor:
    """One named float32 tensor of ``shape`` in a codec's byte layout (the codec is named by the message)."""

    name: str
    shape: tuple[int, ...]
    data: bytes

    def __post_init__(self) -> None:
        _check(isinstance(self.name, str) and 0 < len(self.name) <= 256, f"bad tensor name {self.name!r}")
        _check(isinstance(self.shape, tuple) and len(self.shape) <= MAX_DIMS, f"tensor {self.name!r}: bad shape")
        for dim in self.shape:
            _nonneg_int(dim, f"tensor {self.name!r} shape entry")
        _check(isinstance(self.data, bytes), f"tensor {self.name!r}: data must be bytes")
        # No codec may expand a tensor beyond 2x its float32 size plus a small header (bounds decode work).
        limit = 2 * 4 * math.prod(self.shape) + 64
        _check(len(self.data) <= limit, f"tensor {self.name!r}: {len(self.data)} encoded bytes exceed {limit}")


def _check_tensors(tensors: tuple[TensorBlob, ...], encoded: tuple[EncodedTensor, ...], codec: str,
                   codec_params: dict[str, int | float | str], sha256: str) -> None:
    _check(isinstance(codec, str) and _CODEC_NAME.fullmatch(codec) is not None, f"bad codec name {codec!r}")
    _check(isinstance(codec_params, dict) and len(codec_params) <= 16, "codec_params must be a small map")
    for key, value in codec_params.items():
        ok = isinstance(value, (int, float, str)) and not isinstance(value, bool)
        _check(isinstance(key, str) and ok, f"codec parameter {key!r} must be an int, float or str")
        _check(not isinstance(value, float) or math.isfinite(value), f"codec parameter {key!r} is not finite")
    _check(isinstance(tensors, tuple) and isinstance(encoded, tuple), "a module message needs at least one tensor, as a tuple")
    if codec == RAW_CODEC:
        _check(len(tensors) > 0 and not encoded, f"codec {RAW_CODEC!r} carries raw tensors: needs at least one tensor")
        _check(not codec_params, f"codec {RAW_CODEC!r} takes no parameters")
    else:
        _check(len(encoded) > 0 and not tensors, f"codec {codec!r} carries encoded tensors: needs at least one tensor")
    names = [t.name for t in tensors] + [e.name for e in encoded]
    _check(len(set(names)) == len(names), "duplicate tensor names")
    _check(tensors_sha256(tensors, encoded) == sha256, "sha256 does not match the tensors")


@_frozen
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
        check_segment(self.fleet, "fleet")
        check_segment(self.sender, "sender")
        check_segment(self.fog, "fog")
        for dev in self.covers:
            check_segment(dev, "covered device")
        _check(len(set(self.covers)) == len(self.covers) <= MAX_COVERS,
               f"covers must name at most {MAX_COVERS} distinct devices")
        _nonneg_int(self.global_round, "global_round")
        _nonneg_int(self.cluster_round, "cluster_round")
        _check(isinstance(self.base, tuple) and len(self.base) == 2, "base must be (global_round, stage)")
        _nonneg_int(self.base[0], "base[0]")
        _nonneg_int(self.base[1], "base[1]")
        _nonneg_int(self.num_samples, "num_samples")
        _check(self.num_samples > 0, "num_samples must be an int > 0")
        _check(_is_number(self.train_loss) and math.isfinite(self.train_loss), "train_loss must be finite")
        _check_key(self.idempotency_key)
        _check_tensors(self.tensors, self.encoded, self.codec, self.codec_params, self.sha256)

    @staticmethod
    def default_key(fleet: str, sender: str, global_round: int, cluster_round: int, key: ModuleKey | str) -> str:
        """The idempotency key of a sender's own update of ``key`` in round (g, c). The codec sends an update that
        carries exactly this key with an empty one, and the receiver derives it again from the signed fields."""
        return f"{fleet}/{sender}/{global_round}.{cluster_round}/{key}"


@_frozen
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
        check_segment(self.fleet, "fleet")
        check_segment(self.sender, "sender")
        check_job_id(self.job)
        _nonneg_int(self.global_round, "global_round")
        _nonneg_int(self.stage, "stage")
        if self.delta_base is not None:
            _check(len(self.delta_base) == 2, "delta_base must be (global_round, stage)")
            for v in self.delta_base:
                _nonneg_int(v, "delta_base entry")
        _check_tensors(self.tensors, self.encoded, self.codec, self.codec_params, self.sha256)

    @property
    def stamp(self) -> tuple[int, int]:
        return (self.global_round, self.stage)


@_frozen
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
        check_segment(self.fleet, "fleet")
        check_segment(self.fog, "fog")
        _nonneg_int(self.global_round, "global_round")
        _nonneg_int(self.num_devices, "num_devices")
        _nonneg_int(self.cluster_round, "cluster_round")
        _check(self.num_devices > 0, "num_devices must be an int > 0")
        _finite_nonneg(self.total_weight, "total_weight")
        _check(self.total_weight > 0, "total_weight must be > 0")
        _check_key(self.idempotency_key)
        _check_tensors(self.tensors, self.encoded, self.codec, self.codec_params, self.sha256)

    @staticmethod
    def default_key(fleet: str, fog: str, global_round: int, cluster_round: int, key: ModuleKey | str) -> str:
        """The idempotency key of a fog's aggregate of ``key``: over global round g (``cluster_round`` 0, to the
        cloud) or after cluster round c (to neighbour fogs). Sent empty when the aggregate carries exactly this."""
        stamp = f"{global_round}" if cluster_round == 0 else f"{global_round}.{cluster_round}"
        return f"{fleet}/{fog}/{stamp}/{key}"


@_frozen
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
        check_segment(self.fleet, "fleet")
        check_segment(self.fog, "fog")
        _nonneg_int(self.global_round, "global_round")
        _nonneg_int(self.cluster_rounds, "cluster_rounds")
        for dev in self.devices:
            check_segment(dev, "device")


@_frozen
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
        check_segment(self.fleet, "fleet")
        check_segment(self.sender, "sender")
        check_job_id(self.job)
        for key, devices in self.participants.items():
            ModuleKey.parse(key)
            for dev in devices:
                check_segment(dev, "participant")
        for key, routes in self.relays.items():
            ModuleKey.parse(key)
            for dev, relay in routes.items():
                check_segment(dev, "relayed device")
                check_segment(relay, "relay")
        for name in ("global_round", "cluster_round", "total_rounds", "agg_every", "local_epochs"):
            _nonneg_int(getattr(self, name), name)
        _check(self.agg_every >= 1, "agg_every must be >= 1")
        _finite_nonneg(self.deadline_s, "deadline_s")
        _check(isinstance(self.final, bool), f"final must be a bool, got {self.final!r}")


@_frozen
class NodeState:
    """A node's retained advert on ``state/{node}``: role, what it holds (capability advert), telemetry, status.

    ``telemetry`` holds only the sensors the node has (an absent sensor is absent, never 0). ``skip`` names the
    round (global, cluster) a device sits out for lack of resources; ``status`` says why in words.
    """

    TYPE: ClassVar[str] = "node_state"
    schema: int = JOB_SCHEMA_VERSION
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

    def __post_init__(self) -> None:
        check_job_id(self.job)
        for value in (*self.modalities, *self.tasks):
            check_name(value, "modality/task")
        for key, stamp in self.versions.items():
            ModuleKey.parse(key)
            _check(len(stamp) == 2 and all(isinstance(v, int) and v >= 0 for v in stamp), f"bad stamp for {key}")
        for name, value in self.telemetry.items():
            _check(isinstance(name, str) and 0 < len(name) <= 64, f"bad telemetry name {name!r}")
            _check(isinstance(value, float) and math.isfinite(value), f"telemetry {name!r} must be a finite float")
        _finite_nonneg(self.last_seen, "last_seen")
        _check(len(self.status) <= 1024, "status longer than 1024 characters")
        if self.skip is not None:
            _check(len(self.skip) == 2 and all(isinstance(v, int) and v >= 0 for v in self.skip), "bad skip round")
        check_segment(self.fleet, "fleet")
        check_segment(self.node, "node")
        check_segment(self.fog, "fog")
        _check(self.role in ("device", "fog", "cloud"), f"unknown role {self.role!r}")
        _check(isinstance(self.online, bool), f"online must be a bool, got {self.online!r}")
        for task, count in self.num_samples.items():
            check_name(task, "task")
            _nonneg_int(count, f"num_samples[{task!r}]")


@_frozen
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
        check_segment(self.fleet, "fleet")
        _nonneg_int(self.global_round, "global_round")
        _nonneg_int(self.total_rounds, "total_rounds")
        _nonneg_int(self.modules_updated, "modules_updated")
        for fog in self.fogs_reported:
            check_segment(fog, "fog")
        for task, acc in self.accuracy.items():
            check_name(task, "task")
            _check(isinstance(acc, float) and 0.0 <= acc <= 1.0, f"accuracy[{task!r}] must be in [0, 1]")


@_frozen
class ResyncRequest:
    """receiver -> publisher on ``resync/{target}/{sender}``: send me the full state of these modules."""

    TYPE: ClassVar[str] = "resync_request"
    schema: int = SCHEMA_VERSION
    fleet: str
    sender: str
    target: str
    modules: tuple[ModuleKey, ...]

    def __post_init__(self) -> None:
        check_segment(self.fleet, "fleet")
        check_segment(self.sender, "sender")
        check_segment(self.target, "target")
        _check(0 < len(self.modules) <= 1024, "a resync request names 1..1024 modules")


ACK_STATUSES = ("applied", "expired", "rejected", "conflict")
MAX_ACK_KEYS = 1024
MAX_CHUNKS = 65_535
MAX_CHUNKED_PAYLOAD = 256 * 1024 * 1024
_HEX64 = re.compile(r"[0-9a-f]{64}")


@_frozen
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
        check_segment(self.fleet, "fleet")
        check_segment(self.sender, "sender")
        check_segment(self.to, "to")
        _check(isinstance(self.keys, tuple) and 0 < len(self.keys) <= MAX_ACK_KEYS,
               f"an ack names 1..{MAX_ACK_KEYS} keys, got {len(self.keys) if isinstance(self.keys, tuple) else '?'}")
        for key in self.keys:
            _check(isinstance(key, str) and 0 < len(key) <= 512, f"bad idempotency key {key!r}")
        _check(self.status in ACK_STATUSES, f"unknown ack status {self.status!r}; expected one of {ACK_STATUSES}")


@_frozen
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
        check_segment(self.fleet, "fleet")
        check_segment(self.sender, "sender")
        _check(isinstance(self.topic, str) and 0 < len(self.topic) <= 1024, "chunk topic must be 1..1024 chars")
        _check(f"/{self.fleet}/chunk/" not in self.topic, f"a chunk cannot carry a chunk topic {self.topic!r}")
        _check(isinstance(self.payload_sha256, str) and _HEX64.fullmatch(self.payload_sha256) is not None,
               f"bad payload_sha256 {self.payload_sha256!r}")
        _nonneg_int(self.count, "count")
        _check(0 < self.count <= MAX_CHUNKS, f"count must be in 1..{MAX_CHUNKS}, got {self.count}")
        _nonneg_int(self.index, "index")
        _check(self.index < self.count, f"index {self.index} is not below count {self.count}")
        _nonneg_int(self.total_size, "total_size")
        _check(self.total_size <= MAX_CHUNKED_PAYLOAD, f"total_size {self.total_size} exceeds {MAX_CHUNKED_PAYLOAD}")
        _check(isinstance(self.data, bytes) and len(self.data) <= self.total_size,
               f"chunk of {len(self.data)} bytes exceeds total_size {self.total_size}")
        _check(hashlib.sha256(self.data).hexdigest() == self.sha256, "sha256 does not match the chunk's data")


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

"""What the fog's round journal (round_journal.py) reads and writes: the array packing, the round position, one
accepted update, a running FedAvg sum, and the snapshot a restarted gateway resumes from.

Arrays are raw little-endian float32/float64 bytes behind a JSON layout header (name, shape, dtype), as in
:mod:`hffm_core.delivery.durable_sum`: nothing is ever unpickled.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hffm_core.errors import HffmError
from hffm_core.protocol import ModuleKey, RoundControl

State = dict[str, np.ndarray]
Stamp = tuple[int, int]
ROLES = ("start", "true", "published")
_DTYPES = {"<f4": np.float32, "<f8": np.float64}


class RoundJournalError(HffmError):
    """The fog's round journal cannot be opened, read or written: a corrupt or foreign file, or a full disk."""

    exit_code = 1
    help = "the fog gateway's round journal could not be opened, read or written"


def pack_state(state: Mapping[str, np.ndarray]) -> tuple[str, bytearray]:
    """(the JSON layout ``[[name, shape, dtype], ...]``, the arrays' raw little-endian bytes in that order), copied
    once into one buffer (SQLite binds it as a BLOB).

    Raises:
        RoundJournalError: an array that is not float32 or float64.
    """
    layout: list[list[Any]] = []
    arrays: list[tuple[np.ndarray, str]] = []
    for name in sorted(state):
        arr = np.asarray(state[name])
        dtype = {np.dtype(np.float32): "<f4", np.dtype(np.float64): "<f8"}.get(arr.dtype.newbyteorder("="))
        if dtype is None:
            raise RoundJournalError(f"tensor {name!r} has dtype {arr.dtype}; the journal stores float32/float64")
        layout.append([name, list(arr.shape), dtype])
        arrays.append((arr, dtype))
    blob = bytearray(sum(arr.size * np.dtype(dtype).itemsize for arr, dtype in arrays))
    offset = 0
    for arr, dtype in arrays:
        size = arr.size * np.dtype(dtype).itemsize
        np.frombuffer(blob, dtype=dtype, count=arr.size, offset=offset)[:] = arr.ravel()
        offset += size
    return json.dumps(layout), blob


def unpack_state(layout: str, blob: bytes) -> State:
    """Inverse of :func:`pack_state`. Raises ``ValueError`` for a layout that does not describe ``blob``."""
    out: State = {}
    offset = 0
    for name, shape, dtype in json.loads(layout):
        if not isinstance(name, str) or dtype not in _DTYPES or not all(
                isinstance(n, int) and n >= 0 for n in shape):
            raise ValueError(f"bad layout entry {[name, shape, dtype]!r}")
        size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if offset + size > len(blob):
            raise ValueError(f"tensor {name!r} runs past the stored {len(blob)} bytes")
        out[name] = np.frombuffer(blob[offset:offset + size], dtype=dtype).reshape(shape).astype(_DTYPES[dtype])
        offset += size
    if offset != len(blob):
        raise ValueError(f"stored arrays have {len(blob)} bytes, their layout needs {offset}")
    return out


def job_of(fleet: str, fog: str, plan: RoundControl) -> dict[str, Any]:
    """What names a job in the journal: the cloud's job id, the fleet, the fog and the shape of the cloud's plan."""
    return {"job": plan.job, "fleet": fleet, "fog": fog, "total_rounds": plan.total_rounds,
            "agg_every": plan.agg_every, "local_epochs": plan.local_epochs}


def same_job(job: Mapping[str, Any], global_round: int, *, fleet: str, fog: str, plan: RoundControl) -> bool:
    """Whether a journal of ``job`` at ``global_round`` belongs to the job of the cloud's ``plan``.

    The rule: the job id (the cloud's, ``RoundControl.job``), fleet, fog, total rounds, E_agg and local epochs
    match, and the plan's round is not below the journal's. A job's cloud never announces a round below one this fog
    reached (a restarted cloud resumes its round), so a lower round is a new job; a new job has a new id anyway.
    """
    return dict(job) == job_of(fleet, fog, plan) and plan.global_round >= global_round


def staleness_weight(num_samples: int, decay: float, lag: int) -> float:
    """The weight of an update folded ``lag`` cluster rounds late: ``num_samples * decay ** lag``."""
    return float(num_samples) * decay ** lag


def _keys(mapping: Mapping[str, Any]) -> dict[ModuleKey, Any]:
    return {ModuleKey.parse(k): v for k, v in mapping.items()}


@dataclass(slots=True, kw_only=True)
class Position:
    """Where the gateway is in the schedule, as journaled (see the module docstring; the round engine's
    ``FogRound.position()`` writes it and ``FogRound.restore()`` reads it); ``plan`` is the cloud's RoundControl."""

    round_g: int = 0  # global round g
    cluster_c: int = 0  # cluster round c
    in_round: bool = False
    modules: list[ModuleKey] = field(default_factory=list)
    participants: dict[ModuleKey, set[str]] = field(default_factory=dict)
    previous: dict[ModuleKey, set[str]] = field(default_factory=dict)  # the participants of round c - 1
    round_weight: dict[ModuleKey, dict[str, int]] = field(default_factory=dict)  # closed cluster rounds of g
    round_updated: set[ModuleKey] = field(default_factory=set)  # modules updated in global round g
    sent_last: set[ModuleKey] = field(default_factory=set)  # modules sent upward last time
    plan: RoundControl | None = None

    def to_json(self) -> str:
        plan = self.plan
        if plan is None:
            raise RoundJournalError("a round position needs the cloud's plan")
        return json.dumps({
            "global_round": self.round_g, "cluster_round": self.cluster_c, "in_round": self.in_round,
            "modules": [str(k) for k in self.modules],
            "participants": {str(k): sorted(v) for k, v in self.participants.items()},
            "previous": {str(k): sorted(v) for k, v in self.previous.items()},
            "round_weight": {str(k): dict(v) for k, v in self.round_weight.items()},
            "round_updated": sorted(map(str, self.round_updated)), "sent_last": sorted(map(str, self.sent_last)),
            "plan": {"fleet": plan.fleet, "sender": plan.sender, "global_round": plan.global_round,
                     "cluster_round": plan.cluster_round, "total_rounds": plan.total_rounds,
                     "agg_every": plan.agg_every, "local_epochs": plan.local_epochs, "deadline_s": plan.deadline_s,
                     "final": plan.final, "job": plan.job}})

    @classmethod
    def from_json(cls, text: str) -> Position:
        """Raises ``ValueError``, ``KeyError`` or ``TypeError`` for text that is not a saved position."""
        raw = json.loads(text)
        return cls(round_g=int(raw["global_round"]), cluster_c=int(raw["cluster_round"]),
                   in_round=bool(raw["in_round"]), modules=[ModuleKey.parse(k) for k in raw["modules"]],
                   participants={k: set(v) for k, v in _keys(raw["participants"]).items()},
                   previous={k: set(v) for k, v in _keys(raw["previous"]).items()},
                   round_weight={k: {str(d): float(n) for d, n in v.items()} for k, v in
                                 _keys(raw["round_weight"]).items()},
                   round_updated={ModuleKey.parse(k) for k in raw["round_updated"]},
                   sent_last={ModuleKey.parse(k) for k in raw["sent_last"]}, plan=RoundControl(**raw["plan"]))


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredDelta:
    """One update accepted into the open cluster round, as it was folded into the module's aggregator."""

    key: str  # the update's idempotency key
    module: ModuleKey
    sender: str
    num_samples: int
    weight: float  # num_samples, or its staleness weight for a late update
    lag: int  # 0, or how many cluster rounds late it was folded in
    delta: State  # empty when the rule journals a running sum instead (FedAvg: see RoundSum)
    covers: tuple[str, ...] = ()  # a D2D relay's update: the devices it averages (ModuleUpdate.covers)
    digest: bytes = b""  # the update's SHA-256 of its tensors: a later copy under the same key must match it

    @property
    def reporters(self) -> tuple[str, ...]:
        """The devices this update counts for: those it covers, or its sender."""
        return self.covers or (self.sender,)


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundSum:
    """A module's running FedAvg sum in the open cluster round: ``Σ w_i·Δ_i`` (float64), ``Σ w_i`` and the count
    of updates folded in. The journal keeps this instead of the deltas for a linear rule."""

    sums: State
    weight: float
    count: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything :meth:`RoundJournal.load` read back."""

    job: dict[str, Any]
    position: Position
    announced: bool
    states: dict[str, dict[ModuleKey, State]]  # role ("start", "true", "published") -> module -> state
    stamps: dict[ModuleKey, Stamp]  # the published states' version stamps
    deltas: list[StoredDelta]  # of the open cluster round, in the order they were accepted (delta {} when summed)
    applied: list[str]  # idempotency keys applied, oldest first
    digests: dict[str, bytes] = field(default_factory=dict)  # applied key -> its update's digest (where known)
    sums: dict[ModuleKey, RoundSum] = field(default_factory=dict)  # the open round's FedAvg sums



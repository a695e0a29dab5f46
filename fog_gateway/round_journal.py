"""A fog gateway's round state on disk, so that a gateway killed mid-round resumes the round and applies each
device update exactly once.

One SQLite file per fog, ``{state_dir}/{fog}-round.sqlite`` (WAL, ``synchronous=FULL``: it also survives a power
cut), holds what the gateway needs to carry on after a kill -9:

- ``meta``: the file format, the job the journal belongs to (see :func:`same_job`), the round position
  (:class:`Position`: global round g, cluster round c, whether a cluster round is open, its modules and
  participants and those of the cluster round before it, the sample weight behind each device's latest update
  per module, the modules updated in this global round, the modules sent upward last time, the cloud's plan) and
  whether the open round's versions and announcement were published.
- ``states``: per module, the global version the round started from (``start``), the current cluster state
  (``true``) and the state the devices hold (``published``, with its version stamp).
- ``deltas``: every update accepted into the open cluster round (idempotency key, module, sender, samples, the
  weight it was folded in with, its lag, the decoded delta). Robust rules (median, trimmed mean, Krum) need every
  delta, so the deltas are stored, not their sum, and the round's aggregators are rebuilt by adding them again in
  the order they were accepted.
- ``applied``: the idempotency keys applied, newest last, the last ``kept`` of them: a retransmission that arrives
  after a restart hears ``applied`` and is not counted twice.

Arrays are raw little-endian float32/float64 bytes behind a JSON layout header (name, shape, dtype), as in
:mod:`hffm_core.delivery.durable_sum`: nothing is ever unpickled.

Ordering: each write is one transaction. An update's delta and its key are committed together, and the gateway
acks the update only after that commit. Closing a cluster round commits the new cluster states, the advance to
c + 1 (or the end of the global round) and the removal of the closed round's deltas together, before anything of
the new round is published; :meth:`RoundJournal.mark_announced` records the publications afterwards. After a
kill -9 at any instant the file holds each step whole or not at all.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hffm_core.errors import HffmError
from hffm_core.protocol import ModuleKey, RoundControl

FORMAT = "hffm-fog-round/2"
State = dict[str, np.ndarray]
Stamp = tuple[int, int]
ROLES = ("start", "true", "published")
_DTYPES = {"<f4": np.float32, "<f8": np.float64}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS states (
    role    TEXT NOT NULL,
    module  TEXT NOT NULL,
    stamp   TEXT,
    layout  TEXT NOT NULL,
    data    BLOB NOT NULL,
    PRIMARY KEY (role, module)
);
CREATE TABLE IF NOT EXISTS deltas (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    key         TEXT NOT NULL UNIQUE,
    global_round INTEGER NOT NULL,
    cluster_round INTEGER NOT NULL,
    module      TEXT NOT NULL,
    sender      TEXT NOT NULL,
    covers      TEXT NOT NULL DEFAULT '',
    num_samples INTEGER NOT NULL,
    weight      REAL NOT NULL,
    lag         INTEGER NOT NULL,
    layout      TEXT NOT NULL,
    data        BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS applied (seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE, digest BLOB);
"""


class RoundJournalError(HffmError):
    """The fog's round journal cannot be opened, read or written: a corrupt or foreign file, or a full disk."""

    exit_code = 1
    help = "the fog gateway's round journal could not be opened, read or written"


def pack_state(state: Mapping[str, np.ndarray]) -> tuple[str, bytes]:
    """(the JSON layout ``[[name, shape, dtype], ...]``, the arrays' raw little-endian bytes in that order).

    Raises:
        RoundJournalError: an array that is not float32 or float64.
    """
    layout: list[list[Any]] = []
    parts: list[bytes] = []
    for name in sorted(state):
        arr = np.asarray(state[name])
        dtype = {np.dtype(np.float32): "<f4", np.dtype(np.float64): "<f8"}.get(arr.dtype.newbyteorder("="))
        if dtype is None:
            raise RoundJournalError(f"tensor {name!r} has dtype {arr.dtype}; the journal stores float32/float64")
        layout.append([name, list(arr.shape), dtype])
        parts.append(np.ascontiguousarray(arr, dtype=dtype).tobytes())
    return json.dumps(layout), b"".join(parts)


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
    delta: State
    covers: tuple[str, ...] = ()  # a D2D relay's update: the devices it averages (ModuleUpdate.covers)
    digest: bytes = b""  # the update's SHA-256 of its tensors: a later copy under the same key must match it

    @property
    def reporters(self) -> tuple[str, ...]:
        """The devices this update counts for: those it covers, or its sender."""
        return self.covers or (self.sender,)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything :meth:`RoundJournal.load` read back."""

    job: dict[str, Any]
    position: Position
    announced: bool
    states: dict[str, dict[ModuleKey, State]]  # role ("start", "true", "published") -> module -> state
    stamps: dict[ModuleKey, Stamp]  # the published states' version stamps
    deltas: list[StoredDelta]  # of the open cluster round, in the order they were accepted
    applied: list[str]  # idempotency keys applied, oldest first
    digests: dict[str, bytes] = field(default_factory=dict)  # applied key -> its update's digest (where known)


class RoundJournal:
    """The fog's round state in one SQLite file (see the module docstring). Safe to share between threads."""

    def __init__(self, path: Path, *, kept: int = 100_000, synchronous: str = "FULL") -> None:
        """Open (or create) the journal; ``kept``: how many applied keys to remember.

        Raises:
            RoundJournalError: the file cannot be opened, is not an SQLite database, or belongs to something else.
        """
        self.path = Path(path)
        self.kept = kept
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Built in one thread and run in another (tests run the gateway in a thread); one lock serialises use.
            self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'NORMAL' if synchronous == 'NORMAL' else 'FULL'}")
            tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables and "meta" not in tables:
                raise RoundJournalError(f"{str(self.path)!r} is not a fog round journal (it holds tables "
                                        f"{sorted(tables)}); move it away to start the job from scratch")
            self._db.executescript(_SCHEMA)
            if "digest" not in {r[1] for r in self._db.execute("PRAGMA table_info(applied)")}:
                self._db.execute("ALTER TABLE applied ADD COLUMN digest BLOB")  # a journal written before digests
            row = self._db.execute("SELECT value FROM meta WHERE name = 'format'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta (name, value) VALUES ('format', ?)", (FORMAT,))
            elif row[0] != FORMAT:
                raise RoundJournalError(f"fog round journal {str(self.path)!r} has format {row[0]!r}, not "
                                        f"{FORMAT!r}; move it away to start the job from scratch")
        except (sqlite3.Error, OSError) as exc:
            raise RoundJournalError(f"cannot open the fog round journal {str(self.path)!r}: {exc}; move it away "
                                    "to start the job from scratch") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, steps: Callable[[sqlite3.Connection], None]) -> None:
        """Run ``steps`` in one transaction. Raises RoundJournalError when it cannot be committed."""
        try:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    steps(self._db)
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            raise RoundJournalError(f"fog round journal {str(self.path)!r}: {exc}") from None

    # -- writes --------------------------------------------------------------------------------------------------
    def add(self, delta: StoredDelta, *, global_round: int, cluster_round: int) -> None:
        """Commit one accepted update of cluster round (g, c) and its key together (before the ack).

        Raises:
            RoundJournalError: the write failed (nothing was stored), or the key is already stored.
        """
        layout, blob = pack_state(delta.delta)

        def steps(db: sqlite3.Connection) -> None:
            db.execute("INSERT INTO deltas (key, global_round, cluster_round, module, sender, covers, num_samples, "
                       "weight, lag, layout, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (delta.key, global_round, cluster_round, str(delta.module), delta.sender, ",".join(delta.covers),
                        delta.num_samples, delta.weight, delta.lag, layout, blob))
            db.execute("INSERT OR REPLACE INTO applied (key, digest) VALUES (?, ?)", (delta.key, delta.digest or None))

        self._write(steps)

    def advance(self, position: Position, states: Mapping[str, Mapping[ModuleKey, State]],
                stamps: Mapping[ModuleKey, Stamp], *, job: Mapping[str, Any] | None = None) -> None:
        """Commit a new position with the states that changed, and drop the deltas of the round it leaves: the
        start of a global round (with ``job`` and the ``start`` states) or the close of a cluster round.

        Raises:
            RoundJournalError: the write failed (nothing changed) or a state is not float32/float64.
        """
        rows = []
        for role, by_module in states.items():
            if role not in ROLES:
                raise RoundJournalError(f"unknown state role {role!r}; expected one of {list(ROLES)}")
            for key, state in by_module.items():
                stamp = json.dumps(list(stamps[key])) if role == "published" else None
                rows.append((role, str(key), stamp, *pack_state(state)))

        def steps(db: sqlite3.Connection) -> None:
            if job is not None:
                db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('job', ?)", (json.dumps(dict(job)),))
                db.execute("DELETE FROM states WHERE role = 'start'")
            db.executemany("INSERT OR REPLACE INTO states (role, module, stamp, layout, data) VALUES (?, ?, ?, ?, ?)",
                           rows)
            db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('position', ?)", (position.to_json(),))
            db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('announced', '0')")
            db.execute("DELETE FROM deltas")
            db.execute("DELETE FROM applied WHERE seq <= (SELECT MAX(seq) FROM applied) - ?", (self.kept,))

        self._write(steps)

    def mark_announced(self) -> None:
        """Record that the versions and the announcement of the current position were published."""
        self._write(lambda db: db.execute("UPDATE meta SET value = '1' WHERE name = 'announced'"))

    def reset(self) -> None:
        """Forget everything but the format (a new job starts from scratch)."""
        def steps(db: sqlite3.Connection) -> None:
            for table in ("states", "deltas", "applied"):
                db.execute(f"DELETE FROM {table}")
            db.execute("DELETE FROM meta WHERE name != 'format'")

        self._write(steps)

    # -- reading back --------------------------------------------------------------------------------------------
    def load(self) -> Snapshot | None:
        """What a previous run left (None when it left no position).

        Raises:
            RoundJournalError: the file cannot be read or does not hold a consistent round (the gateway refuses to
                start rather than apply a round's updates twice).
        """
        with self._lock:
            return self._load()

    def _load(self) -> Snapshot | None:
        try:
            meta = dict(self._db.execute("SELECT name, value FROM meta").fetchall())
            if "position" not in meta:
                return None
            position = Position.from_json(meta["position"])
            states: dict[str, dict[ModuleKey, State]] = {role: {} for role in ROLES}
            stamps: dict[ModuleKey, Stamp] = {}
            for role, module, stamp, layout, data in self._db.execute(
                    "SELECT role, module, stamp, layout, data FROM states"):
                key = ModuleKey.parse(module)
                states[role][key] = unpack_state(layout, bytes(data))
                if role == "published":
                    g, s = json.loads(stamp)
                    stamps[key] = (int(g), int(s))
            deltas = []
            for key, g, c, module, sender, covers, n, weight, lag, layout, data in self._db.execute(
                    "SELECT key, global_round, cluster_round, module, sender, covers, num_samples, weight, lag, layout, "
                    "data FROM deltas ORDER BY seq"):
                if not position.in_round or (g, c) != (position.round_g, position.cluster_c) \
                        or ModuleKey.parse(module) not in position.modules:
                    raise ValueError(f"delta {key!r} of {module} in round ({g},{c}) is outside the open round")
                deltas.append(StoredDelta(key=key, module=ModuleKey.parse(module), sender=sender, num_samples=n,
                                          weight=weight, lag=lag, delta=unpack_state(layout, bytes(data)),
                                          covers=tuple(covers.split(",")) if covers else ()))
            missing = [k for k in position.modules if k not in states["start"] or k not in states["true"]
                       or k not in states["published"]]
            if missing:
                raise ValueError(f"no stored state for {[str(k) for k in missing]}")
            rows = self._db.execute("SELECT key, digest FROM applied ORDER BY seq").fetchall()
            return Snapshot(job=json.loads(meta["job"]), position=position, announced=meta.get("announced") == "1",
                            states=states, stamps=stamps, deltas=deltas, applied=[r[0] for r in rows],
                            digests={r[0]: bytes(r[1]) for r in rows if r[1]})
        except (sqlite3.Error, ValueError, KeyError, TypeError) as exc:
            raise RoundJournalError(f"fog round journal {str(self.path)!r} is unreadable ({exc}); move it away to "
                                    "start the job from scratch") from None


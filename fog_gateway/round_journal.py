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
  weight it was folded in with, its lag) and, only for a rule that needs the deltas themselves (median, trimmed
  mean, Krum), the decoded float32 delta; a restarted gateway adds those again in the order they were accepted.
- ``sums``: per module, the open round's FedAvg running sum (float64), total weight and count: O(model) bytes per
  round, however many devices report.
- ``applied``: the idempotency keys applied, newest last, the last ``kept`` of them: a retransmission that arrives
  after a restart hears ``applied`` and is not counted twice.

Arrays are raw little-endian float32/float64 bytes behind a JSON layout header (journal_records.py): nothing is
ever unpickled.

Ordering: each write is one transaction. A batch of accepted updates (group commit: :meth:`RoundJournal.add_batch`)
commits their rows, their keys and the new sums of the modules they touched together, and the gateway acks those
updates only after that commit. Closing a cluster round commits the new cluster states, the advance to c + 1 (or
the end of the global round) and the removal of the closed round's deltas and sums together, before anything of
the new round is published; :meth:`RoundJournal.mark_announced` records the publications afterwards. After a
kill -9 at any instant the file holds each step whole or not at all.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fog_gateway.journal_records import (
    ROLES,
    Position,
    RoundJournalError,
    RoundSum,
    Snapshot,
    Stamp,
    State,
    StoredDelta,
    job_of,
    pack_state,
    same_job,
    staleness_weight,
    unpack_state,
)
from hffm_core.protocol import ModuleKey
from hffm_core.sqlite import BLOB_PAGE_SIZE, open_sqlite, transaction

__all__ = ["FORMAT", "ROLES", "Position", "RoundJournal", "RoundJournalError", "RoundJournalFormatError", "RoundSum",
           "Snapshot", "Stamp", "State", "StoredDelta", "job_of", "pack_state", "same_job", "staleness_weight",
           "unpack_state"]

# 3: FedAvg journals its running sum (table ``sums``) and a delta row holds no array then. A journal of format 2
# (every delta stored) is refused: it was written by an older gateway; move it away to start the job afresh.
FORMAT = "hffm-fog-round/3"
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
    layout      TEXT NOT NULL DEFAULT '',
    data        BLOB
);
CREATE TABLE IF NOT EXISTS sums (
    module  TEXT PRIMARY KEY,
    layout  TEXT NOT NULL,
    data    BLOB NOT NULL,
    weight  REAL NOT NULL,
    count   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS applied (seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE, digest BLOB);
"""
_HINT = "; move it away to start the job from scratch"


class RoundJournalFormatError(RoundJournalError):
    """The round journal was written in another format (an older gateway's): it is refused, never reinterpreted."""

    help = "the fog gateway's round journal has another format; move it away to start the job from scratch"


class RoundJournal:
    """The fog's round state in one SQLite file (see the module docstring). Safe to share between threads."""

    def __init__(self, path: Path, *, kept: int = 100_000, synchronous: str = "FULL") -> None:
        """Open (or create) the journal; ``kept``: how many applied keys to remember.

        Raises:
            RoundJournalFormatError: the file is a round journal of another format.
            RoundJournalError: the file cannot be opened, is not an SQLite database, or belongs to something else.
        """
        self.path = Path(path)
        self.kept = kept
        self._lock = threading.RLock()
        self._db = open_sqlite(self.path, synchronous=synchronous, schema=_SCHEMA, what="the fog round journal",
                               page_size=BLOB_PAGE_SIZE, error=RoundJournalError, setup=self._check, hint=_HINT)
        try:
            if self._db.execute("SELECT value FROM meta WHERE name = 'format'").fetchone() is None:
                self._db.execute("INSERT INTO meta (name, value) VALUES ('format', ?)", (FORMAT,))
        except sqlite3.Error as exc:
            self._db.close()
            raise RoundJournalError(f"cannot open the fog round journal {str(self.path)!r}: {exc}{_HINT}") from None

    def _check(self, db: sqlite3.Connection) -> None:
        """A file that already existed must be a round journal of this format."""
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and "meta" not in tables:
            raise RoundJournalError(f"{str(self.path)!r} is not a fog round journal (it holds tables "
                                    f"{sorted(tables)}){_HINT}")
        row = db.execute("SELECT value FROM meta WHERE name = 'format'").fetchone() if tables else None
        if row is not None and row[0] != FORMAT:
            raise RoundJournalFormatError(f"fog round journal {str(self.path)!r} has format {row[0]!r}, not "
                                          f"{FORMAT!r}{_HINT}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, steps: Callable[[sqlite3.Connection], None]) -> None:
        """Run ``steps`` in one transaction. Raises RoundJournalError when it cannot be committed."""
        with self._lock, transaction(self._db, what="fog round journal", path=self.path, error=RoundJournalError):
            steps(self._db)

    # -- writes --------------------------------------------------------------------------------------------------
    def add(self, delta: StoredDelta, *, global_round: int, cluster_round: int) -> None:
        """Commit one accepted update of cluster round (g, c), its delta and its key together (a robust rule's)."""
        self.add_batch([delta], global_round=global_round, cluster_round=cluster_round)

    def add_batch(self, deltas: Sequence[StoredDelta], *, global_round: int, cluster_round: int,
                  sums: Mapping[ModuleKey, RoundSum] | None = None) -> None:
        """Commit accepted updates of cluster round (g, c) with their keys, and the running ``sums`` of the modules
        they touched, in one transaction (group commit: the gateway acks them after it). A delta's array is stored
        only when it has one (a summed rule's updates come with ``delta={}``).

        Raises:
            RoundJournalError: the write failed (nothing was stored), a key is already stored, or a state is not
                float32/float64.
        """
        rows = [(d.key, global_round, cluster_round, str(d.module), d.sender, ",".join(d.covers), d.num_samples,
                 d.weight, d.lag, *(pack_state(d.delta) if d.delta else ("", None))) for d in deltas]
        summed = [(str(k), *pack_state(s.sums), s.weight, s.count) for k, s in (sums or {}).items()]

        def steps(db: sqlite3.Connection) -> None:
            db.executemany("INSERT INTO deltas (key, global_round, cluster_round, module, sender, covers, num_samples, "
                           "weight, lag, layout, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            db.executemany("INSERT OR REPLACE INTO sums (module, layout, data, weight, count) VALUES (?, ?, ?, ?, ?)",
                           summed)
            db.executemany("INSERT OR REPLACE INTO applied (key, digest) VALUES (?, ?)",
                           [(d.key, d.digest or None) for d in deltas])

        self._write(steps)

    def advance(self, position: Position, states: Mapping[str, Mapping[ModuleKey, State]],
                stamps: Mapping[ModuleKey, Stamp], *, job: Mapping[str, Any] | None = None) -> None:
        """Commit a new position with the states that changed, and drop the deltas and sums of the round it leaves:
        the start of a global round (with ``job`` and the ``start`` states) or the close of a cluster round.

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
            db.execute("DELETE FROM sums")
            db.execute("DELETE FROM applied WHERE seq <= (SELECT MAX(seq) FROM applied) - ?", (self.kept,))

        self._write(steps)

    def mark_announced(self) -> None:
        """Record that the versions and the announcement of the current position were published."""
        self._write(lambda db: db.execute("UPDATE meta SET value = '1' WHERE name = 'announced'"))

    def reset(self) -> None:
        """Forget everything but the format (a new job starts from scratch)."""
        def steps(db: sqlite3.Connection) -> None:
            for table in ("states", "deltas", "sums", "applied"):
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
            try:
                return self._load()
            except (sqlite3.Error, ValueError, KeyError, TypeError) as exc:
                raise RoundJournalError(f"fog round journal {str(self.path)!r} is unreadable ({exc}){_HINT}") from None

    def _load(self) -> Snapshot | None:
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
        missing = [k for k in position.modules if k not in states["start"] or k not in states["true"]
                   or k not in states["published"]]
        if missing:
            raise ValueError(f"no stored state for {[str(k) for k in missing]}")
        deltas = self._deltas(position)
        sums = {ModuleKey.parse(m): RoundSum(sums=unpack_state(layout, bytes(data)), weight=float(w), count=int(n))
                for m, layout, data, w, n in self._db.execute("SELECT module, layout, data, weight, count FROM sums")}
        for key, got in sums.items():
            counted = sum(1 for d in deltas if d.module == key)
            if got.count != counted or key not in position.modules:
                raise ValueError(f"the sum of {key} counts {got.count} update(s), the open round holds {counted}")
        bare = sorted({str(d.module) for d in deltas if not d.delta and d.module not in sums})
        if bare:
            raise ValueError(f"updates of {bare} were journaled with neither their deltas nor a sum")
        rows = self._db.execute("SELECT key, digest FROM applied ORDER BY seq").fetchall()
        return Snapshot(job=json.loads(meta["job"]), position=position, announced=meta.get("announced") == "1",
                        states=states, stamps=stamps, deltas=deltas, applied=[r[0] for r in rows],
                        digests={r[0]: bytes(r[1]) for r in rows if r[1]}, sums=sums)

    def _deltas(self, position: Position) -> list[StoredDelta]:
        """The open round's accepted updates, in order. Raises ValueError for one outside the open round."""
        deltas = []
        for key, g, c, module, sender, covers, n, weight, lag, layout, data in self._db.execute(
                "SELECT key, global_round, cluster_round, module, sender, covers, num_samples, weight, lag, layout, "
                "data FROM deltas ORDER BY seq"):
            if not position.in_round or (g, c) != (position.round_g, position.cluster_c) \
                    or ModuleKey.parse(module) not in position.modules:
                raise ValueError(f"delta {key!r} of {module} in round ({g},{c}) is outside the open round")
            deltas.append(StoredDelta(key=key, module=ModuleKey.parse(module), sender=sender, num_samples=n,
                                      weight=weight, lag=lag, delta=unpack_state(layout, bytes(data))
                                      if data is not None else {}, covers=tuple(covers.split(",")) if covers else ()))
        return deltas

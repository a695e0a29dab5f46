"""Durable aggregation state: running weighted sums and the idempotency keys folded into them, in one SQLite file.

A *bucket* is one aggregation (e.g. ``"g3/adapter:imu:activity"``: a module in a round). :meth:`DurableSums.add`
folds ``weight * delta`` into the bucket's float64 sum **and** records the key in the same transaction, so after
a kill -9 at any instant the file holds either both or neither: a restarted receiver resumes the bucket and a
retransmitted key is recognised and not applied twice. :meth:`close` marks a bucket done (a late key for it is
then answered ``expired``). Sums are stored as raw little-endian float64 bytes with a JSON header of names and
shapes: nothing is ever unpickled.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from hffm_core.aggregation.ranks import fold_into
from hffm_core.delivery.outbox import OutboxError
from hffm_core.errors import AggregationError
from hffm_core.sqlite import BLOB_PAGE_SIZE, open_sqlite, transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS applied (
    key     TEXT PRIMARY KEY,
    bucket  TEXT NOT NULL,
    weight  REAL NOT NULL,
    at      REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS applied_bucket ON applied (bucket);
CREATE TABLE IF NOT EXISTS buckets (
    bucket  TEXT PRIMARY KEY,
    layout  TEXT NOT NULL,
    sum     BLOB NOT NULL,
    weight  REAL NOT NULL,
    count   INTEGER NOT NULL,
    closed  INTEGER NOT NULL DEFAULT 0
);
"""
State = dict[str, np.ndarray]
ADDED, DUPLICATE, CLOSED = "added", "duplicate", "closed"


def _layout(delta: Mapping[str, np.ndarray]) -> str:
    return json.dumps([[name, list(np.shape(delta[name]))] for name in sorted(delta)])


def _pack(sums: Mapping[str, np.ndarray]) -> bytearray:
    """The sums as float64, in name order, copied once into one buffer (SQLite binds it as a BLOB)."""
    blob = bytearray(8 * sum(int(np.size(sums[n])) for n in sums))
    offset = 0
    for name in sorted(sums):
        arr = np.asarray(sums[name])
        np.frombuffer(blob, dtype="<f8", count=arr.size, offset=offset)[:] = arr.ravel()
        offset += 8 * arr.size
    return blob


def _unpack(layout: str, blob: bytes) -> State:
    out: State = {}
    offset = 0
    for name, shape in json.loads(layout):
        size = int(np.prod(shape, dtype=np.int64)) * 8
        out[name] = np.frombuffer(blob[offset:offset + size], dtype="<f8").reshape(shape).copy()
        offset += size
    if offset != len(blob):
        raise AggregationError(f"stored sum has {len(blob)} bytes, its layout needs {offset}")
    return out


class DurableSums:
    """Weighted sums per bucket plus the keys applied, committed atomically (SQLite, WAL)."""

    def __init__(self, path: Path, *, synchronous: str = "FULL") -> None:
        """Raises:
            ConfigError: ``synchronous`` is neither FULL nor NORMAL.
            OutboxError: the file cannot be opened (reused error: same storage layer).
        """
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = open_sqlite(self.path, synchronous=synchronous, schema=_SCHEMA, what="aggregation state",
                               page_size=BLOB_PAGE_SIZE, error=OutboxError)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, bucket: str, key: str, delta: Mapping[str, np.ndarray], weight: float) -> str:
        """Fold ``weight * delta`` into ``bucket`` unless ``key`` was applied before or the bucket is closed.

        Returns ``"added"``, ``"duplicate"`` (key seen before: nothing changed) or ``"closed"`` (nothing changed).

        Raises:
            AggregationError: a weight that is not a positive finite number, a non-finite delta, or a delta whose
                names or shapes differ from the bucket's; nothing changed.
        """
        if not (isinstance(weight, (int, float)) and np.isfinite(weight) and weight > 0):
            raise AggregationError(f"weight must be a positive finite number, got {weight!r}")
        arrays = {n: np.asarray(a, dtype=np.float64) for n, a in delta.items()}
        if not all(np.isfinite(a).all() for a in arrays.values()):
            raise AggregationError(f"delta for {key!r} holds NaN or Inf")
        layout = _layout(arrays)
        with self._lock, transaction(self._db, what="aggregation state", path=self.path, error=OutboxError):
            return self._add_locked(bucket, key, arrays, layout, float(weight))

    def _add_locked(self, bucket: str, key: str, arrays: State, layout: str, weight: float) -> str:
        if self._db.execute("SELECT 1 FROM applied WHERE key = ?", (key,)).fetchone() is not None:
            return DUPLICATE
        row = self._db.execute("SELECT layout, sum, weight, count, closed FROM buckets WHERE bucket = ?",
                               (bucket,)).fetchone()
        if row is not None and row[4]:
            return CLOSED
        if row is None:
            sums = {n: weight * a for n, a in arrays.items()}
            self._db.execute("INSERT INTO buckets (bucket, layout, sum, weight, count) VALUES (?, ?, ?, ?, 1)",
                             (bucket, layout, _pack(sums), weight))
        else:
            sums = _unpack(row[0], bytes(row[1]))
            if row[0] != layout:  # LoRA factors of another rank (ranks.py), else an AggregationError
                try:
                    sums = fold_into(sums, arrays, weight)
                except AggregationError as exc:
                    raise AggregationError(f"delta {key!r} does not match the tensors of bucket {bucket!r}: "
                                           f"{exc}") from None
            else:
                for name, arr in arrays.items():
                    sums[name] += weight * arr
            self._db.execute("UPDATE buckets SET layout = ?, sum = ?, weight = weight + ?, count = count + 1 "
                             "WHERE bucket = ?", (_layout(sums), _pack(sums), weight, bucket))
        self._db.execute("INSERT INTO applied (key, bucket, weight, at) VALUES (?, ?, ?, ?)",
                         (key, bucket, weight, time.time()))
        return ADDED

    def _query(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple]:  # type: ignore[type-arg]
        try:
            with self._lock:
                return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise OutboxError(f"aggregation state {str(self.path)!r}: {exc}") from None

    def clear(self) -> None:
        """Forget every bucket and key (a job starting from scratch)."""
        self._query("DELETE FROM applied")
        self._query("DELETE FROM buckets")

    def close_bucket(self, bucket: str) -> None:
        """Mark ``bucket`` closed (idempotent); a bucket that never got a key is created closed and empty."""
        self._query("INSERT OR IGNORE INTO buckets (bucket, layout, sum, weight, count, closed) "
                    "VALUES (?, '[]', x'', 0, 0, 1)", (bucket,))
        self._query("UPDATE buckets SET closed = 1 WHERE bucket = ?", (bucket,))

    def result(self, bucket: str) -> tuple[State, float, int]:
        """(the weighted sum, the total weight, the number of keys) of ``bucket``; empty when it has none."""
        rows = self._query("SELECT layout, sum, weight, count FROM buckets WHERE bucket = ?", (bucket,))
        if not rows:
            return {}, 0.0, 0
        layout, blob, weight, count = rows[0]
        return _unpack(layout, bytes(blob)), float(weight), int(count)

    def is_closed(self, bucket: str) -> bool:
        rows = self._query("SELECT closed FROM buckets WHERE bucket = ?", (bucket,))
        return bool(rows and rows[0][0])

    def has(self, key: str) -> bool:
        return bool(self._query("SELECT 1 FROM applied WHERE key = ?", (key,)))

    def bucket_of(self, key: str) -> str | None:
        rows = self._query("SELECT bucket FROM applied WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def keys(self, bucket: str | None = None) -> set[str]:
        if bucket is None:
            return {r[0] for r in self._query("SELECT key FROM applied")}
        return {r[0] for r in self._query("SELECT key FROM applied WHERE bucket = ?", (bucket,))}

    def buckets(self, *, closed: bool | None = None) -> list[str]:
        if closed is None:
            return [r[0] for r in self._query("SELECT bucket FROM buckets ORDER BY bucket")]
        return [r[0] for r in self._query("SELECT bucket FROM buckets WHERE closed = ? ORDER BY bucket",
                                          (int(closed),))]

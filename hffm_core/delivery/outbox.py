"""The outbox: an update stays on disk (SQLite, WAL) until the next tier's application-level ack says it was applied.

Every row is one message under its idempotency key: the topic, the encoded payload, the round it belongs to, how
often it was sent and when it is due again. :meth:`Outbox.due` hands out what should be (re)sent now; after a send,
:meth:`Outbox.mark_sent` pushes the row back by an exponential backoff (``base_s * 2**attempts``, capped at
``max_s``, with up to 20 % seeded jitter so that many senders do not retransmit in lockstep). :meth:`Outbox.ack`
deletes rows; :meth:`Outbox.expire_rounds_before` deletes the rows of rounds that closed and logs each one. A
restarted process opens the same file and finds every row it had not seen acknowledged: nothing is lost to a
crash, and what was in flight is sent again (receivers dedupe by key).

Durability: each call is one transaction, committed before it returns. ``synchronous=FULL`` (the default) also
survives a power cut; ``NORMAL`` survives a process crash (kill -9) and is faster.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from hffm_core.errors import ConfigError, StorageError
from hffm_core.sqlite import open_sqlite, transaction

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    key      TEXT PRIMARY KEY,
    topic    TEXT NOT NULL,
    payload  BLOB NOT NULL,
    round    INTEGER NOT NULL,
    created  REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (next_at);
"""


class OutboxError(StorageError):
    """The outbox file could not be opened or written (a full disk, a corrupt file, a foreign schema). A
    StorageError (exit code 11): a service stops on it rather than count it as a bad message, since what it was
    about to commit (an update, an ack's deletion) is not on disk."""

    help = "the on-disk outbox could not be opened or written"


@dataclass(frozen=True, slots=True)
class Entry:
    """One pending message."""

    key: str
    topic: str
    payload: bytes
    round: int
    attempts: int


class Outbox:
    """A durable queue of unacknowledged messages, keyed by idempotency key. Safe to share between threads."""

    def __init__(self, path: Path, *, base_s: float = 1.0, max_s: float = 30.0, synchronous: str = "FULL",
                 seed: int = 0) -> None:
        """Raises:
            ConfigError: a backoff that is not 0 < base_s <= max_s, or an unknown ``synchronous`` mode.
            OutboxError: the file cannot be opened as an outbox.
        """
        if not (0 < base_s <= max_s) or max_s > 3600:
            raise ConfigError(f"outbox backoff must satisfy 0 < base_s <= max_s <= 3600, got {base_s!r}, {max_s!r}")
        self.path = Path(path)
        self.base_s = base_s
        self.max_s = max_s
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._db = open_sqlite(self.path, synchronous=synchronous, schema=_SCHEMA, what="outbox", error=OutboxError)
        pending = self.pending()
        if pending:
            log.info("outbox %s: %d unacknowledged messages reloaded; resending them", self.path.name, pending)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _run(self, sql: str, args: Iterable[object] = ()) -> sqlite3.Cursor:
        try:
            with self._lock:
                return self._db.execute(sql, tuple(args))
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox {str(self.path)!r}: {exc}") from None

    def _many(self, sql: str, rows: Iterable[tuple[object, ...]]) -> list[int]:
        """``sql`` once per row in one transaction (one commit, one fsync under FULL); each row's rowcount."""
        rows = list(rows)
        if not rows:
            return []
        with self._lock, transaction(self._db, what="outbox", path=self.path, error=OutboxError) as db:
            return [db.execute(sql, row).rowcount for row in rows]

    def put(self, key: str, topic: str, payload: bytes, *, round_: int, now: float | None = None) -> bool:
        """Store a message to send now. Returns False (and keeps the stored one) if ``key`` is already pending.

        Raises:
            OutboxError: the row could not be written.
        """
        return self.put_many([(key, topic, payload, round_)], now=now)[0]

    def put_many(self, messages: Iterable[tuple[str, str, bytes, int]], *, now: float | None = None) -> list[bool]:
        """Store several ``(key, topic, payload, round)`` messages to send now, in one transaction (a device's round
        of updates); for each, whether it was new (False: ``key`` was already pending and the stored one stays).

        Raises:
            OutboxError: the rows could not be written (none was).
        """
        now = time.time() if now is None else now
        counts = self._many("INSERT OR IGNORE INTO outbox (key, topic, payload, round, created, next_at) "
                            "VALUES (?, ?, ?, ?, ?, ?)", [(k, t, p, r, now, now) for k, t, p, r in messages])
        return [c == 1 for c in counts]

    def due(self, *, now: float | None = None, limit: int = 100) -> list[Entry]:
        """Up to ``limit`` messages whose send time has come, oldest due first."""
        now = time.time() if now is None else now
        rows = self._run("SELECT key, topic, payload, round, attempts FROM outbox WHERE next_at <= ? "
                         "ORDER BY next_at, created LIMIT ?", (now, limit)).fetchall()
        return [Entry(key=r[0], topic=r[1], payload=bytes(r[2]), round=r[3], attempts=r[4]) for r in rows]

    def backoff(self, attempts: int) -> float:
        """Seconds before the next try after ``attempts`` sends: base * 2**(attempts-1), capped, plus jitter."""
        delay = min(self.max_s, self.base_s * (2 ** max(0, min(attempts - 1, 30))))
        return delay * (1.0 + 0.2 * self._rng.random())

    def mark_sent(self, key: str, *, now: float | None = None) -> None:
        """Count a send of ``key`` and push it back by the backoff."""
        now = time.time() if now is None else now
        row = self._run("SELECT attempts FROM outbox WHERE key = ?", (key,)).fetchone()
        if row is None:
            return  # acknowledged meanwhile
        attempts = int(row[0]) + 1
        self._run("UPDATE outbox SET attempts = ?, next_at = ? WHERE key = ?",
                  (attempts, now + self.backoff(attempts), key))

    def sent(self, entries: Iterable[Entry], *, now: float | None = None) -> None:
        """Count one send of each of ``entries`` (as :meth:`due` handed them out) and push each back by the
        backoff, in one transaction. A key acknowledged meanwhile stays gone."""
        now = time.time() if now is None else now
        rows = [(e.attempts + 1, now + self.backoff(e.attempts + 1), e.key) for e in entries]
        if rows:
            self._many("UPDATE outbox SET attempts = ?, next_at = ? WHERE key = ?", rows)

    def defer(self, key: str, seconds: float, *, now: float | None = None) -> None:
        """Try ``key`` again after ``seconds`` without counting an attempt (e.g. the link is down)."""
        now = time.time() if now is None else now
        self._run("UPDATE outbox SET next_at = ? WHERE key = ?", (now + seconds, key))

    def ack(self, keys: Iterable[str]) -> int:
        """Delete acknowledged keys; returns how many were pending (an ack for an unknown key is harmless)."""
        return sum(self._many("DELETE FROM outbox WHERE key = ?", [(key,) for key in keys]))

    def drop(self, key: str, reason: str) -> bool:
        """Delete one key the receiver will never take, and log why."""
        gone = self._run("DELETE FROM outbox WHERE key = ?", (key,)).rowcount == 1
        if gone:
            log.warning("outbox %s: dropped %s: %s", self.path.name, key, reason)
        return gone

    def expire_rounds_before(self, round_: int) -> list[str]:
        """Delete every message of a round below ``round_`` (those rounds closed), logging each key."""
        keys = [r[0] for r in self._run("SELECT key FROM outbox WHERE round < ?", (round_,)).fetchall()]
        for key in keys:
            self._run("DELETE FROM outbox WHERE key = ?", (key,))
            log.warning("outbox %s: expired %s: its round closed before it was acknowledged", self.path.name, key)
        return keys

    def pending(self) -> int:
        return int(self._run("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def keys(self) -> set[str]:
        return {r[0] for r in self._run("SELECT key FROM outbox").fetchall()}

    def __contains__(self, key: str) -> bool:
        return self._run("SELECT 1 FROM outbox WHERE key = ?", (key,)).fetchone() is not None

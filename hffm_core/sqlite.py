"""Opening an hffm state file: one SQLite connection in WAL mode, errors raised as a :class:`StorageError`.

The outbox, the durable sums and the fog's round journal each keep their state in one SQLite file, committed
before the process acks or sends anything. They open it the same way: the folder created, autocommit
(``isolation_level=None``: each statement, or each explicit ``BEGIN IMMEDIATE`` ... ``COMMIT``, is one
transaction), usable from the thread that did not open it (the owner serialises use with a lock), the WAL journal,
``synchronous`` FULL (survives a power cut) or NORMAL (survives a process crash, faster), and a busy timeout.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from hffm_core.errors import ConfigError, HffmError, StorageError

SYNC_MODES = ("FULL", "NORMAL")
BUSY_TIMEOUT_S = 5.0
WAL_CHECKPOINT_BYTES = 4 * 1024 * 1024
BLOB_PAGE_SIZE = 32768  # a 7.2 MB commit of 10 sums + 35 keys: 95 ms at 4 KiB pages, 44 ms at 32 KiB (2-core box)


def open_sqlite(path: Path, *, synchronous: str = "FULL", schema: str = "", what: str = "state file",
                error: type[HffmError] = StorageError,
                setup: Callable[[sqlite3.Connection], None] | None = None,
                busy_timeout_s: float = BUSY_TIMEOUT_S, hint: str = "", page_size: int = 0) -> sqlite3.Connection:
    """Open (or create) the SQLite file ``path``: WAL, ``synchronous``, a busy timeout, then ``setup`` (checks of a
    file that already existed, e.g. its format) and ``schema`` (``CREATE ... IF NOT EXISTS`` statements).
    ``page_size`` (> 0) applies to a new file only: files of large blobs (running sums of whole modules) commit
    about twice as fast with 32 KiB pages as with SQLite's 4 KiB (BLOB_PAGE_SIZE).

    Raises:
        ConfigError: ``synchronous`` is not one of :data:`SYNC_MODES`.
        StorageError: (``error``, a subclass) the folder or file cannot be created or opened, is not an SQLite
            database, or ``setup`` or ``schema`` failed with an SQLite or OS error; the message names ``what``
            and the path, then ``hint`` (what the operator can do). An ``error`` raised by ``setup`` passes through.
    """
    if synchronous not in SYNC_MODES:
        raise ConfigError(f"unknown {what} synchronous mode {synchronous!r}; expected one of {list(SYNC_MODES)}")
    db = None
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(path), timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
        if page_size:
            db.execute(f"PRAGMA page_size={int(page_size)}")  # before WAL: an existing file keeps its own
        db.execute("PRAGMA journal_mode=WAL")
        # Checkpoint the WAL at ~4 MiB whatever the page size (SQLite's default is 1,000 pages: 32 MiB at 32 KiB)
        pages = db.execute("PRAGMA page_size").fetchone()[0]
        db.execute(f"PRAGMA wal_autocheckpoint={max(1, WAL_CHECKPOINT_BYTES // int(pages))}")
        db.execute(f"PRAGMA synchronous={synchronous}")
        if setup is not None:
            setup(db)
        if schema:
            db.executescript(schema)
    except (sqlite3.Error, OSError) as exc:
        if db is not None:
            db.close()
        raise error(f"cannot open {what} {str(path)!r}: {exc}{hint}") from None
    except BaseException:
        if db is not None:
            db.close()
        raise
    return db


@contextmanager
def transaction(db: sqlite3.Connection, *, what: str, path: Path,
                error: type[HffmError] = StorageError) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` around the block, rolled back when the block raises (the exception then
    passes through). The caller holds the connection's lock.

    Raises:
        StorageError: (``error``) an SQLite error in the block or at commit; nothing was committed.
    """
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        raise error(f"{what} {str(path)!r}: {exc}") from None

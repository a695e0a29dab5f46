"""The shared SQLite opener and transaction of the state files (outbox, durable sums, round journal)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hffm_core.errors import ConfigError, StorageError
from hffm_core.sqlite import open_sqlite, transaction


class _OwnError(StorageError):
    pass


def test_opens_in_wal_with_the_schema_and_the_sync_mode(tmp_path: Path) -> None:
    db = open_sqlite(tmp_path / "sub" / "s.sqlite", synchronous="NORMAL", schema="CREATE TABLE t (x INTEGER);")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert db.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 0
    db.close()


def test_refuses_an_unknown_sync_mode(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown outbox synchronous mode 'OFF'"):
        open_sqlite(tmp_path / "s.sqlite", synchronous="OFF", what="outbox")


def test_a_file_that_is_not_sqlite_raises_the_callers_error(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    path.write_bytes(b"not a database, just bytes" * 100)
    with pytest.raises(_OwnError, match="cannot open the journal .*; move it away"):
        open_sqlite(path, schema="CREATE TABLE t (x INTEGER);", what="the journal", error=_OwnError,
                    hint="; move it away")


def test_an_error_raised_by_setup_passes_through(tmp_path: Path) -> None:
    def setup(db: object) -> None:
        raise _OwnError("foreign file")

    with pytest.raises(_OwnError, match="foreign file"):
        open_sqlite(tmp_path / "s.sqlite", setup=setup, error=_OwnError)


def test_transaction_commits_or_rolls_back(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    db = open_sqlite(path, schema="CREATE TABLE t (x INTEGER UNIQUE);")
    with transaction(db, what="state", path=path):
        db.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(RuntimeError), transaction(db, what="state", path=path):
        db.execute("INSERT INTO t VALUES (2)")
        raise RuntimeError("the caller's own failure")
    with pytest.raises(_OwnError, match="UNIQUE"), transaction(db, what="state", path=path, error=_OwnError):
        db.execute("INSERT INTO t VALUES (3)")
        db.execute("INSERT INTO t VALUES (1)")
    assert [r[0] for r in db.execute("SELECT x FROM t")] == [1]
    db.close()


def test_a_page_size_applies_to_a_new_file_and_an_old_file_keeps_its_own(tmp_path: Path) -> None:
    from fog_gateway.round_journal import RoundJournal
    from hffm_core.sqlite import BLOB_PAGE_SIZE, WAL_CHECKPOINT_BYTES

    db = open_sqlite(tmp_path / "new.sqlite", schema="CREATE TABLE t (x BLOB);", page_size=BLOB_PAGE_SIZE)
    assert db.execute("PRAGMA page_size").fetchone()[0] == BLOB_PAGE_SIZE
    # the WAL is checkpointed at the same bytes whatever the page size (not 1,000 pages: 32 MiB at 32 KiB)
    assert db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] * BLOB_PAGE_SIZE == WAL_CHECKPOINT_BYTES
    db.close()
    old = open_sqlite(tmp_path / "old.sqlite", schema="CREATE TABLE t (x BLOB);")
    assert old.execute("PRAGMA page_size").fetchone()[0] == 4096
    assert old.execute("PRAGMA wal_autocheckpoint").fetchone()[0] * 4096 == WAL_CHECKPOINT_BYTES
    old.close()
    again = open_sqlite(tmp_path / "old.sqlite", page_size=BLOB_PAGE_SIZE)
    assert again.execute("PRAGMA page_size").fetchone()[0] == 4096, "a file's page size is fixed once it exists"
    again.close()
    journal = RoundJournal(tmp_path / "fog.sqlite")
    assert journal._db.execute("PRAGMA page_size").fetchone()[0] == BLOB_PAGE_SIZE
    journal.close()

"""SQLite store of global module versions and per-round metrics (WAL mode; one writer: the cloud service)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from hffm_core.errors import DecodeError
from hffm_core.protocol import ModuleKey, ModuleVersion, decode, encode

_SCHEMA = """
CREATE TABLE IF NOT EXISTS module_versions (
    module TEXT NOT NULL, version INTEGER NOT NULL, sha256 TEXT NOT NULL, payload BLOB NOT NULL,
    created_at REAL NOT NULL, PRIMARY KEY (module, version));
CREATE TABLE IF NOT EXISTS round_metrics (
    round INTEGER NOT NULL, task TEXT NOT NULL, accuracy REAL NOT NULL, PRIMARY KEY (round, task));
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY, fogs_reported TEXT NOT NULL, modules_updated INTEGER NOT NULL,
    closed_at REAL NOT NULL);
"""


class VersionStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def put_version(self, version: ModuleVersion) -> None:
        """Store one global module version (the encoded message, so it can be re-published as is)."""
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO module_versions VALUES (?, ?, ?, ?, ?)",
                (str(version.key), version.global_round, version.sha256, encode(version), time.time()),
            )

    def latest_versions(self, job: str) -> dict[ModuleKey, ModuleVersion]:
        """The newest stored version of each module of ``job``. Versions of other jobs (each names its job; a row
        from before job ids does not decode) are passed over: a database kept across jobs never feeds an earlier
        job's versions to a resumed one."""
        out: dict[ModuleKey, ModuleVersion] = {}
        for (payload,) in self._db.execute("SELECT payload FROM module_versions ORDER BY version"):
            try:
                v = decode(payload, ModuleVersion)
            except DecodeError:
                continue
            if v.job == job:
                out[v.key] = v
        return out

    def put_round(self, rnd: int, accuracy: dict[str, float], fogs: list[str], modules_updated: int) -> None:
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO round_metrics VALUES (?, ?, ?)",
                                 [(rnd, t, a) for t, a in accuracy.items()])
            self._db.execute("INSERT OR REPLACE INTO rounds VALUES (?, ?, ?, ?)",
                             (rnd, ",".join(fogs), modules_updated, time.time()))

    def round_metrics(self) -> dict[int, dict[str, float]]:
        out: dict[int, dict[str, float]] = {}
        for rnd, task, acc in self._db.execute("SELECT round, task, accuracy FROM round_metrics ORDER BY round"):
            out.setdefault(rnd, {})[task] = acc
        return out

    def version_count(self, key: ModuleKey) -> int:
        (n,) = self._db.execute("SELECT COUNT(*) FROM module_versions WHERE module = ?", (str(key),)).fetchone()
        return int(n)

    def close(self) -> None:
        self._db.close()

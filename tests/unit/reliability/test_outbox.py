"""The on-disk outbox: rows stay until acked, back off exponentially (bounded), expire with their round, and
survive reopening the file."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from hffm_core.delivery.outbox import Outbox, OutboxError
from hffm_core.errors import ConfigError


def test_put_due_ack(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    assert box.put("k1", "t/1", b"a", round_=1, now=100.0)
    assert not box.put("k1", "t/1", b"other", round_=1, now=100.0)  # same key: the stored one stays
    box.put("k2", "t/2", b"b", round_=2, now=101.0)
    due = box.due(now=101.0)
    assert [(e.key, e.payload, e.attempts) for e in due] == [("k1", b"a", 0), ("k2", b"b", 0)]
    assert box.ack(["k1", "unknown"]) == 1
    assert box.keys() == {"k2"} and "k2" in box and box.pending() == 1


def test_backoff_grows_and_is_capped(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", base_s=0.5, max_s=4.0)
    delays = [box.backoff(n) for n in range(1, 10)]
    for n, delay in enumerate(delays, start=1):
        nominal = min(4.0, 0.5 * 2 ** (n - 1))
        assert nominal <= delay <= nominal * 1.2
    box.put("k", "t", b"x", round_=1, now=0.0)
    box.mark_sent("k", now=0.0)
    assert box.due(now=0.4) == [] and [e.attempts for e in box.due(now=0.7)] == [1]
    box.defer("k", 10.0, now=1.0)
    assert box.due(now=10.0) == [] and box.due(now=11.1)[0].attempts == 1


def test_expire_closed_rounds_logs_each_key(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    for r in (1, 2, 3):
        box.put(f"k{r}", "t", b"x", round_=r)
    with caplog.at_level(logging.WARNING):
        assert sorted(box.expire_rounds_before(3)) == ["k1", "k2"]
    assert "expired k1" in caplog.text and "expired k2" in caplog.text
    assert box.keys() == {"k3"}
    assert box.drop("k3", "receiver rejected it") and "dropped k3: receiver rejected it" in caplog.text


def test_pending_rows_survive_reopening(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "o.sqlite"
    box = Outbox(path)
    box.put("k1", "t", b"payload", round_=1)
    box.put("k2", "t", b"payload2", round_=1)
    box.ack(["k2"])
    box.close()
    with caplog.at_level(logging.INFO):
        again = Outbox(path)
    assert "1 unacknowledged messages reloaded" in caplog.text
    assert [e.payload for e in again.due()] == [b"payload"]


@pytest.mark.parametrize("kwargs, match", [
    ({"base_s": 0.0}, "backoff"), ({"base_s": 5.0, "max_s": 1.0}, "backoff"), ({"max_s": 7200.0}, "backoff"),
    ({"synchronous": "OFF"}, "unknown outbox synchronous mode 'OFF'"),
])
def test_bad_settings_are_config_errors(tmp_path: Path, kwargs: dict, match: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError, match=match):
        Outbox(tmp_path / "o.sqlite", **kwargs)


def test_a_file_that_is_not_sqlite_is_a_named_error(tmp_path: Path) -> None:
    bad = tmp_path / "o.sqlite"
    bad.write_bytes(b"not a database" * 100)
    with pytest.raises(OutboxError, match="cannot open outbox"):
        Outbox(bad)


class _CountingCommits:
    """Counts the transactions an outbox commits (each is one fsync under synchronous=FULL)."""

    def __init__(self, box: Outbox) -> None:
        self.commits = 0
        box._db.set_trace_callback(self._trace)

    def _trace(self, sql: str) -> None:
        self.commits += sql.strip().upper() == "COMMIT"


def test_a_batch_is_one_transaction(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", base_s=1.0, max_s=8.0)
    box.put("old", "t", b"kept", round_=1, now=0.0)
    counter = _CountingCommits(box)
    new = box.put_many([("a", "t/a", b"1", 2), ("old", "t", b"other", 2), ("b", "t/b", b"2", 2)], now=5.0)
    assert new == [True, False, True] and counter.commits == 1
    due = box.due(now=5.0)
    assert [(e.key, e.payload) for e in due] == [("old", b"kept"), ("a", b"1"), ("b", b"2")]
    box.sent(due, now=5.0)  # one send each, pushed back by the backoff, in one transaction
    assert counter.commits == 2 and box.due(now=5.9) == []
    assert sorted((e.key, e.attempts) for e in box.due(now=6.3)) == [("a", 1), ("b", 1), ("old", 1)]
    assert box.ack(["a", "b", "gone"]) == 2 and counter.commits == 3 and box.keys() == {"old"}
    box.sent([], now=7.0)
    assert box.ack([]) == 0 and counter.commits == 3  # nothing to write: no transaction


def test_a_batch_that_fails_writes_nothing(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    with pytest.raises(OutboxError, match="outbox"):
        box.put_many([("a", "t", b"1", 1), ("b", "t", object(), 1)])  # type: ignore[list-item]  # cannot be stored
    assert box.pending() == 0

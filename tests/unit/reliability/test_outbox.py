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

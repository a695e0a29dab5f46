"""The dropped-message watch alerts once per increase of the broker's counter, also across a broker restart."""

from __future__ import annotations

import logging

import pytest

from hffm_core.delivery.watch import DroppedWatch


def test_each_increase_is_one_alert(caplog: pytest.LogCaptureFixture) -> None:
    watch = DroppedWatch("fog-a")
    with caplog.at_level(logging.WARNING):
        assert [watch.update(v) for v in (b"0", b"0", b"5", b"5", b"12", b"2", b"junk", b"", b"9" * 30)] == \
            [0, 0, 5, 0, 7, 2, 0, 0, 0]
    assert watch.stats() == {"alerts": 3, "dropped": 14}
    assert caplog.text.count("ALERT fog-a: the broker dropped") == 3


def test_drops_before_the_first_reading_are_reported() -> None:
    watch = DroppedWatch("cloud")
    assert watch.update(b"3") == 3 and watch.alerts == 1

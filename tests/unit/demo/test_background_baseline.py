"""The demo's local-only baseline runs in the background at nice 19 only where its workers can be set back to
normal priority when the federation ends (a nice-19 worker beside a busy process would crawl)."""

from __future__ import annotations

import os
from multiprocessing import get_context

import pytest

from hffm_lab.demo.runner import BACKGROUND_NICE, can_renice, renice_pool


def _niceness(_: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, 0)


def test_background_only_where_a_priority_can_be_raised_again() -> None:
    assert can_renice() == (os.geteuid() == 0)


@pytest.mark.skipif(os.geteuid() != 0, reason="raising a priority again needs root")
def test_the_workers_start_niced_and_are_set_back() -> None:
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    pool = get_context("spawn").Pool(2, initializer=os.nice, initargs=(BACKGROUND_NICE,))
    try:
        assert set(pool.map(_niceness, range(8))) == {min(19, mine + BACKGROUND_NICE)}
        renice_pool(pool, mine)
        assert set(pool.map(_niceness, range(8))) == {mine}
    finally:
        pool.terminate()
        pool.join()

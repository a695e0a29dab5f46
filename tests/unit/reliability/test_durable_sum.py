"""Durable sums: a key is folded in exactly once, also across reopening and a kill -9 at any instant."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hffm_core.delivery.durable_sum import ADDED, CLOSED, DUPLICATE, DurableSums
from hffm_core.errors import AggregationError


def test_add_dedupes_and_sums(tmp_path: Path) -> None:
    sums = DurableSums(tmp_path / "s.sqlite")
    a = {"w": np.array([1.0, 2.0]), "b": np.array(3.0)}
    assert sums.add("g1", "k1", a, 2.0) == ADDED
    assert sums.add("g1", "k1", a, 2.0) == DUPLICATE
    assert sums.add("g1", "k2", {"w": np.array([1.0, 0.0]), "b": np.array(1.0)}, 1.0) == ADDED
    total, weight, count = sums.result("g1")
    np.testing.assert_array_equal(total["w"], [3.0, 4.0])
    assert float(total["b"]) == 7.0 and (weight, count) == (3.0, 2)
    assert sums.keys("g1") == {"k1", "k2"} and sums.bucket_of("k2") == "g1" and sums.has("k1")
    sums.close_bucket("g1")
    assert sums.add("g1", "k3", a, 1.0) == CLOSED and sums.is_closed("g1")
    sums.close_bucket("g2")  # empty and closed
    assert sums.result("g2") == ({}, 0.0, 0) and sums.buckets(closed=True) == ["g1", "g2"]
    assert sums.result("nope") == ({}, 0.0, 0)


def test_state_survives_reopening(tmp_path: Path) -> None:
    sums = DurableSums(tmp_path / "s.sqlite")
    sums.add("g1", "k1", {"w": np.ones(3)}, 1.0)
    sums.close()
    again = DurableSums(tmp_path / "s.sqlite")
    assert again.add("g1", "k1", {"w": np.ones(3)}, 1.0) == DUPLICATE
    np.testing.assert_array_equal(again.result("g1")[0]["w"], np.ones(3))
    assert again.buckets(closed=False) == ["g1"]


@pytest.mark.parametrize("delta, weight, match", [
    ({"w": np.ones(3)}, 0.0, "weight"), ({"w": np.ones(3)}, float("nan"), "weight"),
    ({"w": np.array([1.0, np.inf, 0.0])}, 1.0, "NaN or Inf"), ({"w": np.ones(4)}, 1.0, "does not match"),
    ({"v": np.ones(3)}, 1.0, "does not match"),
])
def test_bad_deltas_change_nothing(tmp_path: Path, delta: dict, weight: float, match: str) -> None:  # type: ignore[type-arg]
    sums = DurableSums(tmp_path / "s.sqlite")
    sums.add("g1", "k1", {"w": np.ones(3)}, 1.0)
    with pytest.raises(AggregationError, match=match):
        sums.add("g1", "bad", delta, weight)
    assert not sums.has("bad") and sums.result("g1")[2] == 1


_WRITER = """
import sys, numpy as np
from hffm_core.delivery.durable_sum import DurableSums
sums = DurableSums(sys.argv[1], synchronous="NORMAL")
print("ready", flush=True)
for i in range(100000):
    sums.add("g1", f"k{i}", {"ind": np.ones(64)}, 1.0)
"""


def test_kill9_mid_write_leaves_sum_and_keys_consistent(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    sums = DurableSums(path)
    total, weight, count = sums.result("g1")
    keys = sums.keys("g1")
    assert count == len(keys) == weight > 0
    np.testing.assert_array_equal(total["ind"], np.full(64, float(count)))
    next_key = f"k{count}"
    assert not sums.has(next_key) and sums.add("g1", next_key, {"ind": np.ones(64)}, 1.0) == ADDED

"""The cloud's merge of the fogs' aggregates: FedAvg by default, or a robust rule over each fog's delta, durably."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cloud.round_state import CloudRoundState
from hffm_core.errors import ConfigError
from hffm_core.protocol import ModuleKey

KEY = ModuleKey.head("digit")
HONEST = [np.array([1.0, 2.0], np.float32), np.array([1.2, 1.8], np.float32), np.array([0.8, 2.2], np.float32)]


def _fill(rs: CloudRoundState, poisoned: np.ndarray | None = None) -> None:
    rs.open(1)
    deltas = [*HONEST, poisoned] if poisoned is not None else HONEST
    for i, d in enumerate(deltas):
        assert rs.add(KEY, f"k{i}", {"w": d}, 10.0, fog=f"fog-{i}") == "added"


def test_fedavg_is_the_weighted_mean(tmp_path: Path) -> None:
    rs = CloudRoundState(tmp_path)
    _fill(rs)
    np.testing.assert_allclose(rs.results([KEY])[KEY]["w"], [1.0, 2.0], rtol=1e-6)


def test_median_ignores_a_boosted_fog_and_survives_a_restart(tmp_path: Path) -> None:
    rs = CloudRoundState(tmp_path, aggregator="median")
    _fill(rs, poisoned=np.array([500.0, -500.0], np.float32))
    assert rs.add(KEY, "k0", {"w": HONEST[0]}, 10.0, fog="fog-0") == "duplicate"  # each key once
    rs.save()
    rs.close_files()
    again = CloudRoundState(tmp_path, aggregator="median")  # a restarted cloud
    assert again.load() == 1
    merged = again.results([KEY])[KEY]["w"]
    assert np.all(np.abs(merged - np.array([1.0, 2.0])) <= 0.25)  # FedAvg would be off by ~125
    fedavg = CloudRoundState(tmp_path / "plain")
    _fill(fedavg, poisoned=np.array([500.0, -500.0], np.float32))
    assert abs(fedavg.results([KEY])[KEY]["w"][0] - 1.0) > 100


def test_a_rule_outside_its_tolerance_refuses_and_never_averages(tmp_path: Path) -> None:
    rs = CloudRoundState(tmp_path, aggregator="krum", aggregator_params={"byzantine": 1})
    _fill(rs)  # n = 3 fogs: Krum needs n > 2f + 2 = 4
    assert rs.results([KEY]) == {}
    assert KEY in rs.merge_refused and "krum" in rs.merge_refused[KEY].lower()


def test_bad_rule_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown aggregator 'mean'"):
        CloudRoundState(tmp_path, aggregator="mean")


def test_a_report_saved_but_not_counted_before_a_kill_counts_after_the_restart(tmp_path: Path) -> None:
    """The cloud saves a fog's report (and acks it) before it counts it; a kill in between left the fog uncounted
    for ever, since an acked fog sends nothing more. The restarted cloud settles every saved report."""
    rs = CloudRoundState(tmp_path)
    rs.open(1)
    assert rs.add(KEY, "demo/fog-2/1/head:_:digit", {"w": HONEST[0]}, 10.0) == "added"
    rs.report("fog-2", {"demo/fog-2/1/head:_:digit"})  # saved and acked; the kill comes before check_reported
    rs.report("fog-1", {"demo/fog-1/1/head:_:digit"})  # its aggregate has not arrived
    rs.close_files()
    again = CloudRoundState(tmp_path)
    assert again.load() == 1 and again.reported == set()
    assert again.settle_promised() == {"fog-2"}
    assert again.reported == {"fog-2"} and set(again.promised) == {"fog-1"}
    third = CloudRoundState(tmp_path)  # and the count itself is saved
    assert third.load() == 1 and third.reported == {"fog-2"}

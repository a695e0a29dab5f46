"""Per-device test splits (hffm_lab/data/partition.own_test_splits): drawn from the held-out test split only, in the
device's own label mix, seeded."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from hffm_lab.data import MODALITIES, assign_modalities, load_m3t_bench, partition
from hffm_lab.data.partition import own_test_splits

DEVICES = [f"dev{i}" for i in range(6)]


@pytest.fixture(scope="module")
def fleet():  # type: ignore[no-untyped-def]
    bench = load_m3t_bench(seed=0)
    shards = partition(bench, assign_modalities(DEVICES, modalities=list(MODALITIES), per_device=2, seed=0),
                       alpha=0.1, seed=0)
    return bench, shards, own_test_splits(bench, shards, seed=0)


def _rows(x: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in x}


def test_every_device_task_gets_a_split_from_the_test_pool_only(fleet) -> None:  # type: ignore[no-untyped-def]
    bench, shards, own = fleet
    for dev, shard in shards.items():
        assert set(own[dev]) == set(shard.data)
        for task, (x, y) in own[dev].items():
            test_rows = _rows(bench[task].x_test)
            assert _rows(x) <= test_rows
            # (no train-overlap check by value: PLAID itself repeats some recordings across its train/test pool)
            assert len(y) >= min(20, len(bench[task].y_test)) or len(set(y)) < len(set(bench[task].y_test))


def test_the_split_follows_the_devices_label_mix(fleet) -> None:  # type: ignore[no-untyped-def]
    _bench, shards, own = fleet
    for dev, shard in shards.items():
        for task, (_x, y_train) in shard.data.items():
            y = own[dev][task][1]
            assert set(np.unique(y)) <= set(np.unique(y_train))
            top = Counter(y_train.tolist()).most_common(1)[0][0]
            assert Counter(y.tolist()).most_common(1)[0][1] >= 0.5 * Counter(y.tolist())[top]


def test_the_split_is_seeded(fleet) -> None:  # type: ignore[no-untyped-def]
    bench, shards, own = fleet
    again = own_test_splits(bench, shards, seed=0)
    for dev in own:
        for task in own[dev]:
            assert np.array_equal(own[dev][task][1], again[dev][task][1])

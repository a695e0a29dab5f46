"""assign_modalities and partition: coverage, seeding, disjoint and complete non-IID shards."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from hffm_core.errors import DataError
from hffm_lab.data import (
    MODALITIES,
    DeviceShard,
    TaskData,
    assign_modalities,
    load_m3t_bench,
    partition,
)
from hffm_lab.data.partition import dirichlet_shares

ALL = list(MODALITIES)
DEVICES = [f"dev{i}" for i in range(8)]


@pytest.fixture(scope="module")
def bench() -> dict[str, TaskData]:
    return load_m3t_bench(seed=0)


@pytest.fixture(scope="module")
def assignment() -> dict[str, tuple[str, ...]]:
    return assign_modalities(DEVICES, modalities=ALL, per_device=2, seed=0)


def _labelled_rows(x: np.ndarray, y: np.ndarray) -> Counter[bytes]:
    return Counter(row.tobytes() + int(label).to_bytes(8, "little") for row, label in zip(x, y, strict=True))


# --- assign_modalities -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n_devices", "per_device"), list(itertools.product([1, 2, 3, 4, 5, 8, 13], [1, 2, 3, 4, 6])))
def test_assignment_coverage(n_devices: int, per_device: int) -> None:
    devices = [f"d{i}" for i in range(n_devices)]
    result = assign_modalities(devices, modalities=ALL, per_device=per_device, seed=n_devices)
    k = min(per_device, len(ALL))
    assert list(result) == devices
    assert all(len(mods) == k == len(set(mods)) for mods in result.values())
    holders = Counter(m for mods in result.values() for m in mods)
    if n_devices * k >= 2 * len(ALL):
        assert all(holders[m] >= 2 for m in ALL)
    elif n_devices * k >= len(ALL):
        assert all(holders[m] >= 1 for m in ALL)
    assert max(holders[m] for m in ALL) - min(holders[m] for m in ALL) <= 1


def test_assignment_is_seeded_and_devices_differ(assignment: dict[str, tuple[str, ...]]) -> None:
    assert assign_modalities(DEVICES, modalities=ALL, per_device=2, seed=0) == assignment
    others = [assign_modalities(DEVICES, modalities=ALL, per_device=2, seed=s) for s in range(1, 6)]
    assert any(other != assignment for other in others)
    assert len(set(assignment.values())) >= 4  # 6 possible pairs over 8 devices
    for mods in assignment.values():
        assert list(mods) == [m for m in ALL if m in mods]


@pytest.mark.parametrize(
    ("devices", "kwargs", "match"),
    [
        ([], {}, "non-empty sequence of device names"),
        (["a", "a"], {}, r"device names repeat: \['a'\]"),
        (["a", ""], {}, "device names must be non-empty strings"),
        (["a"], {"modalities": ["imu"]}, "unknown modality 'imu'"),
        (["a"], {"modalities": ["image", "image"]}, "modality names repeat"),
        (["a"], {"per_device": 0}, "per_device must be an int >= 1, got 0"),
        (["a"], {"seed": -3}, "seed must be a non-negative int"),
    ],
)
def test_assignment_rejects_bad_arguments(devices: list[str], kwargs: dict, match: str) -> None:
    args = {"modalities": ALL, "per_device": 2, "seed": 0, **kwargs}
    with pytest.raises(DataError, match=match):
        assign_modalities(devices, **args)


# --- partition ---------------------------------------------------------------------------------------------------


def test_partition_is_disjoint_complete_and_within_modalities(
    bench: dict[str, TaskData], assignment: dict[str, tuple[str, ...]]
) -> None:
    shards = partition(bench, assignment, alpha=0.3, seed=0)
    assert set(shards) == set(DEVICES)
    for task, td in bench.items():
        holders = [d for d, mods in assignment.items() if td.modality in mods]
        assert sorted(d for d, s in shards.items() if task in s.data) == sorted(holders)
        dealt: Counter[bytes] = Counter()
        for d in holders:
            x, y = shards[d].data[task]
            assert len(y) >= 8 and x.dtype == np.float32 and y.dtype == np.int64
            dealt += _labelled_rows(x, y)
        assert dealt == _labelled_rows(td.x_train, td.y_train)
    for shard in shards.values():
        assert isinstance(shard, DeviceShard) and shard.modalities == assignment[shard.device]
        assert shard.n_samples == sum(len(y) for _, y in shard.data.values())


def test_partition_leaves_the_test_split_alone(
    bench: dict[str, TaskData], assignment: dict[str, tuple[str, ...]]
) -> None:
    before = {t: (td.x_test.copy(), td.y_test.copy(), td.x_train.copy()) for t, td in bench.items()}
    shards = partition(bench, assignment, alpha=0.5, seed=1)
    for task, td in bench.items():
        np.testing.assert_array_equal(td.x_test, before[task][0])
        np.testing.assert_array_equal(td.y_test, before[task][1])
        np.testing.assert_array_equal(td.x_train, before[task][2])
    test_rows = {row.tobytes() for row in bench["digit"].x_test}
    for shard in shards.values():
        if "digit" in shard.data:
            assert not test_rows & {row.tobytes() for row in shard.data["digit"][0]}


def test_partition_is_seeded_and_ignores_dict_order(
    bench: dict[str, TaskData], assignment: dict[str, tuple[str, ...]]
) -> None:
    a = partition(bench, assignment, alpha=0.5, seed=4)
    b = partition(dict(reversed(bench.items())), dict(reversed(assignment.items())), alpha=0.5, seed=4)
    c = partition(bench, assignment, alpha=0.5, seed=5)
    for d in DEVICES:
        for task, (x, y) in a[d].data.items():
            np.testing.assert_array_equal(x, b[d].data[task][0])
            np.testing.assert_array_equal(y, b[d].data[task][1])
    assert any(len(a[d].data[t][1]) != len(c[d].data[t][1]) for d in DEVICES for t in a[d].data)


@pytest.mark.parametrize("alpha", [0.01, 0.1, 1.0, 100.0])
def test_min_samples_holds_for_every_alpha(alpha: float) -> None:
    y = np.repeat(np.arange(4), 14)  # 56 samples, like activity
    for seed in range(5):
        shares = dirichlet_shares(y, 6, alpha, 8, np.random.default_rng(seed))
        assert min(len(s) for s in shares) >= 8
        assert sorted(np.concatenate(shares).tolist()) == list(range(len(y)))


def test_repair_reaches_an_exact_fit() -> None:
    y = np.repeat(np.arange(2), 20)
    shares = dirichlet_shares(y, 5, 0.01, 8, np.random.default_rng(0))
    assert [len(s) for s in shares] == [8] * 5


def _mean_label_entropy(shards: dict[str, DeviceShard], task: str) -> float:
    entropies = []
    for shard in shards.values():
        if task in shard.data:
            p = np.bincount(shard.data[task][1]) / len(shard.data[task][1])
            p = p[p > 0]
            entropies.append(float(-(p * np.log(p)).sum()))
    return float(np.mean(entropies))


def test_small_alpha_skews_labels_more(bench: dict[str, TaskData]) -> None:
    holders = {f"d{i}": ("image",) for i in range(6)}
    skewed = np.mean([_mean_label_entropy(partition(bench, holders, alpha=0.1, seed=s), "digit") for s in range(3)])
    iid = np.mean([_mean_label_entropy(partition(bench, holders, alpha=100.0, seed=s), "digit") for s in range(3)])
    assert iid > np.log(10) - 0.05  # near uniform over 10 digits
    assert skewed < iid - 0.5


def test_tasks_without_holders_are_absent(bench: dict[str, TaskData]) -> None:
    shards = partition(bench, {"a": ("image",), "b": ("speech", "image"), "c": ()}, alpha=1.0, seed=0)
    assert set(shards["a"].data) == {"digit"} and set(shards["b"].data) == {"digit", "speaker"}
    assert shards["c"].data == {} and shards["c"].n_samples == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": 0.0}, "alpha must be a positive finite number, got 0.0"),
        ({"alpha": float("nan")}, "got nan"),
        ({"min_samples": -1}, "min_samples must be an int >= 0, got -1"),
        ({"min_samples": 20}, r"task 'activity' has 56 train samples, fewer than 3 holders x min_samples 20"),
        ({"assignment": {"a": ("imu",)}}, "unknown modality 'imu'"),
        ({"assignment": {"a": "inertial"}}, "not the string 'inertial'"),
    ],
)
def test_partition_rejects_bad_arguments(bench: dict[str, TaskData], kwargs: dict, match: str) -> None:
    args = {"assignment": {d: ("inertial",) for d in "abc"}, "alpha": 1.0, "seed": 0, **kwargs}
    with pytest.raises(DataError, match=match):
        partition({"activity": bench["activity"]}, **args)


def test_partition_rejects_mislabelled_bench(bench: dict[str, TaskData]) -> None:
    with pytest.raises(DataError, match="bench key 'speaker' holds data of task 'digit'"):
        partition({"speaker": bench["digit"]}, {"a": ("image",)}, alpha=1.0, seed=0)

"""load_m3t_bench on the real bundled data: shapes, labels, seeded stratified splits, no train/test overlap."""

from __future__ import annotations

import numpy as np
import pytest

from hffm_core.errors import DataError
from hffm_lab.data import (
    MODALITIES,
    TASKS,
    TaskData,
    class_names,
    load_m3t_bench,
    to_tokens,
)
from hffm_lab.data.m3t_bench import stratified_split
from hffm_lab.data.sources import encode_labels, load_raw

# task -> (train, test) sizes with test_fraction 0.3, rounded per class
SIZES = {
    "activity": (56, 24),
    "demand": (767, 329),
    "appliance": (753, 321),
    "speaker": (448, 192),
    "digit": (1258, 539),
}
# PLAID ships 5 byte-identical series; every other task's raw samples are distinct.
DUPLICATE_FREE = ["activity", "demand", "speaker", "digit"]


@pytest.fixture(scope="module")
def bench() -> dict[str, TaskData]:
    return load_m3t_bench(seed=0)


def _rows(x: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in x}


@pytest.mark.parametrize("task", list(TASKS))
def test_shapes_dtypes_and_classes(bench: dict[str, TaskData], task: str) -> None:
    td, spec = bench[task], TASKS[task]
    shape = (MODALITIES[spec.modality].n_tokens, MODALITIES[spec.modality].token_dim)
    assert (td.task, td.modality) == (task, spec.modality)
    assert (len(td.y_train), len(td.y_test)) == SIZES[task]
    for x, y in ((td.x_train, td.y_train), (td.x_test, td.y_test)):
        assert x.dtype == np.float32 and x.shape[1:] == shape and np.isfinite(x).all()
        assert y.dtype == np.int64 and y.shape == (len(x),)
        assert set(np.unique(y).tolist()) == set(range(spec.num_classes))  # every class on both sides
    assert len(class_names(task)) == spec.num_classes


def test_split_is_stratified(bench: dict[str, TaskData]) -> None:
    for td in bench.values():
        train, test = np.bincount(td.y_train), np.bincount(td.y_test)
        fraction = test / (train + test)
        assert np.all(np.abs(fraction - 0.3) <= 0.5 / (train + test) + 1e-9)


def test_labels_map_sorted_and_numeric_strings_by_value() -> None:
    codes, names = encode_labels(np.array(["9", "10", "1", "10"]))
    assert names == ("1", "9", "10") and codes.tolist() == [1, 2, 0, 2]
    codes, names = encode_labels(np.array(["walking", "badminton", "running"]))
    assert names == ("badminton", "running", "walking") and codes.tolist() == [2, 0, 1]
    assert class_names("appliance")[-1] == "10"


def test_same_seed_same_arrays_other_seed_other_split(bench: dict[str, TaskData]) -> None:
    again = load_m3t_bench(seed=0)
    other = load_m3t_bench(seed=1)
    for task, td in bench.items():
        for field in ("x_train", "y_train", "x_test", "y_test"):
            np.testing.assert_array_equal(getattr(td, field), getattr(again[task], field))
        assert _rows(td.x_test) != _rows(other[task].x_test)


def test_subset_load_equals_full_load(bench: dict[str, TaskData]) -> None:
    part = load_m3t_bench(seed=0, tasks=["speaker", "activity"])
    assert list(part) == ["speaker", "activity"]
    np.testing.assert_array_equal(part["speaker"].x_test, bench["speaker"].x_test)


@pytest.mark.parametrize("task", DUPLICATE_FREE)
def test_train_and_test_share_no_rows(bench: dict[str, TaskData], task: str) -> None:
    td = bench[task]
    train, test = _rows(td.x_train), _rows(td.x_test)
    assert len(train) == len(td.x_train) and len(test) == len(td.x_test)
    assert not train & test


def test_stratified_split_indices_are_disjoint_and_complete() -> None:
    y = np.repeat(np.arange(5), [1, 2, 7, 10, 33])
    train, test = stratified_split(y, 0.3, np.random.default_rng(3))
    assert not set(train.tolist()) & set(test.tolist())
    assert sorted([*train.tolist(), *test.tolist()]) == list(range(len(y)))
    assert np.bincount(y[test], minlength=5).tolist() == [0, 1, 2, 3, 10]
    with pytest.raises(DataError, match="test_fraction must lie in"):
        stratified_split(y, 1.0, np.random.default_rng(0))


def test_bench_tokens_are_to_tokens_of_the_raw_samples(bench: dict[str, TaskData]) -> None:
    raw, _ = load_raw("digit")
    assert _rows(bench["digit"].x_test) <= _rows(to_tokens("image", raw))


def test_returned_arrays_are_private_copies() -> None:
    first = load_m3t_bench(seed=0, tasks=["activity"])["activity"]
    first.x_train[:] = 0.0
    second = load_m3t_bench(seed=0, tasks=["activity"])["activity"]
    assert np.abs(second.x_train).sum() > 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tasks": ["digit", "nope"]}, "unknown task 'nope'"),
        ({"tasks": "digit"}, "not the string 'digit'"),
        ({"tasks": ["digit", "digit"]}, r"\['digit'\] more than once"),
        ({"seed": -1}, "seed must be a non-negative int, got -1"),
        ({"seed": 1.5}, "got 1.5"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(DataError, match=match):
        load_m3t_bench(**kwargs)


def test_task_data_checks_shapes() -> None:
    x = np.zeros((3, 8, 8), np.float32)
    with pytest.raises(DataError, match=r"y_test has shape \(2,\); expected \(3,\)"):
        TaskData("digit", "image", x, np.zeros(3, np.int64), x, np.zeros(2, np.int64))
    with pytest.raises(DataError, match="x_train has shape"):
        TaskData("digit", "image", x[:, :4], np.zeros(3, np.int64), x, np.zeros(3, np.int64))

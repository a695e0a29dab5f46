"""Device data files: a round trip, and every kind of bad file becomes one DataError naming the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hffm_core.errors import DataError
from hffm_lab.data import load_m3t_bench, load_task_file, save_task_file


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    td = load_m3t_bench(seed=0, tasks=["digit"])["digit"]
    return td.x_train[:50], td.y_train[:50]


def _write(path: Path, **arrays: Any) -> Path:
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return path


def _good(**override: Any) -> dict[str, Any]:
    arrays: dict[str, Any] = {
        "x": np.zeros((4, 8, 8), np.float32),
        "y": np.array([0, 1, 2, 9]),
        "modality": np.array("image"),
        "task": np.array("digit"),
    }
    arrays.update(override)
    return {k: v for k, v in arrays.items() if v is not None}


def test_round_trip(tmp_path: Path, digits: tuple[np.ndarray, np.ndarray]) -> None:
    path = tmp_path / "digits.data"  # no .npz suffix: the file lands exactly at path
    save_task_file(path, modality="image", task="digit", x=digits[0], y=digits[1])
    assert path.exists() and not (tmp_path / "digits.data.npz").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["digits.data"]
    x, y = load_task_file(path, modality="image", task="digit")
    assert x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(x, digits[0])
    np.testing.assert_array_equal(y, digits[1])
    x2, _ = load_task_file(path)
    np.testing.assert_array_equal(x2, x)


def test_integer_tokens_and_labels_are_converted(tmp_path: Path) -> None:
    path = _write(tmp_path / "f.npz", **_good(x=np.ones((4, 8, 8), np.int16), y=np.array([0, 1, 2, 9], np.uint8)))
    x, y = load_task_file(path)
    assert x.dtype == np.float32 and y.dtype == np.int64 and y.tolist() == [0, 1, 2, 9]


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"task": None}, r"missing \['task'\]"),
        ({"extra": np.zeros(2)}, r"unexpected \['extra'\]"),
        ({"x": np.zeros((4, 8, 9), np.float32)}, r"x has shape \(4, 8, 9\); expected \(N, 8, 8\)"),
        ({"x": np.zeros((4, 64), np.float32)}, r"x has shape \(4, 64\)"),
        ({"x": np.zeros((0, 8, 8), np.float32), "y": np.zeros(0, np.int64)}, "with N > 0"),
        ({"x": np.zeros((4, 8, 8), np.complex64)}, "x has dtype complex64"),
        ({"x": np.full((4, 8, 8), np.nan, np.float32)}, "x holds 256 non-finite values"),
        ({"x": np.full((4, 8, 8), 1e300)}, "x overflows float32"),
        ({"y": np.array([0, 1, 2, 10])}, r"labels \[10\] lie outside \[0, 10\) of task 'digit'"),
        ({"y": np.array([0, -1, 2, 3])}, r"labels \[-1\] lie outside"),
        ({"y": np.array([0.0, 1.0, 2.0, 3.0])}, "y has dtype float64; expected integer labels"),
        ({"y": np.array([0, 1, 2])}, r"y has shape \(3,\); expected \(4,\)"),
        ({"modality": np.array("imu")}, "unknown modality 'imu'"),
        ({"task": np.array("nope")}, "unknown task 'nope'"),
        ({"modality": np.array("speech")}, "task 'digit' reads modality 'image', not 'speech'"),
        ({"modality": np.array(["image"])}, r"'modality' must be a 0-d string"),
        ({"task": np.array(3)}, r"'task' must be a 0-d string"),
    ],
)
def test_bad_contents_are_rejected(tmp_path: Path, override: dict[str, Any], match: str) -> None:
    path = _write(tmp_path / "bad.npz", **_good(**override))
    with pytest.raises(DataError, match=match) as info:
        load_task_file(path)
    assert str(path) in str(info.value)


def test_expected_modality_and_task_must_match(tmp_path: Path) -> None:
    path = _write(tmp_path / "f.npz", **_good())
    with pytest.raises(DataError, match="holds modality 'image'; expected 'speech'"):
        load_task_file(path, modality="speech")
    with pytest.raises(DataError, match="holds task 'digit'; expected 'speaker'"):
        load_task_file(path, task="speaker")


def test_object_arrays_are_never_unpickled(tmp_path: Path) -> None:
    path = _write(tmp_path / "f.npz", **_good(x=np.array([object()] * 4, dtype=object)))
    with pytest.raises(DataError, match=r"cannot be read as an \.npz archive: ValueError"):
        load_task_file(path)


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("text", r"not an .npz archive \(it starts with b'x,y"),
        ("npy", "is a single .npy array"),
        ("truncated", "BadZipFile"),
        ("missing", "FileNotFoundError"),
        ("directory", "IsADirectoryError"),
    ],
)
def test_unreadable_files_are_rejected(tmp_path: Path, kind: str, match: str) -> None:
    path = tmp_path / "f.npz"
    if kind == "text":
        path.write_text("x,y\n1,2\n")
    elif kind == "npy":
        with open(path, "wb") as fh:
            np.save(fh, np.zeros(3))
    elif kind == "truncated":
        _write(tmp_path / "full.npz", **_good())
        path.write_bytes((tmp_path / "full.npz").read_bytes()[:300])
    elif kind == "directory":
        path.mkdir()
    with pytest.raises(DataError, match=match) as info:
        load_task_file(path)
    assert str(path) in str(info.value)


def test_save_checks_before_writing(tmp_path: Path) -> None:
    path = tmp_path / "f.npz"
    with pytest.raises(DataError, match="x holds 1 non-finite values"):
        x = np.zeros((2, 8, 8), np.float32)
        x[1, 3, 2] = np.inf
        save_task_file(path, modality="image", task="digit", x=x, y=np.array([0, 1]))
    with pytest.raises(DataError, match="task 'speaker' reads modality 'speech', not 'image'"):
        save_task_file(path, modality="image", task="speaker", x=np.zeros((2, 8, 8)), y=np.array([0, 1]))
    assert list(tmp_path.iterdir()) == []


def test_save_creates_folders_and_reports_unwritable_paths(tmp_path: Path) -> None:
    x, y = np.zeros((1, 8, 8)), np.array([0])
    save_task_file(tmp_path / "a" / "b" / "f.npz", modality="image", task="digit", x=x, y=y)
    assert load_task_file(tmp_path / "a" / "b" / "f.npz")[1].tolist() == [0]
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match=r"cannot write data file .*file/f\.npz"):
        save_task_file(tmp_path / "file" / "f.npz", modality="image", task="digit", x=x, y=y)

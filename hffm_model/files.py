"""A device's own data files: one task's tokens and labels in an ``.npz`` archive, never pickled.

An archive holds exactly four arrays: ``x`` (float32 tokens ``(N, n_tokens, token_dim)``), ``y`` (int64 labels),
``modality`` and ``task`` (0-d unicode strings). Reading checks all of it, and any problem becomes one
:class:`DataError` naming the file, never a traceback from numpy or zipfile.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from hffm_core.atomic import write_npz
from hffm_core.errors import DataError
from hffm_model.spec import MODALITIES, TASKS

KEYS = frozenset({"x", "y", "modality", "task"})
_ZIP_MAGIC = b"PK\x03\x04"
_NPY_MAGIC = b"\x93NUMPY"


def save_task_file(path: Path, *, modality: str, task: str, x: np.ndarray, y: np.ndarray) -> None:
    """Check ``x``/``y`` as :func:`load_task_file` would, then write them to ``path`` (exactly; atomically).

    Missing parent folders are created. ``path`` is used as given: no ``.npz`` suffix is appended.

    Raises:
        DataError: the data fails a check (see :func:`load_task_file`), or the file cannot be written.
    """
    path = Path(path)
    x_arr, y_arr = _check(f"data for {path}", modality, task, x, y)
    try:
        write_npz(path, {"x": x_arr, "y": y_arr, "modality": np.array(modality), "task": np.array(task)})
    except OSError as exc:
        raise DataError(f"cannot write data file {path}: {exc}") from None


def load_task_file(
    path: Path, *, modality: str | None = None, task: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read and check a task file; returns ``(x float32, y int64)``.

    Checks: the file is an ``.npz`` archive with exactly the keys ``x``, ``y``, ``modality``, ``task``; the stored
    modality and task are known, belong together, and equal ``modality``/``task`` when those are given; ``x`` is
    numeric with shape ``(N, n_tokens, token_dim)`` of that modality, ``N > 0``, and finite; ``y`` holds ``N``
    integer labels in ``[0, num_classes)``.

    Raises:
        DataError: any check fails or the file cannot be read; the message names the file and the problem.
    """
    path = Path(path)
    where = f"data file {path}"
    arrays = _read(path, where)
    stored_modality = _string(arrays["modality"], "modality", where)
    stored_task = _string(arrays["task"], "task", where)
    if modality is not None and stored_modality != modality:
        raise DataError(f"{where} holds modality {stored_modality!r}; expected {modality!r}")
    if task is not None and stored_task != task:
        raise DataError(f"{where} holds task {stored_task!r}; expected {task!r}")
    return _check(where, stored_modality, stored_task, arrays["x"], arrays["y"])


def _read(path: Path, where: str) -> dict[str, np.ndarray]:
    try:
        with open(path, "rb") as fh:
            magic = fh.read(len(_NPY_MAGIC))
        if magic.startswith(_NPY_MAGIC):
            raise DataError(f"{where} is a single .npy array, not an .npz archive")
        if not magic.startswith(_ZIP_MAGIC):
            raise DataError(f"{where} is not an .npz archive (it starts with {magic!r}, not a zip header)")
        with np.load(path, allow_pickle=False) as archive:
            keys = set(archive.files)
            if keys != KEYS:
                missing, extra = sorted(KEYS - keys), sorted(keys - KEYS)
                raise DataError(f"{where} has keys {sorted(keys)}: missing {missing}, unexpected {extra}")
            return {key: archive[key] for key in KEYS}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"{where} cannot be read as an .npz archive: {type(exc).__name__}: {exc}") from None


def _string(value: np.ndarray, key: str, where: str) -> str:
    if value.shape != () or value.dtype.kind != "U":
        raise DataError(f"{where}: {key!r} must be a 0-d string, got dtype {value.dtype} shape {value.shape}")
    return str(value[()])


def _check(where: str, modality: str, task: str, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate one task's arrays; returns them as float32 / int64 copies."""
    if modality not in MODALITIES:
        raise DataError(f"{where}: unknown modality {modality!r}; expected one of {sorted(MODALITIES)}")
    if task not in TASKS:
        raise DataError(f"{where}: unknown task {task!r}; expected one of {sorted(TASKS)}")
    spec, tspec = MODALITIES[modality], TASKS[task]
    if tspec.modality != modality:
        raise DataError(f"{where}: task {task!r} reads modality {tspec.modality!r}, not {modality!r}")
    x, y = np.asarray(x), np.asarray(y)
    shape = (spec.n_tokens, spec.token_dim)
    if x.dtype.kind not in "fiu":
        raise DataError(f"{where}: x has dtype {x.dtype}; expected a real number type")
    if x.ndim != 3 or x.shape[1:] != shape or x.shape[0] == 0:
        raise DataError(f"{where}: x has shape {x.shape}; expected (N, {shape[0]}, {shape[1]}) with N > 0")
    if not np.all(np.isfinite(x)):
        raise DataError(f"{where}: x holds {int(np.sum(~np.isfinite(x)))} non-finite values")
    if y.dtype.kind not in "iu":
        raise DataError(f"{where}: y has dtype {y.dtype}; expected integer labels")
    if y.shape != (x.shape[0],):
        raise DataError(f"{where}: y has shape {y.shape}; expected ({x.shape[0]},) to match x")
    bad = y[(y < 0) | (y >= tspec.num_classes)]
    if bad.size:
        raise DataError(
            f"{where}: labels {sorted(set(bad.tolist()))[:5]} lie outside [0, {tspec.num_classes}) of task {task!r}"
        )
    with np.errstate(over="ignore", invalid="ignore"):
        x32 = x.astype(np.float32)
    if not np.all(np.isfinite(x32)):
        raise DataError(f"{where}: x overflows float32")
    return x32, y.astype(np.int64)

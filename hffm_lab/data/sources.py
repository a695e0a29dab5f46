"""Raw M3T-Bench data, read from files that ship inside pip packages; nothing touches the network.

sktime bundles BasicMotions, ItalyPowerDemand, PLAID and JapaneseVowels as ``.ts`` files under
``sktime/datasets/data/``; scikit-learn bundles the 8x8 digits. Each loader pools the package's own train and test
splits (M3T-Bench makes its own seeded split). sktime and scikit-learn are imported only here, and only when a
task is loaded, so the rest of hffm runs without them.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from hffm_core.errors import DataError

# task -> (sktime loader, whether series lengths vary between samples)
_SKTIME: dict[str, tuple[str, bool]] = {
    "activity": ("load_basic_motions", False),
    "demand": ("load_italy_power_demand", False),
    "appliance": ("load_plaid", True),
    "speaker": ("load_japanese_vowels", True),
}
RawSamples = np.ndarray | list[np.ndarray]


def load_raw(task: str) -> tuple[RawSamples, np.ndarray]:
    """Raw samples and raw labels of ``task``, the package's train and test splits pooled (train first).

    Raises:
        DataError: no loader for ``task``; sktime or scikit-learn is not installed; the bundled files are missing
            or unreadable.
    """
    if task == "digit":
        return _load_digits()
    if task not in _SKTIME:
        raise DataError(f"no raw loader for task {task!r}; expected one of {sorted([*_SKTIME, 'digit'])}")
    loader, variable = _SKTIME[task]
    return _load_sktime(task, loader, variable)


def _load_sktime(task: str, loader: str, variable: bool) -> tuple[RawSamples, np.ndarray]:
    # sktime and pandas warn about deprecations and dtype inference on every load; none of it concerns us.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import sktime.datasets as sk_datasets
        except ImportError as exc:
            raise DataError(f"task {task!r} needs sktime (pip install 'hffm[edge]'): {exc}") from None
        try:
            load = getattr(sk_datasets, loader)
            x, y = load(split=None, return_X_y=True, return_type=None if variable else "numpy3D")
        except (AttributeError, ImportError, OSError, ValueError, KeyError) as exc:
            raise DataError(f"task {task!r}: sktime.datasets.{loader} failed offline: {exc}") from None
    samples: RawSamples = _nested_to_list(x) if variable else np.asarray(x, dtype=np.float64)
    return samples, np.asarray(y)


def _nested_to_list(frame: Any) -> list[np.ndarray]:
    """sktime's nested DataFrame (one pandas Series per cell) -> list of ``(channels, T)`` arrays."""
    cells = frame.to_numpy()
    return [np.stack([np.asarray(cell, dtype=np.float64) for cell in row]) for row in cells]


def _load_digits() -> tuple[RawSamples, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DataError(f"task 'digit' needs scikit-learn (pip install 'hffm[edge]'): {exc}") from None
    try:
        bunch = load_digits()
    except (OSError, ValueError) as exc:
        raise DataError(f"task 'digit': sklearn.datasets.load_digits failed: {exc}") from None
    return np.asarray(bunch.images, dtype=np.float64), np.asarray(bunch.target)


def encode_labels(labels: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """Map raw labels to int64 codes ``0..C-1`` by a sorted, stable order; returns ``(codes, class names)``.

    Labels that all read as integers sort by value (PLAID's ``'10'`` after ``'9'``); others sort as text.
    """
    names = [str(v) for v in np.asarray(labels).tolist()]
    unique = sorted(set(names))
    if all(_is_int(n) for n in unique):
        unique.sort(key=int)
    index = {name: code for code, name in enumerate(unique)}
    return np.array([index[n] for n in names], dtype=np.int64), tuple(unique)


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True

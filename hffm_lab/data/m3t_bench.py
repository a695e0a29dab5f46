"""M3T-Bench: five real classification tasks on four modalities, as fixed-shape tokens with a seeded split.

For each task the package's own train and test splits are pooled and split again, stratified by class, with
:data:`TEST_FRACTION` held out. The held-out test split is what the cloud evaluates on; no device trains on it.
The tokenised pool of each task is memoised in-process, so later loads (any seed) only re-split.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hffm_core.errors import DataError
from hffm_lab.data.seeding import check_seed, rng_for
from hffm_lab.data.sources import encode_labels, load_raw
from hffm_lab.data.tokens import to_tokens
from hffm_model.spec import TASKS, modality_spec, task_spec

__all__ = ["TEST_FRACTION", "TaskData", "class_names", "load_m3t_bench", "stratified_split", "to_tokens"]

logger = logging.getLogger(__name__)

TEST_FRACTION = 0.3


@dataclass(frozen=True)
class TaskData:
    """One task's tokens and int64 labels, split into train and held-out test."""

    task: str
    modality: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def __post_init__(self) -> None:
        spec = modality_spec(self.modality)
        shape = (spec.n_tokens, spec.token_dim)
        for part, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if x.ndim != 3 or x.shape[1:] != shape:
                raise DataError(f"task {self.task!r}: x_{part} has shape {x.shape}; expected (N, *{shape})")
            if y.shape != (x.shape[0],):
                raise DataError(f"task {self.task!r}: y_{part} has shape {y.shape}; expected ({x.shape[0]},)")


@functools.cache
def _pool(task: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """The whole tokenised pool of ``task`` (read-only arrays) and its class names."""
    spec = task_spec(task)
    start = time.perf_counter()
    samples, labels = load_raw(task)
    x = to_tokens(spec.modality, samples)
    y, classes = encode_labels(labels)
    if len(classes) != spec.num_classes:
        raise DataError(
            f"task {task!r}: {spec.source} has {len(classes)} classes {classes}; expected {spec.num_classes}"
        )
    x.setflags(write=False)
    y.setflags(write=False)
    logger.debug("loaded task %s: %d samples in %.2f s", task, len(y), time.perf_counter() - start)
    return x, y, classes


def class_names(task: str) -> tuple[str, ...]:
    """The source's label names of ``task``; label ``i`` is ``class_names(task)[i]``.

    Raises:
        DataError: unknown task, or its data cannot be loaded.
    """
    return _pool(task_spec(task).name)[2]


def stratified_split(y: np.ndarray, test_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, test)`` of a stratified split of labels ``y``, each shuffled.

    Each class with ``n >= 2`` samples puts ``round(n * test_fraction)`` of them, clipped to ``[1, n - 1]``, into
    test; a class with one sample stays in train.

    Raises:
        DataError: ``test_fraction`` is not strictly between 0 and 1.
    """
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    train: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        n_test = 0 if len(idx) < 2 else min(max(round(len(idx) * test_fraction), 1), len(idx) - 1)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def load_m3t_bench(*, seed: int = 0, tasks: Sequence[str] | None = None) -> dict[str, TaskData]:
    """Load M3T-Bench tasks (all of :data:`TASKS` by default), split with ``seed``; same seed, same arrays.

    Arrays are float32 ``(N, n_tokens, token_dim)`` tokens and int64 labels in ``[0, num_classes)``, fresh copies
    the caller may modify. A task's split depends only on ``seed`` and the task's name.

    Raises:
        DataError: ``seed`` is not a non-negative int; ``tasks`` names an unknown task, repeats one, or is a bare
            string; the data of a task cannot be loaded offline.
    """
    seed = check_seed(seed)
    names = _task_names(tasks)
    bench: dict[str, TaskData] = {}
    for name in names:
        x, y, _ = _pool(name)
        train, test = stratified_split(y, TEST_FRACTION, rng_for(seed, "split", name))
        bench[name] = TaskData(name, TASKS[name].modality, x[train], y[train], x[test], y[test])
    return bench


def _task_names(tasks: Sequence[str] | None) -> list[str]:
    if tasks is None:
        return list(TASKS)
    if isinstance(tasks, (str, bytes)):
        raise DataError(f"tasks must be a sequence of task names, not the string {tasks!r}")
    names = [task_spec(t).name for t in tasks]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataError(f"tasks lists {repeated} more than once")
    return names

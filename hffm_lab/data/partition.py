"""Who senses what, and which training samples each device holds.

:func:`assign_modalities` gives each device a seeded subset of modalities (devices differ in their sensors);
:func:`partition` deals each task's TRAIN samples among the devices that sense its modality, per class by a
Dirichlet draw, so devices see skewed label mixes (non-IID). Test splits are never touched.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from hffm_core.errors import DataError
from hffm_lab.data.m3t_bench import TaskData
from hffm_lab.data.seeding import check_seed, rng_for
from hffm_model.spec import modality_spec

MAX_DRAWS = 100  # Dirichlet re-draws before falling back to moving samples
_MAX_COMBOS = 5000


@dataclass(frozen=True)
class DeviceShard:
    """A device's modalities and its training data: ``task -> (x, y)``."""

    device: str
    modalities: tuple[str, ...]
    data: dict[str, tuple[np.ndarray, np.ndarray]]

    @property
    def n_samples(self) -> int:
        """Training samples over all of the device's tasks."""
        return sum(len(y) for _, y in self.data.values())


def assign_modalities(
    devices: Sequence[str], *, modalities: Sequence[str], per_device: int, seed: int
) -> dict[str, tuple[str, ...]]:
    """Give each device ``per_device`` distinct modalities (clipped to ``len(modalities)``), seeded.

    Holder counts stay balanced (any two modalities differ by at most one holder), so every modality gets at least
    two holders when ``len(devices) * per_device >= 2 * len(modalities)`` and at least one when
    ``len(devices) * per_device >= len(modalities)``; with fewer slots some modalities have no holder. Among equally
    balanced choices, combinations fewer devices already have are preferred, then the seeded draw decides.
    Each device's tuple follows the order of ``modalities``; the result follows the order of ``devices``.

    Raises:
        DataError: no devices, an empty or repeated device name, no modalities, an unknown or repeated modality,
            ``per_device < 1``, or a bad seed.
    """
    rng = rng_for(check_seed(seed), "assign_modalities")
    _check_names("device", devices, allow_unknown=True)
    _check_names("modality", modalities, allow_unknown=False)
    if isinstance(per_device, bool) or not isinstance(per_device, int) or per_device < 1:
        raise DataError(f"per_device must be an int >= 1, got {per_device!r}")
    k = min(per_device, len(modalities))
    counts = dict.fromkeys(modalities, 0)
    used: Counter[frozenset[str]] = Counter()
    result: dict[str, tuple[str, ...]] = {}
    for device in devices:
        chosen = _choose(list(modalities), k, counts, used, rng)
        for m in chosen:
            counts[m] += 1
        used[frozenset(chosen)] += 1
        result[device] = tuple(m for m in modalities if m in chosen)
    return result


def _choose(
    modalities: list[str], k: int, counts: dict[str, int], used: Counter[frozenset[str]], rng: np.random.Generator
) -> set[str]:
    """The ``k`` least-held modalities; ties go to the least-used combination, then to the draw."""
    noise = dict(zip(modalities, rng.random(len(modalities)), strict=True))
    if math.comb(len(modalities), k) > _MAX_COMBOS:
        return set(sorted(modalities, key=lambda m: (counts[m], noise[m]))[:k])
    best = min(
        itertools.combinations(modalities, k),
        key=lambda c: (sum(counts[m] for m in c), used[frozenset(c)], sum(noise[m] for m in c)),
    )
    return set(best)


def _check_names(kind: str, names: Sequence[str], *, allow_unknown: bool) -> None:
    if isinstance(names, str) or not names:
        raise DataError(f"expected a non-empty sequence of {kind} names, got {names!r}")
    for name in names:
        if not isinstance(name, str) or not name:
            raise DataError(f"{kind} names must be non-empty strings, got {name!r}")
        if not allow_unknown:
            modality_spec(name)
    repeated = sorted({n for n in names if list(names).count(n) > 1})
    if repeated:
        raise DataError(f"{kind} names repeat: {repeated}")


def partition(
    bench: Mapping[str, TaskData],
    assignment: Mapping[str, Sequence[str]],
    *,
    alpha: float,
    seed: int,
    min_samples: int = 8,
) -> dict[str, DeviceShard]:
    """Deal each task's TRAIN samples among its holders with per-class Dirichlet(``alpha``) shares.

    A task's holders are the devices whose modalities include the task's modality. Every train sample goes to
    exactly one holder; each holder gets at least ``min_samples`` (re-drawn up to :data:`MAX_DRAWS` times, then
    samples move from the largest share to the smallest). Small ``alpha`` gives strong label skew, large ``alpha``
    near-IID shares. A task with no holder is absent from every shard; every device in ``assignment`` gets a shard.
    Results depend only on ``seed``, the task names and the device names (not on dict order).

    Raises:
        DataError: ``alpha`` is not a positive finite number; ``min_samples < 0``; a bad seed; an unknown modality
            in ``assignment`` or a bare string in place of its tuple; a bench entry whose key differs from its
            task; a task whose train set is smaller than ``holders * min_samples``.
    """
    seed = check_seed(seed)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (math.isfinite(alpha) and alpha > 0):
        raise DataError(f"alpha must be a positive finite number, got {alpha!r}")
    if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 0:
        raise DataError(f"min_samples must be an int >= 0, got {min_samples!r}")
    for device, mods in assignment.items():
        if isinstance(mods, str):
            raise DataError(f"device {device!r}: modalities must be a tuple of names, not the string {mods!r}")
        for m in mods:
            modality_spec(m)
    data: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {d: {} for d in assignment}
    for task in sorted(bench):
        td = bench[task]
        if td.task != task:
            raise DataError(f"bench key {task!r} holds data of task {td.task!r}")
        holders = sorted(d for d, mods in assignment.items() if td.modality in mods)
        if not holders:
            continue
        if len(td.y_train) < len(holders) * min_samples:
            raise DataError(
                f"task {task!r} has {len(td.y_train)} train samples, fewer than {len(holders)} holders x "
                f"min_samples {min_samples}"
            )
        shares = dirichlet_shares(td.y_train, len(holders), alpha, min_samples, rng_for(seed, "partition", task))
        for device, idx in zip(holders, shares, strict=True):
            data[device][task] = (td.x_train[idx], td.y_train[idx])
    return {d: DeviceShard(d, tuple(assignment[d]), data[d]) for d in assignment}


def dirichlet_shares(
    y: np.ndarray, n_holders: int, alpha: float, min_samples: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Split indices of ``y`` into ``n_holders`` disjoint, complete, sorted shares, each ``>= min_samples``.

    Per class, shares follow one Dirichlet(``alpha``) draw. Up to :data:`MAX_DRAWS` draws are tried; if none
    meets ``min_samples``, the draw with the largest smallest share is repaired by moving random samples from the
    largest share to the smallest.

    Raises:
        DataError: ``len(y) < n_holders * min_samples``.
    """
    if len(y) < n_holders * min_samples:
        raise DataError(f"{len(y)} samples cannot give {n_holders} holders {min_samples} each")
    best: list[list[int]] | None = None
    for _ in range(MAX_DRAWS):
        shares = _draw(y, n_holders, alpha, rng)
        if best is None or min(map(len, shares)) > min(map(len, best)):
            best = shares
        if min(map(len, best)) >= min_samples:
            break
    assert best is not None
    _repair(best, min_samples, rng)
    return [np.sort(np.asarray(share, dtype=np.int64)) for share in best]


def _draw(y: np.ndarray, n_holders: int, alpha: float, rng: np.random.Generator) -> list[list[int]]:
    shares: list[list[int]] = [[] for _ in range(n_holders)]
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        p = rng.dirichlet(np.full(n_holders, float(alpha)))
        if not np.all(np.isfinite(p)) or p.sum() <= 0:  # tiny alpha can underflow: give the class to one holder
            p = np.eye(n_holders)[rng.integers(n_holders)]
        cuts = np.floor(np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
        for holder, part in enumerate(np.split(idx, cuts)):
            shares[holder].extend(part.tolist())
    return shares


def _repair(shares: list[list[int]], min_samples: int, rng: np.random.Generator) -> None:
    """Move random samples from the largest share to the smallest until all reach ``min_samples``."""
    while True:
        sizes = [len(s) for s in shares]
        small, large = int(np.argmin(sizes)), int(np.argmax(sizes))
        if sizes[small] >= min_samples:
            return
        donor = shares[large]
        shares[small].append(donor.pop(int(rng.integers(len(donor)))))


def own_test_splits(
    bench: Mapping[str, TaskData], shards: Mapping[str, DeviceShard], *, seed: int, ratio: float = 3 / 7,
    min_samples: int = 20,
) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Each device's own test split: for every task it holds, samples of the task's held-out TEST split (which no
    device trains on) in the label proportions of the device's training share, ``ratio`` times its size (at least
    ``min_samples``; at most the class's test samples). Devices draw independently, so two devices' splits may
    share samples; none shares a sample with any training data. Seeded by ``seed``, task and device.

    Raises:
        DataError: a shard holds a task the bench does not have.
    """
    seed = check_seed(seed)
    out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for device in sorted(shards):
        out[device] = {}
        for task, (_x, y_train) in sorted(shards[device].data.items()):
            if task not in bench:
                raise DataError(f"device {device!r} holds task {task!r}, which the bench does not have")
            td = bench[task]
            rng = rng_for(seed, "own_test", task, device)
            want = max(min_samples, math.ceil(ratio * len(y_train)))
            labels, counts = np.unique(y_train, return_counts=True)
            picked: list[np.ndarray] = []
            for label, count in zip(labels, counts, strict=True):
                pool = np.flatnonzero(td.y_test == label)
                n = min(len(pool), max(1, int(round(want * count / len(y_train)))))
                picked.append(rng.choice(pool, size=n, replace=False))
            idx = np.sort(np.concatenate(picked))
            out[device][task] = (td.x_test[idx], td.y_test[idx])
    return out

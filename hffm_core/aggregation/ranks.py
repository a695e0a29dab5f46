"""Mixed LoRA ranks: which tensor axis is a LoRA rank, and moving a module state between ranks.

A LoRA adapter of rank r holds, per adapted layer, ``lora_A`` of shape (r, in) and ``lora_B`` of shape (out, r)
(hffm_model/m3t.py names them ``<layer>.lora_A.weight`` and ``<layer>.lora_B.weight``). Devices may differ in r
(``[model] lora_r``); the cloud's global version is at the largest rank served (the cloud's ``lora_r``). The rule
(docs/architecture.md, "Mixed LoRA ranks") is HetLoRA's zero-padding and truncation:

* downward, a device of rank r takes the first r rank slices of each factor (:func:`fit_rank` truncates): with the
  same ``lora_alpha / lora_r`` on every device, ``B[:, :r] A[:r]`` is the global product's leading r components;
* upward, a delta of rank r counts as zeros in the rank slices it does not have, and FedAvg divides every slice by
  the total weight (:class:`~hffm_core.aggregation.fedavg.FedAvg` grows its sum to the largest rank folded in). So
  each device's rank-1 components enter with weight ``w_i / sum w``, as in the FedAvg of the products ``B_i A_i``.
  (Dividing a slice by the weight of only the deltas that have it was measured 7 pt worse: docs/personalization.md.)

With every delta at one rank this is plain FedAvg, bit for bit. Pure numpy; no torch, no MQTT.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from hffm_core.errors import AggregationError

State = dict[str, np.ndarray]
Layout = Mapping[str, tuple[int, ...]]
RANK_AXES = {"lora_A.weight": 0, "lora_B.weight": 1}  # tensor-name suffix -> the axis that is the LoRA rank


def rank_axis(name: str) -> int | None:
    """The axis of tensor ``name`` that is a LoRA rank, or None for a tensor without one."""
    for suffix, axis in RANK_AXES.items():
        if name.endswith(suffix):
            return axis
    return None


def module_rank(layout: Layout) -> int | None:
    """The LoRA rank of a module layout (name -> shape), or None for a module without LoRA factors.

    Raises:
        AggregationError: factors of different ranks in one module.
    """
    ranks = {tuple(shape)[axis] for name, shape in layout.items() if (axis := rank_axis(name)) is not None}
    if len(ranks) > 1:
        raise AggregationError(f"one module holds LoRA factors of ranks {sorted(ranks)}")
    return ranks.pop() if ranks else None


def at_rank(layout: Layout, rank: int) -> dict[str, tuple[int, ...]]:
    """``layout`` with every LoRA rank axis set to ``rank``."""
    out = {}
    for name, shape in layout.items():
        dims, axis = list(shape), rank_axis(name)
        if axis is not None:
            dims[axis] = rank
        out[name] = tuple(dims)
    return out


def rank_of_size(layout: Layout, size: int) -> int | None:
    """The rank at which ``layout`` holds ``size`` scalars (a codec's flat message carries only its size), or None
    when no rank does (the caller's size check then names the mismatch)."""
    fixed = sum(int(np.prod(s)) for n, s in layout.items() if rank_axis(n) is None)
    per_rank = sum(int(np.prod(s)) // max(1, s[rank_axis(n)]) for n, s in layout.items()  # type: ignore[index]
                   if rank_axis(n) is not None and s[rank_axis(n)] > 0)  # type: ignore[index]
    if per_rank == 0 or size <= fixed or (size - fixed) % per_rank:
        return None
    return (size - fixed) // per_rank


def _fit(name: str, arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if arr.shape == shape:
        return arr
    axis = rank_axis(name)
    others = [i for i in range(len(shape)) if i != axis]
    if axis is None or arr.ndim != len(shape) or any(arr.shape[i] != shape[i] for i in others):
        raise AggregationError(f"tensor {name!r}: shape {arr.shape} does not fit {shape}"
                               + ("" if axis is None else " in any LoRA rank"))
    have, want = arr.shape[axis], shape[axis]
    if have > want:
        return np.take(arr, np.arange(want), axis=axis)
    pad = [(0, 0)] * arr.ndim
    pad[axis] = (0, want - have)
    return np.pad(arr, pad)


def fit_rank(state: Mapping[str, np.ndarray], layout: Layout) -> State:
    """``state`` at ``layout``'s LoRA rank: rank slices beyond it cut off (a device takes its own rank of a global
    version), missing ones zero-filled (a delta of a lower rank, which did not train them). Tensors without a rank
    axis must match exactly; a state already at ``layout`` comes back as it is.

    Raises:
        AggregationError: other tensor names, or a shape that differs other than in a LoRA rank.
    """
    if set(state) != set(layout):
        missing, extra = sorted(set(layout) - set(state)), sorted(set(state) - set(layout), key=str)
        raise AggregationError(f"tensor names differ from the module's: missing {missing}, extra {extra}")
    return {n: _fit(n, np.asarray(a), tuple(layout[n])) for n, a in state.items()}


def grow(name: str, acc: np.ndarray, arr: np.ndarray) -> np.ndarray:
    """The running sum ``acc`` of a LoRA factor zero-padded to take ``arr`` of another rank (a new array, or ``acc``
    itself when it is already at least ``arr``'s rank).

    Raises:
        AggregationError: ``arr`` differs from ``acc`` other than in the rank axis (naming the tensor).
    """
    axis = rank_axis(name)
    if axis is None or arr.ndim != acc.ndim:
        raise AggregationError(f"tensor {name!r}: shape {arr.shape} differs from the first delta's {acc.shape}")
    grown = list(acc.shape)
    grown[axis] = max(acc.shape[axis], arr.shape[axis])
    _fit(name, arr, tuple(grown))  # raises for other non-rank dims
    return _fit(name, acc, tuple(grown))


def add_ranked(acc: np.ndarray, name: str, arr: np.ndarray, weight: float) -> None:
    """``acc[:r] += weight * arr`` along the rank axis (``acc`` at least ``arr``'s rank, as :func:`grow` left it)."""
    axis = rank_axis(name)
    index: list[slice] = [slice(None)] * acc.ndim
    index[axis] = slice(0, arr.shape[axis])  # type: ignore[index]
    acc[tuple(index)] += arr.astype(np.float64) * weight


def fold_into(sums: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray], weight: float) -> State:
    """A running sum plus ``weight * delta`` where ``delta``'s LoRA factors may be at another rank than the sum's
    (the sum grows with zeros). Returns a new map; ``sums`` is not changed.

    Raises:
        AggregationError: other tensor names, or shapes that differ other than in a LoRA rank.
    """
    if set(sums) != set(delta):
        raise AggregationError(f"tensor names differ from the sum's: missing {sorted(set(sums) - set(delta))}, "
                               f"extra {sorted(set(delta) - set(sums), key=str)}")
    out: State = {}
    for name, arr in delta.items():
        arr = np.asarray(arr, dtype=np.float64)
        acc = sums[name]
        if acc.shape == arr.shape:
            out[name] = acc + weight * arr
        else:
            out[name] = grow(name, acc, arr).copy()
            add_ranked(out[name], name, arr, weight)
    return out


def fits_rank(state: Mapping[str, np.ndarray], module: Mapping[str, np.ndarray]) -> bool:
    """Whether ``state`` is ``module``'s tensors at a LoRA rank no larger than ``module``'s (a delta a device or
    fog may send: its own rank, at most the rank the module is served at)."""
    if set(state) != set(module):
        return False
    for name, arr in state.items():
        have, want, axis = np.shape(arr), np.shape(module[name]), rank_axis(name)
        if have == want:
            continue
        if axis is None or len(have) != len(want) or have[axis] > want[axis] or \
                any(h != w for i, (h, w) in enumerate(zip(have, want)) if i != axis):
            return False
    return True


def trim_rank(delta: Mapping[str, np.ndarray]) -> State:
    """``delta`` without its trailing LoRA rank slices that are zero in every factor (slices no update changed: a
    fog of rank-4 devices sends a rank-4 aggregate, which the cloud then weights in slices 0-3 only). A delta
    without LoRA factors, or with all of its slices changed, comes back as it is."""
    ranked = {n: a for n, a in delta.items() if rank_axis(n) is not None}
    if not ranked:
        return dict(delta)
    rank = module_rank({n: a.shape for n, a in ranked.items()}) or 0
    used = 0
    for name, arr in ranked.items():
        axis = rank_axis(name)
        slices = np.moveaxis(arr, axis, 0).reshape(arr.shape[axis], -1)  # type: ignore[arg-type]
        moved = np.flatnonzero(np.any(slices != 0, axis=1))
        used = max(used, int(moved[-1]) + 1 if moved.size else 0)
    if used in (0, rank):  # nothing changed at all: keep the module's own rank
        return dict(delta)
    return fit_rank(delta, at_rank({n: a.shape for n, a in delta.items()}, used))

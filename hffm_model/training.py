"""Train and evaluate one (modality, task) pair of an :class:`~hffm_model.m3t.M3TModel`.

Training touches only ``encoder[modality]``, ``adapter[(modality, task)]`` and ``head[task]``; the backbone is
frozen and stays in eval mode, every other module is left bit-identical.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import numpy as np
import torch
from torch.nn import functional as F

from hffm_core.errors import ModelError
from hffm_core.protocol.keys import ModuleKey
from hffm_model.m3t import M3TModel

__all__ = ["distill_task", "evaluate", "predict_logits", "train_task", "trained_keys"]


def trained_keys(modality: str, task: str) -> list[ModuleKey]:
    """The modules :func:`train_task` updates for a pair, sorted."""
    return sorted([ModuleKey.encoder(modality), ModuleKey.adapter(modality, task), ModuleKey.head(task)])


def _positive(value: object, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")


def _tensors(
    model: M3TModel, modality: str, task: str, x: np.ndarray, y: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    model.check_pair(modality, task)
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim == 0 or len(x) == 0:
        raise ValueError(f"no samples for task {task!r}")
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"task {task!r}: {len(x)} samples but labels of shape {y.shape}")
    n_tokens, token_dim = model.modalities[modality]
    if x.shape[1:] != (n_tokens, token_dim):
        raise ModelError(
            f"samples for modality {modality!r} have shape {x.shape}, expected (n, {n_tokens}, {token_dim})"
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"task {task!r}: labels must be integers, got dtype {y.dtype}")
    num_classes = model.tasks[task][1]
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"task {task!r}: labels must lie in [0, {num_classes}), got [{y.min()}, {y.max()}]")
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(y.astype(np.int64, copy=False))
    return xt, yt


def train_task(
    model: M3TModel,
    *,
    modality: str,
    task: str,
    x: np.ndarray,
    y: np.ndarray,
    epochs: int,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
) -> float:
    """Train the pair's encoder, adapter and head with a fresh AdamW (weight decay 0) on shuffled mini-batches.

    ``x`` is ``(n, n_tokens, token_dim)``, ``y`` integer labels ``(n,)``. The order of batches depends only on
    ``seed``. Returns the mean training loss of the last epoch.

    Raises:
        ModelError: unknown task, a task of another modality, samples of the wrong shape, or a loss that
            stopped being finite (the modules are then not fit to share).
        ValueError: no samples, labels that do not match the samples, or non-positive epochs/batch size/lr.
    """
    xt, yt = _tensors(model, modality, task, x, y)
    _positive(epochs, "epochs")
    _positive(batch_size, "batch_size")
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not (0 < lr < math.inf):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    return _fit(model, modality, task, len(xt),
                lambda idx: F.cross_entropy(model(xt[idx], modality=modality, task=task), yt[idx]),
                epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, doing="training", knob="the learning rate")


def _fit(
    model: M3TModel,
    modality: str,
    task: str,
    n: int,
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    doing: str,
    knob: str,
) -> float:
    """What :func:`train_task` and :func:`distill_task` share: ``epochs`` passes over ``n`` samples in mini-batches
    shuffled by ``seed``, a fresh AdamW (weight decay 0) on the pair's modules stepping on ``batch_loss(indices)``.
    Returns the mean loss of the last epoch; the model is left in eval mode without gradients.

    Raises:
        ModelError: the loss stopped being finite (the message says ``doing`` and to lower ``knob``).
    """
    params = [p for key in trained_keys(modality, task) for p in model.module_parameters(key)]
    model.train()
    try:
        model.activate(modality, task)  # peft's set_adapter flips requires_grad: activate before setting it
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        rng = np.random.default_rng(seed)
        mean_loss = math.nan
        for _ in range(epochs):
            order = torch.from_numpy(rng.permutation(n))
            total = 0.0
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                loss = batch_loss(idx)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(idx)
            mean_loss = total / n
            if not math.isfinite(mean_loss):
                raise ModelError(f"{doing} task {task!r} diverged (loss {mean_loss}); lower {knob}")
    finally:
        model.eval()
        for p in params:
            p.grad = None
    return mean_loss


def evaluate(
    model: M3TModel, *, modality: str, task: str, x: np.ndarray, y: np.ndarray, batch_size: int = 256
) -> float:
    """Accuracy in ``[0, 1]`` of the pair on ``(x, y)``, without gradients.

    Raises:
        ModelError: unknown task, a task of another modality, or samples of the wrong shape.
        ValueError: no samples, labels that do not match the samples, or a non-positive batch size.
    """
    xt, yt = _tensors(model, modality, task, x, y)
    _positive(batch_size, "batch_size")
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(xt), batch_size):
            logits = model(xt[start : start + batch_size], modality=modality, task=task)
            correct += int((logits.argmax(dim=1) == yt[start : start + batch_size]).sum())
    return correct / len(xt)


def predict_logits(
    model: M3TModel, *, modality: str, task: str, x: np.ndarray, batch_size: int = 256
) -> np.ndarray:
    """The pair's logits on ``x`` (float32 ``(n, num_classes)``), without gradients; the teacher's side of
    :func:`distill_task`.

    Raises:
        ModelError: unknown task, a task of another modality, or samples of the wrong shape.
    """
    y = np.zeros(len(x), dtype=np.int64)
    xt, _ = _tensors(model, modality, task, x, y)
    model.eval()
    with torch.no_grad():
        out = [model(xt[s : s + batch_size], modality=modality, task=task) for s in range(0, len(xt), batch_size)]
    return torch.cat(out).numpy().astype(np.float32)


def distill_task(
    model: M3TModel,
    *,
    modality: str,
    task: str,
    x: np.ndarray,
    y: np.ndarray,
    teacher_logits: np.ndarray,
    epochs: int,
    weight: float = 1.0,
    temperature: float = 2.0,
    batch_size: int = 32,
    lr: float = 5e-4,
    seed: int = 0,
) -> float:
    """Train the pair's modules on ``cross_entropy(y) + weight * T^2 * KL(teacher || student)`` at temperature
    ``T`` (Hinton et al. 2015): the device's own labels plus the teacher's soft predictions on the same samples.
    Returns the mean loss of the last epoch.

    Raises:
        ModelError: as :func:`train_task`; ValueError: teacher logits that do not match the samples.
    """
    xt, yt = _tensors(model, modality, task, x, y)
    _positive(epochs, "epochs")
    teacher = torch.from_numpy(np.ascontiguousarray(teacher_logits, dtype=np.float32))
    if teacher.shape != (len(xt), model.tasks[task][1]):
        raise ValueError(f"task {task!r}: teacher logits of shape {tuple(teacher.shape)} for {len(xt)} samples")

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        logits = model(xt[idx], modality=modality, task=task)
        soft = F.kl_div(F.log_softmax(logits / temperature, dim=1),
                        F.log_softmax(teacher[idx] / temperature, dim=1), log_target=True, reduction="batchmean")
        return F.cross_entropy(logits, yt[idx]) + weight * temperature**2 * soft

    return _fit(model, modality, task, len(xt), batch_loss, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                doing="distilling", knob="distill_lr")

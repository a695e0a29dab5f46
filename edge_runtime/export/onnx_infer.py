"""Run an exported task with onnxruntime (CPU) and compare it with the live torch model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from hffm_core.errors import DataError, ModelError
from hffm_model.m3t import M3TModel

__all__ = ["load_session", "parity", "run_onnx"]


def load_session(path: Path) -> Any:
    """An onnxruntime ``InferenceSession`` on the CPU for the ONNX file at ``path``.

    Raises:
        ModelError: the file is missing or onnxruntime cannot load it; the message names the file.
    """
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ModelError(f"running an ONNX model needs the onnxruntime package (hffm[edge]): {exc}") from None

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"ONNX model file {path} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own pybind exception types
        raise ModelError(f"ONNX model file {path} cannot be loaded: {type(exc).__name__}: {exc}") from None


def _check_input(session: Any, path: Path, x: Any) -> tuple[str, np.ndarray]:
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelError(f"ONNX model {path} has {len(inputs)} inputs; an exported task has exactly one")
    expected = list(inputs[0].shape)
    try:
        array = np.asarray(x)
        if array.dtype.kind not in "biuf":
            raise TypeError(f"dtype {array.dtype}")
        array = np.ascontiguousarray(array, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise DataError(f"input for ONNX model {path} is not numeric: {exc}") from None
    shown = "(" + ", ".join(str(d) if d not in (None, "") else "?" for d in expected) + ")"
    fixed = [d if isinstance(d, int) else None for d in expected]
    if array.ndim != len(expected) or any(f is not None and f != n for f, n in zip(fixed, array.shape)):
        raise ModelError(f"input for ONNX model {path} has shape {array.shape}, expected {shown}")
    return inputs[0].name, array


def run_onnx(path: Path, x: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """Logits of the exported task at ``path`` for ``x`` ``(n, n_tokens, token_dim)``, run in batches on the CPU.

    ``x`` is cast to float32. The expected shape is read from the model before anything runs.

    Raises:
        ModelError: missing or invalid model file, or ``x`` of the wrong shape.
        DataError: ``x`` is not numeric.
        ValueError: ``batch_size`` is not a positive integer.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    path = Path(path)
    session = load_session(path)
    name, array = _check_input(session, path, x)
    outputs = session.get_outputs()
    if len(array) == 0:
        width = outputs[0].shape[-1] if outputs and outputs[0].shape else None
        if not isinstance(width, int):
            raise DataError(f"no samples to run through ONNX model {path}")
        return np.zeros((0, width), dtype=np.float32)
    parts = []
    for start in range(0, len(array), int(batch_size)):
        try:
            parts.append(session.run([outputs[0].name], {name: array[start : start + batch_size]})[0])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own pybind exception types
            raise ModelError(f"ONNX model {path} failed to run: {type(exc).__name__}: {exc}") from None
    return np.concatenate(parts, axis=0)


def parity(model: M3TModel, *, modality: str, task: str, path: Path, x: np.ndarray) -> dict[str, float]:
    """Compare the live model (eval mode, no gradients) with the ONNX file on the same ``x``.

    Returns ``{"max_abs_diff": largest |torch - onnx| logit difference, "argmax_agreement": fraction of rows
    whose predicted class agrees}``. The model's train/eval mode is restored afterwards.

    Raises:
        ModelError: unknown pair, ``x`` of the wrong shape, or a missing/invalid model file.
        DataError: ``x`` is not numeric or has no rows.
    """
    model.check_pair(modality, task)
    array = np.ascontiguousarray(np.asarray(x), dtype=np.float32)
    if array.ndim == 0 or len(array) == 0:
        raise DataError("parity needs at least one sample")
    onnx_logits = run_onnx(path, array)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            torch_logits = np.concatenate(
                [
                    model(torch.from_numpy(array[start : start + 256]), modality=modality, task=task).numpy()
                    for start in range(0, len(array), 256)
                ]
            )
    finally:
        model.train(was_training)
    if torch_logits.shape != onnx_logits.shape:
        raise ModelError(
            f"ONNX model {path} returns logits of shape {onnx_logits.shape}; the live model {torch_logits.shape} "
            f"(was it exported for another task?)"
        )
    return {
        "max_abs_diff": float(np.max(np.abs(torch_logits.astype(np.float64) - onnx_logits.astype(np.float64)))),
        "argmax_agreement": float(np.mean(torch_logits.argmax(axis=1) == onnx_logits.argmax(axis=1))),
    }

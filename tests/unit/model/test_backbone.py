"""Backbone loading: the tiny test backbone, local directories, and one real all-MiniLM smoke test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from hffm_core.errors import ModelError
from hffm_model import M3TModel, load_backbone


def test_tiny_backbone_is_frozen_in_eval_mode() -> None:
    bb = load_backbone("tiny")
    assert bb.name == "tiny"
    assert bb.hidden_size == 32
    assert bb.lora_targets == ("query", "value")
    assert not bb.model.training
    assert all(not p.requires_grad for p in bb.model.parameters())
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["TRANSFORMERS_OFFLINE"] == "1"


def test_tiny_backbone_weights_follow_the_seed_and_leave_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = load_backbone("tiny", seed=1).model.state_dict()
    assert torch.equal(torch.rand(3), expected)
    b = load_backbone("tiny", seed=1).model.state_dict()
    c = load_backbone("tiny", seed=2).model.state_dict()
    name = "encoder.layer.0.attention.self.query.weight"
    assert torch.equal(a[name], b[name])
    assert not torch.equal(a[name], c[name])


def test_unknown_backbone_name_is_a_model_error_listing_valid_names() -> None:
    with pytest.raises(ModelError, match=r"'no-such-model'.*minilm.*tiny"):
        load_backbone("no-such-model")


def test_local_directory_backbone_loads_from_safetensors(tmp_path: Path) -> None:
    load_backbone("tiny", seed=4).model.save_pretrained(tmp_path, safe_serialization=True)
    bb = load_backbone(str(tmp_path))
    assert bb.hidden_size == 32 and bb.lora_targets == ("query", "value")
    assert all(not p.requires_grad for p in bb.model.parameters())
    original = load_backbone("tiny", seed=4).model.state_dict()
    name = "encoder.layer.1.attention.self.value.weight"
    assert torch.equal(bb.model.state_dict()[name], original[name])


def test_local_directory_without_weights_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="could not load"):
        load_backbone(str(tmp_path))


def test_local_model_without_query_or_value_modules_is_refused(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2Model

    GPT2Model(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16, n_positions=16)).save_pretrained(tmp_path)
    with pytest.raises(ModelError, match=r"no modules named \['query', 'value'\]"):
        load_backbone(str(tmp_path))


def test_minilm_smoke_loads_real_weights_and_runs_one_forward() -> None:
    bb = load_backbone("minilm")
    assert bb.hidden_size == 384 and bb.lora_targets == ("query", "value")
    model = M3TModel(bb, modalities={"imu": (16, 6)}, tasks={"har": ("imu", 4)})
    with torch.no_grad():
        logits = model(torch.randn(2, 16, 6), modality="imu", task="har")
    assert logits.shape == (2, 4)
    assert torch.isfinite(logits).all()

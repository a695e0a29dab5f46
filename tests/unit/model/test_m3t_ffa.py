"""FFA-LoRA adapters: A stays at its seeded value and is neither trained nor part of the module; B is."""

from __future__ import annotations

import numpy as np
import pytest

from hffm_core.errors import ModelError
from hffm_core.protocol.keys import ModuleKey
from hffm_model import M3TModel, load_backbone
from hffm_model.training import train_task

KEY = ModuleKey.adapter("image", "digit")


def build(adapter: str) -> M3TModel:
    return M3TModel(load_backbone("tiny"), modalities={"image": (8, 8)}, tasks={"digit": ("image", 10)}, seed=3,
                    adapter=adapter)


def test_ffa_adapter_module_is_only_b_and_a_matches_lora_init() -> None:
    lora, ffa = build("lora"), build("ffa_lora")
    full, half = lora.get_module_state(KEY), ffa.get_module_state(KEY)
    assert set(half) == {n for n in full if n.endswith("lora_B.weight")}
    assert ffa.num_parameters(KEY) * 2 == lora.num_parameters(KEY)
    a_lora = {n: p.detach().numpy().copy() for n, p in lora._lora_tensors(KEY).items() if "lora_A" in n}
    a_ffa = {n: p.detach().numpy().copy() for n, p in ffa._lora_tensors(KEY).items() if "lora_A" in n}
    for name, arr in a_lora.items():
        np.testing.assert_array_equal(arr, a_ffa[name])  # same seeded A on every node and in both variants


def test_training_moves_b_but_never_a() -> None:
    model = build("ffa_lora")
    a_before = {n: p.detach().numpy().copy() for n, p in model._lora_tensors(KEY).items() if "lora_A" in n}
    b_before = model.get_module_state(KEY)
    rng = np.random.default_rng(0)
    train_task(model, modality="image", task="digit", x=rng.random((32, 8, 8), dtype=np.float32),
               y=rng.integers(0, 10, 32), epochs=2, lr=1e-2)
    for name, p in model._lora_tensors(KEY).items():
        if "lora_A" in name:
            np.testing.assert_array_equal(p.detach().numpy(), a_before[name])
            assert p.grad is None
    moved = [n for n, a in model.get_module_state(KEY).items() if not np.array_equal(a, b_before[n])]
    assert moved == sorted(b_before)


def test_unknown_adapter_variant() -> None:
    with pytest.raises(ModelError, match="unknown adapter 'vera'"):
        build("vera")

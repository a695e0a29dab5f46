"""LoRA-SB adapters: A and B are frozen SVD factors of the backbone's weights, only R (r x r) is the module."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hffm_core.config import ModelConfig, build
from hffm_core.errors import ConfigError, ModelError
from hffm_core.protocol.keys import ModuleKey
from hffm_model import M3TModel, adapter_name, load_backbone
from hffm_model.lora_sb import svd_factors
from hffm_model.training import train_task

KEY = ModuleKey.adapter("image", "digit")
NAME = adapter_name("image", "digit")


def build_model(r: int = 4, seed: int = 3) -> M3TModel:
    return M3TModel(load_backbone("tiny"), modalities={"image": (8, 8)}, tasks={"digit": ("image", 10)}, seed=seed,
                    adapter="lora-sb", lora_r=r, lora_alpha=2 * r)


def _frozen(model: M3TModel) -> dict[str, np.ndarray]:
    out = {}
    for name, layer in model._lora_layers:
        out[f"{name}.A"] = layer.lora_A[NAME].frozen.numpy().copy()
        out[f"{name}.B"] = layer.lora_B[NAME].weight.detach().numpy().copy()
    return out


def test_module_is_one_r_by_r_matrix_per_layer_starting_at_zero() -> None:
    model = build_model(r=4)
    state = model.get_module_state(KEY)
    assert sorted(state) == sorted(f"{name}.lora_R.weight" for name, _ in model._lora_layers)
    assert all(a.shape == (4, 4) and not a.any() for a in state.values())
    assert model.num_parameters(KEY) == 16 * len(model._lora_layers)


def test_every_node_derives_the_same_frozen_factors() -> None:
    a, b = build_model(seed=3), build_model(seed=3)
    fa, fb = _frozen(a), _frozen(b)
    assert fa.keys() == fb.keys()
    for name in fa:
        np.testing.assert_array_equal(fa[name], fb[name])
    layer = a._lora_layers[0][1]
    weight = layer.get_base_layer().weight.detach()
    a0, b0 = svd_factors(weight, 4)
    np.testing.assert_allclose((b0 @ a0).numpy(), _best_rank(weight, 4), atol=1e-4)  # U_r S_r Vh_r


def _best_rank(w: torch.Tensor, r: int) -> np.ndarray:
    u, s, vh = np.linalg.svd(w.numpy().astype(np.float64), full_matrices=False)
    return (u[:, :r] * s[:r]) @ vh[:r]


def test_training_moves_only_r() -> None:
    model = build_model()
    frozen = _frozen(model)
    before = model.get_module_state(KEY)
    rng = np.random.default_rng(0)
    train_task(model, modality="image", task="digit", x=rng.random((32, 8, 8), dtype=np.float32),
               y=rng.integers(0, 10, 32), epochs=2, lr=1e-2)
    for name, arr in _frozen(model).items():
        np.testing.assert_array_equal(arr, frozen[name])
    moved = [n for n, a in model.get_module_state(KEY).items() if not np.array_equal(a, before[n])]
    assert moved == sorted(before)


def test_loading_r_reproduces_the_model_and_averaging_r_is_averaging_the_update() -> None:
    src, dst = build_model(), build_model()
    rng = np.random.default_rng(1)
    for key in src.module_keys():
        src.load_module_state(key, {n: rng.normal(0, 0.2, v.shape).astype(np.float32)
                                    for n, v in src.get_module_state(key).items()})
        dst.load_module_state(key, src.get_module_state(key))
    x = torch.from_numpy(rng.random((5, 8, 8), dtype=np.float32))
    torch.testing.assert_close(dst(x, modality="image", task="digit"), src(x, modality="image", task="digit"))
    layer = src._lora_layers[0][1]
    r1, r2 = rng.normal(size=(2, 4, 4)).astype(np.float32)
    down, up = layer.lora_A[NAME], layer.lora_B[NAME].weight.detach()
    deltas = [(up @ torch.from_numpy(r) @ down.frozen) for r in (r1, r2)]
    mean_r = torch.from_numpy((r1 + r2) / 2)
    torch.testing.assert_close(up @ mean_r @ down.frozen, (deltas[0] + deltas[1]) / 2)


def test_merge_formula_holds_for_export() -> None:
    model = build_model()
    layer = model._lora_layers[0][1]
    with torch.no_grad():
        layer.lora_A[NAME].lora_R.normal_()
    model.activate("image", "digit")
    x = torch.randn(3, layer.get_base_layer().in_features)
    with torch.no_grad():
        merged = x @ (layer.get_base_layer().weight + layer.get_delta_weight(NAME)).T + layer.get_base_layer().bias
        torch.testing.assert_close(layer(x), merged, atol=1e-5, rtol=1e-5)


def test_rank_too_large_and_config() -> None:
    with pytest.raises(ModelError, match="exceeds"):
        build_model(r=10_000)
    assert build(ModelConfig, {"adapter": "lora-sb", "lora_r": 8}, "m").adapter == "lora-sb"
    with pytest.raises(ConfigError, match="unknown adapter 'vera'"):
        build(ModelConfig, {"adapter": "vera"}, "m")


def test_onnx_export_merges_lora_sb(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from edge_runtime.export import export_task, parity

    model = build_model()
    rng = np.random.default_rng(2)
    for key in model.module_keys():
        model.load_module_state(key, {n: rng.normal(0, 0.2, v.shape).astype(np.float32)
                                      for n, v in model.get_module_state(key).items()})
    path = export_task(model, modality="image", task="digit", path=tmp_path / "digit.onnx")
    check = parity(model, modality="image", task="digit", path=path, x=rng.random((4, 8, 8), dtype=np.float32))
    assert check["max_abs_diff"] < 1e-4 and check["argmax_agreement"] == 1.0


def test_lora_targets_puts_r_on_every_named_linear_layer_but_the_pooler() -> None:
    model = M3TModel(load_backbone("tiny"), modalities={"image": (8, 8), "power": (16, 8)},
                     tasks={"digit": ("image", 10), "demand": ("power", 2)}, seed=3,  # two adapters on one backbone
                     adapter="lora-sb", lora_r=4, lora_alpha=8, lora_targets=("query", "key", "value", "dense"))
    names = [name for name, _ in model._lora_layers]
    assert model.num_parameters(ModuleKey.adapter("power", "demand")) == 16 * len(names)
    assert len(names) == 6 * 2 and not any(n.startswith("pooler.") for n in names)  # 2 tiny layers x 6 linears
    assert model.num_parameters(KEY) == 16 * len(names)
    assert ModelConfig(lora_targets="query, key").target_names == ("query", "key")
    assert ModelConfig().target_names == ()
    for bad in ("query,query", "query,", "a-b"):
        with pytest.raises(ValueError, match="lora_targets"):
            ModelConfig(lora_targets=bad)
    with pytest.raises(ModelError, match="no linear layers"):
        M3TModel(load_backbone("tiny"), modalities={"image": (8, 8)}, tasks={"digit": ("image", 10)},
                 adapter="lora-sb", lora_r=4, lora_targets=("nowhere",))

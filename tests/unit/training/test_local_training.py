"""Local training: only the pair's modules move, the backbone stays frozen, and it learns (tiny backbone)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hffm_core.errors import ModelError
from hffm_core.protocol.keys import ModuleKey
from hffm_model import M3TModel, load_backbone
from hffm_model.training import evaluate, train_task, trained_keys

N_TOKENS, TOKEN_DIM, CLASSES = 8, 6, 4


def build(seed: int = 0) -> M3TModel:
    return M3TModel(
        load_backbone("tiny"),
        modalities={"imu": (N_TOKENS, TOKEN_DIM), "audio": (4, 10)},
        tasks={"har": ("imu", CLASSES), "fall": ("imu", 2), "kws": ("audio", 3)},
        seed=seed,
    )


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """SYNTHETIC data for unit tests only: each class shifts every token by its own fixed random mean."""
    means = np.random.default_rng(99).normal(0.0, 1.5, (CLASSES, 1, TOKEN_DIM))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    x = rng.normal(0.0, 1.0, (n, N_TOKENS, TOKEN_DIM)) + means[y]
    return x.astype(np.float32), y


def snapshot(model: M3TModel) -> dict[ModuleKey, dict[str, np.ndarray]]:
    return {key: model.get_module_state(key) for key in model.module_keys()}


def backbone_base(model: M3TModel) -> dict[str, torch.Tensor]:
    return {n: t.clone() for n, t in model.backbone_model.state_dict().items() if "lora_" not in n}


def test_training_changes_only_the_pairs_modules_and_never_the_backbone() -> None:
    model = build()
    before, base = snapshot(model), backbone_base(model)
    x, y = synthetic(64, seed=1)
    loss = train_task(model, modality="imu", task="har", x=x, y=y, epochs=2, batch_size=16)
    assert np.isfinite(loss)
    after = snapshot(model)
    trained = set(trained_keys("imu", "har"))
    for key in model.module_keys():
        changed = any(not np.array_equal(before[key][n], after[key][n]) for n in before[key])
        assert changed == (key in trained), key
    for name, tensor in backbone_base(model).items():
        assert torch.equal(tensor, base[name]), name
    assert all(not p.requires_grad for n, p in model.backbone_model.named_parameters() if "lora_" not in n)
    assert not model.backbone_model.training and not model.training


def test_training_on_separable_synthetic_data_beats_chance() -> None:
    model = build()
    x, y = synthetic(256, seed=1)
    x_test, y_test = synthetic(256, seed=2)
    chance_level = evaluate(model, modality="imu", task="har", x=x_test, y=y_test)
    first = train_task(model, modality="imu", task="har", x=x, y=y, epochs=1, lr=3e-3)
    last = train_task(model, modality="imu", task="har", x=x, y=y, epochs=4, lr=3e-3)
    accuracy = evaluate(model, modality="imu", task="har", x=x_test, y=y_test)
    assert last < first
    assert accuracy > 0.8 > chance_level + 0.2


def test_trained_adapter_is_live_in_the_backbone() -> None:
    model = build()
    x, y = synthetic(128, seed=1)
    key = ModuleKey.adapter("imu", "har")
    initial_adapter = model.get_module_state(key)
    train_task(model, modality="imu", task="har", x=x, y=y, epochs=2, lr=3e-3)
    assert any(v.any() for n, v in model.get_module_state(key).items() if n.endswith("lora_B.weight"))
    xt = torch.from_numpy(x[:8])
    with torch.no_grad():
        trained = model(xt, modality="imu", task="har")
        model.load_module_state(key, initial_adapter)  # B = 0 again: backbone as pretrained
        without = model(xt, modality="imu", task="har")
    assert not torch.allclose(trained, without)


def test_training_is_deterministic_for_a_seed() -> None:
    x, y = synthetic(48, seed=1)
    models = [build(), build()]
    losses = [train_task(m, modality="imu", task="har", x=x, y=y, epochs=2, batch_size=16, seed=3) for m in models]
    assert losses[0] == losses[1]
    for key in trained_keys("imu", "har"):
        a, b = models[0].get_module_state(key), models[1].get_module_state(key)
        assert all(np.array_equal(a[n], b[n]) for n in a)


def test_switching_tasks_trains_each_pair_independently() -> None:
    model = build()
    x, y = synthetic(32, seed=1)
    train_task(model, modality="imu", task="har", x=x, y=y, epochs=1)
    fall_before = model.get_module_state(ModuleKey.adapter("imu", "fall"))
    har_after_first = model.get_module_state(ModuleKey.adapter("imu", "har"))
    train_task(model, modality="imu", task="fall", x=x, y=y % 2, epochs=1)
    fall_after = model.get_module_state(ModuleKey.adapter("imu", "fall"))
    har_now = model.get_module_state(ModuleKey.adapter("imu", "har"))
    assert any(not np.array_equal(fall_before[n], fall_after[n]) for n in fall_before)
    assert all(np.array_equal(har_after_first[n], har_now[n]) for n in har_now)


def test_evaluate_does_not_depend_on_batch_size() -> None:
    model = build()
    x, y = synthetic(50, seed=3)
    a = evaluate(model, modality="imu", task="har", x=x, y=y, batch_size=7)
    b = evaluate(model, modality="imu", task="har", x=x, y=y)
    assert a == b and 0.0 <= a <= 1.0


EMPTY_X = np.zeros((0, N_TOKENS, TOKEN_DIM), np.float32)
X4 = np.zeros((4, N_TOKENS, TOKEN_DIM), np.float32)
Y4 = np.zeros(4, np.int64)


@pytest.mark.parametrize(
    ("x", "y", "kwargs", "error", "message"),
    [
        (EMPTY_X, np.zeros(0, np.int64), {}, ValueError, "no samples"),
        (X4, np.zeros(3, np.int64), {}, ValueError, "4 samples"),
        (X4, np.full(4, CLASSES), {}, ValueError, r"\[0, 4\)"),
        (X4, np.zeros(4, np.float32), {}, ValueError, "integers"),
        (np.zeros((4, N_TOKENS, 5), np.float32), Y4, {}, ModelError, r"expected \(n, 8, 6\)"),
        (X4, Y4, {"epochs": 0}, ValueError, "epochs"),
        (X4, Y4, {"batch_size": 0}, ValueError, "batch_size"),
        (X4, Y4, {"lr": -1.0}, ValueError, "lr"),
    ],
)
def test_train_task_rejects_bad_inputs(x, y, kwargs, error, message) -> None:
    model = build()
    with pytest.raises(error, match=message):
        train_task(model, modality="imu", task="har", x=x, y=y, **{"epochs": 1, **kwargs})


def test_wrong_pair_is_a_model_error() -> None:
    model = build()
    x, y = synthetic(4, seed=0)
    with pytest.raises(ModelError, match="runs on modality 'audio'"):
        train_task(model, modality="imu", task="kws", x=x, y=y, epochs=1)
    with pytest.raises(ModelError, match="unknown task"):
        evaluate(model, modality="imu", task="nope", x=x, y=y)

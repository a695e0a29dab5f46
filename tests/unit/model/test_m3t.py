"""M3T model: module keys, deterministic init, exact state round trips and strict loading (tiny backbone)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from hffm_core.errors import ModelError
from hffm_core.protocol.keys import ModuleKey
from hffm_model import M3TModel, load_backbone

MODALITIES = {"imu": (8, 6), "audio": (4, 10)}
TASKS = {"har": ("imu", 4), "fall": ("imu", 2), "kws": ("audio", 3)}


def build(modalities=MODALITIES, tasks=TASKS, *, seed: int = 0, backbone_seed: int = 0) -> M3TModel:
    return M3TModel(load_backbone("tiny", seed=backbone_seed), modalities=modalities, tasks=tasks, seed=seed)


def states_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[n], b[n]) for n in a)


def perturb(model: M3TModel, seed: int = 7) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key in model.module_keys():
            for p in model.module_parameters(key):
                p.add_(torch.randn(p.shape, generator=gen))


def test_module_keys_are_sorted_and_complete() -> None:
    keys = build().module_keys()
    assert keys == sorted(keys)
    assert [str(k) for k in keys] == [
        "adapter:audio:kws",
        "adapter:imu:fall",
        "adapter:imu:har",
        "encoder:audio:_",
        "encoder:imu:_",
        "head:_:fall",
        "head:_:har",
        "head:_:kws",
    ]


def test_parameter_counts_and_canonical_names() -> None:
    model = build()
    hidden, r = 32, 8
    assert model.num_parameters(ModuleKey.encoder("imu")) == 6 * hidden + hidden + 2 * hidden
    assert model.num_parameters(ModuleKey.head("har")) == hidden * 4 + 4
    # 2 layers x (query, value) x (A: r x hidden + B: hidden x r)
    assert model.num_parameters(ModuleKey.adapter("imu", "har")) == 2 * 2 * 2 * r * hidden
    names = list(model.get_module_state(ModuleKey.adapter("imu", "har")))
    assert "encoder.layer.0.attention.self.query.lora_A.weight" in names
    assert not any("__" in n for n in names)  # no peft adapter-name segment
    encoder_names = list(model.get_module_state(ModuleKey.encoder("imu")))
    assert encoder_names == ["norm.bias", "norm.weight", "proj.bias", "proj.weight"]


def test_initial_states_depend_only_on_seed_and_key() -> None:
    full = build()
    reordered_subset = build(
        modalities={"imu": (8, 6)}, tasks={"har": ("imu", 4), "fall": ("imu", 2)}, backbone_seed=5
    )
    only_fall = build(modalities={"imu": (8, 6)}, tasks={"fall": ("imu", 2)})
    for other in (reordered_subset, only_fall):
        for key in other.module_keys():
            assert states_equal(full.get_module_state(key), other.get_module_state(key)), key
    reseeded = build(seed=1)
    for key in full.module_keys():
        a, b = full.get_module_state(key), reseeded.get_module_state(key)
        assert any(not np.array_equal(a[n], b[n]) for n in a), key


def test_distinct_keys_get_distinct_initial_weights_and_lora_b_starts_at_zero() -> None:
    model = build()
    har = model.get_module_state(ModuleKey.adapter("imu", "har"))
    fall = model.get_module_state(ModuleKey.adapter("imu", "fall"))
    name = "encoder.layer.0.attention.self.query.lora_A.weight"
    assert not np.array_equal(har[name], fall[name])
    assert all(not v.any() for n, v in har.items() if n.endswith("lora_B.weight"))


def test_state_round_trip_reproduces_outputs_exactly() -> None:
    source = build()
    perturb(source)
    target = build()
    for key in source.module_keys():
        target.load_module_state(key, source.get_module_state(key))
    x = torch.randn(3, 8, 6)
    with torch.no_grad():
        for task in ("har", "fall"):
            assert torch.equal(source(x, modality="imu", task=task), target(x, modality="imu", task=task))
    for key in source.module_keys():
        assert states_equal(source.get_module_state(key), target.get_module_state(key))


def test_get_module_state_returns_float32_copies() -> None:
    model = build()
    key = ModuleKey.head("har")
    state = model.get_module_state(key)
    assert all(v.dtype == np.float32 for v in state.values())
    state["weight"][:] = 42.0
    assert not np.array_equal(model.get_module_state(key)["weight"], state["weight"])


def test_load_accepts_read_only_views_and_other_float_dtypes_without_warnings() -> None:
    model = build()
    key = ModuleKey.adapter("imu", "har")
    state = {}
    for name, value in model.get_module_state(key).items():
        view = np.frombuffer((value + 0.5).astype(">f8").tobytes(), dtype=">f8").reshape(value.shape)
        assert not view.flags.writeable
        state[name] = view
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.load_module_state(key, state)
    loaded = model.get_module_state(key)
    assert all(np.array_equal(loaded[n], state[n].astype(np.float32)) for n in state)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("weight"), r"missing tensors \['weight'\]"),
        (lambda s: s.update(extra=np.zeros(1, np.float32)), r"unexpected tensors \['extra'\]"),
        (
            lambda s: s.update(weight=np.zeros((4, 31), np.float32)),
            r"'weight' has shape \(4, 31\), expected \(4, 32\)",
        ),
        (lambda s: s.update(bias=np.array(["a", "b", "c", "d"])), "'bias' is not numeric"),
    ],
)
def test_load_rejects_mismatched_states_and_changes_nothing(edit, message) -> None:
    model = build()
    key = ModuleKey.head("har")
    before = model.get_module_state(key)
    state = {n: v + 1.0 for n, v in before.items()}
    edit(state)
    with pytest.raises(ModelError, match=message):
        model.load_module_state(key, state)
    assert states_equal(model.get_module_state(key), before)


def test_unknown_key_is_rejected_everywhere() -> None:
    model = build(modalities={"imu": (8, 6)}, tasks={"har": ("imu", 4)})
    key = ModuleKey.head("kws")
    for call in (model.get_module_state, model.module_parameters, model.num_parameters):
        with pytest.raises(ModelError, match="unknown module 'head:_:kws'"):
            call(key)
    with pytest.raises(ModelError, match="unknown module"):
        model.load_module_state(key, {})


def test_forward_checks_task_modality_and_shape() -> None:
    model = build()
    assert model(torch.randn(2, 4, 10), modality="audio", task="kws").shape == (2, 3)
    with pytest.raises(ModelError, match="unknown task 'nope'"):
        model(torch.randn(2, 8, 6), modality="imu", task="nope")
    with pytest.raises(ModelError, match="task 'kws' runs on modality 'audio', not 'imu'"):
        model(torch.randn(2, 8, 6), modality="imu", task="kws")
    with pytest.raises(ModelError, match=r"shape \(2, 8, 5\), expected \(batch, 8, 6\)"):
        model(torch.randn(2, 8, 5), modality="imu", task="har")


def test_adapters_are_separate_per_pair() -> None:
    model = build()
    x = torch.randn(2, 8, 6)
    with torch.no_grad():
        before = model(x, modality="imu", task="har")
        for p in model.module_parameters(ModuleKey.adapter("imu", "fall")):
            p.add_(1.0)
        assert torch.equal(model(x, modality="imu", task="har"), before)
        for p in model.module_parameters(ModuleKey.adapter("imu", "har")):
            p.add_(1.0)
        assert not torch.equal(model(x, modality="imu", task="har"), before)


def test_train_mode_keeps_the_backbone_in_eval_mode() -> None:
    model = build()
    model.train()
    assert model.encoders["imu"].training
    assert not model.backbone_model.training
    assert not any(m.training for m in model.backbone_model.modules())


@pytest.mark.parametrize(
    ("modalities", "tasks", "message"),
    [
        ({"imu": (8, 6)}, {"kws": ("audio", 3)}, "task 'kws' uses unknown modality 'audio'"),
        ({"IMU": (8, 6)}, {}, "invalid modality 'IMU'"),
        ({"imu": (8, 6)}, {"a_b": ("imu", 2)}, "invalid task 'a_b'"),
        ({"imu": (0, 6)}, {}, "n_tokens of modality 'imu' must be a positive integer"),
        ({"imu": (65, 6)}, {}, "65 tokens; backbone 'tiny' has 64 positions"),
        ({"imu": (8, 6)}, {"har": ("imu", 0)}, "num_classes of task 'har'"),
    ],
)
def test_constructor_rejects_bad_configs(modalities, tasks, message) -> None:
    with pytest.raises(ModelError, match=message):
        build(modalities, tasks)


def test_a_backbone_serves_one_model_only() -> None:
    bb = load_backbone("tiny")
    M3TModel(bb, modalities={"imu": (8, 6)}, tasks={"har": ("imu", 4)})
    with pytest.raises(ModelError, match="already carries LoRA layers"):
        M3TModel(bb, modalities={"imu": (8, 6)}, tasks={"har": ("imu", 4)})

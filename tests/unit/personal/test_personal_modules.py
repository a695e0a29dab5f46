"""Personal modules (edge_runtime/personal.py): the validation split, selective replacement by margin, personal
training beside the federated step, distillation, and the [personalization] config (tiny backbone, synthetic data)."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.config import PersonalizationConfig
from edge_runtime.personal import PersonalModules, split_validation, subtree
from hffm_core.protocol import ModuleKey
from hffm_model import M3TModel, load_backbone
from hffm_model.training import distill_task, predict_logits, train_task

N_TOKENS, TOKEN_DIM, CLASSES = 8, 6, 4
MODALITY_OF = {"har": "imu"}
KEYS = [ModuleKey.adapter("imu", "har"), ModuleKey.encoder("imu"), ModuleKey.head("har")]


def build() -> M3TModel:
    return M3TModel(load_backbone("tiny"), modalities={"imu": (N_TOKENS, TOKEN_DIM)}, tasks={"har": ("imu", CLASSES)},
                    seed=0)


def synthetic(n: int, seed: int, classes: tuple[int, ...] = (0, 1, 2, 3)) -> tuple[np.ndarray, np.ndarray]:
    """SYNTHETIC data for unit tests only: each class shifts every token by its own fixed random mean."""
    means = np.random.default_rng(99).normal(0.0, 1.5, (CLASSES, 1, TOKEN_DIM))
    rng = np.random.default_rng(seed)
    y = rng.choice(np.array(classes), n)
    x = rng.normal(0.0, 1.0, (n, N_TOKENS, TOKEN_DIM)) + means[y]
    return x.astype(np.float32), y.astype(np.int64)


def personal(model: M3TModel, margin: float = 0.01, n: int = 120) -> PersonalModules:
    fit, val = split_validation({"har": synthetic(n, 1)}, 0.2, seed=0)
    cfg = PersonalizationConfig(mode="replace+distill", margin={"encoder": margin, "adapter": margin,
                                                                "head": margin})
    return PersonalModules(model=model, keys=KEYS, modality_of=MODALITY_OF, train=fit, val=val, cfg=cfg)


def test_validation_split_is_disjoint_complete_stratified_and_seeded() -> None:
    x, y = synthetic(100, 3)
    fit, val = split_validation({"har": (x, y)}, 0.2, seed=5)
    assert len(fit["har"][1]) + len(val["har"][1]) == 100
    assert 16 <= len(val["har"][1]) <= 24
    assert set(np.unique(val["har"][1])) == set(np.unique(y))
    again = split_validation({"har": (x, y)}, 0.2, seed=5)[1]
    assert np.array_equal(again["har"][0], val["har"][0])
    with pytest.raises(ValueError):
        split_validation({"har": (x, y)}, 0.6, seed=0)


def test_subtree_is_the_encoder_its_adapters_and_their_heads() -> None:
    keys = [*KEYS, ModuleKey.encoder("audio"), ModuleKey.adapter("audio", "kws"), ModuleKey.head("kws")]
    assert set(subtree(keys, "imu")) == set(KEYS)


def test_a_better_version_replaces_and_a_worse_one_is_kept() -> None:
    model = build()
    p = personal(model)
    x, y = p.train["har"]
    for k in KEYS:  # a trained "global" version: better than the untrained personal modules
        model.load_module_state(k, p.states[k])
    train_task(model, modality="imu", task="har", x=x, y=y, epochs=8, batch_size=16, lr=5e-3)
    better = {k: model.get_module_state(k) for k in KEYS}
    out = p.select(better, (1, 1))
    assert sorted(out["replaced"]) == sorted(str(k) for k in KEYS)
    assert all(p.counts[str(k)] == {"replaced": 1, "kept": 0} for k in KEYS)
    initial = build()
    worse = {k: initial.get_module_state(k) for k in KEYS}
    out = p.select(worse, (1, 2))
    assert out["replaced"] == [] and len(out["kept"]) == 3
    assert all(np.array_equal(p.states[k][n], better[k][n]) for k in KEYS for n in better[k])


def test_a_margin_of_nearly_one_keeps_the_personal_modules() -> None:
    model = build()
    p = personal(model, margin=0.99)
    x, y = p.train["har"]
    train_task(model, modality="imu", task="har", x=x, y=y, epochs=4, batch_size=16)
    out = p.select({k: model.get_module_state(k) for k in KEYS}, (1, 1))
    assert out["replaced"] == []


def test_train_round_reuses_the_federated_step_when_the_personal_modules_are_the_versions() -> None:
    model = build()
    p = personal(model)
    versions = {k: model.get_module_state(k) for k in KEYS}
    trained = {k: {n: a + 1.0 for n, a in s.items()} for k, s in versions.items()}
    calls: list[str] = []
    assert p.train_round(versions, trained, lambda t, x, y: calls.append(t) or 0.0) == []
    assert calls == []
    assert all(np.array_equal(p.states[k][n], trained[k][n]) for k in KEYS for n in trained[k])
    other = {k: {n: a - 1.0 for n, a in s.items()} for k, s in versions.items()}  # personal differs: trains itself
    assert p.train_round(other, trained, lambda t, x, y: calls.append(t) or 0.0) == ["imu"]
    assert calls == ["har"]


def test_distillation_moves_toward_the_teacher_and_is_kept_only_if_not_worse() -> None:
    model = build()
    p = personal(model)
    x, y = p.train["har"]
    train_task(model, modality="imu", task="har", x=x, y=y, epochs=8, batch_size=16, lr=5e-3)
    teacher = {k: model.get_module_state(k) for k in KEYS}
    before = p._val_acc(p.states, "har")
    initial = {k: {n: a.copy() for n, a in st.items()} for k, st in p.states.items()}
    kept = p.distill(teacher, seed=0, batch_size=16)
    assert set(kept) == {"imu"}
    after = p._val_acc(p.states, "har")
    assert after is not None and before is not None and after >= before
    changed = any(not np.array_equal(p.states[k][n], initial[k][n]) for k in KEYS for n in initial[k])
    assert changed == kept["imu"]


def test_a_teacher_far_below_on_validation_gets_no_kl_term(monkeypatch: pytest.MonkeyPatch) -> None:
    """A global model more than ``teacher_floor`` below the personal modules on the device's own validation slice
    teaches nothing: that task's distillation epochs train on the labels alone (KL weight 0), and the result is
    still kept only if validation accuracy does not drop."""
    import hffm_model.training as training

    model = build()
    p = personal(model)
    untrained = {k: {n: a.copy() for n, a in st.items()} for k, st in p.states.items()}
    x, y = p.train["har"]
    train_task(model, modality="imu", task="har", x=x, y=y, epochs=8, batch_size=16, lr=5e-3)
    p.states = {k: model.get_module_state(k) for k in KEYS}
    acc_teacher, acc_personal = p._val_acc(untrained, "har"), p._val_acc(p.states, "har")
    assert acc_teacher is not None and acc_personal is not None
    assert acc_teacher < acc_personal - p.cfg.teacher_floor
    weights: list[float] = []
    real = training.distill_task
    monkeypatch.setattr(training, "distill_task", lambda *a, **kw: (weights.append(kw["weight"]), real(*a, **kw))[1])
    before = p._val_acc(p.states, "har")
    kept = p.distill(untrained, seed=0, batch_size=16)
    assert weights == [0.0] and p.taught == {"imu": []}
    after = p._val_acc(p.states, "har")
    assert after is not None and before is not None and after >= before and set(kept) == {"imu"}


def test_distill_task_checks_teacher_shape_and_returns_finite_loss() -> None:
    model = build()
    x, y = synthetic(32, 2)
    logits = predict_logits(model, modality="imu", task="har", x=x)
    assert logits.shape == (32, CLASSES)
    loss = distill_task(model, modality="imu", task="har", x=x, y=y, teacher_logits=logits, epochs=1)
    assert np.isfinite(loss)
    with pytest.raises(ValueError):
        distill_task(model, modality="imu", task="har", x=x, y=y, teacher_logits=logits[:3], epochs=1)


@pytest.mark.parametrize("bad", [{"mode": "always"}, {"val_fraction": 0.7}, {"margin": {"lora": 0.1}},
                                 {"margin": {"head": 1.5}}, {"distill_epochs": 0}, {"temperature": 0.0},
                                 {"teacher_floor": -0.1}])
def test_config_rejects_bad_values(bad: dict) -> None:
    with pytest.raises(ValueError):
        PersonalizationConfig(**bad)


def test_config_defaults_are_off() -> None:
    cfg = PersonalizationConfig()
    assert cfg.mode == "none" and cfg.margin_of("head") == 0.02 and cfg.margin_of("encoder") == 0.01

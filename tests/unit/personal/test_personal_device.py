"""The agent's side of personal modules (edge_runtime/personal_device.py): mode none changes nothing; otherwise the
validation slice leaves the training data, the federated result is back on the model after the personal step, the
snapshot is written, and the end of the job reports the global and personal accuracies (tiny backbone)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_runtime.config import DeviceConfig, DeviceSection, PersonalizationConfig
from edge_runtime.local_data import LocalData
from edge_runtime.personal_device import DevicePersonal, NoPersonal, make_personal, personal_path
from hffm_core.protocol import ModuleKey
from hffm_model import M3TModel, load_backbone
from hffm_model.snapshot import load_modules
from hffm_model.training import train_task

KEYS = [ModuleKey.adapter("imu", "har"), ModuleKey.encoder("imu"), ModuleKey.head("har")]


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """SYNTHETIC data for unit tests only."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    return (rng.normal(0, 1, (n, 8, 6)) + y[:, None, None]).astype(np.float32), y.astype(np.int64)


def _setup(mode: str, tmp_path: Path) -> tuple[M3TModel, LocalData, LocalData, object]:
    model = M3TModel(load_backbone("tiny"), modalities={"imu": (8, 6)}, tasks={"har": ("imu", 3)}, seed=0)
    data = LocalData(modality_of={"har": "imu"}, train={"har": _data(80, 1)}, test={"har": _data(30, 2)},
                     own={"har": _data(20, 3)})
    cfg = DeviceConfig(device=DeviceSection(id="dev-1", fleet="f", fog="fog-1", modalities=["imu"], tasks=["har"]),
                       personalization=PersonalizationConfig(mode=mode))
    trimmed, personal = make_personal(cfg, model, KEYS, data, tmp_path)
    return model, data, trimmed, personal


def test_mode_none_keeps_all_data_and_reports_only_the_global_model_on_the_own_split(tmp_path: Path) -> None:
    model, data, trimmed, personal = _setup("none", tmp_path)
    assert isinstance(personal, NoPersonal) and trimmed is data
    personal.before_training({}, 1, 1)
    personal.after_training({}, 0, 1)
    own = personal.finish({}, 1)
    assert set(own) == {"har"} and personal.metrics() == {"own_accuracy": own, "personal": None}


def test_replace_distill_round_and_finish(tmp_path: Path) -> None:
    model, data, trimmed, personal = _setup("replace+distill", tmp_path)
    assert isinstance(personal, DevicePersonal)
    assert len(trimmed.train["har"][1]) < len(data.train["har"][1])
    versions = {k: model.get_module_state(k) for k in KEYS}
    personal.before_training(versions, 1, 1)
    x, y = trimmed.train["har"]
    train_task(model, modality="imu", task="har", x=x, y=y, epochs=1)
    federated = {k: model.get_module_state(k) for k in KEYS}
    personal.after_training(versions, 0, 1)
    for k in KEYS:  # the federated result is what the model holds after the personal step
        assert all(np.array_equal(model.get_module_state(k)[n], federated[k][n]) for n in federated[k])
    states, _stamps = load_modules(personal_path(tmp_path, "dev-1"))
    assert set(states) == set(KEYS)
    own = personal.finish(federated, 2)
    metrics = personal.metrics()
    assert set(own) == {"har"} and metrics["own_accuracy"] == own
    assert set(metrics["personal"]["accuracy"]) == {"test", "own"}
    assert metrics["personal"]["counts"][str(KEYS[0])]["replaced"] + \
        metrics["personal"]["counts"][str(KEYS[0])]["kept"] == 2

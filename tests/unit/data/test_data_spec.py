"""The M3T-Bench spec: modalities, tasks, lookups."""

from __future__ import annotations

import dataclasses

import pytest

from hffm_core.errors import DataError
from hffm_lab.data import (
    MODALITIES,
    TASKS,
    ModalitySpec,
    TaskSpec,
    modality_spec,
    task_spec,
    tasks_of,
)


def test_four_modalities_five_tasks() -> None:
    assert set(MODALITIES) == {"inertial", "power", "speech", "image"}
    assert set(TASKS) == {"activity", "demand", "appliance", "speaker", "digit"}
    assert {(m.n_tokens, m.token_dim) for m in MODALITIES.values()} == {(10, 60), (16, 8), (16, 12), (8, 8)}
    for name, spec in MODALITIES.items():
        assert spec.name == name and spec.description
    for name, task in TASKS.items():
        assert task.name == name and task.modality in MODALITIES and task.source


@pytest.mark.parametrize(
    ("modality", "tasks"),
    [("inertial", ["activity"]), ("power", ["demand", "appliance"]), ("speech", ["speaker"]), ("image", ["digit"])],
)
def test_tasks_of(modality: str, tasks: list[str]) -> None:
    assert tasks_of(modality) == tasks


def test_unknown_names_list_the_known_ones() -> None:
    with pytest.raises(DataError, match=r"unknown modality 'imu2'; expected one of \['image', 'inertial'"):
        tasks_of("imu2")
    with pytest.raises(DataError, match="unknown task 'nope'"):
        task_spec("nope")
    with pytest.raises(DataError, match="unknown modality"):
        modality_spec(["not", "hashable"])  # type: ignore[arg-type]


def test_specs_are_frozen_and_validated() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        MODALITIES["image"].n_tokens = 3  # type: ignore[misc]
    with pytest.raises(DataError, match=r"\(0, 4\)"):
        ModalitySpec("x", 0, 4, "bad")
    with pytest.raises(DataError, match="num_classes must be >= 2, got 1"):
        TaskSpec("t", "image", 1, "bad")

"""M3T-Bench: what each modality's tokens look like and which tasks read them.

Every modality has a fixed token shape ``(n_tokens, token_dim)`` so that one per-modality linear encoder can map its
tokens into the backbone's hidden size. This module is pure data: it imports neither numpy nor the data packages,
so fog gateways and the cloud can read the spec without installing sktime.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from hffm_core.errors import DataError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ModalitySpec:
    """A sensing modality and the token shape its samples are converted to."""

    name: str
    n_tokens: int
    token_dim: int
    description: str

    def __post_init__(self) -> None:
        if not self.name:
            raise DataError("modality name must not be empty")
        if self.n_tokens < 1 or self.token_dim < 1:
            raise DataError(
                f"modality {self.name!r}: token shape must be positive, got ({self.n_tokens}, {self.token_dim})"
            )


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """A classification task on one modality; ``source`` says where its data comes from, in words."""

    name: str
    modality: str
    num_classes: int
    source: str

    def __post_init__(self) -> None:
        if not self.name:
            raise DataError("task name must not be empty")
        if self.num_classes < 2:
            raise DataError(f"task {self.name!r}: num_classes must be >= 2, got {self.num_classes}")


MODALITIES: dict[str, ModalitySpec] = {
    m.name: m
    for m in (
        ModalitySpec(
            "inertial", 10, 60, "smartwatch accelerometer + gyroscope, 6 channels x 100 steps; 10-step patches"
        ),
        ModalitySpec("power", 16, 8, "electric power / current series resampled to 128 steps, z-normalised"),
        ModalitySpec("speech", 16, 12, "12 LPC cepstra per frame, resampled to 16 frames, fixed global scale"),
        ModalitySpec("image", 8, 8, "8x8 grey image, one token per pixel row, scaled to [0, 1]"),
    )
}

TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec("activity", "inertial", 4, "sktime BasicMotions"),
        TaskSpec("demand", "power", 2, "sktime ItalyPowerDemand"),
        TaskSpec("appliance", "power", 11, "sktime PLAID"),
        TaskSpec("speaker", "speech", 9, "sktime JapaneseVowels"),
        TaskSpec("digit", "image", 10, "scikit-learn load_digits"),
    )
}


def _lookup(table: dict[str, T], name: str, what: str) -> T:
    try:
        return table[name]
    except (KeyError, TypeError):
        raise DataError(f"unknown {what} {name!r}; expected one of {sorted(table)}") from None


def modality_spec(modality: str) -> ModalitySpec:
    """The spec of ``modality``.

    Raises:
        DataError: ``modality`` is not one of :data:`MODALITIES`; the message lists the known ones.
    """
    return _lookup(MODALITIES, modality, "modality")


def task_spec(task: str) -> TaskSpec:
    """The spec of ``task``.

    Raises:
        DataError: ``task`` is not one of :data:`TASKS`; the message lists the known ones.
    """
    return _lookup(TASKS, task, "task")


def tasks_of(modality: str) -> list[str]:
    """The tasks that read ``modality``, in :data:`TASKS` order.

    Raises:
        DataError: ``modality`` is unknown; the message lists the known ones.
    """
    modality_spec(modality)
    return [t.name for t in TASKS.values() if t.modality == modality]

"""Build the M3T model a node needs from its config: the backbone plus the modules of its modalities and tasks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from hffm_core.config import ModelConfig
from hffm_core.errors import ConfigError

if TYPE_CHECKING:
    from hffm_model import M3TModel


def check_modalities_tasks(modalities: Sequence[str], tasks: Sequence[str]) -> None:
    """Raises ``ConfigError`` for an unknown modality/task or a task whose modality is not listed."""
    from hffm_model.spec import MODALITIES, TASKS

    for m in modalities:
        if m not in MODALITIES:
            raise ConfigError(f"unknown modality {m!r}; expected one of {sorted(MODALITIES)}")
    for t in tasks:
        if t not in TASKS:
            raise ConfigError(f"unknown task {t!r}; expected one of {sorted(TASKS)}")
        if TASKS[t].modality not in modalities:
            raise ConfigError(f"task {t!r} needs modality {TASKS[t].modality!r}, which is not in {list(modalities)}")


def build_m3t(cfg: ModelConfig, modalities: Sequence[str], tasks: Sequence[str]) -> M3TModel:
    """The frozen backbone named in ``cfg`` with seeded modules for ``modalities`` and ``tasks``.

    Raises:
        ConfigError: unknown modality or task. ModelError: the backbone cannot be loaded.
    """
    check_modalities_tasks(modalities, tasks)
    from hffm_model import M3TModel, load_backbone
    from hffm_model.spec import MODALITIES, TASKS

    backbone = load_backbone(cfg.backbone, seed=cfg.seed)
    return M3TModel(
        backbone,
        modalities={m: (MODALITIES[m].n_tokens, MODALITIES[m].token_dim) for m in modalities},
        tasks={t: (TASKS[t].modality, TASKS[t].num_classes) for t in tasks},
        lora_r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        adapter=cfg.adapter,
        seed=cfg.seed,
        lora_targets=cfg.target_names,
    )

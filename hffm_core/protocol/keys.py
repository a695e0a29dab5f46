"""Module keys: the unit of federation is a module named by ``(kind, modality, task)``."""

from __future__ import annotations

import re
from dataclasses import dataclass

MODULE_KINDS = ("encoder", "adapter", "head")
ANY = "_"
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def check_name(value: object, what: str) -> str:
    """Return ``value`` if it is a valid modality/task/node name (``[a-z0-9][a-z0-9-]*``, no ``_``).

    Raises:
        ValueError: quoting the bad value.
    """
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ValueError(f"invalid {what} {value!r}: must match [a-z0-9][a-z0-9-]{{0,62}}")
    return value


@dataclass(frozen=True, slots=True, order=True)
class ModuleKey:
    """``encoder`` per modality (task ``_``), ``adapter`` per modality-task pair, ``head`` per task (modality ``_``).

    Raises ``ValueError`` from the constructor when the combination is not one of those three shapes.
    """

    kind: str
    modality: str
    task: str

    def __post_init__(self) -> None:
        if self.kind not in MODULE_KINDS:
            raise ValueError(f"unknown module kind {self.kind!r}; expected one of {list(MODULE_KINDS)}")
        if self.kind == "encoder":
            check_name(self.modality, "modality")
            if self.task != ANY:
                raise ValueError(f"an encoder's task must be {ANY!r}, got {self.task!r}")
        elif self.kind == "head":
            check_name(self.task, "task")
            if self.modality != ANY:
                raise ValueError(f"a head's modality must be {ANY!r}, got {self.modality!r}")
        else:
            check_name(self.modality, "modality")
            check_name(self.task, "task")

    @classmethod
    def encoder(cls, modality: str) -> ModuleKey:
        return cls(kind="encoder", modality=modality, task=ANY)

    @classmethod
    def adapter(cls, modality: str, task: str) -> ModuleKey:
        return cls(kind="adapter", modality=modality, task=task)

    @classmethod
    def head(cls, task: str) -> ModuleKey:
        return cls(kind="head", modality=ANY, task=task)

    def __str__(self) -> str:
        return f"{self.kind}:{self.modality}:{self.task}"

    @classmethod
    def parse(cls, text: str) -> ModuleKey:
        """Inverse of ``str(key)``. Raises ``ValueError`` for a malformed string."""
        parts = text.split(":") if isinstance(text, str) else []
        if len(parts) != 3:
            raise ValueError(f"invalid module key {text!r}: expected 'kind:modality:task'")
        return cls(kind=parts[0], modality=parts[1], task=parts[2])


def modules_for(modalities_tasks: dict[str, list[str]]) -> list[ModuleKey]:
    """The modules a holder of ``{modality: [tasks]}`` holds: encoders, adapters and heads, sorted."""
    keys: set[ModuleKey] = set()
    for modality, tasks in modalities_tasks.items():
        keys.add(ModuleKey.encoder(modality))
        for task in tasks:
            keys.add(ModuleKey.adapter(modality, task))
            keys.add(ModuleKey.head(task))
    return sorted(keys)

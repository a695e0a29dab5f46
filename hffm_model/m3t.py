"""The multi-modal multi-task (M3T) model: one frozen backbone plus federated modules.

Modules, keyed by :class:`~hffm_core.protocol.keys.ModuleKey`:

* ``encoder:<modality>:_`` -- ``Linear(token_dim, hidden) -> LayerNorm`` feeding the backbone's ``inputs_embeds``;
* ``adapter:<modality>:<task>`` -- one peft LoRA adapter (named ``<modality>__<task>``) on the shared backbone;
* ``head:_:<task>`` -- ``Linear(hidden, num_classes)`` on the mean-pooled ``last_hidden_state``.

Every module's initial weights come only from ``(seed, str(key))``, so processes that hold different subsets of
modules, or build them in a different order, start from bit-identical states for the modules they share.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from hffm_core.config import ADAPTER_VARIANTS
from hffm_core.errors import ModelError
from hffm_core.protocol.keys import ModuleKey
from hffm_model import lora_sb
from hffm_model.backbone import Backbone

__all__ = ["M3TModel", "adapter_name", "module_generator"]


def adapter_name(modality: str, task: str) -> str:
    """The peft adapter name of a modality-task pair (names cannot contain ``_``, so this is unambiguous)."""
    return f"{modality}__{task}"


def module_generator(seed: int, key: ModuleKey) -> torch.Generator:
    """A CPU generator seeded only by ``(seed, str(key))`` (stable across processes, unlike ``hash``)."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "big") & (2**63 - 1))


def _linear_init(weight: torch.Tensor, bias: torch.Tensor | None, gen: torch.Generator) -> None:
    # torch's nn.Linear default (kaiming_uniform a=sqrt(5) => U(+-1/sqrt(fan_in))), drawn from `gen`.
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=gen)
    if bias is not None:
        bound = 1.0 / math.sqrt(weight.shape[1])
        nn.init.uniform_(bias, -bound, bound, generator=gen)


class _Encoder(nn.Module):
    """Projects ``(B, n_tokens, token_dim)`` to the backbone's width, at the scale of its word embeddings."""

    def __init__(self, token_dim: int, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(token_dim, hidden)
        self.norm = nn.LayerNorm(hidden)

    def reset(self, gen: torch.Generator) -> None:
        _linear_init(self.proj.weight, self.proj.bias, gen)
        # Output rows of norm ~1, like a pretrained BERT's word embeddings (all-MiniLM: 1.07), so the backbone's
        # position embeddings (norm ~0.5) still carry the token order.
        nn.init.constant_(self.norm.weight, 1.0 / math.sqrt(self.norm.weight.numel()))
        nn.init.zeros_(self.norm.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


def _positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ModelError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


class M3TModel(nn.Module):
    """A frozen backbone with per-modality encoders, per-pair LoRA adapters and per-task heads.

    The backbone is mutated in place (LoRA layers are injected) and always stays in eval mode.

    Raises (constructor):
        ModelError: invalid names or sizes, a task on an unknown modality, more tokens than the backbone has
            positions, or a backbone already used by another M3T model.
    """

    def __init__(
        self,
        backbone: Backbone,
        *,
        modalities: Mapping[str, tuple[int, int]],
        tasks: Mapping[str, tuple[str, int]],
        lora_r: int = 8,
        lora_alpha: int = 16,
        seed: int = 0,
        adapter: str = "lora",
        lora_targets: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.seed = int(seed)
        self.lora_r = _positive_int(lora_r, "lora_r")
        self.lora_alpha = _positive_int(lora_alpha, "lora_alpha")
        if adapter not in ADAPTER_VARIANTS:
            raise ModelError(f"unknown adapter {adapter!r}; expected one of {list(ADAPTER_VARIANTS)}")
        # ffa_lora: every lora_A stays at its seeded initial value (the same on every node), so an adapter module is
        # only its lora_B tensors: half of LoRA's parameters, trained and sent.
        # lora-sb: A and B are frozen SVD factors of the pretrained weight (the same on every node) and an adapter
        # module is only one r x r matrix R per LoRA layer (hffm_model/lora_sb.py).
        self.adapter = adapter
        self.lora_targets = tuple(lora_targets)  # () = the backbone's default layers
        self._modalities = self._check_modalities(backbone, modalities)
        self._tasks = self._check_tasks(tasks, self._modalities)
        self._keys = sorted(self._all_keys())
        self.backbone_model = backbone.model
        hidden = backbone.hidden_size
        self.encoders = nn.ModuleDict({m: _Encoder(dim, hidden) for m, (_, dim) in self._modalities.items()})
        self.heads = nn.ModuleDict({t: nn.Linear(hidden, n) for t, (_, n) in self._tasks.items()})
        self._lora_layers = self._inject_adapters()
        self._active: str | None = None
        self.reset_modules()
        self.backbone_model.eval()

    # -- construction --------------------------------------------------------------------------------------------

    @staticmethod
    def _check_modalities(
        backbone: Backbone, modalities: Mapping[str, tuple[int, int]]
    ) -> dict[str, tuple[int, int]]:
        max_pos = getattr(getattr(backbone.model, "config", None), "max_position_embeddings", None)
        out: dict[str, tuple[int, int]] = {}
        for modality in sorted(modalities):
            try:
                ModuleKey.encoder(modality)
                n_tokens, token_dim = modalities[modality]
            except (ValueError, TypeError) as exc:
                raise ModelError(f"invalid modality {modality!r}: {exc}") from exc
            n_tokens = _positive_int(n_tokens, f"n_tokens of modality {modality!r}")
            token_dim = _positive_int(token_dim, f"token_dim of modality {modality!r}")
            if isinstance(max_pos, int) and n_tokens > max_pos:
                raise ModelError(
                    f"modality {modality!r} has {n_tokens} tokens; "
                    f"backbone {backbone.name!r} has {max_pos} positions"
                )
            out[modality] = (n_tokens, token_dim)
        return out

    @staticmethod
    def _check_tasks(
        tasks: Mapping[str, tuple[str, int]], modalities: Mapping[str, tuple[int, int]]
    ) -> dict[str, tuple[str, int]]:
        out: dict[str, tuple[str, int]] = {}
        for task in sorted(tasks):
            try:
                modality, num_classes = tasks[task]
                ModuleKey.adapter(modality, task)
            except (ValueError, TypeError) as exc:
                raise ModelError(f"invalid task {task!r}: {exc}") from exc
            if modality not in modalities:
                raise ModelError(
                    f"task {task!r} uses unknown modality {modality!r}; expected one of {sorted(modalities)}"
                )
            out[task] = (modality, _positive_int(num_classes, f"num_classes of task {task!r}"))
        return out

    def _all_keys(self) -> set[ModuleKey]:
        keys = {ModuleKey.encoder(m) for m in self._modalities}
        for task, (modality, _) in self._tasks.items():
            keys.add(ModuleKey.adapter(modality, task))
            keys.add(ModuleKey.head(task))
        return keys

    def _target_modules(self, model: nn.Module) -> list[str]:
        """The layers that get adapters: the backbone's default names, or the full names of its linear layers
        called one of ``lora_targets`` (not the pooler, whose output the heads never read)."""
        if not self.lora_targets:
            return list(self.backbone.lora_targets)
        names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)
                 and n.rsplit(".", 1)[-1] in self.lora_targets and not n.startswith("pooler.")]
        if not names:
            raise ModelError(f"backbone {self.backbone.name!r} has no linear layers named {list(self.lora_targets)}")
        return names

    def _inject_adapters(self) -> list[tuple[str, nn.Module]]:
        from peft import LoraConfig, inject_adapter_in_model
        from peft.tuners.lora import LoraLayer

        model = self.backbone_model
        if any(isinstance(m, LoraLayer) for m in model.modules()):
            raise ModelError(
                f"backbone {self.backbone.name!r} already carries LoRA layers; call load_backbone() once per model"
            )
        targets = self._target_modules(model)  # before the first injection wraps the linear layers
        for key in self._keys:
            if key.kind != "adapter":
                continue
            config = LoraConfig(
                r=self.lora_r,
                lora_alpha=self.lora_alpha,
                lora_dropout=0.0,
                target_modules=targets,
                bias="none",
            )
            with warnings.catch_warnings():
                # peft warns that a second adapter on one model is unusual: here it is the design.
                warnings.filterwarnings("ignore", message=".*multiple adapters.*")
                inject_adapter_in_model(config, model, adapter_name=adapter_name(key.modality, key.task))
        for param in model.parameters():
            param.requires_grad_(False)  # peft marks the new adapters trainable; forward() activates one at a time
        layers = [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer)]
        if self.adapter == "lora-sb":
            for key in self._keys:
                if key.kind == "adapter":
                    try:
                        lora_sb.install(layers, adapter_name(key.modality, key.task), self.lora_r)
                    except ValueError as exc:
                        raise ModelError(str(exc)) from None
        return layers

    @torch.no_grad()
    def reset_modules(self) -> None:
        """Re-initialise every module from ``(seed, str(key))``; the backbone is untouched."""
        for key in self._keys:
            gen = module_generator(self.seed, key)
            if key.kind == "encoder":
                self.encoders[key.modality].reset(gen)
            elif key.kind == "head":
                head = self.heads[key.task]
                _linear_init(head.weight, head.bias, gen)
            elif self.adapter == "lora-sb":
                lora_sb.reset(self._lora_layers, adapter_name(key.modality, key.task))  # R = 0, A and B from W
            else:
                for name, param in self._lora_tensors(key).items():  # A and B, also when A is frozen (ffa_lora)
                    if name.endswith("lora_A.weight"):
                        _linear_init(param, None, gen)  # peft's default for A, from our generator
                    else:
                        param.zero_()  # B = 0: a fresh adapter leaves the backbone's output unchanged

    # -- modules -------------------------------------------------------------------------------------------------

    @property
    def modalities(self) -> dict[str, tuple[int, int]]:
        """``{modality: (n_tokens, token_dim)}`` (a copy)."""
        return dict(self._modalities)

    @property
    def tasks(self) -> dict[str, tuple[str, int]]:
        """``{task: (modality, num_classes)}`` (a copy)."""
        return dict(self._tasks)

    def module_keys(self) -> list[ModuleKey]:
        """The keys of the modules this model holds, sorted."""
        return list(self._keys)

    def _check_key(self, key: ModuleKey) -> None:
        if key not in self._keys:
            raise ModelError(f"unknown module {str(key)!r}; this model holds {[str(k) for k in self._keys]}")

    def _module_tensors(self, key: ModuleKey) -> dict[str, nn.Parameter]:
        """Canonical name -> parameter, sorted by name; adapter names carry no peft adapter-name segment."""
        self._check_key(key)
        if key.kind == "encoder":
            params = dict(self.encoders[key.modality].named_parameters())
        elif key.kind == "head":
            params = dict(self.heads[key.task].named_parameters())
        elif self.adapter == "lora-sb":
            params = lora_sb.tensors(self._lora_layers, adapter_name(key.modality, key.task))
        else:
            params = self._lora_tensors(key)
            if self.adapter == "ffa_lora":
                params = {n: p for n, p in params.items() if not n.endswith("lora_A.weight")}
        return dict(sorted(params.items()))

    def _lora_tensors(self, key: ModuleKey) -> dict[str, nn.Parameter]:
        name = adapter_name(key.modality, key.task)
        params = {}
        for layer_name, layer in self._lora_layers:
            params[f"{layer_name}.lora_A.weight"] = layer.lora_A[name].weight
            params[f"{layer_name}.lora_B.weight"] = layer.lora_B[name].weight
        return dict(sorted(params.items()))

    def module_parameters(self, key: ModuleKey) -> list[nn.Parameter]:
        """The parameters of one module, in canonical-name order. Raises ``ModelError`` for an unknown key."""
        return list(self._module_tensors(key).values())

    def num_parameters(self, key: ModuleKey) -> int:
        """Number of scalars in one module. Raises ``ModelError`` for an unknown key."""
        return sum(p.numel() for p in self._module_tensors(key).values())

    def get_module_state(self, key: ModuleKey) -> dict[str, np.ndarray]:
        """Float32 numpy copies of one module's tensors. Raises ``ModelError`` for an unknown key."""
        return {
            name: p.detach().to(torch.float32).numpy().copy() for name, p in self._module_tensors(key).items()
        }

    def load_module_state(self, key: ModuleKey, state: Mapping[str, np.ndarray]) -> None:
        """Copy ``state`` into one module; nothing is changed unless every tensor matches.

        Raises:
            ModelError: unknown key, missing or unexpected tensor names, a shape mismatch or a non-numeric array.
        """
        params = self._module_tensors(key)
        missing = sorted(set(params) - set(state))
        unexpected = sorted(set(state) - set(params))
        if missing or unexpected:
            raise ModelError(f"state for {str(key)!r}: missing tensors {missing}, unexpected tensors {unexpected}")
        arrays: dict[str, np.ndarray] = {}
        for name, param in params.items():
            try:
                array = np.asarray(state[name], dtype=np.float32)
            except (TypeError, ValueError) as exc:
                raise ModelError(f"state for {str(key)!r}: tensor {name!r} is not numeric: {exc}") from exc
            if array.shape != tuple(param.shape):
                raise ModelError(
                    f"state for {str(key)!r}: tensor {name!r} has shape {array.shape}, "
                    f"expected {tuple(param.shape)}"
                )
            # Decoded payloads are often read-only views; torch.from_numpy warns on those.
            arrays[name] = np.require(array, requirements=["C", "W"])
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(torch.from_numpy(arrays[name]))

    # -- running -------------------------------------------------------------------------------------------------

    def train(self, mode: bool = True) -> M3TModel:
        """Modules follow ``mode``; the frozen backbone stays in eval mode (dropout off, always)."""
        super().train(mode)
        self.backbone_model.eval()
        return self

    def check_pair(self, modality: str, task: str) -> None:
        """Raises ``ModelError`` unless ``task`` is held and runs on ``modality``."""
        if task not in self._tasks:
            raise ModelError(f"unknown task {task!r}; expected one of {sorted(self._tasks)}")
        if self._tasks[task][0] != modality:
            raise ModelError(f"task {task!r} runs on modality {self._tasks[task][0]!r}, not {modality!r}")

    def activate(self, modality: str, task: str) -> None:
        """Make the pair's adapter the active one (trainable: ``requires_grad``) on every LoRA layer.

        Raises ``ModelError`` unless ``task`` is held and runs on ``modality``.
        """
        self.check_pair(modality, task)
        name = adapter_name(modality, task)
        if self._active == name:
            return
        for _, layer in self._lora_layers:
            layer.set_adapter(name)  # peft marks the active adapter's A and B trainable
            if self.adapter == "ffa_lora":
                layer.lora_A[name].weight.requires_grad_(False)
            elif self.adapter == "lora-sb":
                layer.lora_B[name].weight.requires_grad_(False)  # only R (inside lora_A) trains
        self._active = name

    def forward(self, x: torch.Tensor, *, modality: str, task: str) -> torch.Tensor:
        """``x`` ``(B, n_tokens, token_dim)`` float32 -> logits ``(B, num_classes)`` through the pair's adapter.

        Raises:
            ModelError: unknown task, a task of another modality, or ``x`` of the wrong shape.
        """
        self.activate(modality, task)
        expected = self._modalities[modality]
        if x.dim() != 3 or tuple(x.shape[1:]) != expected:
            raise ModelError(
                f"input for modality {modality!r} has shape {tuple(x.shape)}, expected (batch, {expected[0]}, "
                f"{expected[1]})"
            )
        embeds = self.encoders[modality](x)
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        hidden = self.backbone_model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        return self.heads[task](hidden.mean(dim=1))

"""LoRA-SB adapters (Fed-SB, arXiv 2502.15436; the LoRA-XS form, arXiv 2405.17604): ``W + s * B R A`` with ``A``
and ``B`` frozen and only the small ``r x r`` matrix ``R`` trained and sent.

``A`` and ``B`` come from the truncated SVD of the frozen pretrained weight ``W = U S Vh`` (``B = U_r S_r``,
``A = Vh_r``), with each singular pair's sign fixed so that the largest entry of ``U``'s column is positive. Every
node holds the same backbone, so every node derives the same ``A`` and ``B`` without any of them travelling; Fed-SB
derives them from the first full gradient instead, which needs data every node shares. ``R`` starts at zero, so a
fresh adapter leaves the backbone's output unchanged, like LoRA's ``B = 0``.

Because ``A`` and ``B`` are the same on every node, the federated average of ``R`` is exactly the average of the
updates ``B R A`` (plain LoRA averages ``A`` and ``B`` separately, which is not the average of their products).

The layer plugs into peft's LoRA layer: ``lora_A[name]`` becomes a :class:`SbDown` (``x -> R (A x)``, whose
``weight`` is ``R A``) and ``lora_B[name]`` keeps the frozen ``B``, so peft's forward and its
``get_delta_weight`` (``B @ lora_A.weight * scaling``, used by the ONNX export's merge) work unchanged.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["SbDown", "base_weight", "install", "reset", "svd_factors", "tensors"]


class SbDown(nn.Module):
    """``x -> R (A x)``: a frozen ``A`` (``r x in``, a buffer) and a trainable ``R`` (``r x r``, zero at the start)."""

    def __init__(self, frozen_a: torch.Tensor) -> None:
        super().__init__()
        r = frozen_a.shape[0]
        self.register_buffer("frozen", frozen_a.detach().clone())
        self.lora_R = nn.Parameter(torch.zeros(r, r, dtype=frozen_a.dtype))

    @property
    def weight(self) -> torch.Tensor:
        """``R A`` (``r x in``): what plain LoRA calls ``lora_A.weight``, so peft's merge formula holds."""
        return self.lora_R @ self.frozen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.frozen), self.lora_R)


@torch.no_grad()
def svd_factors(weight: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` = ``(Vh_r, U_r S_r)`` of ``weight`` (``out x in``), float32, signs fixed deterministically.

    Raises ``ValueError`` if ``r`` exceeds the smaller side of ``weight``.
    """
    out_dim, in_dim = weight.shape
    if r > min(out_dim, in_dim):
        raise ValueError(f"lora-sb rank {r} exceeds the layer's smaller side {min(out_dim, in_dim)}")
    u, s, vh = torch.linalg.svd(weight.detach().to(torch.float64), full_matrices=False)
    u, s, vh = u[:, :r], s[:r], vh[:r]
    # An SVD is unique only up to the sign of each singular pair: fix it so that every node agrees.
    idx = u.abs().argmax(dim=0)
    sign = torch.sign(u[idx, torch.arange(r)])
    sign[sign == 0] = 1.0
    u, vh = u * sign, vh * sign[:, None]
    return vh.to(torch.float32).contiguous(), (u * s).to(torch.float32).contiguous()


def base_weight(layer: nn.Module) -> torch.Tensor:
    """The frozen pretrained weight (``out x in``) under a peft LoRA layer."""
    return layer.get_base_layer().weight  # type: ignore[operator]


def install(layers: list[tuple[str, nn.Module]], adapter: str, r: int) -> None:
    """Turn ``adapter`` on every peft LoRA layer into LoRA-SB: ``lora_A`` becomes a :class:`SbDown`, ``lora_B``
    holds the frozen ``B``. Call once per adapter, right after peft injected it."""
    for _, layer in layers:
        a, b = svd_factors(base_weight(layer), r)
        layer.lora_A[adapter] = SbDown(a)
        with torch.no_grad():
            layer.lora_B[adapter].weight.copy_(b)
        layer.lora_B[adapter].weight.requires_grad_(False)


@torch.no_grad()
def reset(layers: list[tuple[str, nn.Module]], adapter: str) -> None:
    """``R = 0`` and ``A``, ``B`` back to the SVD factors on every layer of ``adapter``."""
    for _, layer in layers:
        down = layer.lora_A[adapter]
        a, b = svd_factors(base_weight(layer), down.lora_R.shape[0])
        down.frozen.copy_(a)
        down.lora_R.zero_()
        layer.lora_B[adapter].weight.copy_(b)


def tensors(layers: list[tuple[str, nn.Module]], adapter: str) -> dict[str, nn.Parameter]:
    """Canonical name -> ``R`` of every layer of ``adapter``: the whole module that is trained and sent."""
    return {f"{name}.lora_R.weight": layer.lora_A[adapter].lora_R for name, layer in layers}

"""ScaleNorm (slot ``norm``): one learned scale per norm, g · x / ‖x‖ (Nguyen & Salazar 2019,
"Transformers without Tears"), with g initialised to √d so a unit-variance input keeps its
scale. No bias and no per-dimension gain: a spec that asks for norm biases (``bias.norm:
true``) is refused in one line rather than silently built without them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bertsmith.blocks.norm import NormParams
from bertsmith.registry.core import register
from bertsmith.registry.errors import problem


def _no_bias(spec) -> list[str]:
    """ScaleNorm has no bias to honour ``bias.norm: true`` with."""
    if spec.bias.norm:
        return [problem("model.bias.norm", True, "false with norm 'scalenorm', which has no bias")]
    return []


@register("norm", "scalenorm", params=NormParams, check=_no_bias)
class ScaleNorm(nn.Module):
    """ScaleNorm, g·x/‖x‖ with one learned scale g initialised to √d (Nguyen & Salazar 2019)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.g = nn.Parameter(torch.empty(()))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.g.fill_(math.sqrt(self.dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.g.dtype)  # under autocast, normalise a bf16 input in fp32
        return self.g * x / x.norm(dim=-1, keepdim=True).clamp(min=self.eps)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, eps={self.eps}"

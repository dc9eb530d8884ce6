"""Normalisation layers (slot ``norm``) and where the encoder puts them.

Every norm entry's params carry, besides its own settings, the encoder-level layout that
``registry.build`` reads: ``embedding`` normalises the embedding sum, ``final`` adds a norm
after the last layer, ``skip_first`` drops layer 0's first norm (ModernBERT: the embedding
norm already did it; only placements that provide ``skip_first`` allow it). Where the norms
sit inside a layer is the ``placement`` slot's business (``blocks/placement.py``).

A norm module is built as ``Norm(dim, eps=..., bias=..., **its own params)`` (``bias`` only
if its signature takes it) and initialises itself; init schemes do not touch norms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from bertsmith.registry.core import Params, register


class NormParams(Params):
    """Epsilon, and where norms sit in the encoder outside the layers."""

    eps: float = Field(1e-5, gt=0, description="added to the variance (or mean square) for stability")
    embedding: bool = Field(True, description="normalise the embedding sum")
    final: bool = Field(True, description="a norm after the last layer")
    skip_first: bool = Field(False, description="no norm before layer 0's attention (ModernBERT)")


# the keys above that place norms in the encoder; the rest of a norm's params go to its module
LAYOUT_KEYS = ("embedding", "final", "skip_first")


@register("norm", "layernorm", params=NormParams)
class LayerNorm(nn.LayerNorm):
    """LayerNorm (Ba et al. 2016): centre, scale to unit variance, affine; bias optional."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True):
        super().__init__(dim, eps=eps, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # under autocast a bf16 input (the MLM head's transform) is normalised in fp32
        return super().forward(x.to(self.weight.dtype))


@register("norm", "rmsnorm", params=NormParams)
class RMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich 2019): scale by the root mean square; bias optional."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.weight.dtype)  # under autocast, normalise a bf16 input in fp32
        y = F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        return y if self.bias is None else y + self.bias

"""Normalisation layers (slot ``norm``) and the placement options shared by both kinds.

``placement`` ``post`` is BERT's ``x = norm(x + f(x))``; ``pre`` is ``x = x + f(norm(x))``
(Xiong et al. 2020). ``embedding`` normalises the embedding sum, ``final`` adds a norm after
the last layer, ``skip_first`` drops layer 0's attention norm (ModernBERT: the embedding norm
already did it).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from registry.core import Params, register


class NormParams(Params):
    """Norm kind's epsilon and where norms sit in the encoder."""

    eps: float = Field(1e-5, gt=0)
    placement: Literal["pre", "post"] = "pre"
    embedding: bool = True
    final: bool = True
    skip_first: bool = False


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.weight.dtype)  # under autocast, normalise a bf16 input in fp32
        y = F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        return y if self.bias is None else y + self.bias

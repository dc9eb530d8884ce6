"""Swish-β (slot ``activation``): x · sigmoid(β·x) (Ramachandran et al. 2017), with β a
setting or, with ``learnable: true``, a parameter trained with the model (initialised to
``beta``, left alone by init schemes). β = 1 is SiLU; large β approaches ReLU.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from bertsmith.registry.core import Params, register


class SwishParams(Params):
    """β, and whether it is learned."""

    beta: float = Field(1.0, gt=0, le=100, description="slope of the sigmoid gate; 1 is SiLU")
    learnable: bool = Field(False, description="learn β (one scalar per MLP) from its initial value")


@register("activation", "swish", params=SwishParams)
class Swish(nn.Module):
    """Swish-β, x·sigmoid(β·x) with β fixed or learned (Ramachandran et al. 2017)."""

    def __init__(self, beta: float = 1.0, learnable: bool = False):
        super().__init__()
        self.initial = float(beta)
        # a fixed β is a plain number (nothing to save); a learned one a parameter
        self.beta = nn.Parameter(torch.tensor(self.initial)) if learnable else self.initial

    def reset_parameters(self) -> None:
        if isinstance(self.beta, nn.Parameter):
            with torch.no_grad():
                self.beta.fill_(self.initial)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beta = self.beta.to(x.dtype) if isinstance(self.beta, nn.Parameter) else self.beta
        return x * torch.sigmoid(beta * x)

    def extra_repr(self) -> str:
        return f"beta={self.initial}, learnable={isinstance(self.beta, nn.Parameter)}"

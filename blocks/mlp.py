"""Feed-forward blocks (slot ``mlp``). ``d_ff`` is the width the activation sees."""

from __future__ import annotations

import torch
from torch import nn

from registry.core import Params, register


class MlpParams(Params):
    """Activation by registry name (``bertsmith blocks`` lists them)."""

    activation: str = "gelu"


@register("mlp", "mlp", params=MlpParams)
class Mlp(nn.Module):
    """Two-layer feed-forward, W2·act(W1·x) (Vaswani et al. 2017; BERT)."""

    def __init__(self, d_model: int, d_ff: int, act: nn.Module, bias_in: bool, bias_out: bool):
        super().__init__()
        self.wi = nn.Linear(d_model, d_ff, bias=bias_in)
        self.act = act
        self.wo = nn.Linear(d_ff, d_model, bias=bias_out)
        self.wo.init_role = "out"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.wo(self.act(self.wi(x)))


@register("mlp", "glu", params=MlpParams)
class Glu(nn.Module):
    """Gated linear unit, Wo(act(a)·g) (Shazeer 2020); with gelu it is GeGLU.

    One fused input projection ``wi`` of ``2·d_ff`` rows::

        wi.weight [2·d_ff, d_model]:  rows [0, d_ff) -> a (activated),  rows [d_ff, 2·d_ff) -> g
    """

    def __init__(self, d_model: int, d_ff: int, act: nn.Module, bias_in: bool, bias_out: bool):
        super().__init__()
        self.wi = nn.Linear(d_model, 2 * d_ff, bias=bias_in)
        self.act = act
        self.wo = nn.Linear(d_ff, d_model, bias=bias_out)
        self.wo.init_role = "out"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, g = self.wi(x).chunk(2, dim=-1)
        return self.wo(self.act(a) * g)

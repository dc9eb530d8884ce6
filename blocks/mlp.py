"""Feed-forward blocks (slot ``mlp``). ``d_ff`` is the width the activation sees.

The activation is an entry of its own slot, held in ``mlp.activation`` (``{kind, ...}``); the
builder passes ``make_activation``, which builds it from those params.
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
from pydantic import Field
from torch import nn

from bertsmith.blocks.roles import tag_linear
from bertsmith.registry.core import Params, SlotRef, register


class MlpParams(Params):
    """The activation, an ``activation`` entry (``bertsmith blocks`` lists them)."""

    activation: Annotated[Any, SlotRef("activation")] = Field(
        "gelu", description="the activation entry ({kind, ...}; a bare name is accepted)"
    )


@register("mlp", "mlp", params=MlpParams)
class Mlp(nn.Module):
    """Two-layer feed-forward, W2·act(W1·x) (Vaswani et al. 2017; BERT)."""

    def __init__(
        self, d_model: int, d_ff: int, make_activation, bias_in: bool, bias_out: bool, activation=None
    ):
        super().__init__()
        self.wi = tag_linear(nn.Linear(d_model, d_ff, bias=bias_in), "in", "mlp_in")
        self.act = make_activation(activation)
        self.wo = tag_linear(nn.Linear(d_ff, d_model, bias=bias_out), "out", "mlp_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.wo(self.act(self.wi(x)))


@register("mlp", "glu", params=MlpParams)
class Glu(nn.Module):
    """Gated linear unit, Wo(act(a)·g) (Shazeer 2020); with gelu it is GeGLU.

    One fused input projection ``wi`` of ``2·d_ff`` rows::

        wi.weight [2·d_ff, d_model]:  rows [0, d_ff) -> a (activated),  rows [d_ff, 2·d_ff) -> g
    """

    def __init__(
        self, d_model: int, d_ff: int, make_activation, bias_in: bool, bias_out: bool, activation=None
    ):
        super().__init__()
        self.wi = tag_linear(nn.Linear(d_model, 2 * d_ff, bias=bias_in), "in", "mlp_in")
        self.act = make_activation(activation)
        self.wo = tag_linear(nn.Linear(d_ff, d_model, bias=bias_out), "out", "mlp_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, g = self.wi(x).chunk(2, dim=-1)
        return self.wo(self.act(a) * g)

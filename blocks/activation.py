"""Activation functions (slot ``activation``), chosen in ``mlp.activation``.

An activation is an entry like any other: ``mlp.activation: {kind: relu, power: 2}``; a bare
name (``mlp.activation: gelu``) still reads as ``{kind: gelu}``.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from bertsmith.registry.core import Params, register


@register("activation", "gelu")
class Gelu(nn.GELU):
    """GELU with the exact erf form (Hendrycks & Gimpel 2016); BERT's and ModernBERT's."""

    def __init__(self):
        super().__init__(approximate="none")


@register("activation", "gelu_tanh")
class GeluTanh(nn.GELU):
    """GELU with the tanh approximation (GPT-2's ``gelu_new``)."""

    def __init__(self):
        super().__init__(approximate="tanh")


@register("activation", "silu")
class Silu(nn.SiLU):
    """SiLU / swish, x·sigmoid(x) (Ramachandran et al. 2017); with GLU gives SwiGLU."""


class ReluParams(Params):
    """``power``: raise max(0, x) to this power (2 is Primer's squared ReLU)."""

    power: int = Field(1, ge=1, le=8, description="exponent applied to max(0, x); 2 = squared ReLU")


@register("activation", "relu", params=ReluParams, aliases={"relu2": {"power": 2}})
class Relu(nn.Module):
    """ReLU, max(0, x)^power; power 2 is squared ReLU (So et al. 2021, Primer)."""

    def __init__(self, power: int = 1):
        super().__init__()
        self.power = power

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(x)
        return y if self.power == 1 else y.pow(self.power)

    def extra_repr(self) -> str:
        return f"power={self.power}"


@register("activation", "tanh")
class Tanh(nn.Tanh):
    """tanh; BERT's pooler activation."""

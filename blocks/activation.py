"""Activation functions (slot ``activation``), chosen by name in ``mlp.activation``."""

from __future__ import annotations

import torch
from torch import nn

from registry.core import register


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


@register("activation", "relu")
class Relu(nn.ReLU):
    """ReLU, max(0, x)."""


@register("activation", "relu2")
class Relu2(nn.Module):
    """Squared ReLU, max(0, x)² (So et al. 2021, Primer)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x).square()


@register("activation", "tanh")
class Tanh(nn.Tanh):
    """tanh; BERT's pooler activation."""

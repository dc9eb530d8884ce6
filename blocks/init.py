"""Weight initialisation schemes (slot ``init``).

Blocks tag their weights with ``init_role``: ``embedding``, ``out`` (attention and MLP output
projections), ``head`` (head transforms), ``decoder``, ``classifier``; untagged linears are
``in``. Norms get weight 1, bias 0; linear biases 0. A decoder tied to the embedding is left
to the embedding.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import nn

from blocks.norm import LayerNorm, RMSNorm
from registry.core import Params, register


class InitParams(Params):
    """Standard deviation of the normal initialisation."""

    std: float = Field(0.02, gt=0)


class TruncatedInitParams(InitParams):
    """``cutoff``: truncate at ±cutoff·σ."""

    cutoff: float = Field(2.0, gt=0)


def _apply(model: nn.Module, std_for, fill) -> None:
    """Initialise every parameter: ``fill(tensor, std)`` with ``std_for(role)`` for weights."""
    done: set[int] = set()
    with torch.no_grad():
        for module in model.modules():
            weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
            if isinstance(module, (LayerNorm, RMSNorm)):
                module.weight.fill_(1.0)
            elif isinstance(weight, nn.Parameter) and id(weight) not in done:
                fill(weight, std_for(getattr(module, "init_role", "in")))
                done.add(id(weight))
            if isinstance(bias, nn.Parameter):
                bias.zero_()


def _normal(t: torch.Tensor, std: float) -> None:
    nn.init.normal_(t, mean=0.0, std=std)


@register("init", "bert_normal", params=InitParams)
def bert_normal(model: nn.Module, n_layers: int, d_model: int, std: float = 0.02) -> None:
    """Every weight from N(0, std²) (BERT, RoBERTa)."""
    _apply(model, lambda role: std, _normal)


@register("init", "megatron", params=InitParams)
def megatron(model: nn.Module, n_layers: int, d_model: int, std: float = 0.02) -> None:
    """N(0, std²), output projections std/√(2L) (Shoeybi et al. 2019, Megatron-LM)."""
    out = std / math.sqrt(2.0 * n_layers)
    _apply(model, lambda role: out if role == "out" else std, _normal)


@register("init", "full_megatron", params=TruncatedInitParams)
def full_megatron(
    model: nn.Module, n_layers: int, d_model: int, std: float = 0.02, cutoff: float = 2.0
) -> None:
    """ModernBERT's truncated normal: in std, out and head std/√(2L), classifier D^-½."""
    out = std / math.sqrt(2.0 * n_layers)
    stds = {"out": out, "head": out, "decoder": out, "classifier": d_model**-0.5}

    def fill(t: torch.Tensor, s: float) -> None:
        nn.init.trunc_normal_(t, mean=0.0, std=s, a=-cutoff * s, b=cutoff * s)

    _apply(model, lambda role: stds.get(role, std), fill)

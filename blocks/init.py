"""Weight initialisation schemes (slot ``init``).

A scheme draws only the tensors blocks have tagged with init roles (``blocks/roles.py``):
weights from a normal distribution whose standard deviation depends on their roles, biases
(role ``bias``) zero. Every other parameter keeps what its block set (a norm's gain of 1,
ScaleNorm's √d, ...). A scheme is called as ``scheme(model, n_layers=..., d_model=...,
**params)`` after the whole model is built, and may read the chosen placement's ``init_gain``
(DeepNorm's β) from the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from pydantic import Field
from torch import nn

from bertsmith.blocks.roles import tagged
from bertsmith.registry.core import Params, register


class InitParams(Params):
    """Standard deviation of the normal initialisation."""

    std: float = Field(0.02, gt=0, description="standard deviation of the normal draws")


class TruncatedInitParams(InitParams):
    """``cutoff``: truncate at ±cutoff·σ."""

    cutoff: float = Field(2.0, gt=0, description="truncate draws at ±cutoff·std")


def apply_roles(
    model: nn.Module, std_for: Callable[[frozenset[str]], float], fill: Callable[[torch.Tensor, float], None]
) -> None:
    """Draw every tagged weight with ``fill(tensor, std_for(roles) · gain)`` and zero every
    tagged bias. ``gain(roles)`` comes from the model's placement, if it has one (DeepNorm's β
    on value, attention-out and MLP weights), else 1."""
    gain = getattr(model, "init_gain", None) or (lambda roles: 1.0)
    draws: dict[int, tuple[nn.Parameter, list]] = {}  # per parameter, in order: (rows, std or None)
    for _, param, rows, roles in tagged(model):
        std = None if "bias" in roles else std_for(roles) * gain(roles)
        draws.setdefault(id(param), (param, []))[1].append((rows, std))
    with torch.no_grad():
        for param, parts in draws.values():
            stds = {std for _, std in parts}
            if len(stds) == 1 and None not in stds and len(parts) > 1 and _covers(param, parts):
                # row slices that all get the same std (q, k, v of the fused QKV weight): one draw
                # of the whole tensor, so the random stream is the one a plain weight would use
                parts = [(None, stds.pop())]
            for rows, std in parts:
                t = param if rows is None else param[rows]
                if std is None:
                    t.zero_()
                else:
                    fill(t, std)


def _covers(param: torch.Tensor, parts: list) -> bool:
    """Whether the row slices in ``parts`` cover every row of ``param``."""
    covered = torch.zeros(param.shape[0], dtype=torch.bool)
    for rows, _ in parts:
        covered[rows if rows is not None else slice(None)] = True
    return bool(covered.all())


def _normal(t: torch.Tensor, std: float) -> None:
    nn.init.normal_(t, mean=0.0, std=std)


@register("init", "bert_normal", params=InitParams)
def bert_normal(model: nn.Module, n_layers: int, d_model: int, std: float = 0.02) -> None:
    """Every weight from N(0, std²) (BERT, RoBERTa)."""
    apply_roles(model, lambda roles: std, _normal)


@register("init", "megatron", params=InitParams)
def megatron(model: nn.Module, n_layers: int, d_model: int, std: float = 0.02) -> None:
    """N(0, std²), output projections std/√(2L) (Shoeybi et al. 2019, Megatron-LM)."""
    out = std / math.sqrt(2.0 * n_layers)
    apply_roles(model, lambda roles: out if "out" in roles else std, _normal)


@register("init", "full_megatron", params=TruncatedInitParams)
def full_megatron(
    model: nn.Module, n_layers: int, d_model: int, std: float = 0.02, cutoff: float = 2.0
) -> None:
    """ModernBERT's truncated normal: in std, out and head std/√(2L), classifier D^-½."""
    out = std / math.sqrt(2.0 * n_layers)

    def std_for(roles: frozenset[str]) -> float:
        if "classifier" in roles:
            return d_model**-0.5
        return out if roles & {"out", "head", "decoder"} else std

    def fill(t: torch.Tensor, s: float) -> None:
        nn.init.trunc_normal_(t, mean=0.0, std=s, a=-cutoff * s, b=cutoff * s)

    apply_roles(model, std_for, fill)

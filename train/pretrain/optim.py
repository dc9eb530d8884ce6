"""Optimizers and learning-rate schedules.

``adamw`` is ``torch.optim.AdamW``; ``stableadamw`` is torch-optimi's StableAdamW (AdamW with
per-tensor update clipping, Wortsman et al. 2023; ModernBERT's optimizer). Biases, norms and
other 1-d parameters get no weight decay.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: matrices (decayed) and vectors — biases, norm weights (not decayed)."""
    decay, no_decay = [], []
    for p in model.parameters():  # parameters() yields tied weights once
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if cfg.kind == "stableadamw":
        from optimi import StableAdamW

        return StableAdamW(
            groups,
            lr=cfg.lr,
            betas=tuple(cfg.betas),
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            # optimi picks Triton whenever it is installed (torch's CUDA wheels bring it), and it
            # fails on a machine without a GPU; None leaves the choice to optimi where CUDA runs
            triton=None if torch.cuda.is_available() else False,
            decouple_lr=True,
        )
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay
    )


def lr_factor(step: int, total: int, cfg) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based) of ``total``."""
    warmup = cfg.warmup * total if cfg.warmup < 1 else cfg.warmup
    if warmup and step < warmup:
        return (step + 1) / warmup
    lo = cfg.min_ratio
    span = max(1.0, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    if cfg.kind == "constant":
        return 1.0
    if cfg.kind == "linear":
        return lo + (1 - lo) * (1 - progress)
    if cfg.kind == "cosine":
        return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * progress))
    # wsd: warmup, stable at the peak, then decay over the last `decay` fraction
    decay_steps = cfg.decay * total
    start = total - decay_steps
    if step < start:
        return 1.0
    x = min(1.0, (step - start) / max(1.0, decay_steps))
    shape = 1 - math.sqrt(x) if cfg.decay_shape == "1-sqrt" else 1 - x
    return lo + (1 - lo) * shape


def make_scheduler(optimizer: torch.optim.Optimizer, total: int, cfg):
    """The per-step schedule both Lightning modules use: ``lr_factor`` times the base rate."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, cfg))

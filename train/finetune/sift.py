"""SiFT: scale-invariant fine-tuning (He et al. 2021, DeBERTa, arXiv:2006.03654 §3.3).

Virtual adversarial training on the *normalised* word embeddings, so the perturbation's
size means the same for every token whatever its embedding's scale. As in DeBERTa's code
(``adversarial.py``, ``sift.py``), per training step::

    clean logits z                        (the task loss is taken on these)
    δ0 ~ N(0, init²), clipped to ±2·init  (per token and dimension)
    g  = ∇_δ  D(f(ẽ + δ0), z)             one power-iteration step on the divergence D
    δ1 = δ0 + step · g / max|g|           (max over each token's dimensions)
    loss += weight · D(f(ẽ + δ1), z)      z detached

with ẽ = LayerNorm(e) (no affine) the normalised word embedding, D the symmetric KL of the
predicted distributions (classification, token classification) or the squared error
(regression). Adding δ to ẽ and mapping back with the same statistics is adding δ·σ(e) to e,
which is what the hook does: the clean forward pass is untouched, and, as in DeBERTa, the
adversarial passes see the embedding detached (the adversarial loss trains the layers
above it, not the table).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def symmetric_kl(logits: Tensor, target: Tensor) -> Tensor:
    """KL(p‖q) + KL(q‖p) per row, averaged; p, q the softmax of ``logits`` and ``target``."""
    lp, lq = F.log_softmax(logits.float(), -1), F.log_softmax(target.float(), -1)
    return ((lp.exp() - lq.exp()) * (lp - lq)).sum(-1).mean()


@contextmanager
def perturbed(embedding: nn.Embedding, delta: Tensor):
    """Within the block, ``embedding``'s output ``e [T, D]`` becomes ``e + δ·σ(e)`` (detached
    ``e`` and ``σ``; ``δ`` in normalised units)."""

    def hook(module, inputs, out):
        e = out.detach()
        sigma = torch.sqrt(e.float().var(-1, unbiased=False, keepdim=True) + 1e-7)
        return (e.float() + delta * sigma).to(out.dtype)

    handle = embedding.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def divergence(adv: Tensor, clean: Tensor, kind: str, mask: Tensor | None = None) -> Tensor:
    """D(adversarial, clean): symmetric KL for class logits, squared error for regression;
    ``mask`` selects the real tokens of per-token logits."""
    clean = clean.detach()
    if mask is not None:
        adv, clean = adv[mask], clean[mask]
    if kind == "regression":
        return F.mse_loss(adv.float(), clean.float())
    return symmetric_kl(adv, clean)


def sift_loss(
    forward, embedding: nn.Embedding, clean: Tensor, n_tokens: int, kind: str, cfg, mask=None
) -> Tensor:
    """The weighted adversarial loss of one step; ``forward()`` runs the model on the batch
    and returns its logits (called twice, with the perturbation hooked in)."""
    d = embedding.embedding_dim
    delta = torch.randn(n_tokens, d, device=clean.device) * cfg.init
    delta = delta.clamp(-2 * cfg.init, 2 * cfg.init).requires_grad_(True)
    with perturbed(embedding, delta):
        first = divergence(forward(), clean, kind, mask)
    (grad,) = torch.autograd.grad(first, delta)
    if not torch.isfinite(grad).all():  # DeBERTa skips the step when the gradient overflows
        return clean.new_zeros(())
    delta = (delta + cfg.step * grad / (grad.abs().amax(-1, keepdim=True) + 1e-6)).detach()
    with perturbed(embedding, delta):
        return cfg.weight * divergence(forward(), clean, kind, mask)

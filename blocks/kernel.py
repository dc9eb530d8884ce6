"""Attention kernels (slot ``kernel``): softmax(q·kᵀ·scale + bias, masked)·v on the stream.

Every kernel has one signature::

    kernel(q, k, v, stream, window=None, bias=None, dropout_p=0.0, scale=d**-0.5) -> [T, H, d]

q, k, v are ``[T, H, d]`` token streams; ``stream`` says where sequences start and end, and
attention never crosses them. ``window`` w (an int) lets query i see keys j with
|i − j| ≤ w // 2, inclusive. ``bias`` is an object whose ``dense(stream, q, k)`` returns a float
score bias in the per-batch layout ``[B or 1, H, L, L]``.

Capabilities are declared in ``provides`` (``registry.validate`` reads them): ``varlen``,
``window``, ``bias`` (dense score bias), ``alibi`` (native ALiBi slopes), ``dropout``,
``backward``, and ``device:<type>`` for each device the kernel runs on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from registry.core import register


def batch_mask(stream, window: int | None) -> Tensor | None:
    """[B, 1, L, L] bool (True = may attend), or None when nothing is masked.

    Padded query rows may see every real key of their row, so no row is fully masked (a
    fully masked row would make softmax NaN and poison the backward pass).
    """

    def make():
        L = stream.max_seqlen
        keys = stream.key_mask()  # [B, L]
        if window is None:
            if stream.is_rectangular:
                return None
            return keys[:, None, None, :].expand(-1, 1, L, -1)
        pos = torch.arange(L, device=keys.device)
        band = (pos[:, None] - pos[None, :]).abs() <= window // 2  # [L, L]
        return (keys[:, None, :] & (band[None] | ~keys[:, :, None]))[:, None]

    return stream.cached(("mask", window), make)


def _to_batch(stream, *xs: Tensor) -> list[Tensor]:
    """[T, H, d] -> [B, H, L, d] for each x."""
    return [stream.to_batch(x).transpose(1, 2) for x in xs]


def _from_batch(stream, o: Tensor) -> Tensor:
    return stream.from_batch(o.transpose(1, 2))


CORE_CAPS = {"varlen", "window", "bias", "dropout", "backward", "device:cpu", "device:cuda"}


@register("kernel", "eager", provides=CORE_CAPS)
class Eager:
    """Reference attention in plain torch: scores, bias, mask, fp32 softmax, dropout, ·v."""

    def __call__(self, q, k, v, stream, window=None, bias=None, dropout_p=0.0, scale=None):
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        qb, kb, vb = _to_batch(stream, q, k, v)
        scores = torch.matmul(qb, kb.transpose(-1, -2)) * scale
        if bias is not None:
            scores = scores + bias.dense(stream, qb, kb)
        mask = batch_mask(stream, window)
        if mask is not None:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        if dropout_p > 0:
            probs = F.dropout(probs, p=dropout_p)
        return _from_batch(stream, torch.matmul(probs, vb))


@register("kernel", "sdpa", provides=CORE_CAPS)
class Sdpa:
    """``torch.nn.functional.scaled_dot_product_attention`` per batch with a bool or float mask."""

    def __call__(self, q, k, v, stream, window=None, bias=None, dropout_p=0.0, scale=None):
        qb, kb, vb = _to_batch(stream, q, k, v)
        mask = batch_mask(stream, window)
        if bias is not None:
            dense = bias.dense(stream, qb, kb)
            if mask is not None:
                dense = dense.masked_fill(~mask, torch.finfo(dense.dtype).min)
            mask = dense
        o = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, dropout_p=dropout_p, scale=scale)
        return _from_batch(stream, o)

"""Attention kernels (slot ``kernel``): softmax(q·kᵀ·scale + bias, masked)·v on the stream.

Every kernel has one signature::

    kernel(q, k, v, stream, window=None, bias=None, dropout_p=0.0, scale=d**-0.5) -> [T, H, d]

q, k, v are ``[T, H, d]`` token streams; ``stream`` says where sequences start and end, and
attention never crosses them. ``window`` w (an int) lets query i see keys j with
|i − j| ≤ w // 2, inclusive. ``bias`` is an object whose ``dense(stream, q, k)`` returns a float
score bias in the per-batch layout ``[B or 1, H, L, L]``.

Capabilities are declared in ``provides`` (``registry.validate`` reads them): ``varlen``,
``window``, ``bias`` (dense score bias), ``alibi`` (native ALiBi slopes), ``dropout``,
``backward`` (on every device it runs on) or ``backward:<type>`` (on that device only), and
``device:<type>`` for each device the kernel runs on.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from bertsmith.blocks.band import band_attention, band_cost, padded_cost, split_attention
from bertsmith.registry.core import Params, register


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


class SdpaParams(Params):
    """How sdpa treats sliding windows and variable lengths (``auto`` picks by cost).

    ``band``: local layers in the band layout (blocks/band.py), computing ~1.5·w scores per
    query instead of the whole padded L×L; ``never`` masks a padded L×L. ``split``: global
    layers on a variable-length batch one sequence at a time (CPU, where per-call overhead is
    small), instead of padded and masked; ``never`` always pads. ``always`` forces either path
    wherever it can run: a score bias that differs per sequence (DeBERTa's) needs the padded
    layout, and a one-sequence batch has nothing to split. Under ``torch.compile``, ``auto``
    always bands and never splits: one graph whatever the batch's shape."""

    band: Literal["auto", "always", "never"] = Field("auto", description="local layers in the band layout")
    split: Literal["auto", "always", "never"] = Field(
        "auto", description="global layers one sequence at a time"
    )


@register("kernel", "sdpa", params=SdpaParams, provides=CORE_CAPS)
class Sdpa:
    """Torch's scaled_dot_product_attention, banded for windows and unpadded for ragged batches.

    Local layers run in the band layout; global layers of a ragged batch one sequence at a
    time (CPU); anything else per batch with a bool or float mask."""

    def __init__(self, band: str = "auto", split: str = "auto"):
        self.band = band
        self.split = split

    def __call__(self, q, k, v, stream, window=None, bias=None, dropout_p=0.0, scale=None):
        slopes = getattr(bias, "slopes", None)
        uniform = bias is None or slopes is not None  # a bias that is the same for every sequence
        if window is not None and uniform and self._use_band(stream, window):
            return band_attention(q, k, v, stream, window, slopes, dropout_p, scale)
        if window is None and uniform and self._use_split(stream, q.device):
            return split_attention(q, k, v, stream, bias, dropout_p, scale)
        qb, kb, vb = _to_batch(stream, q, k, v)
        mask = batch_mask(stream, window)
        if bias is not None:
            dense = bias.dense(stream, qb, kb)
            if mask is not None:
                dense = dense.masked_fill(~mask, torch.finfo(dense.dtype).min)
            mask = dense
        o = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, dropout_p=dropout_p, scale=scale)
        return _from_batch(stream, o)

    def _use_band(self, stream, window: int) -> bool:
        if self.band != "auto":
            return self.band == "always"
        if torch.compiler.is_compiling():  # one path for every batch: no guard on its shape
            return True
        return band_cost(stream, window) < padded_cost(stream)

    def _use_split(self, stream, device) -> bool:
        if self.split != "auto":
            return self.split == "always" and stream.batch > 1
        if torch.compiler.is_compiling():  # a Python loop over sequences: a graph per count
            return False
        return device.type == "cpu" and stream.batch > 1 and not stream.is_rectangular


class FlexParams(Params):
    """``compile``: run ``torch.compile(flex_attention)`` (fused; the first call per shape
    compiles for tens of seconds). Uncompiled flex materialises the scores, for tests."""

    compile: bool = Field(False, description="wrap flex_attention in torch.compile")


@register(
    "kernel",
    "flex",
    params=FlexParams,
    provides={"varlen", "window", "alibi", "device:cpu", "device:cuda", "backward:cuda"},
)
class Flex:
    """FlexAttention on the packed stream (Dong et al. 2024); backward on CUDA only.

    The document mask (plus window) is a block-sparse ``mask_mod``, ALiBi a ``score_mod``."""

    def __init__(self, compile: bool = False):
        from torch.nn.attention.flex_attention import flex_attention

        self.fn = torch.compile(flex_attention, dynamic=True) if compile else flex_attention

    def __call__(self, q, k, v, stream, window=None, bias=None, dropout_p=0.0, scale=None):
        from torch.nn.attention.flex_attention import create_block_mask

        if dropout_p > 0:
            raise ValueError("flex does not support attention dropout (validation should refuse this)")
        if q.device.type == "cpu" and torch.is_grad_enabled() and q.requires_grad:
            raise RuntimeError(
                "flex on CPU is inference-only (torch has no CPU backward for it): "
                "run under torch.no_grad() or torch.inference_mode(), or use sdpa"
            )
        slopes = getattr(bias, "slopes", None)
        if bias is not None and slopes is None:
            raise ValueError("flex takes ALiBi slopes, not a dense score bias")
        doc, pos = stream.seq_index, stream.local_index

        def mask_mod(b, h, qi, ki):
            same = doc[qi] == doc[ki]
            return same if window is None else same & ((pos[qi] - pos[ki]).abs() <= window // 2)

        T = q.shape[0]
        block_mask = stream.cached(
            ("flex", window, q.device),
            lambda: create_block_mask(mask_mod, None, None, T, T, device=q.device),
        )
        score_mod = None
        if slopes is not None:
            slopes = slopes.to(q.device)

            def score_mod(score, b, h, qi, ki):
                return score - slopes[h] * (pos[qi] - pos[ki]).abs()

        o = self.fn(
            q.transpose(0, 1)[None],
            k.transpose(0, 1)[None],
            v.transpose(0, 1)[None],
            score_mod=score_mod,
            block_mask=block_mask,
            scale=scale,
        )
        return o[0].transpose(0, 1)

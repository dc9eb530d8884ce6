"""Attention patterns (slot ``attention``) and the self-attention module they configure.

A pattern resolves to a per-layer plan: a list with one entry per layer, ``None`` for a
global layer or the window ``w`` of a local one (query i sees keys |i − j| ≤ w // 2, ModernBERT's
convention: 128 -> ±64, 129 keys).
"""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from bertsmith.blocks.roles import tag, tag_linear
from bertsmith.registry.core import Params, Requirement, register

_NEEDS_WINDOW = Requirement("kernel", ("window",), "local layers need a kernel that honours a window")


@register("attention", "global")
def global_plan(n_layers: int) -> list[int | None]:
    """Every layer attends to the whole sequence (BERT)."""
    return [None] * n_layers


class LocalParams(Params):
    """Window w: each query sees the w // 2 keys on either side, inclusive."""

    window: int = Field(128, gt=0, description="keys a local query sees: w // 2 on each side")


@register("attention", "local", params=LocalParams, requires=[_NEEDS_WINDOW])
def local_plan(n_layers: int, window: int = 128) -> list[int | None]:
    """Every layer attends to a sliding window (Longformer-style, bidirectional)."""
    return [window] * n_layers


class AlternatingParams(LocalParams):
    """Layer i is global iff i % global_every == 0, local with ``window`` otherwise."""

    global_every: int = Field(3, ge=1, description="layer i is global iff i % global_every == 0")


@register("attention", "alternating", params=AlternatingParams, requires=[_NEEDS_WINDOW])
def alternating_plan(n_layers: int, window: int = 128, global_every: int = 3) -> list[int | None]:
    """Global layers every ``global_every`` layers, local windows between (ModernBERT)."""
    return [None if i % global_every == 0 else window for i in range(n_layers)]


class SelfAttention(nn.Module):
    """Fused-QKV multi-head self-attention on the token stream.

    ``qkv.weight`` is ``[3·D, D]``; its rows are Q, then K, then V, heads contiguous in each::

        rows [0, D)    q: head 0 dims 0..d-1, head 1, ...
        rows [D, 2D)   k
        rows [2D, 3D)  v

    The positional context rotates q/k or supplies a score bias (and may change the scale);
    the kernel does the rest. ``positional`` holds the per-layer parameters of the positional
    scheme, if it has any (DeBERTa's separate position projections). With ``query`` given,
    queries come from it and keys/values from ``x`` (the enhanced mask decoder's query stream).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        kernel,
        window: int | None,
        qkv_bias: bool,
        out_bias: bool,
        dropout: float = 0.0,
        positional: nn.Module | None = None,
    ):
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.kernel = kernel
        self.window = window
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=qkv_bias)
        for i, role in enumerate(("query", "key", "value")):
            tag(self.qkv.weight, "in", role, rows=slice(i * d_model, (i + 1) * d_model))
        tag(self.qkv.bias, "bias")
        self.out = tag_linear(nn.Linear(d_model, d_model, bias=out_bias), "out", "attn_out")
        self.positional = positional

    def _project(self, x: Tensor, first: int, n: int) -> Tensor:
        """Rows ``[first·D, (first + n)·D)`` of the fused projection: ``[N, n, H, d]``."""
        D = self.n_heads * self.head_dim
        rows = slice(first * D, (first + n) * D)
        bias = None if self.qkv.bias is None else self.qkv.bias[rows]
        return F.linear(x, self.qkv.weight[rows], bias).view(x.shape[0], n, self.n_heads, self.head_dim)

    def project_qk(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """This layer's query and key projections of any vectors ``x [N, D]``: two ``[N, H, d]``."""
        q, k = self._project(x, 0, 2).unbind(1)
        return q, k

    def forward(self, x: Tensor, stream, pos, query: Tensor | None = None) -> Tensor:
        T = x.shape[0]
        if query is None:
            q, k, v = self.qkv(x).view(T, 3, self.n_heads, self.head_dim).unbind(1)
        else:
            q = self._project(query, 0, 1)[:, 0]
            k, v = self._project(x, 1, 2).unbind(1)
        q, k = pos.rotate(q, k, local=self.window is not None)
        o = self.kernel(
            q,
            k,
            v,
            stream,
            window=self.window,
            bias=pos.bias(self),
            dropout_p=self.dropout if self.training else 0.0,
            scale=pos.scale(self.head_dim),
        )
        return self.out(o.reshape(T, -1))

    def extra_repr(self) -> str:
        kind = "global" if self.window is None else f"local(window={self.window})"
        return f"heads={self.n_heads}, {kind}, kernel={type(self.kernel).__name__}"

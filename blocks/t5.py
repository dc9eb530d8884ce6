"""T5's relative position bias (slot ``positional``): a learned scalar per head and distance
bucket, added to every layer's attention scores (Raffel et al. 2020, §2.1).

Bidirectional buckets, as T5's encoder (``_relative_position_bucket`` in its code): half the
buckets for keys before the query, half for keys after; within each half, distances below
``max_exact = n/4`` get a bucket each and longer ones share log-spaced buckets up to
``max_distance``, beyond which all distances share the last bucket::

    r = j − i (key minus query);  n = num_buckets // 2
    bucket = (r > 0)·n + (|r|             if |r| < n/2
                          else min(n/2 + ⌊log(|r|/(n/2)) / log(max_distance/(n/2)) · n/2⌋, n − 1))
    bias[h, i, j] = table[bucket(j − i), h]

One table of ``num_buckets × n_heads`` is shared by all layers (T5 computes it in the first
layer and passes it on). Tokens get no absolute position. The bias is the same for every
sequence, so it is built once per forward as ``[1, H, L, L]``.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import Tensor, nn

from bertsmith.blocks.positional import PositionalScheme, SharedBiasContext
from bertsmith.blocks.roles import tag_embedding
from bertsmith.registry.core import Params, Requirement, register


class T5Params(Params):
    """Number of buckets (both directions together) and the distance where buckets stop."""

    num_buckets: int = Field(32, ge=4, le=4096, description="buckets, half per direction")
    max_distance: int = Field(128, ge=2, description="distances from here on share the last bucket")


def t5_bucket(rel: Tensor, num_buckets: int, max_distance: int) -> Tensor:
    """T5's bidirectional bucket of each relative position ``rel`` (key − query, long)."""
    n = num_buckets // 2
    out = (rel > 0).long() * n
    dist = rel.abs()
    max_exact = n // 2
    far = (
        max_exact
        + (
            torch.log(dist.float().clamp(min=1) / max_exact)
            / math.log(max_distance / max_exact)
            * (n - max_exact)
        ).long()
    )
    far = far.clamp(max=n - 1)
    return out + torch.where(dist < max_exact, dist, far)


class T5Bias:
    """The shared per-head bias in the per-batch layout, built once per forward."""

    def __init__(self, scheme: T5RelativeBias):
        self.scheme = scheme

    def dense(self, stream, q: Tensor, k: Tensor) -> Tensor:
        s = self.scheme

        def make():
            pos = torch.arange(stream.max_seqlen, device=q.device)
            buckets = t5_bucket(pos[None, :] - pos[:, None], s.num_buckets, s.max_distance)
            return s.table(buckets).permute(2, 0, 1)[None]  # [1, H, L, L]

        # cached per forward and device: every layer shares it (and its gradient flows to the table)
        return stream.cached(("t5_bias", q.device), make).to(q.dtype)


@register(
    "positional",
    "t5",
    params=T5Params,
    provides={"bias"},
    requires=[Requirement("kernel", ("bias",), "T5's relative positions are a dense score bias")],
)
class T5RelativeBias(PositionalScheme):
    """T5 relative position bias: a learned scalar per head and log-spaced distance bucket (Raffel et al. 2020)."""

    def __init__(self, n_heads: int, num_buckets: int = 32, max_distance: int = 128):
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.table = tag_embedding(nn.Embedding(num_buckets, n_heads))

    def prepare(self, stream) -> SharedBiasContext:
        return SharedBiasContext(T5Bias(self))

    def flops_per_query(self, d_model: int) -> int:
        return 0  # a gather and an add per score, no multiply-adds

    def extra_repr(self) -> str:
        return f"num_buckets={self.num_buckets}, max_distance={self.max_distance}"

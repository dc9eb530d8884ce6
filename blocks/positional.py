"""Positional schemes (slot ``positional``).

A scheme acts in one of three ways, and declares which in ``provides``:

- ``embedding``: a vector added to the token embedding (``embed``);
- ``rotary``: q and k rotated before attention (``prepare(...).rotate``);
- ``bias``: a score bias added to q·k (``prepare(...).bias``), which needs a kernel that
  takes one (compatibility is checked by ``registry.validate``).

``prepare(stream)`` runs once per forward; what it computes (cos/sin tables, bias tensors)
is shared by every layer. The context may also change the softmax scale (``scale``), and a
scheme whose layers need parameters of their own returns them from ``layer_module()``; the
builder puts one in each attention layer (``attn.positional``), so they are named and counted
with the layer they belong to.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor, nn

from bertsmith.blocks.roles import tag, tag_embedding, tag_linear
from bertsmith.registry.core import Params, Requirement, register
from bertsmith.registry.errors import problem


class PositionContext:
    """What attention layers get from the positional scheme for one forward: identity."""

    def rotate(self, q: Tensor, k: Tensor, local: bool) -> tuple[Tensor, Tensor]:
        return q, k

    def bias(self, attn: nn.Module):
        """A score bias for layer ``attn`` (an object with ``dense``), or None."""
        return None

    def scale(self, head_dim: int) -> float:
        """The softmax scale applied to q·kᵀ (and expected of the bias): head_dim^-½."""
        return head_dim**-0.5


class PositionalScheme(nn.Module):
    """Base: adds nothing, rotates nothing, biases nothing."""

    def embed(self, position_ids: Tensor) -> Tensor | None:
        return None

    def layer_module(self) -> nn.Module | None:
        """Parameters one attention layer needs of its own (kept as ``attn.positional``)."""
        return None

    def flops_per_query(self, d_model: int) -> int:
        """Forward FLOPs this scheme adds to each query of each layer (for the cost model)."""
        return 0

    def prepare(self, stream) -> PositionContext:
        return PositionContext()


@register("positional", "none", provides={"none"})
class NoPositions(PositionalScheme):
    """No positional information at all (NoPE; Haviv et al. 2022)."""


class LearnedParams(Params):
    """``offset`` shifts every position id: RoBERTa's tables start at pad_token_id + 1 = 2."""

    offset: int = Field(0, ge=0, description="positions start here (RoBERTa: pad id + 1)")


@register("positional", "learned", params=LearnedParams, provides={"embedding", "bounded"})
class Learned(PositionalScheme):
    """Learned absolute position embeddings added to tokens (BERT; RoBERTa with offset 2).

    The table has ``max_seq_len + offset`` rows; row ``p + offset`` embeds position ``p``.
    """

    def __init__(self, d_model: int, max_seq_len: int, offset: int = 0):
        super().__init__()
        self.offset = offset
        self.max_seq_len = max_seq_len
        # the init scheme refills it; drawn here too, so a model built without one (weights
        # loaded next, or a test) never holds uninitialised memory, which can be nan
        self.weight = tag(nn.Parameter(torch.randn(max_seq_len + offset, d_model) * 0.02), "embedding")

    def embed(self, position_ids: Tensor) -> Tensor:
        return self.weight[position_ids + self.offset]


@register("positional", "sinusoidal", provides={"embedding"})
class Sinusoidal(PositionalScheme):
    """Fixed sine/cosine position vectors added to tokens (Vaswani et al. 2017).

    PE[p, 2i] = sin(p / 10000^(2i/D)), PE[p, 2i+1] = cos(p / 10000^(2i/D)).
    """

    def __init__(self, d_model: int):
        super().__init__()
        self.d_model = d_model

    def embed(self, position_ids: Tensor) -> Tensor:
        i = torch.arange(0, self.d_model, 2, device=position_ids.device, dtype=torch.float32)
        angle = position_ids.float()[:, None] * torch.exp(i * (-math.log(10000.0) / self.d_model))
        pe = torch.empty(position_ids.numel(), self.d_model, device=position_ids.device)
        pe[:, 0::2] = angle.sin()
        pe[:, 1::2] = angle.cos()[:, : self.d_model // 2]
        return pe


class RopeParams(Params):
    """``local_theta`` for local-window layers (default: ``theta``); ``dim`` rotated dims
    per head (default: all)."""

    theta: float = Field(10000.0, gt=0, description="rotary base θ (of global layers)")
    local_theta: float | None = Field(None, gt=0, description="θ of local-window layers; null: theta")
    dim: int | None = Field(None, gt=0, description="rotated dimensions per head; null: all")

    @field_validator("dim")
    @classmethod
    def _even(cls, dim: int | None) -> int | None:
        if dim is not None and dim % 2:
            raise ValueError("an even number")
        return dim


class RopeContext(PositionContext):
    def __init__(self, tables: dict[bool, tuple[Tensor, Tensor]], dim: int):
        self.tables = tables
        self.dim = dim

    def rotate(self, q: Tensor, k: Tensor, local: bool) -> tuple[Tensor, Tensor]:
        cos, signed_sin = self.tables[local]
        return _apply_rope(q, cos, signed_sin, self.dim), _apply_rope(k, cos, signed_sin, self.dim)


def _apply_rope(x: Tensor, cos: Tensor, signed_sin: Tensor, dim: int) -> Tensor:
    """``x·cos + rotate_half(x)·sin`` with rotate_half(x) = (−x₂, x₁), as
    ``x·cos + roll(x, dim/2)·(−sin, sin)``: three kernels (mul, roll, addcmul) instead of
    five (neg, cat, two muls, add)."""
    cos, signed_sin = cos.to(x.dtype), signed_sin.to(x.dtype)
    if dim == x.shape[-1]:
        return torch.addcmul(x * cos, x.roll(dim // 2, dims=-1), signed_sin)
    rot, keep = x[..., :dim], x[..., dim:]
    return torch.cat((torch.addcmul(rot * cos, rot.roll(dim // 2, dims=-1), signed_sin), keep), dim=-1)


def _rope_check(spec) -> list[str]:
    """``dim`` at most the head dimension."""
    dim, head_dim = spec.positional.dim, spec.d_model // spec.n_heads
    if dim is not None and spec.d_model % spec.n_heads == 0 and dim > head_dim:
        return [problem("model.positional.dim", dim, f"at most the head dimension {head_dim}")]
    return []


@register("positional", "rope", params=RopeParams, provides={"rotary"}, check=_rope_check)
class Rope(PositionalScheme):
    """Rotary position embedding on q and k, half-split layout (Su et al. 2021; GPT-NeoX).

    inv_freq = 1/θ^(arange(0, dim, 2)/dim) in fp32; cos/sin from per-sequence position ids,
    computed once per forward for the global θ and, if different, the local θ.
    """

    def __init__(
        self, head_dim: int, theta: float = 10000.0, local_theta: float | None = None, dim: int | None = None
    ):
        super().__init__()
        self.dim = dim or head_dim
        if self.dim > head_dim:
            raise ValueError(f"rope dim {self.dim} exceeds the head dimension {head_dim}")
        self.theta = theta
        self.local_theta = theta if local_theta is None else local_theta

    def _table(self, position_ids: Tensor, theta: float) -> tuple[Tensor, Tensor]:
        exponent = torch.arange(0, self.dim, 2, device=position_ids.device, dtype=torch.float32)
        inv_freq = 1.0 / (theta ** (exponent / self.dim))
        freqs = position_ids.float()[:, None] * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]  # [T, 1, dim] broadcasts over heads
        sin = freqs.sin()[:, None, :]
        return emb.cos(), torch.cat((-sin, sin), dim=-1)  # cos, and sin signed for the roll

    def prepare(self, stream) -> RopeContext:
        pos = stream.position_ids
        glob = self._table(pos, self.theta)
        local = glob if self.local_theta == self.theta else self._table(pos, self.local_theta)
        return RopeContext({False: glob, True: local}, self.dim)


def alibi_slopes(n_heads: int) -> Tensor:
    """ALiBi head slopes 2^(-8/n)·(1..n); for n not a power of two, the closest power's
    slopes followed by every other slope of twice that power (Press et al. 2022)."""

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    closest = 2 ** math.floor(math.log2(n_heads))
    slopes = power_of_two(closest)
    if closest != n_heads:
        slopes += power_of_two(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32)


class AlibiBias:
    """Symmetric ALiBi score bias −slope_h·|i − j| in the per-batch layout."""

    def __init__(self, slopes: Tensor):
        self.slopes = slopes

    def dense(self, stream, q: Tensor, k: Tensor) -> Tensor:
        def make():
            pos = torch.arange(stream.max_seqlen, device=q.device, dtype=torch.float32)
            dist = (pos[:, None] - pos[None, :]).abs()
            return (-self.slopes.to(q.device)[:, None, None] * dist)[None]  # [1, H, L, L]

        return stream.cached(("alibi", q.device), make).to(q.dtype)


class SharedBiasContext(PositionContext):
    """A score bias that every layer shares (ALiBi's, T5's): the same object for each."""

    def __init__(self, bias):
        self._bias = bias

    def bias(self, attn: nn.Module):
        return self._bias


@register(
    "positional",
    "alibi",
    provides={"bias"},
    requires=[Requirement("kernel", ("alibi", "bias"), "ALiBi adds a score bias")],
)
class Alibi(PositionalScheme):
    """Attention with linear biases, symmetric for encoders (Press et al. 2022; MosaicBERT)."""

    def __init__(self, n_heads: int):
        super().__init__()
        self.n_heads = n_heads

    def prepare(self, stream) -> SharedBiasContext:
        return SharedBiasContext(AlibiBias(alibi_slopes(self.n_heads)))


# --- DeBERTa's disentangled attention -----------------------------------------------------


class DisentangledParams(Params):
    """Defaults are DeBERTa-v3's. ``pos_att_type``: the relative terms, any subset of ``c2p``
    (content query · position key) and ``p2c`` (position query · content key);
    ``position_buckets``: log-bucketed distances into that many buckets, 0 = plain distances
    clipped at ``max_relative_positions`` (default: max_seq_len); ``norm_rel_ebd``: normalise
    the relative embeddings with the spec's norm; ``share_att_key``: project them with each
    layer's own query/key projections, else with separate per-layer ones; ``dropout`` on the
    relative embeddings, per layer."""

    pos_att_type: tuple[Literal["c2p", "p2c"], ...] = Field(
        ("p2c", "c2p"), strict=False, description="relative terms: c2p, p2c or both"
    )
    position_buckets: int = Field(
        256, ge=0, description="log buckets of distance; 0: plain clipped distances"
    )
    max_relative_positions: int | None = Field(None, gt=1, description="farthest distance; null: max_seq_len")
    norm_rel_ebd: bool = Field(True, description="normalise the relative embeddings")
    share_att_key: bool = Field(True, description="project them with the layer's own q/k projections")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the relative embeddings")

    @field_validator("pos_att_type")
    @classmethod
    def _distinct(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(v)) != len(v):
            raise ValueError("distinct terms among c2p, p2c")
        return v


def log_bucket(rel: Tensor, buckets: int, max_position: int) -> Tensor:
    """DeBERTa-v2's log buckets for relative positions ``rel`` (long).

    With mid = buckets // 2: |r| ≤ mid keeps r; farther, sign(r)·(mid + ceil(log(|r|/mid) /
    log((max_position − 1)/mid) · (mid − 1))), so distances up to max_position − 1 fill the
    remaining mid − 1 buckets on each side. Computed in float32 in the reference's order of
    operations, so every bucket boundary falls exactly where it does in ``transformers``.
    """
    sign = torch.sign(rel)
    mid = buckets // 2
    near = (rel < mid) & (rel > -mid)
    abs_pos = torch.where(near, torch.full_like(rel, mid - 1), rel.abs())  # mid - 1 only dodges log(0)
    denom = torch.log(torch.tensor((max_position - 1) / mid))
    log_pos = torch.ceil(torch.log(abs_pos / mid) / denom * (mid - 1)) + mid
    return torch.where(abs_pos <= mid, rel.to(log_pos.dtype), log_pos * sign).long()


class PositionProjections(nn.Module):
    """One layer's own projections of the relative embeddings (``share_att_key: false``):
    ``key`` when c2p is on, ``query`` when p2c is on (DeBERTa's pos_key_proj/pos_query_proj)."""

    def __init__(self, d_model: int, n_heads: int, key: bool, query: bool, bias: bool):
        super().__init__()
        self.n_heads = n_heads
        self.key = tag_linear(nn.Linear(d_model, d_model, bias=bias), "in") if key else None
        self.query = tag_linear(nn.Linear(d_model, d_model, bias=bias), "in") if query else None

    def forward(self, rel: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """``rel [N, D]`` -> (queries, keys), each ``[N, H, d]`` or None."""

        def heads(proj: nn.Linear | None) -> Tensor | None:
            return None if proj is None else proj(rel).view(rel.shape[0], self.n_heads, -1)

        return heads(self.query), heads(self.key)


class DisentangledBias:
    """The c2p + p2c score bias of one layer, in the per-batch layout.

    Positions are within each sequence (the per-batch layout left-aligns them), so one
    ``[L, L]`` index serves every sequence::

        idx[i, j] = clamp(bucket(i − j) + S, 0, 2S − 1)            i query, j key
        c2p[b,h,i,j] = q[b,h,i] · Kr[idx[i,j],h] = gather(q @ Krᵀ [B,H,L,2S], idx)
        p2c[b,h,i,j] = k[b,h,j] · Qr[idx[i,j],h] = gather(k @ Qrᵀ [B,H,L,2S], idxᵀ)ᵀ
        bias = (c2p + p2c) · scale                                  [B, H, L, L]

    (bucket(−r) = −bucket(r), so p2c's index, taken from key to query and negated, is idx.)
    """

    def __init__(self, ctx: DisentangledContext, attn: nn.Module):
        self.ctx = ctx
        self.attn = attn

    def dense(self, stream, q: Tensor, k: Tensor) -> Tensor:
        ctx, scheme = self.ctx, self.ctx.scheme
        rel = F.dropout(ctx.rel, scheme.dropout, ctx.training)
        own = getattr(self.attn, "positional", None)
        q_rel, k_rel = own(rel) if own is not None else self.attn.project_qk(rel)  # [2S, H, d]
        B, H, L, _ = q.shape
        idx = scheme.relative_index(stream, L, q.device)
        bias = None
        if "c2p" in scheme.terms:
            c2p = torch.matmul(q, k_rel.to(q.dtype).permute(1, 2, 0))  # [B, H, L, 2S]
            bias = torch.gather(c2p, -1, idx.expand(B, H, L, L))
        if "p2c" in scheme.terms:
            p2c = torch.matmul(k, q_rel.to(k.dtype).permute(1, 2, 0))  # [B, H, L(keys), 2S]
            p2c = torch.gather(p2c, -1, idx.t().expand(B, H, L, L)).transpose(-1, -2)
            bias = p2c if bias is None else bias + p2c
        return bias * ctx.scale(q.shape[-1])


class DisentangledContext(PositionContext):
    """One forward's relative embeddings (normalised once) and DeBERTa's scale."""

    def __init__(self, scheme: Disentangled, rel: Tensor, training: bool):
        self.scheme = scheme
        self.rel = rel
        self.training = training

    def bias(self, attn: nn.Module) -> DisentangledBias | None:
        return DisentangledBias(self, attn) if self.scheme.terms else None

    def scale(self, head_dim: int) -> float:
        return (head_dim * (1 + len(self.scheme.terms))) ** -0.5


def _disentangled_check(spec) -> list[str]:
    """Log buckets need at least 2 buckets, and distances reaching past the middle bucket."""
    buckets = spec.positional.position_buckets
    if buckets == 1:
        return [problem("model.positional.position_buckets", 1, "0 (no buckets) or at least 2")]
    if buckets > 1:
        # log buckets run from mid = buckets // 2 out to the farthest distance, which must lie past mid
        given = spec.positional.max_relative_positions
        key, reach = (
            ("model.positional.max_relative_positions", given)
            if given is not None
            else ("model.max_seq_len", spec.max_seq_len)
        )
        if reach - 1 <= buckets // 2:
            need = f"at least position_buckets // 2 + 2 = {buckets // 2 + 2} for log buckets"
            return [problem(key, reach, need)]
    return []


@register(
    "positional",
    "disentangled",
    params=DisentangledParams,
    provides={"bias"},
    check=_disentangled_check,
    requires=[Requirement("kernel", ("bias",), "disentangled attention adds a dense c2p/p2c score bias")],
)
class Disentangled(PositionalScheme):
    """Disentangled attention: content-to-position and position-to-content scores (DeBERTa).

    He et al. 2020, arXiv:2006.03654 §3.1; log buckets and shared position keys as in
    DeBERTa-v2/v3 (He et al. 2021, arXiv:2111.09543) and their ``transformers`` port.

    Tokens carry no absolute position. One table of relative embeddings ``R [2S, D]``
    (S = position_buckets, or max_relative_positions without buckets) is shared by every
    layer and normalised once per forward; each layer projects it into position keys and
    queries, with its own query/key projections (``share_att_key``) or with separate ones
    that live in the layer (``attn.positional.{key,query}``). Scores become

        (q_i·k_j + q_i·Kr[δ(i,j)] + k_j·Qr[δ(i,j)]) / sqrt(d · (1 + #terms))

    where δ is the bucketed distance i − j within the sequence (see ``DisentangledBias``).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        max_seq_len: int,
        make_norm,
        qkv_bias: bool,
        pos_att_type: tuple[str, ...] = ("p2c", "c2p"),
        position_buckets: int = 256,
        max_relative_positions: int | None = None,
        norm_rel_ebd: bool = True,
        share_att_key: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.d_model, self.n_heads, self.qkv_bias = d_model, n_heads, qkv_bias
        self.terms = frozenset(pos_att_type)
        self.buckets = position_buckets
        self.max_position = max_relative_positions or max_seq_len
        self.span = position_buckets if position_buckets > 0 else self.max_position
        self.share_att_key = share_att_key
        self.dropout = dropout
        self.rel_embeddings = tag_embedding(nn.Embedding(2 * self.span, d_model))
        self.norm = make_norm() if norm_rel_ebd else None

    def layer_module(self) -> PositionProjections | None:
        if self.share_att_key or not self.terms:
            return None
        return PositionProjections(
            self.d_model, self.n_heads, "c2p" in self.terms, "p2c" in self.terms, self.qkv_bias
        )

    def flops_per_query(self, d_model: int) -> int:
        # each term scores a query (or key) against all 2S projected relative embeddings
        return len(self.terms) * 2 * (2 * self.span) * d_model

    def relative_index(self, stream, L: int, device) -> Tensor:
        """``[L, L]`` rows of R for query i and key j, computed once per forward."""

        def make():
            pos = torch.arange(L, device=device)
            rel = pos[:, None] - pos[None, :]
            if self.buckets > 0:
                rel = log_bucket(rel, self.buckets, self.max_position)
            return (rel + self.span).clamp(0, 2 * self.span - 1)

        # L is the stream's padded length (one per forward), so not part of the key: under
        # torch.export it is a symbolic size, which is not hashable
        return stream.cached(("disentangled", self.buckets, self.max_position, self.span, device), make)

    def prepare(self, stream) -> DisentangledContext:
        rel = self.rel_embeddings.weight
        if self.norm is not None:
            rel = self.norm(rel)
        return DisentangledContext(self, rel, self.training)

"""Positional schemes (slot ``positional``).

A scheme acts in one of three ways, and declares which in ``provides``:

- ``embedding``: a vector added to the token embedding (``embed``);
- ``rotary``: q and k rotated before attention (``prepare(...).rotate``);
- ``bias``: a score bias added to q·k (``prepare(...).bias``), which needs a kernel that
  takes one (compatibility is checked by ``registry.validate``).

``prepare(stream)`` runs once per forward; what it computes (cos/sin tables, bias tensors)
is shared by every layer.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from registry.core import Params, Requirement, register


class PositionContext:
    """What attention layers get from the positional scheme for one forward: identity."""

    def rotate(self, q: Tensor, k: Tensor, local: bool) -> tuple[Tensor, Tensor]:
        return q, k

    def bias(self, attn: nn.Module):
        """A score bias for layer ``attn`` (an object with ``dense``), or None."""
        return None


class PositionalScheme(nn.Module):
    """Base: adds nothing, rotates nothing, biases nothing."""

    def embed(self, position_ids: Tensor) -> Tensor | None:
        return None

    def prepare(self, stream) -> PositionContext:
        return PositionContext()


@register("positional", "none", provides={"none"})
class NoPositions(PositionalScheme):
    """No positional information at all (NoPE; Haviv et al. 2022)."""


class LearnedParams(Params):
    """``offset`` shifts every position id: RoBERTa's tables start at pad_token_id + 1 = 2."""

    offset: int = Field(0, ge=0)


@register("positional", "learned", params=LearnedParams, provides={"embedding"})
class Learned(PositionalScheme):
    """Learned absolute position embeddings added to tokens (BERT; RoBERTa with offset 2).

    The table has ``max_seq_len + offset`` rows; row ``p + offset`` embeds position ``p``.
    """

    def __init__(self, d_model: int, max_seq_len: int, offset: int = 0):
        super().__init__()
        self.offset = offset
        self.max_seq_len = max_seq_len
        self.weight = nn.Parameter(torch.empty(max_seq_len + offset, d_model))
        nn.init.normal_(self.weight, std=0.02)
        self.init_role = "embedding"

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

    theta: float = Field(10000.0, gt=0)
    local_theta: float | None = Field(None, gt=0)
    dim: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _even(self):
        if self.dim is not None and self.dim % 2:
            raise ValueError(f"dim: given {self.dim}, allowed: an even number")
        return self


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RopeContext(PositionContext):
    def __init__(self, tables: dict[bool, tuple[Tensor, Tensor]], dim: int):
        self.tables = tables
        self.dim = dim

    def rotate(self, q: Tensor, k: Tensor, local: bool) -> tuple[Tensor, Tensor]:
        cos, sin = self.tables[local]
        return _apply_rope(q, cos, sin, self.dim), _apply_rope(k, cos, sin, self.dim)


def _apply_rope(x: Tensor, cos: Tensor, sin: Tensor, dim: int) -> Tensor:
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    if dim == x.shape[-1]:
        return x * cos + _rotate_half(x) * sin
    rot, keep = x[..., :dim], x[..., dim:]
    return torch.cat((rot * cos + _rotate_half(rot) * sin, keep), dim=-1)


@register("positional", "rope", params=RopeParams, provides={"rotary"})
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
        return emb.cos(), emb.sin()

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


class AlibiContext(PositionContext):
    def __init__(self, bias: AlibiBias):
        self._bias = bias

    def bias(self, attn: nn.Module) -> AlibiBias:
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

    def prepare(self, stream) -> AlibiContext:
        return AlibiContext(AlibiBias(alibi_slopes(self.n_heads)))

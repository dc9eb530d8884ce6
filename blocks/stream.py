"""The unpadded token stream that every block works on.

The encoder unpads once at its entry. Real tokens of all sequences are concatenated::

    padded input  [B, L]          token stream [T, D]            per-batch layout [B, Lmax]
    a a a . .                     a a a b b b b c                a a a .
    b b b b .     --unpad-->      cu_seqlens = [0, 3, 7, 8]      b b b b
    c . . . .                     position_ids = 0 1 2 0 1 2 3 0 c . . .

Per-token ops (embeddings, norms, projections, MLP, head) run on ``[T, D]``; kernels that
need a rectangular layout scatter into ``[B, Lmax]`` with ``pad_index`` (computed once per
forward, shared by every layer). Masks and biases that depend only on the stream are cached
in ``cache`` so no layer rebuilds them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class Stream:
    """Sequence boundaries of a packed token stream, plus per-forward caches."""

    cu_seqlens: Tensor  # [B+1] int32, offsets of each sequence in the stream
    max_seqlen: int
    position_ids: Tensor  # [T] long, position of each token inside its sequence
    seq_index: Tensor  # [T] long, which sequence each token belongs to
    cache: dict = field(default_factory=dict)
    # [T] bool on a padded stream (``padded_stream``): False at the padding positions it
    # carries as tokens; None on the unpadded stream, where every token is real
    real: Tensor | None = None

    @property
    def batch(self) -> int:
        return self.cu_seqlens.numel() - 1

    @property
    def n_tokens(self) -> int:
        return self.position_ids.numel()

    @property
    def seqlens(self) -> Tensor:
        """[B] real tokens per sequence."""
        if self.real is not None:
            return self.real.view(self.batch, self.max_seqlen).sum(1)
        return self.cu_seqlens[1:] - self.cu_seqlens[:-1]

    def cached(self, key, make):
        """Return ``cache[key]``, computing it with ``make()`` the first time."""
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]

    @property
    def pad_index(self) -> Tensor:
        """[T] index of each token in the flattened ``[B * max_seqlen]`` layout."""
        return self.cached(
            "pad_index",
            lambda: self.seq_index * self.max_seqlen + self.local_index,
        )

    @property
    def local_index(self) -> Tensor:
        """[T] offset of each token from the start of its sequence."""
        return self.cached(
            "local_index",
            lambda: (
                torch.arange(self.n_tokens, device=self.cu_seqlens.device)
                - self.cu_seqlens[:-1].long()[self.seq_index]
            ),
        )

    @property
    def is_rectangular(self) -> bool:
        """True when every sequence has length ``max_seqlen`` (no padding needed). Always
        False under ``torch.compile``: the general path serves every batch there, where the
        test would be a guard on the batch's shape (a recompile whenever it flips)."""
        if torch.compiler.is_compiling() or self.real is not None:
            return False
        return self.cached("rect", lambda: self.n_tokens == self.batch * self.max_seqlen)

    def key_mask(self) -> Tensor:
        """[B, Lmax] bool, True where a real token sits in the per-batch layout."""
        return self.cached(
            "key_mask",
            lambda: (
                torch.arange(self.max_seqlen, device=self.cu_seqlens.device)[None, :] < self.seqlens[:, None]
            ),
        )

    def to_batch(self, x: Tensor) -> Tensor:
        """[T, ...] -> [B, Lmax, ...], zeros where there is no token."""
        if self.is_rectangular:
            return x.reshape(self.batch, self.max_seqlen, *x.shape[1:])
        out = x.new_zeros(self.batch * self.max_seqlen, *x.shape[1:])
        out[self.pad_index] = x
        return out.view(self.batch, self.max_seqlen, *x.shape[1:])

    def from_batch(self, x: Tensor) -> Tensor:
        """[B, Lmax, ...] -> [T, ...]."""
        flat = x.reshape(self.batch * self.max_seqlen, *x.shape[2:])
        return flat if self.is_rectangular else flat[self.pad_index]


def stream_from_cu_seqlens(cu_seqlens: Tensor, max_seqlen: int | None = None) -> Stream:
    """Build a stream from packed boundaries ``cu_seqlens [B+1]``."""
    cu = cu_seqlens.to(torch.int32)
    seqlens = (cu[1:] - cu[:-1]).long()
    if max_seqlen is None:
        max_seqlen = int(seqlens.max()) if seqlens.numel() else 0
    seq_index = torch.repeat_interleave(torch.arange(seqlens.numel(), device=cu.device), seqlens)
    starts = cu[:-1].long()[seq_index]
    position_ids = torch.arange(seq_index.numel(), device=cu.device) - starts
    s = Stream(cu, int(max_seqlen), position_ids, seq_index)
    s.cache["local_index"] = position_ids
    return s


def padded_stream(attention_mask: Tensor) -> Stream:
    """The stream of a right-padded batch ``[B, L]`` that keeps every position, padding
    included, as a token (``real`` marks which are not padding): no shape depends on the
    mask's values, which is what ``torch.export`` (the ONNX export) needs. Kernels that mask
    keys by ``key_mask()`` (eager, sdpa's padded path) never attend to padding; the band and
    split paths and the CUDA kernels take sequence bounds from ``cu_seqlens`` and must not
    be used on it. Positions are 0..L−1 in every row, right for right padding only."""
    B, L = attention_mask.shape
    device = attention_mask.device
    position_ids = torch.arange(L, device=device)[None, :].expand(B, L).reshape(-1)
    seq_index = torch.arange(B, device=device)[:, None].expand(B, L).reshape(-1)
    cu = (torch.arange(B + 1, device=device) * L).to(torch.int32)
    s = Stream(cu, L, position_ids, seq_index, real=attention_mask.bool().reshape(-1))
    s.cache["local_index"] = position_ids
    return s


def unpad(attention_mask: Tensor) -> tuple[Tensor, Stream]:
    """From a padding mask ``[B, L]`` (1 = token) to (flat indices ``[T]``, stream).

    Tokens keep their order; a sequence's tokens need not be contiguous in the row
    (left padding works). ``indices`` gathers tokens from ``x.view(B * L, ...)``.
    """
    mask = attention_mask.bool()
    seqlens = mask.sum(1, dtype=torch.int32)
    indices = torch.nonzero(mask.flatten(), as_tuple=False).flatten()
    cu = torch.zeros(mask.shape[0] + 1, dtype=torch.int32, device=mask.device)
    cu[1:] = torch.cumsum(seqlens, 0)
    max_seqlen = int(seqlens.max()) if seqlens.numel() else 0
    return indices, stream_from_cu_seqlens(cu, max_seqlen)


def repad(x: Tensor, indices: Tensor, batch: int, length: int) -> Tensor:
    """Scatter stream rows ``[T, ...]`` back to ``[B, L, ...]`` (zeros at padding)."""
    out = x.new_zeros(batch * length, *x.shape[1:])
    out[indices] = x
    return out.view(batch, length, *x.shape[1:])

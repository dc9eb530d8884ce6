"""Attention that skips the work a mask would throw away: sliding windows as bands, and
variable-length global attention one sequence at a time.

Band layout of a packed stream (window w, chunk c = ⌈(w // 2) / r⌉, r neighbour chunks each
side)::

    stream   [T]      a a a a a b b b b b b b . .        (. = padding to a multiple of c)
    queries  [n, c]   |a a a a|a b b b|b b b b|. .|
    keys     [n, (2r+1)·c]  chunks i−r .. i+r of the same stream (zeros beyond its ends)

Query i sees key j iff both belong to the same sequence and |i − j| ≤ w // 2; within one
sequence the stream offset equals the position offset, so the window part of the mask is the
same ``[c, (2r+1)·c]`` pattern in every chunk. The cost is T·(2r+1)·c scores instead of
B·Lmax² (padded, masked) — about 1.5·w per query for r = 1 however long the sequences are,
and no padding at all. Padding queries at the end of the stream see each other only, so no
row is fully masked (a fully masked row makes softmax NaN, and NaN leaks into gradients).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def band_chunk(window: int, neighbours: int = 1) -> int:
    """Chunk length c such that ``neighbours`` chunks each side cover w // 2 keys."""
    return max(1, math.ceil((window // 2) / neighbours))


def band_cost(stream, window: int, neighbours: int = 1) -> int:
    """Scores the band layout computes (per head)."""
    c = band_chunk(window, neighbours)
    return math.ceil(stream.n_tokens / c) * c * (2 * neighbours + 1) * c


def padded_cost(stream) -> int:
    """Scores a padded, masked kernel computes (per head)."""
    return stream.batch * stream.max_seqlen**2


def _band_mask(stream, window: int, neighbours: int, device) -> Tensor:
    """``[n, 1, c, (2r+1)·c]`` bool, True where query may see key; cached per stream."""

    def make():
        c = band_chunk(window, neighbours)
        T = stream.n_tokens
        n = math.ceil(T / c)
        doc = torch.full(((n + 2 * neighbours) * c,), -2, dtype=torch.long, device=device)
        doc[neighbours * c : neighbours * c + n * c] = -1  # tail padding: its own "sequence"
        doc[neighbours * c : neighbours * c + T] = stream.seq_index.to(device)
        keys = _windows(doc.view(-1, c, 1), neighbours).squeeze(-1)  # [n, (2r+1)c]
        queries = doc[neighbours * c : neighbours * c + n * c].view(n, c)
        a = torch.arange(c, device=device)[:, None]
        b = torch.arange((2 * neighbours + 1) * c, device=device)[None, :]
        in_window = (a + neighbours * c - b).abs() <= window // 2  # [c, (2r+1)c], same in every chunk
        return ((queries[:, :, None] == keys[:, None, :]) & in_window)[:, None]

    return stream.cached(("band_mask", window, neighbours, device), make)


def _windows(x: Tensor, neighbours: int) -> Tensor:
    """``[n + 2r, c, ...]`` chunks -> ``[n, (2r+1)·c, ...]``: each chunk with r either side
    (chunk i's keys are chunks i .. i + 2r of ``x``).

    Without gradients, a strided ``unfold`` view (no copy). With them, one concatenation of
    2r + 1 shifted views: its backward is 2r + 1 slices added, where the view's backward is a
    scatter that cost more than the copy in a training step."""
    n = x.shape[0] - 2 * neighbours
    if not (torch.is_grad_enabled() and x.requires_grad):
        c = x.shape[1]
        flat = x.reshape(-1, *x.shape[2:])
        return flat.unfold(0, (2 * neighbours + 1) * c, c).movedim(-1, 1)[:n]
    return torch.cat([x[i : i + n] for i in range(2 * neighbours + 1)], dim=1)


def _chunks(x: Tensor, c: int, n: int, pad: int) -> Tensor:
    """``[T, H, d]`` -> ``[n + 2·pad, c, H, d]`` with ``pad`` zero chunks at each end."""
    T = x.shape[0]
    # a copy only where padding is needed; always under torch.compile, where the test would
    # be a guard on T (a recompile whenever T's remainder mod c turns zero or back)
    if torch.compiler.is_compiling() or pad or n * c != T:
        x = F.pad(x, (0, 0, 0, 0, pad * c, (n + pad) * c - T))
    return x.view(n + 2 * pad, c, *x.shape[1:])


def band_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    stream,
    window: int,
    slopes: Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
    neighbours: int = 1,
) -> Tensor:
    """Sliding-window attention on the packed stream ``[T, H, d]`` in the band layout.

    ``slopes`` [H]: ALiBi, a score bias −slope_h·|i − j| added inside the band.
    """
    T, H, d = q.shape
    c = band_chunk(window, neighbours)
    n = math.ceil(T / c)
    qc = _chunks(q, c, n, 0).transpose(1, 2)  # [n, H, c, d]
    kc = _windows(_chunks(k, c, n, neighbours), neighbours).transpose(1, 2)  # [n, H, (2r+1)c, d]
    vc = _windows(_chunks(v, c, n, neighbours), neighbours).transpose(1, 2)
    mask = _band_mask(stream, window, neighbours, q.device)
    if slopes is not None:
        mask = _band_alibi(stream, window, neighbours, slopes, mask, q.dtype)
    o = F.scaled_dot_product_attention(qc, kc, vc, attn_mask=mask, dropout_p=dropout_p, scale=scale)
    return o.transpose(1, 2).reshape(n * c, H, d)[:T]


def _band_alibi(stream, window, neighbours, slopes, mask, dtype) -> Tensor:
    """The band mask as a float mask with ALiBi: ``[n, H, c, (2r+1)·c]``."""

    def make():
        c = band_chunk(window, neighbours)
        a = torch.arange(c, device=mask.device)[:, None]
        b = torch.arange((2 * neighbours + 1) * c, device=mask.device)[None, :]
        dist = (a + neighbours * c - b).abs().float()
        bias = -slopes.to(mask.device)[:, None, None] * dist  # [H, c, (2r+1)c]
        return bias[None].masked_fill(~mask, float("-inf")).to(dtype)

    return stream.cached(("band_alibi", window, neighbours, dtype), make)


def split_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    stream,
    bias=None,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> Tensor:
    """Global attention one sequence at a time on the packed stream: no padding, no mask.

    ``bias`` (optional) gives a ``[1, H, L, L]`` dense bias that does not depend on the
    sequence (ALiBi); each sequence uses its top-left ``[l, l]`` block.
    """
    lengths = stream.cached("seqlens_list", lambda: stream.seqlens.tolist())
    dense = None
    if bias is not None:
        dense = bias.dense(stream, q.transpose(0, 1)[None], k.transpose(0, 1)[None])
    outs = []
    for qs, ks, vs, n in zip(q.split(lengths), k.split(lengths), v.split(lengths), lengths, strict=True):
        mask = None if dense is None else dense[..., :n, :n]
        o = F.scaled_dot_product_attention(
            qs.transpose(0, 1)[None],
            ks.transpose(0, 1)[None],
            vs.transpose(0, 1)[None],
            attn_mask=mask,
            dropout_p=dropout_p,
            scale=scale,
        )
        outs.append(o[0].transpose(0, 1))
    return torch.cat(outs)

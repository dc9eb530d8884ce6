"""From token lists to packed rows: split long documents, pair segments for NSP, best fit.

A *sequence* is one training example: ``[CLS] tokens [SEP]`` (or, for NSP,
``[CLS] A [SEP] B [SEP]`` with token types 0/1 and a label). A *row* holds whole sequences
whose lengths sum to at most ``seq_len``; rows are concatenated into a packed batch with
``cu_seqlens`` so attention never crosses sequences and no compute goes to padding.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass


@dataclass
class Sequence:
    ids: list[int]
    types: list[int] | None = None
    nsp_label: int | None = None  # 0: B follows A, 1: B is random (transformers' convention)


def split_documents(
    token_lists: list[list[int]], seq_len: int, cls: int, sep: int, min_tokens: int = 1
) -> list[Sequence]:
    """``[CLS] chunk [SEP]`` for every chunk of at most ``seq_len - 2`` tokens of each document."""
    body = seq_len - 2
    out = []
    for ids in token_lists:
        for i in range(0, len(ids), body):
            chunk = ids[i : i + body]
            if len(chunk) >= min_tokens:
                out.append(Sequence([cls, *chunk, sep]))
    return out


def nsp_pairs(
    token_lists: list[list[int]], seq_len: int, cls: int, sep: int, rng: random.Random
) -> list[Sequence]:
    """BERT's next-sentence pairs: each chunk split at a random point into A and B; half the
    time B is replaced by a same-length span of another chunk (label 1).

    Chunks are cut at token boundaries, not sentence boundaries — a simplification of BERT's
    sentence-level segments that keeps every document usable.
    """
    body = seq_len - 3
    chunks = [ids[i : i + body] for ids in token_lists for i in range(0, len(ids), body)]
    chunks = [c for c in chunks if len(c) >= 4]
    out = []
    for n, chunk in enumerate(chunks):
        cut = rng.randint(1, len(chunk) - 1)
        a, b, label = chunk[:cut], chunk[cut:], 0
        if rng.random() < 0.5 and len(chunks) > 1:
            other = chunks[(n + rng.randint(1, len(chunks) - 1)) % len(chunks)]
            start = rng.randint(0, max(0, len(other) - len(b)))
            b, label = other[start : start + len(b)], 1
        ids = [cls, *a, sep, *b, sep]
        types = [0] * (len(a) + 2) + [1] * (len(b) + 1)
        out.append(Sequence(ids, types, label))
    return out


def best_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: indices of ``lengths`` grouped into rows of at most ``capacity``.

    Each sequence, longest first, goes to the open row with the least room that still fits
    it. Deterministic (ties broken by index).
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row index), sorted
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"sequence of {n} tokens exceeds the row capacity {capacity}")
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            room, r = free.pop(k)
        else:
            room, r = capacity, len(rows)
            rows.append([])
        rows[r].append(i)
        if room - n > 0:
            bisect.insort(free, (room - n, r))
    return rows


def efficiency(rows: list[list[int]], lengths: list[int], capacity: int) -> float:
    """Real tokens / (rows × capacity)."""
    return sum(lengths) / max(1, len(rows) * capacity)

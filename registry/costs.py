"""Cost model: parameter counts, forward FLOPs per token, the per-layer plan, fit notes.

Counts come from the model itself, built on the meta device (exact, no memory). FLOPs are
analytic: 2 per multiply-add of every linear layer, plus q·kᵀ and p·v (4·D per key a query
sees; a local layer's queries see at most w // 2 keys each side, edges included exactly),
plus what the positional scheme adds per query (DeBERTa's c2p/p2c products).
"""

from __future__ import annotations

import torch
from torch import nn

from bertsmith.registry.builder import build, layer_plan


def _linear_macs(module: nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))


def _token_linear_macs(layer: nn.Module) -> int:
    """A layer's linear MACs per token. A positional scheme's per-layer projections
    (``attn.positional``) act on its relative table once per forward, not on each token."""
    own = getattr(layer.attn, "positional", None)
    return _linear_macs(layer) - (0 if own is None else _linear_macs(own))


def mean_keys(seq_len: int, window: int | None) -> float:
    """Average number of keys a query attends to in a sequence of ``seq_len`` tokens."""
    if window is None:
        return float(seq_len)
    half = window // 2
    i = torch.arange(seq_len, dtype=torch.float64)
    seen = torch.clamp(i, max=half) + torch.clamp(seq_len - 1 - i, max=half) + 1
    return float(seen.mean())


def fit_notes(spec) -> list[str]:
    """Hardware-fit notes: sizes that waste tensor-core tiles or that kernels refuse."""
    notes = []
    head_dim = spec.d_model // spec.n_heads
    for key, value in (
        ("d_model", spec.d_model),
        ("d_ff", spec.d_ff),
        ("vocab_size", spec.vocab_size),
        ("head_dim", head_dim),
    ):
        if value % 64:
            notes.append(
                f"{key}={value} is not a multiple of 64 (GEMM tiles are wasted; next: {-(-value // 64) * 64})"
            )
    if head_dim > 256:
        notes.append(f"head_dim={head_dim} exceeds 256, which flash-attn does not support")
    if head_dim % 8:
        notes.append(f"head_dim={head_dim} is not a multiple of 8 (fused kernels need it)")
    return notes


def cost(spec, seq_len: int | None = None) -> dict:
    """Everything ``bertsmith inspect`` reports about ``spec`` besides the spec itself."""
    L = spec.max_seq_len if seq_len is None else seq_len
    with torch.device("meta"):
        model = build(spec, init=False)
    enc = model.encoder
    total = sum(p.numel() for p in enc.parameters())
    embedding = sum(p.numel() for p in enc.embeddings.parameters())
    body_ids = {id(p) for p in enc.parameters()}
    head = (
        0 if model.head is None else sum(p.numel() for p in model.head.parameters() if id(p) not in body_ids)
    )
    plan = layer_plan(spec)
    linear = sum(2 * _token_linear_macs(layer) for layer in enc.layers)
    positional = enc.embeddings.positional.flops_per_query(spec.d_model)
    attention = sum(4 * spec.d_model * mean_keys(L, w) + positional for w in plan)
    head_flops = 0 if model.head is None else 2 * _linear_macs(model.head)
    return {
        "name": spec.name,
        "params": {"total": total, "embedding": embedding, "non_embedding": total - embedding, "head": head},
        "flops_per_token": {
            "seq_len": L,
            "encoder": int(linear + attention),
            "linear": linear,
            "attention": int(attention),
            "head": head_flops,
        },
        "plan": [
            {"layer": i, "attention": "global" if w is None else "local", "window": w}
            for i, w in enumerate(plan)
        ],
        "notes": fit_notes(spec),
    }

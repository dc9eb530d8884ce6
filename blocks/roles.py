"""Init roles: how a block tells the init scheme which of its parameters to draw.

A block tags a parameter, or row ranges of it, with roles; an init scheme (slot ``init``)
draws only tagged tensors, choosing a standard deviation from the roles it knows, and leaves
every other parameter as the block's constructor (or ``reset_parameters``) made it — a norm's
gain, ScaleNorm's √d, a learned temperature.

Roles the built-in blocks use (a tensor carries several: the general one and the specific)::

    embedding                    token, type and position tables
    in   + query | key | value   rows of the fused QKV projection
    in   + mlp_in                the MLP's input projection
    out  + attn_out | mlp_out    output projections (Megatron scales these by 1/√(2L))
    head                         head transforms (dense layers before a decoder or classifier)
    decoder                      an untied MLM decoder
    classifier                   classifiers
    bias                         biases: set to zero

A tied weight keeps the roles of the module that owns it first (the token embedding).
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn


def tag(param: nn.Parameter | None, *roles: str, rows: slice | None = None) -> nn.Parameter | None:
    """Give ``param`` (or its rows ``rows``) the init roles ``roles``; returns ``param``."""
    if param is not None:
        found = getattr(param, "init_roles", None)
        if found is None:
            found = []
            param.init_roles = found
        found.append((rows, frozenset(roles)))
    return param


def tag_linear(linear: nn.Linear, *roles: str) -> nn.Linear:
    """Tag a linear layer's weight with ``roles`` and its bias (if any) with ``bias``."""
    tag(linear.weight, *roles)
    tag(linear.bias, "bias")
    return linear


def tag_embedding(embedding: nn.Embedding) -> nn.Embedding:
    tag(embedding.weight, "embedding")
    return embedding


def tagged(model: nn.Module) -> Iterator[tuple[str, nn.Parameter, slice | None, frozenset[str]]]:
    """(name, parameter, rows or None, roles) of every tagged tensor, each parameter once."""
    for name, param in model.named_parameters():  # named_parameters yields a shared tensor once
        for rows, roles in getattr(param, "init_roles", ()):
            yield name, param, rows, roles

"""``build(spec) -> nn.Module``: the one place that turns a spec into block objects."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from blocks.attention import SelfAttention
from blocks.encoder import Embeddings, Encoder, EncoderLayer, EncoderModel
from registry.core import REGISTRY, Entry
from registry.errors import SpecError


def construct(entry: Entry, params: Any = None, **context: Any) -> Any:
    """Call ``entry.obj`` with the entry's params plus whichever ``context`` values its
    signature names (d_model, n_heads, ...). Blocks take plain arguments only."""
    kwargs = params.model_dump(exclude={"kind"}) if params is not None else {}
    accepted = inspect.signature(entry.obj).parameters
    kwargs.update({k: v for k, v in context.items() if k in accepted and k not in kwargs})
    return entry.obj(**kwargs)


def layer_plan(spec) -> list[int | None]:
    """Per layer: ``None`` (global) or the local window."""
    entry = REGISTRY.get("attention", spec.attention.kind)
    return construct(entry, spec.attention, n_layers=spec.n_layers)


def _head_params(spec, head: str | None):
    if head is None:
        return spec.head
    if head == "none":
        return None
    if spec.head is not None and spec.head.kind == head:
        return spec.head
    if head not in REGISTRY.entries["head"]:
        from registry.errors import choice

        raise SpecError(choice("head", head, [*REGISTRY.names("head"), "none"]))
    return REGISTRY.get("head", head).params()


def build(spec, head: str | None = None, init: bool = True) -> nn.Module:
    """Build an ``EncoderModel`` for ``spec``; ``head`` overrides the spec's head (a registered
    head name, or ``"none"`` for the bare encoder). ``init=False`` skips the init scheme
    (weights will be loaded)."""
    head_params = _head_params(spec, head)
    dims = dict(
        d_model=spec.d_model,
        n_heads=spec.n_heads,
        head_dim=spec.d_model // spec.n_heads,
        n_layers=spec.n_layers,
        max_seq_len=spec.max_seq_len,
        vocab_size=spec.vocab_size,
        pad_token_id=spec.pad_token_id,
    )
    norm_entry = REGISTRY.get("norm", spec.norm.kind)
    n = spec.norm

    def make_norm() -> nn.Module:
        return norm_entry.obj(spec.d_model, eps=n.eps, bias=spec.bias.norm)

    def make_act(name: str) -> nn.Module:
        return construct(REGISTRY.get("activation", name))

    kernel = construct(REGISTRY.get("kernel", spec.kernel.kind), spec.kernel, **dims)
    positional = construct(
        REGISTRY.get("positional", spec.positional.kind),
        spec.positional,
        make_norm=make_norm,
        qkv_bias=spec.bias.qkv,
        **dims,
    )
    mlp_entry = REGISTRY.get("mlp", spec.mlp.kind)
    pre = n.placement == "pre"
    layers = []
    for i, window in enumerate(layer_plan(spec)):
        attn = SelfAttention(
            spec.d_model,
            spec.n_heads,
            kernel,
            window,
            spec.bias.qkv,
            spec.bias.attn_out,
            spec.dropout.attention,
            positional=positional.layer_module(),
        )
        mlp = mlp_entry.obj(
            spec.d_model, spec.d_ff, make_act(spec.mlp.activation), spec.bias.mlp_in, spec.bias.mlp_out
        )
        skip = pre and n.skip_first and i == 0
        layers.append(
            EncoderLayer(
                attn,
                mlp,
                None if skip else make_norm(),
                make_norm(),
                pre,
                spec.dropout.attn_out,
                spec.dropout.mlp,
            )
        )
    embeddings = Embeddings(
        spec.vocab_size,
        spec.d_model,
        spec.type_vocab_size,
        positional,
        make_norm() if n.embedding else None,
        spec.dropout.embedding,
    )
    encoder = Encoder(embeddings, layers, make_norm() if n.final else None)
    head_module = None
    if head_params is not None:
        head_module = construct(
            REGISTRY.get("head", head_params.kind),
            head_params,
            make_act=make_act,
            make_norm=make_norm,
            embedding=embeddings.tok,
            encoder=encoder,
            dense_bias=spec.bias.head,
            decoder_bias=spec.bias.decoder,
            **dims,
        )
    model = EncoderModel(encoder, head_module)
    if init:
        construct(REGISTRY.get("init", spec.init.kind), spec.init, model=model, **dims)
    model.spec = spec.model_copy(update={"head": head_params})
    return model

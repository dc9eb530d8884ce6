"""``build(spec) -> nn.Module``: the one place that turns a spec into block objects.

Every slot is built the same way: the chosen entry's object is called with the entry's own
params plus whichever context values its signature names (sizes, bias toggles, ``make_norm``,
``make_activation``, ...). The builder names no block.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from bertsmith.blocks.attention import SelfAttention
from bertsmith.blocks.encoder import Embeddings, Encoder, EncoderLayer, EncoderModel
from bertsmith.registry.core import REGISTRY, Entry
from bertsmith.registry.errors import SpecError
from bertsmith.registry.plugins import load_plugins
from bertsmith.registry.weights import check_memory as check_free_memory

# norm params that place norms in the encoder (read here), not settings of the norm module
NORM_LAYOUT = {"embedding": True, "final": True, "skip_first": False}


def construct(entry: Entry, params: Any = None, exclude: tuple[str, ...] = (), **context: Any) -> Any:
    """Call ``entry.obj`` with the entry's params (less ``exclude``) plus whichever
    ``context`` values its signature names (d_model, n_heads, ...). Blocks take plain
    arguments only."""
    kwargs = params.model_dump(exclude={"kind", *exclude}) if params is not None else {}
    accepted = inspect.signature(entry.obj).parameters
    kwargs.update({k: v for k, v in context.items() if k in accepted and k not in kwargs})
    return entry.obj(**kwargs)


def _kind_and_params(slot: str, chosen: Any) -> tuple[Entry, dict]:
    """The entry and its params for ``chosen``: a params object, a ``{kind, ...}`` mapping or
    a bare name (what a block receives for a field that holds another slot's entry)."""
    if isinstance(chosen, str):
        chosen = {"kind": chosen}
    if not isinstance(chosen, dict):
        chosen = chosen.model_dump()
    data = dict(chosen)
    name, implied = REGISTRY.resolve(slot, data.pop("kind"))
    return REGISTRY.get(slot, name), {**implied, **data}


def make_entry(slot: str, chosen: Any, **context: Any) -> Any:
    """Build the ``slot`` entry ``chosen`` (params object, mapping or bare name)."""
    entry, params = _kind_and_params(slot, chosen)
    accepted = inspect.signature(entry.obj).parameters
    params.update({k: v for k, v in context.items() if k in accepted and k not in params})
    return entry.obj(**params)


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
        from bertsmith.registry.errors import choice

        raise SpecError(choice("head", head, [*REGISTRY.names("head"), "none"]))
    return REGISTRY.get("head", head).params()


def _layers(spec, dims: dict, make_norm, make_activation, kernel, positional) -> list[EncoderLayer]:
    placement = construct(REGISTRY.get("placement", spec.placement.kind), spec.placement, **dims)
    skip_first = getattr(spec.norm, "skip_first", NORM_LAYOUT["skip_first"])
    mlp_entry = REGISTRY.get("mlp", spec.mlp.kind)
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
        mlp = construct(
            mlp_entry,
            spec.mlp,
            make_activation=make_activation,
            bias_in=spec.bias.mlp_in,
            bias_out=spec.bias.mlp_out,
            **dims,
        )
        names = placement.norms()
        norms = {name: make_norm() for name in names}
        if skip_first and i == 0:
            norms[names[0]] = nn.Identity()
        layers.append(EncoderLayer(attn, mlp, norms, placement, spec.dropout.attn_out, spec.dropout.mlp))
    return layers


def build_meta(spec, head: str | None = None) -> nn.Module:
    """The model ``spec`` describes, on the meta device (shapes only, no memory)."""
    with torch.device("meta"):
        return build(spec, head=head, init=False, check_memory=False)


def build(spec, head: str | None = None, init: bool = True, check_memory: bool = True) -> nn.Module:
    """Build an ``EncoderModel`` for ``spec``; ``head`` overrides the spec's head (a registered
    head name, or ``"none"`` for the bare encoder). ``init=False`` skips the init scheme
    (weights will be loaded). Off the meta device, a model larger than the memory free on the
    device is refused before any of it is allocated (``check_memory``)."""
    load_plugins()  # plugins' blocks, before a spec naming them is built (idempotent)
    device = torch.get_default_device()
    if check_memory and device.type != "meta":
        check_free_memory(build_meta(spec, head), spec.name, device)
    head_params = _head_params(spec, head)
    dims = dict(
        d_model=spec.d_model,
        d_ff=spec.d_ff,
        n_heads=spec.n_heads,
        head_dim=spec.d_model // spec.n_heads,
        n_layers=spec.n_layers,
        max_seq_len=spec.max_seq_len,
        vocab_size=spec.vocab_size,
        pad_token_id=spec.pad_token_id,
    )
    norm_entry = REGISTRY.get("norm", spec.norm.kind)
    layout = {k: getattr(spec.norm, k, v) for k, v in NORM_LAYOUT.items()}

    def make_norm() -> nn.Module:
        return construct(
            norm_entry, spec.norm, exclude=tuple(NORM_LAYOUT), dim=spec.d_model, bias=spec.bias.norm
        )

    def make_activation(chosen: Any) -> nn.Module:
        return make_entry("activation", chosen, **dims)

    kernel = construct(REGISTRY.get("kernel", spec.kernel.kind), spec.kernel, **dims)
    positional = construct(
        REGISTRY.get("positional", spec.positional.kind),
        spec.positional,
        make_norm=make_norm,
        qkv_bias=spec.bias.qkv,
        **dims,
    )
    layers = _layers(spec, dims, make_norm, make_activation, kernel, positional)
    embeddings = Embeddings(
        spec.vocab_size,
        spec.d_model,
        spec.type_vocab_size,
        positional,
        make_norm() if layout["embedding"] else None,
        spec.dropout.embedding,
    )
    encoder = Encoder(embeddings, layers, make_norm() if layout["final"] else None)
    head_module = None
    if head_params is not None:
        head_module = construct(
            REGISTRY.get("head", head_params.kind),
            head_params,
            make_activation=make_activation,
            make_norm=make_norm,
            embedding=embeddings.tok,
            encoder=encoder,
            dense_bias=spec.bias.head,
            decoder_bias=spec.bias.decoder,
            **dims,
        )
    model = EncoderModel(encoder, head_module)
    if init:
        model.init_gain = layers[0].placement.init_gain
        construct(REGISTRY.get("init", spec.init.kind), spec.init, model=model, **dims)
        del model.init_gain
    model.spec = spec.model_copy(update={"head": head_params})
    return model

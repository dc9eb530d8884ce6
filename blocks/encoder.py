"""The encoder: embeddings, a stack of layers, an optional final norm, an optional head.

Forward, top to bottom::

    input_ids [B, L] + attention_mask   or   input_ids [T] + cu_seqlens [B+1]
        | unpad once (stream.unpad)               | (already a stream)
    tokens [T] ---- Embeddings: tok + positional.embed + token types, norm, dropout
    x [T, D]   ---- positional.prepare(stream): rope tables / bias, once for all layers
               ---- EncoderLayer x N (attention, MLP; wired by the placement)
               ---- final norm
    head(x, stream) -> logits ...
        | re-pad per-token outputs when the input was padded
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from bertsmith.blocks.linear import fast_linear
from bertsmith.blocks.roles import tag_embedding
from bertsmith.blocks.stream import Stream, repad, stream_from_cu_seqlens, unpad


class EncoderOutput:
    """``last_hidden_state`` [B, L, D] (padded input) or [T, D] (packed input), ``stream``, and
    whatever the head returns (``logits``, BERT's ``nsp_logits``, ...): per-token outputs in
    the same layout as the hidden states, per-sequence ones ``[B, ...]``. An output the head
    does not produce reads as ``None``."""

    def __init__(self, last_hidden_state: Tensor, stream: Stream | None = None, **outputs: Tensor):
        self.last_hidden_state = last_hidden_state
        self.stream = stream
        self.outputs = outputs

    def __getattr__(self, key: str):
        if key.startswith("__") or key == "outputs":
            raise AttributeError(key)
        return self.outputs.get(key)

    def __getitem__(self, key: str):
        return getattr(self, key)

    def keys(self) -> list[str]:
        return ["last_hidden_state", *self.outputs]


class Embeddings(nn.Module):
    """Token embedding + positional embedding (if the scheme adds one) + token types."""

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        type_vocab_size: int,
        positional: nn.Module,
        norm: nn.Module | None,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.tok = tag_embedding(nn.Embedding(vocab_size, d_model))
        self.positional = positional
        self.types = tag_embedding(nn.Embedding(type_vocab_size, d_model)) if type_vocab_size > 0 else None
        self.norm = norm if norm is not None else nn.Identity()
        self.drop = nn.Dropout(dropout)

    def forward(self, tokens: Tensor, position_ids: Tensor, token_types: Tensor | None) -> Tensor:
        x = self.tok(tokens)
        pos = self.positional.embed(position_ids)
        if pos is not None:
            x = x + pos.to(x.dtype)
        if self.types is not None:
            x = x + (self.types(token_types) if token_types is not None else self.types.weight[0])
        return self.drop(self.norm(x))


class EncoderLayer(nn.Module):
    """One transformer layer: attention, then the MLP, each wired in by the placement.

    The layer holds the norms the placement names (``attn_norm``, ``mlp_norm``, ...) as its
    own submodules, so their weights sit at ``layers.<i>.<name>`` whatever the placement.
    """

    def __init__(
        self,
        attn: nn.Module,
        mlp: nn.Module,
        norms: dict[str, nn.Module],
        placement,
        attn_out_dropout: float = 0.0,
        mlp_dropout: float = 0.0,
    ):
        super().__init__()
        # each site's norms, then its sublayer: parameters keep the order optimiser states
        # and older checkpoints have (attn_norm, attn, mlp_norm, mlp)
        for site, sublayer in (("attn", attn), ("mlp", mlp)):
            for name, norm in norms.items():
                if name.startswith(site):
                    self.add_module(name, norm)
            self.add_module(site, sublayer)
        for name, norm in norms.items():
            if not name.startswith(("attn", "mlp")):
                self.add_module(name, norm)
        self.placement = placement
        self.attn_drop = nn.Dropout(attn_out_dropout)
        self.mlp_drop = nn.Dropout(mlp_dropout)

    def forward(self, x: Tensor, stream: Stream, pos, context: Tensor | None = None) -> Tensor:
        """``x [T, D]``: the residual stream. ``context`` (optional, [T, D]): a stream the
        attention reads keys and values from, while queries and the residual come from ``x``
        (a head re-running this layer with its own queries)."""

        def attend(h: Tensor, c: Tensor) -> Tensor:
            return self.attn_drop(self.attn(c, stream, pos, query=None if context is None else h))

        x = self.placement(self, "attn", x, attend, context)
        return self.placement(self, "mlp", x, lambda h, _: self.mlp_drop(self.mlp(h)), None)

    def extra_repr(self) -> str:
        return f"placement={self.placement!r}"


class Encoder(nn.Module):
    """Embeddings, layers and final norm on the token stream (the encoder body).

    ``checkpointing`` (activation checkpointing, Chen et al. 2016): in training, each layer
    keeps only its input and recomputes its activations in the backward pass — memory per
    layer for about a third more compute. Non-reentrant ``torch.utils.checkpoint`` replays the
    forward's RNG state, so dropout masks and gradients are those of a plain forward."""

    def __init__(
        self,
        embeddings: Embeddings,
        layers: list[EncoderLayer],
        final_norm: nn.Module | None,
        checkpointing: bool = False,
    ):
        super().__init__()
        self.embeddings = embeddings
        self.layers = nn.ModuleList(layers)
        self.final_norm = final_norm if final_norm is not None else nn.Identity()
        self.checkpointing = checkpointing

    def forward(
        self, tokens: Tensor, stream: Stream, token_types: Tensor | None = None, keep: tuple[int, ...] = ()
    ) -> Tensor:
        """The final hidden states ``[T, D]``. For each layer index in ``keep`` (negative
        counts from the end), that layer's input and the positional context are left in
        ``stream.cache[("layer_input", i)]`` (i non-negative), for heads that re-run a layer."""
        x = self.embeddings(tokens, stream.position_ids, token_types)
        pos = self.embeddings.positional.prepare(stream)
        kept = {i % len(self.layers) for i in keep}
        for i, layer in enumerate(self.layers):
            if i in kept:
                stream.cache[("layer_input", i)] = (x, pos)
            if self.checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(_with_fast_linear(layer), x, stream, pos, use_reentrant=False)
            else:
                x = layer(x, stream, pos)
        return self.final_norm(x)


def _with_fast_linear(layer: nn.Module):
    """``layer`` called in ``fast_linear``, also when the backward pass recomputes it."""

    def run(x: Tensor, stream: Stream, pos) -> Tensor:
        with fast_linear(x.device):
            return layer(x, stream, pos)

    return run


class EncoderModel(nn.Module):
    """An encoder and an optional head; ``registry.build`` makes these and sets ``.spec``."""

    def __init__(self, encoder: Encoder, head: nn.Module | None = None):
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.spec = None

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        cu_seqlens: Tensor | None = None,
        max_seqlen: int | None = None,
        predict: Tensor | None = None,
    ) -> EncoderOutput:
        """Padded ``input_ids [B, L]`` (+ ``attention_mask``) or packed ``input_ids [T]`` +
        ``cu_seqlens``. ``predict`` (bool, same layout as ``input_ids``) marks the tokens a
        sparse MLM head decodes; its logits are then ``[N, V]`` in stream order.
        fp32 linear layers on a CPU run in oneDNN (``blocks/linear.py``)."""
        with fast_linear(input_ids.device):
            packed = input_ids.dim() == 1
            if packed:
                if cu_seqlens is None:
                    cu_seqlens = torch.tensor([0, input_ids.numel()], device=input_ids.device)
                stream = stream_from_cu_seqlens(cu_seqlens, max_seqlen)
                tokens, types, pred = input_ids, token_type_ids, predict
            else:
                B, L = input_ids.shape
                if attention_mask is None:
                    attention_mask = torch.ones_like(input_ids)
                indices, stream = unpad(attention_mask)
                tokens = input_ids.reshape(-1)[indices]
                types = None if token_type_ids is None else token_type_ids.reshape(-1)[indices]
                pred = None if predict is None else predict.reshape(-1)[indices]
            h = self.encoder(tokens, stream, types, keep=getattr(self.head, "layer_inputs", ()))
            out = {} if self.head is None else self.head(h, stream, pred)
            sparse = pred is not None and getattr(self.head, "sparse", False)
            if not packed:
                h = repad(h, indices, B, L)
                for key in getattr(self.head, "per_token", ()):
                    if not (sparse and key == "logits"):
                        out[key] = repad(out[key], indices, B, L)
            return EncoderOutput(last_hidden_state=h, stream=stream, **out)

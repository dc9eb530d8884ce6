"""The encoder: embeddings, a stack of layers, an optional final norm, an optional head.

Forward, top to bottom::

    input_ids [B, L] + attention_mask   or   input_ids [T] + cu_seqlens [B+1]
        | unpad once (stream.unpad)               | (already a stream)
    tokens [T] ---- Embeddings: tok + positional.embed + token types, norm, dropout
    x [T, D]   ---- positional.prepare(stream): rope tables / bias, once for all layers
               ---- EncoderLayer x N (attention, MLP; pre- or post-norm)
               ---- final norm
    head(x, stream) -> logits ...
        | re-pad per-token outputs when the input was padded
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from blocks.stream import Stream, repad, stream_from_cu_seqlens, unpad


@dataclass
class EncoderOutput:
    """``last_hidden_state`` [B, L, D] (padded input) or [T, D] (packed input); head outputs
    such as ``logits`` follow the same layout when per token, else are ``[B, ...]``."""

    last_hidden_state: Tensor
    logits: Tensor | None = None
    nsp_logits: Tensor | None = None
    stream: Stream | None = None

    def __getitem__(self, key: str):
        return getattr(self, key)


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
        self.tok = nn.Embedding(vocab_size, d_model)
        self.tok.init_role = "embedding"
        self.positional = positional
        self.types = nn.Embedding(type_vocab_size, d_model) if type_vocab_size > 0 else None
        if self.types is not None:
            self.types.init_role = "embedding"
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
    """One transformer layer; ``pre``: x + f(norm(x)); ``post``: norm(x + f(x)) (BERT)."""

    def __init__(
        self,
        attn: nn.Module,
        mlp: nn.Module,
        attn_norm: nn.Module | None,
        mlp_norm: nn.Module,
        pre_norm: bool,
        attn_out_dropout: float = 0.0,
        mlp_dropout: float = 0.0,
    ):
        super().__init__()
        self.attn_norm = attn_norm if attn_norm is not None else nn.Identity()
        self.attn = attn
        self.mlp_norm = mlp_norm
        self.mlp = mlp
        self.pre_norm = pre_norm
        self.attn_drop = nn.Dropout(attn_out_dropout)
        self.mlp_drop = nn.Dropout(mlp_dropout)

    def forward(self, x: Tensor, stream: Stream, pos, query: Tensor | None = None) -> Tensor:
        """``query`` (optional, [T, D]): a separate query stream that attends to ``x`` and
        carries the residual; the layer then returns the updated query stream (EMD)."""
        if self.pre_norm:
            h = self.attn_norm(x)
            if query is None:
                x = x + self.attn_drop(self.attn(h, stream, pos))
            else:
                x = query + self.attn_drop(self.attn(h, stream, pos, query=self.attn_norm(query)))
            return x + self.mlp_drop(self.mlp(self.mlp_norm(x)))
        residual = x if query is None else query
        x = self.attn_norm(residual + self.attn_drop(self.attn(x, stream, pos, query=query)))
        return self.mlp_norm(x + self.mlp_drop(self.mlp(x)))


class Encoder(nn.Module):
    """Embeddings, layers and final norm on the token stream (the encoder body)."""

    def __init__(self, embeddings: Embeddings, layers: list[EncoderLayer], final_norm: nn.Module | None):
        super().__init__()
        self.embeddings = embeddings
        self.layers = nn.ModuleList(layers)
        self.final_norm = final_norm if final_norm is not None else nn.Identity()

    def forward(self, tokens: Tensor, stream: Stream, token_types: Tensor | None = None) -> Tensor:
        """The final hidden states ``[T, D]``. The last layer's input and the positional
        context are left in ``stream.cache["last_layer_input"]`` for heads that run the last
        layer again (the enhanced mask decoder)."""
        x = self.embeddings(tokens, stream.position_ids, token_types)
        pos = self.embeddings.positional.prepare(stream)
        for i, layer in enumerate(self.layers):
            if i == len(self.layers) - 1:
                stream.cache["last_layer_input"] = (x, pos)
            x = layer(x, stream, pos)
        return self.final_norm(x)


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
        sparse MLM head decodes; its logits are then ``[N, V]`` in stream order."""
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
        h = self.encoder(tokens, stream, types)
        out = {} if self.head is None else self.head(h, stream, pred)
        sparse = pred is not None and getattr(self.head, "sparse", False)
        if not packed:
            h = repad(h, indices, B, L)
            for key in getattr(self.head, "per_token", ()):
                if not (sparse and key == "logits"):
                    out[key] = repad(out[key], indices, B, L)
        return EncoderOutput(last_hidden_state=h, stream=stream, **out)

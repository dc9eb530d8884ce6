"""Heads (slot ``head``): what sits on the encoder's token stream for an objective.

Heads take the final stream ``h [T, D]`` and the ``Stream``; per-token outputs stay in
stream order (the model re-pads them if the caller gave padded input), per-sequence outputs
are ``[B, ...]``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from bertsmith.blocks.roles import tag, tag_embedding, tag_linear
from bertsmith.registry.core import Params, SlotRef, register


class MlmParams(Params):
    """``transform``: dense+act+norm before the decoder; ``tied``: decoder shares the token
    embedding; ``sparse``: when a prediction mask is given, only those tokens are decoded."""

    activation: Annotated[Any, SlotRef("activation")] = Field(
        "gelu", description="the transform's activation"
    )
    transform: bool = Field(True, description="dense + activation + norm before the decoder")
    tied: bool = Field(True, description="the decoder shares the token embedding")
    sparse: bool = Field(True, description="decode only the masked tokens")


@register("head", "mlm", params=MlmParams, provides={"masked_lm"})
class MlmHead(nn.Module):
    """Masked-LM head: optional transform (dense, act, norm), then the vocabulary decoder.

    Sparse prediction (ModernBERT): decode only the masked tokens, which saves the
    ``[T, V]`` logits of every unmasked token.
    """

    per_token = ("logits",)

    def __init__(
        self,
        d_model: int,
        vocab_size: int,
        make_activation,
        make_norm,
        embedding: nn.Embedding,
        dense_bias: bool,
        decoder_bias: bool,
        activation: Any = "gelu",
        transform: bool = True,
        tied: bool = True,
        sparse: bool = True,
    ):
        super().__init__()
        self.sparse = sparse
        if transform:
            self.dense = tag_linear(nn.Linear(d_model, d_model, bias=dense_bias), "head")
            self.act = make_activation(activation)
            self.norm = make_norm()
        self.transform = transform
        self.decoder = tag_linear(nn.Linear(d_model, vocab_size, bias=False), "decoder")
        if tied:
            self.decoder.weight = embedding.weight
        self.bias = tag(nn.Parameter(torch.zeros(vocab_size)), "bias") if decoder_bias else None

    def forward(self, h: Tensor, stream, predict: Tensor | None = None) -> dict[str, Tensor]:
        if predict is not None and self.sparse:
            h = h[predict]
        if self.transform:
            h = self.norm(self.act(self.dense(h)))
        logits = self.decoder(h)
        if self.bias is not None:
            logits = logits + self.bias
        return {"logits": logits}


def first_tokens(h: Tensor, stream) -> Tensor:
    """[B, D]: the first token ([CLS]) of each sequence."""
    return h[stream.cu_seqlens[:-1].long()]


def mean_tokens(h: Tensor, stream) -> Tensor:
    """[B, D]: the mean over each sequence's tokens."""
    if stream.real is not None:  # a padded stream: padding positions add nothing
        h = h * stream.real[:, None].to(h.dtype)
    sums = h.new_zeros(stream.batch, h.shape[-1]).index_add_(0, stream.seq_index, h)
    return sums / stream.seqlens.clamp(min=1)[:, None].to(h.dtype)


class NspParams(MlmParams):
    """MLM head params, plus BERT's pooler (dense + tanh on [CLS]) feeding a 2-way classifier."""


@register("head", "nsp", params=NspParams, provides={"masked_lm", "next_sentence"})
class NspHead(MlmHead):
    """BERT pre-training heads: masked LM plus next-sentence prediction on the pooled [CLS]."""

    def __init__(
        self,
        d_model: int,
        vocab_size: int,
        make_activation,
        make_norm,
        embedding: nn.Embedding,
        dense_bias: bool,
        decoder_bias: bool,
        **mlm,
    ):
        super().__init__(
            d_model, vocab_size, make_activation, make_norm, embedding, dense_bias, decoder_bias, **mlm
        )
        self.pooler = tag_linear(nn.Linear(d_model, d_model), "head")
        self.nsp = tag_linear(nn.Linear(d_model, 2), "classifier")

    def forward(self, h: Tensor, stream, predict: Tensor | None = None) -> dict[str, Tensor]:
        out = super().forward(h, stream, predict)
        pooled = torch.tanh(self.pooler(first_tokens(h, stream)))
        out["nsp_logits"] = self.nsp(pooled)
        return out


class EmdParams(MlmParams):
    """MLM head params, plus ``steps``: how many times the encoder's last layer decodes the
    position-enriched query stream (DeBERTa: 2, sharing that layer's weights)."""

    steps: int = Field(2, ge=1, description="passes of the shared last layer")


@register("head", "emd", params=EmdParams, provides={"masked_lm"})
class EmdHead(MlmHead):
    """Enhanced mask decoder: absolute positions added just before MLM decoding (DeBERTa).

    He et al. 2020, arXiv:2006.03654 §3.2.

    The encoder uses relative positions only; EMD gives the MLM prediction the absolute
    ones. With H the input of the encoder's last layer and P a learned absolute position
    table (``positions [max_seq_len, D]``, indexed by the position within each sequence),
    following the DeBERTa code (``EnhancedMaskDecoder.emd_context_layer``)::

        Q0 = H + P[position_ids]
        Q(s+1) = last_layer(keys/values H, queries Q(s))     s = 0 .. steps-1, shared weights
        logits = MLM head (transform, decoder) on final_norm(Q(steps))

    The last layer is the encoder's own (held, not owned: its weights are stored once, under
    ``encoder.layers``); this head adds only P and the MLM head's weights (in DeBERTa's code P
    is the embedding module's unused absolute table; here the head owns it). It reads H and
    the positional context that the encoder keeps for it (``layer_inputs``);
    the encoder's output ``h`` is not used, and ``last_hidden_state`` stays the plain encoder
    output. Every token's query stream is decoded; sparse prediction selects rows after it.

    No parity reference: ``transformers`` has no EMD (its DeBERTa MLM classes use the plain
    head, so ``import-hf`` gives ``mlm``). The tests check it against DeBERTa's algorithm
    written with ``transformers``' DeBERTa layer, which takes separate ``query_states``.
    """

    layer_inputs = (-1,)  # the encoder keeps its last layer's input for this head

    def __init__(
        self,
        d_model: int,
        vocab_size: int,
        max_seq_len: int,
        make_activation,
        make_norm,
        embedding: nn.Embedding,
        encoder: nn.Module,
        dense_bias: bool,
        decoder_bias: bool,
        steps: int = 2,
        **mlm,
    ):
        super().__init__(
            d_model, vocab_size, make_activation, make_norm, embedding, dense_bias, decoder_bias, **mlm
        )
        self.steps = steps
        self.positions = tag_embedding(nn.Embedding(max_seq_len, d_model))
        # a plain tuple, so the encoder's modules are not registered (and saved) twice
        self._shared = (encoder.layers[-1], encoder.final_norm)
        self._last = len(encoder.layers) - 1

    def forward(self, h: Tensor, stream, predict: Tensor | None = None) -> dict[str, Tensor]:
        last_layer, final_norm = self._shared
        kv, pos = stream.cache[("layer_input", self._last)]
        q = kv + self.positions(stream.position_ids).to(kv.dtype)
        for _ in range(self.steps):
            q = last_layer(q, stream, pos, context=kv)
        return super().forward(final_norm(q), stream, predict)


class ClassificationParams(Params):
    """Pool ([CLS] or mean), then dense + act (+ norm), dropout, and a linear classifier."""

    num_labels: int = Field(2, ge=1, description="classes (1: regression)")
    pooling: Literal["cls", "mean"] = Field("cls", description="[CLS] token or the mean of the tokens")
    activation: Annotated[Any, SlotRef("activation")] = Field(
        "gelu", description="the transform's activation"
    )
    norm: bool = Field(True, description="a norm after the dense layer")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout before the classifier")


@register("head", "classification", params=ClassificationParams, provides={"sequence_labels"})
class ClassificationHead(nn.Module):
    """Sequence classification or regression (num_labels 1) over a pooled sequence vector."""

    per_token = ()

    def __init__(
        self,
        d_model: int,
        make_activation,
        make_norm,
        dense_bias: bool,
        num_labels: int = 2,
        pooling: str = "cls",
        activation: Any = "gelu",
        norm: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.pool = first_tokens if pooling == "cls" else mean_tokens
        self.dense = tag_linear(nn.Linear(d_model, d_model, bias=dense_bias), "head")
        self.act = make_activation(activation)
        self.norm = make_norm() if norm else nn.Identity()
        self.drop = nn.Dropout(dropout)
        self.classifier = tag_linear(nn.Linear(d_model, num_labels), "classifier")

    def forward(self, h: Tensor, stream, predict: Tensor | None = None) -> dict[str, Tensor]:
        pooled = self.norm(self.act(self.dense(self.pool(h, stream))))
        return {"logits": self.classifier(self.drop(pooled))}


class TokenClassificationParams(Params):
    """A label per token: dropout, then a linear classifier on each token's final state."""

    num_labels: int = Field(2, ge=1, description="labels per token")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout before the classifier")


@register("head", "token_classification", params=TokenClassificationParams, provides={"token_labels"})
class TokenClassificationHead(nn.Module):
    """Token classification (tagging, NER): a linear classifier on every token's final state.

    Logits are ``[T, num_labels]`` in stream order, re-padded to ``[B, L, num_labels]`` for
    padded input. BERT's token classifier (Devlin et al. 2019 §4.3): no transform, one linear
    layer on the final hidden states.
    """

    per_token = ("logits",)

    def __init__(self, d_model: int, num_labels: int = 2, dropout: float = 0.0):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.classifier = tag_linear(nn.Linear(d_model, num_labels), "classifier")

    def forward(self, h: Tensor, stream, predict: Tensor | None = None) -> dict[str, Tensor]:
        return {"logits": self.classifier(self.drop(h))}

"""transformers classes around a bertsmith encoder, for remote-code exports.

``config.json`` holds the bertsmith spec (``bertsmith_spec``, the same words as
``spec.yaml``); the classes below build it with ``registry.build`` and run bertsmith's own
forward pass (unpad once, token stream, re-pad), so outputs are bertsmith's exactly::

    BertsmithModel                       encoder.*            -> last_hidden_state [B, L, D]
    BertsmithForMaskedLM                 bertsmith.encoder.*  + head.*   (mlm, nsp, emd heads)
    BertsmithForSequenceClassification   bertsmith.encoder.*  + head.*   (classification head)

``train.interop.remote.modeling_source`` copies this file, the blocks and the builder into one
self-contained ``modeling_bertsmith.py``; the bertsmith imports below are then dropped
because the names they bring are defined in that same file.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput
from transformers.utils import ModelOutput

from bertsmith.blocks.encoder import EncoderModel
from bertsmith.registry.builder import build

try:  # transformers 5: init functions that skip weights loaded from the checkpoint
    from transformers import initialization as _init
except ImportError:  # pragma: no cover (transformers 4)
    from torch.nn import init as _init


class SpecView:
    """Attribute access to the spec dict from ``config.json``, with the two pydantic methods
    ``registry.build`` calls (``model_dump``, ``model_copy``)."""

    def __init__(self, data: dict):
        self._data = dict(data)

    def __getattr__(self, key: str):
        if key.startswith("__") or key == "_data":
            raise AttributeError(key)
        try:
            value = self._data[key]
        except KeyError:
            raise AttributeError(key) from None
        return SpecView(value) if isinstance(value, dict) else value

    def model_dump(self, exclude=()) -> dict:
        return {k: v for k, v in self._data.items() if k not in set(exclude)}

    def model_copy(self, update: dict | None = None) -> SpecView:
        data = dict(self._data)
        for k, v in (update or {}).items():
            data[k] = v._data if isinstance(v, SpecView) else v
        return SpecView(data)


class BertsmithConfig(PretrainedConfig):
    """A bertsmith spec (``bertsmith_spec``) plus transformers' usual size attributes."""

    model_type = "bertsmith"

    def __init__(self, bertsmith_spec: dict | None = None, **kwargs):
        spec = dict(bertsmith_spec or {})
        self.bertsmith_spec = spec
        if spec:
            self.vocab_size = spec["vocab_size"]
            self.hidden_size = spec["d_model"]
            self.num_hidden_layers = spec["n_layers"]
            self.num_attention_heads = spec["n_heads"]
            self.intermediate_size = spec["d_ff"]
            self.max_position_embeddings = spec["max_seq_len"]
            self.initializer_range = spec["init"]["std"]
            head = spec.get("head") or {}
            kwargs.setdefault("pad_token_id", spec["pad_token_id"])
            kwargs.setdefault("tie_word_embeddings", bool(head.get("tied", False)))
            if "num_labels" in head:
                kwargs.setdefault("num_labels", head["num_labels"])
        super().__init__(**kwargs)


def _forward(encoder: nn.Module, head: nn.Module | None, input_ids, attention_mask, token_type_ids):
    """bertsmith's own forward (``EncoderModel.forward``) on these modules."""
    if input_ids is None:
        raise ValueError("bertsmith models take input_ids (inputs_embeds is not supported)")
    return EncoderModel.forward(
        SimpleNamespace(encoder=encoder, head=head), input_ids, attention_mask, token_type_ids
    )


class BertsmithPreTrainedModel(PreTrainedModel):
    """Shared transformers plumbing: config class, prefix, initialisation of new weights."""

    config_class = BertsmithConfig
    base_model_prefix = "bertsmith"
    _no_split_modules = ["EncoderLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        """Weights a checkpoint does not provide (``from_config``): transformers' defaults,
        plus parameters held directly by bertsmith blocks (learned positions, an MLM bias)."""
        super()._init_weights(module)
        if isinstance(module, (nn.Linear, nn.Embedding)) or "Norm" in type(module).__name__:
            return
        std = self.config.bertsmith_spec["init"]["std"]
        for name, param in module.named_parameters(recurse=False):
            if name == "bias":
                _init.zeros_(param)
            else:
                _init.normal_(param, mean=0.0, std=std)


class BertsmithModel(BertsmithPreTrainedModel):
    """The encoder body: ``last_hidden_state [B, L, D]`` (zeros at padding)."""

    # a checkpoint with a head also loads into the bare encoder: the head is left out on purpose
    _keys_to_ignore_on_load_unexpected = [r"^head\."]

    def __init__(self, config: BertsmithConfig, encoder: nn.Module | None = None):
        super().__init__(config)
        if encoder is None:
            encoder = build(SpecView(config.bertsmith_spec), head="none", init=False).encoder
        self.encoder = encoder
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.encoder.embeddings.tok

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.encoder.embeddings.tok = value

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, **kwargs) -> BaseModelOutput:
        out = _forward(self.encoder, None, input_ids, attention_mask, token_type_ids)
        return BaseModelOutput(last_hidden_state=out.last_hidden_state)


@dataclass
class BertsmithHeadOutput(ModelOutput):
    """``logits`` per token (MLM heads) or per sequence (classification), the encoder's
    ``last_hidden_state``, BERT's ``nsp_logits`` with an nsp head, and ``loss`` with labels."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    nsp_logits: torch.Tensor | None = None


class _BertsmithWithHead(BertsmithPreTrainedModel):
    def __init__(self, config: BertsmithConfig):
        super().__init__(config)
        full = build(SpecView(config.bertsmith_spec), init=False)
        self.bertsmith = BertsmithModel(config, encoder=full.encoder)
        self.head = full.head
        if getattr(config, "tie_word_embeddings", False) and hasattr(self.head, "decoder"):
            self._tied_weights_keys = {"head.decoder.weight": "bertsmith.encoder.embeddings.tok.weight"}
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.bertsmith.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module | None:
        return getattr(self.head, "decoder", None)

    def _run(self, input_ids, attention_mask, token_type_ids):
        return _forward(self.bertsmith.encoder, self.head, input_ids, attention_mask, token_type_ids)


class BertsmithForMaskedLM(_BertsmithWithHead):
    """Encoder + the spec's MLM-family head (mlm, nsp, emd): ``logits [B, L, V]``."""

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        labels=None,
        next_sentence_label=None,
        **kwargs,
    ) -> BertsmithHeadOutput:
        out = self._run(input_ids, attention_mask, token_type_ids)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(out.logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        if next_sentence_label is not None and out.nsp_logits is not None:
            nsp = F.cross_entropy(out.nsp_logits.float(), next_sentence_label.flatten())
            loss = nsp if loss is None else loss + nsp
        return BertsmithHeadOutput(
            loss=loss, logits=out.logits, last_hidden_state=out.last_hidden_state, nsp_logits=out.nsp_logits
        )


class BertsmithForSequenceClassification(_BertsmithWithHead):
    """Encoder + the spec's classification head: ``logits [B, num_labels]``."""

    def forward(
        self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs
    ) -> BertsmithHeadOutput:
        out = self._run(input_ids, attention_mask, token_type_ids)
        loss = None
        if labels is not None:
            if out.logits.shape[-1] == 1:
                loss = F.mse_loss(out.logits.squeeze(-1).float(), labels.float())
            else:
                loss = F.cross_entropy(out.logits.float(), labels.flatten())
        return BertsmithHeadOutput(loss=loss, logits=out.logits, last_hidden_state=out.last_hidden_state)

"""BERT (``model_type: bert``): post-LN layers, learned absolute positions, token types.

Also the body RoBERTa and DeBERTa share: ``body`` (config -> spec), ``body_config``
(spec -> config), ``embedding_keys`` and ``layer_keys`` (weight names).
"""

from __future__ import annotations

from collections.abc import Sequence

from bertsmith.registry.errors import SpecError
from bertsmith.train.interop.family import Family, Keys, activation, bench_shape, hf_act, sizes

# TF-converted checkpoints name LayerNorm's weight and bias gamma and beta
OLDER_NAMES = (("LayerNorm.weight", "LayerNorm.gamma"), ("LayerNorm.bias", "LayerNorm.beta"))
PRETRAINING_NOTE = (
    "BERT's pre-training heads (MLM + NSP) are exported as `BertForPreTraining`, which holds "
    "both; `AutoModelForMaskedLM` loads its MLM part (the pooler and NSP classifier are then "
    "reported as unused)."
)
BENCH_SHAPES = {  # (width, MLP, layers, heads); tiny: the *-tiny recipe (main job)
    "base": bench_shape(768, 3072, 12, 12),
    "large": bench_shape(1024, 4096, 24, 16),
    "small": bench_shape(512, 2048, 4, 8),
    "tiny": bench_shape(256, 1024, 4, 4, vocab_size=8192, pad_token_id=0),
}


def body(cfg, name: str, act: str, max_seq_len: int, positional: dict) -> dict:
    """The spec fields BERT, RoBERTa and DeBERTa share: post-LN layers with a GELU-family
    MLP, an embedding LayerNorm, BERT's dropouts and init."""
    p_hidden = cfg.hidden_dropout_prob
    return dict(
        **sizes(cfg, name),
        max_seq_len=max_seq_len,
        type_vocab_size=cfg.type_vocab_size,
        pad_token_id=cfg.pad_token_id or 0,
        positional=positional,
        attention={"kind": "global"},
        mlp={"kind": "mlp", "activation": act},
        norm={
            "kind": "layernorm",
            "eps": cfg.layer_norm_eps,
            "embedding": True,
            "final": False,
        },
        placement={"kind": "post"},
        dropout={
            "embedding": p_hidden,
            "attention": cfg.attention_probs_dropout_prob,
            "attn_out": p_hidden,
            "mlp": p_hidden,
        },
        init={"kind": "bert_normal", "std": cfg.initializer_range},
    )


def body_config(spec) -> dict:
    """The config keys of ``body``, from a spec. transformers has one hidden dropout (the
    spec's MLP dropout is written; embedding and attn_out use it too)."""
    d = spec.dropout
    return dict(
        hidden_act=hf_act(spec.mlp.activation),
        hidden_dropout_prob=d.mlp,
        attention_probs_dropout_prob=d.attention,
        type_vocab_size=spec.type_vocab_size,
        layer_norm_eps=spec.norm.eps,
    )


def embedding_keys(keys: Keys, positional: bool = True, types: bool = True) -> None:
    """Token, position and token-type embeddings and their LayerNorm."""
    e = "encoder.embeddings"
    keys.add(f"{e}.tok.weight", "embeddings.word_embeddings.weight")
    if positional:
        keys.add(f"{e}.positional.weight", "embeddings.position_embeddings.weight")
    if types:
        keys.add(f"{e}.types.weight", "embeddings.token_type_embeddings.weight")
    keys.norm(f"{e}.norm", "embeddings.LayerNorm")


def layer_keys(keys: Keys, i: int, proj: str = "", positional: Sequence[tuple[str, str]] = ()) -> None:
    """Layer ``i``. ``proj`` is appended to query/key/value (DeBERTa's ``query_proj``);
    ``positional`` lists (our name, theirs) of position projections (DeBERTa's)::

        ours: encoder.layers.{i}.      transformers: encoder.layer.{i}.
          attn.qkv  [3D, D]              attention.self.{query,key,value}  each [D, D]
          attn.positional.<name>         attention.self.<theirs>
          attn.out, attn_norm            attention.output.dense, .LayerNorm
          mlp.wi                         intermediate.dense
          mlp.wo, mlp_norm               output.dense, output.LayerNorm
    """
    b = keys.spec.bias
    o, t = f"encoder.layers.{i}", f"encoder.layer.{i}"
    keys.linear(f"{o}.attn.qkv", [f"{t}.attention.self.{x}{proj}" for x in ("query", "key", "value")], b.qkv)
    for ours, theirs in positional:
        keys.linear(f"{o}.attn.positional.{ours}", [f"{t}.attention.self.{theirs}"], b.qkv)
    keys.linear(f"{o}.attn.out", [f"{t}.attention.output.dense"], b.attn_out)
    keys.norm(f"{o}.attn_norm", f"{t}.attention.output.LayerNorm")
    keys.linear(f"{o}.mlp.wi", [f"{t}.intermediate.dense"], b.mlp_in)
    keys.linear(f"{o}.mlp.wo", [f"{t}.output.dense"], b.mlp_out)
    keys.norm(f"{o}.mlp_norm", f"{t}.output.LayerNorm")


class Bert(Family):
    model_type = "bert"
    title = "BERT"
    class_prefix = "Bert"
    base_prefix = "bert."
    pretraining_class = "BertForPreTraining"
    older_names = OLDER_NAMES
    bench_shapes = BENCH_SHAPES
    # the MLM head's modules in the masked-LM model
    mlm_head = {
        "dense": "cls.predictions.transform.dense",
        "norm": "cls.predictions.transform.LayerNorm",
        "bias": "cls.predictions.bias",
        "decoder": "cls.predictions.decoder",
    }
    head_activation: str | None = None  # the head's activation; None: hidden_act's

    def position_offset(self, cfg) -> int:
        """Position ids start here (RoBERTa's start after the pad id)."""
        return 0

    def spec_data(self, cfg, name: str, head: str | None) -> dict:
        if getattr(cfg, "position_embedding_type", "absolute") not in (None, "absolute"):
            raise SpecError(
                f"config.json position_embedding_type: given {cfg.position_embedding_type!r}, allowed: 'absolute'"
            )
        act = activation(cfg.hidden_act, "hidden_act")
        offset = self.position_offset(cfg)
        data = body(
            cfg,
            name,
            act,
            max_seq_len=cfg.max_position_embeddings - offset,
            positional={"kind": "learned", "offset": offset},
        )
        data["head"] = (
            None
            if head is None
            else {
                "kind": head,
                "activation": self.head_activation or act,
                "tied": bool(getattr(cfg, "tie_word_embeddings", True)),
            }
        )
        return data

    def config(self, spec, specials: dict[str, int]) -> dict:
        p = spec.positional
        offset = p.offset if p.kind == "learned" else 0
        return dict(
            body_config(spec),
            max_position_embeddings=spec.max_seq_len + offset,
            position_embedding_type="absolute",
        )

    def key_map(self, spec, legacy: bool = True) -> list[tuple[str, list[str]]]:
        keys = Keys(spec)
        embedding_keys(keys)
        for i in range(spec.n_layers):
            layer_keys(keys, i)
        if spec.head is not None:
            self.head_keys(keys, spec.head)
        return keys.pairs

    def head_keys(self, keys: Keys, head) -> None:
        """The MLM head (untied: its decoder), and BERT's pooler and NSP classifier."""
        h = self.mlm_head
        keys.head_transform(h["dense"], h["norm"])
        if head.tied:
            keys.add("head.bias", f"@{h['bias']}")
        else:  # untied, transformers 5.x uses the decoder's own bias (older files: the head's)
            keys.add("head.bias", f"@{h['decoder']}.bias|@{h['bias']}")
            keys.add("head.decoder.weight", f"@{h['decoder']}.weight")
        if head.kind == "nsp":
            keys.linear("head.pooler", ["pooler.dense"], True)
            keys.linear("head.nsp", ["@cls.seq_relationship"], True)

    def refusals(self, spec) -> list[str]:
        if spec.type_vocab_size < 1:
            return [f"type_vocab_size is 0, {self.title} always adds token-type embeddings (at least 1)"]
        return []

    def notes(self, arch: str, training: list[str]) -> list[str]:
        if arch == self.pretraining_class:
            return [PRETRAINING_NOTE, *training]
        return [
            *training,
            f"`AutoModel` builds `{self.class_prefix}Model` with a pooler this model never had; "
            "load it with `add_pooling_layer=False` (otherwise transformers initialises the pooler "
            "randomly and says so).",
        ]

    def bench_config(self, shape: dict, window: int):
        # no dropout, so the training step's losses can be compared
        return self.config_class()(**shape, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


FAMILY = Bert()

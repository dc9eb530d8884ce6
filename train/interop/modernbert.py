"""ModernBERT (``model_type: modernbert``): pre-LN layers, RoPE, GLU MLP, alternating attention.

The attention pattern is ``layer_types`` (transformers 5.x) or ``global_attn_every_n_layers``
(older): full attention at layer 0 and every n-th layer after it, a sliding window
(``local_attention``, the window's full width) elsewhere, each with its own RoPE theta::

    n = 3:   layer  0     1      2      3     4      5
                    full  slide  slide  full  slide  slide
"""

from __future__ import annotations

from bertsmith import registry
from bertsmith.registry.errors import SpecError
from bertsmith.train.interop.family import Family, Keys, activation, bench_shape, hf_act, sizes

BENCH_SHAPES = {  # (width, MLP, layers, heads); tiny: the *-tiny recipe (main job)
    "base": bench_shape(768, 1152, 22, 12),
    "large": bench_shape(1024, 2624, 28, 16),
    "small": bench_shape(512, 768, 8, 8),
    "tiny": bench_shape(
        256,
        384,
        6,
        4,
        vocab_size=8192,
        pad_token_id=0,
        bos_token_id=1,
        cls_token_id=1,
        eos_token_id=2,
        sep_token_id=2,
    ),
}


def _attention(cfg) -> dict:
    """The attention slot for ``layer_types`` (only the alternating pattern is one)."""
    types = list(cfg.layer_types)
    every = next((i for i, t in enumerate(types) if i and t == "full_attention"), len(types))
    expected = ["sliding_attention" if i % every else "full_attention" for i in range(len(types))]
    if types != expected:
        raise SpecError(
            f"config.json layer_types: given {types}, allowed: full attention every "
            "n-th layer starting at layer 0 (the alternating pattern)"
        )
    if "sliding_attention" not in types:  # not `every >= len`: [full, sliding, sliding] is local
        return {"kind": "global"}
    return {"kind": "alternating", "window": cfg.local_attention, "global_every": every}


def _rope(cfg) -> dict:
    """The positional slot: RoPE with a theta for full and one for sliding layers."""
    rope = cfg.rope_parameters
    for kind in ("full_attention", "sliding_attention"):
        if rope[kind].get("rope_type", "default") != "default":
            raise SpecError(
                f"config.json rope_parameters.{kind}.rope_type: given "
                f"{rope[kind]['rope_type']!r}, allowed: 'default'"
            )
    return {
        "kind": "rope",
        "theta": rope["full_attention"]["rope_theta"],
        "local_theta": rope["sliding_attention"]["rope_theta"],
    }


def _pattern(spec) -> tuple[list, int, int, float, float]:
    """(layer plan, global every n, window, full theta, local theta) of a spec; the family's
    defaults where the spec has no such setting."""
    p = spec.positional
    plan = registry.layer_plan(spec)
    every = next((i for i, w in enumerate(plan) if i and w is None), len(plan))
    window = next((w for w in plan if w is not None), getattr(spec.attention, "window", 128))
    theta = p.theta if p.kind == "rope" else 160000.0
    local = (p.local_theta or p.theta) if p.kind == "rope" else 10000.0
    return plan, every, window, theta, local


class ModernBert(Family):
    model_type = "modernbert"
    title = "ModernBERT"
    class_prefix = "ModernBert"
    base_prefix = "model."
    bench_shapes = BENCH_SHAPES
    bench_long = True  # RoPE and a local window reach 4096 tokens

    def spec_data(self, cfg, name: str, head: str | None) -> dict:
        attention, positional = _attention(cfg), _rope(cfg)
        return dict(
            **sizes(cfg, name),
            max_seq_len=cfg.max_position_embeddings,
            type_vocab_size=0,
            pad_token_id=cfg.pad_token_id or 0,
            positional=positional,
            attention=attention,
            mlp={"kind": "glu", "activation": activation(cfg.hidden_activation, "hidden_activation")},
            norm={
                "kind": "layernorm",
                "eps": cfg.norm_eps,
                "embedding": True,
                "final": True,
                "skip_first": True,
            },
            placement={"kind": "pre"},
            bias={
                "qkv": cfg.attention_bias,
                "attn_out": cfg.attention_bias,
                "mlp_in": cfg.mlp_bias,
                "mlp_out": cfg.mlp_bias,
                "norm": cfg.norm_bias,
                "head": cfg.classifier_bias,
                "decoder": cfg.decoder_bias,
            },
            dropout={
                "embedding": cfg.embedding_dropout,
                "attention": cfg.attention_dropout,
                "attn_out": cfg.attention_dropout,
                "mlp": cfg.mlp_dropout,
            },
            init={
                "kind": "full_megatron",
                "std": cfg.initializer_range,
                "cutoff": cfg.initializer_cutoff_factor or 2.0,
            },
            head=None
            if head is None
            else {
                "kind": head,
                "activation": activation(cfg.classifier_activation, "classifier_activation"),
                "tied": bool(getattr(cfg, "tie_word_embeddings", True)),
            },
        )

    def config(self, spec, specials: dict[str, int]) -> dict:
        b, d = spec.bias, spec.dropout
        plan, every, window, theta, local = _pattern(spec)
        return dict(
            hidden_activation=hf_act(spec.mlp.activation),
            max_position_embeddings=spec.max_seq_len,
            initializer_cutoff_factor=getattr(spec.init, "cutoff", 2.0),
            norm_eps=spec.norm.eps,
            norm_bias=b.norm,
            **self.token_ids(spec, specials, bos="cls", eos="sep", cls="cls", sep="sep"),
            attention_bias=b.qkv,
            attention_dropout=d.attention,
            embedding_dropout=d.embedding,
            mlp_bias=b.mlp_in,
            mlp_dropout=d.mlp,
            decoder_bias=b.decoder,
            classifier_bias=b.head,
            classifier_activation=hf_act(getattr(spec.head, "activation", None)),
            local_attention=window,
            layer_types=["full_attention" if w is None else "sliding_attention" for w in plan],
            rope_parameters={
                "full_attention": {"rope_type": "default", "rope_theta": float(theta)},
                "sliding_attention": {"rope_type": "default", "rope_theta": float(local)},
            },
        )

    def legacy_config(self, spec) -> dict:
        """What transformers < 5 reads (5.x converts them on load)."""
        _, every, _, theta, local = _pattern(spec)
        return dict(global_attn_every_n_layers=every, global_rope_theta=theta, local_rope_theta=local)

    def key_map(self, spec, legacy: bool = True) -> list[tuple[str, list[str]]]:
        """Layer 0 has no attention norm (the embedding norm precedes it)."""
        b = spec.bias
        keys = Keys(spec)
        keys.add("encoder.embeddings.tok.weight", "embeddings.tok_embeddings.weight")
        keys.norm("encoder.embeddings.norm", "embeddings.norm")
        for i in range(spec.n_layers):
            o, t = f"encoder.layers.{i}", f"layers.{i}"
            if i > 0:
                keys.norm(f"{o}.attn_norm", f"{t}.attn_norm")
            keys.linear(f"{o}.attn.qkv", [f"{t}.attn.Wqkv"], b.qkv)
            keys.linear(f"{o}.attn.out", [f"{t}.attn.Wo"], b.attn_out)
            keys.norm(f"{o}.mlp_norm", f"{t}.mlp_norm")
            keys.linear(f"{o}.mlp.wi", [f"{t}.mlp.Wi"], b.mlp_in)
            keys.linear(f"{o}.mlp.wo", [f"{t}.mlp.Wo"], b.mlp_out)
        keys.norm("encoder.final_norm", "final_norm")
        if spec.head is not None:
            keys.head_transform("head.dense", "head.norm")
            if b.decoder:
                keys.add("head.bias", "@decoder.bias")
            if not spec.head.tied:
                keys.add("head.decoder.weight", "@decoder.weight")
        return keys.pairs

    def bench_config(self, shape: dict, window: int):
        return self.config_class()(**shape, local_attention=window, sparse_prediction=True)


FAMILY = ModernBert()

"""Interop with transformers directories: their configs and weight layouts, both ways.

``import_hf(hf_dir, out_dir)`` reads a BERT, RoBERTa, ModernBERT or DeBERTa-v2/v3 directory
(base model or masked-LM, ``config.json`` + safetensors or a ``weights_only`` torch file),
writes a bertsmith model directory, and never runs code from the directory (no
``trust_remote_code``; the config class is chosen from ``model_type`` among the ones we know).

Each family has a *key map*: (our key, transformers keys) pairs, where several transformers
keys are concatenated along dim 0 into one of ours (BERT's query/key/value -> ``qkv``). The
export issue inverts the same map.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from bertsmith.registry.errors import SpecError
from bertsmith.registry.spec import parse_spec

FAMILIES = ("bert", "roberta", "modernbert", "deberta-v2")
_ACT = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}


def _config(hf_dir: Path):
    path = hf_dir / "config.json"
    if not path.is_file():
        raise SpecError(
            f"import-hf: given {str(hf_dir)!r}, allowed: a transformers directory with config.json"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SpecError(f"import-hf: given {str(path)!r}, allowed: a JSON config") from None
    family = raw.get("model_type")
    if family not in FAMILIES:
        raise SpecError(f"config.json model_type: given {family!r}, allowed: {', '.join(FAMILIES)}")
    from transformers import BertConfig, DebertaV2Config, ModernBertConfig, RobertaConfig

    cls = {
        "bert": BertConfig,
        "roberta": RobertaConfig,
        "modernbert": ModernBertConfig,
        "deberta-v2": DebertaV2Config,
    }[family]
    return family, cls.from_json_file(str(path)), raw


def _activation(name: str, key: str) -> str:
    if name not in _ACT:
        raise SpecError(f"config.json {key}: given {name!r}, allowed: {', '.join(_ACT)}")
    return _ACT[name]


def _head_kind(raw: dict) -> str | None:
    arch = (raw.get("architectures") or [""])[0]
    if arch.endswith("ForMaskedLM"):
        return "mlm"
    if arch.endswith("ForPreTraining"):
        return "nsp"
    return None


def spec_from_config(family: str, cfg, raw: dict, name: str = "imported") -> object:
    """The ``EncoderSpec`` equal to a transformers config."""
    head = _head_kind(raw)
    if family in ("bert", "roberta"):
        if getattr(cfg, "position_embedding_type", "absolute") not in (None, "absolute"):
            raise SpecError(
                f"config.json position_embedding_type: given {cfg.position_embedding_type!r}, allowed: 'absolute'"
            )
        act = _activation(cfg.hidden_act, "hidden_act")
        offset = cfg.pad_token_id + 1 if family == "roberta" else 0
        data = _bert_body(
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
                "activation": "gelu" if family == "roberta" else act,
                "tied": bool(getattr(cfg, "tie_word_embeddings", True)),
            }
        )
    elif family == "modernbert":
        data = _modernbert_spec(cfg, name, head)
    else:
        data = _deberta_spec(cfg, name, head)
    return parse_spec(data, prefix="config.json:")


def _modernbert_spec(cfg, name: str, head: str | None) -> dict:
    types = list(cfg.layer_types)
    every = next((i for i, t in enumerate(types) if i and t == "full_attention"), len(types))
    expected = ["sliding_attention" if i % every else "full_attention" for i in range(len(types))]
    if types != expected:
        raise SpecError(
            f"config.json layer_types: given {types}, allowed: full attention every "
            "n-th layer starting at layer 0 (the alternating pattern)"
        )
    rope = cfg.rope_parameters
    for kind in ("full_attention", "sliding_attention"):
        if rope[kind].get("rope_type", "default") != "default":
            raise SpecError(
                f"config.json rope_parameters.{kind}.rope_type: given "
                f"{rope[kind]['rope_type']!r}, allowed: 'default'"
            )
    attention = (
        {"kind": "global"}
        if "sliding_attention" not in types  # not `every >= len`: [full, sliding, sliding] is local
        else {"kind": "alternating", "window": cfg.local_attention, "global_every": every}
    )
    return dict(
        name=name,
        vocab_size=cfg.vocab_size,
        d_model=cfg.hidden_size,
        n_layers=cfg.num_hidden_layers,
        n_heads=cfg.num_attention_heads,
        d_ff=cfg.intermediate_size,
        max_seq_len=cfg.max_position_embeddings,
        type_vocab_size=0,
        pad_token_id=cfg.pad_token_id or 0,
        positional={
            "kind": "rope",
            "theta": rope["full_attention"]["rope_theta"],
            "local_theta": rope["sliding_attention"]["rope_theta"],
        },
        attention=attention,
        mlp={"kind": "glu", "activation": _activation(cfg.hidden_activation, "hidden_activation")},
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
            "activation": _activation(cfg.classifier_activation, "classifier_activation"),
            "tied": bool(getattr(cfg, "tie_word_embeddings", True)),
        },
    )


def _deberta_spec(cfg, name: str, head: str | None) -> dict:
    """DeBERTa-v2/v3 (``deberta-v2``): BERT's post-LN layers with disentangled attention.

    transformers reads ``position_buckets``, ``share_att_key`` and ``norm_rel_ebd`` from the
    config with getattr defaults (-1, False, "none"), so absent keys mean those values here too.
    """
    D, H = cfg.hidden_size, cfg.num_attention_heads
    refuse = []
    if getattr(cfg, "embedding_size", D) != D:
        refuse.append(("embedding_size", cfg.embedding_size, f"hidden_size ({D}); no embedding projection"))
    if getattr(cfg, "attention_head_size", D // H) != D // H:
        refuse.append(("attention_head_size", cfg.attention_head_size, f"hidden_size / heads = {D // H}"))
    if getattr(cfg, "conv_kernel_size", 0) > 0:
        refuse.append(
            ("conv_kernel_size", cfg.conv_kernel_size, "0 (the v2-xlarge convolution is not a block)")
        )
    terms = list(cfg.pos_att_type or [])
    if set(terms) - {"c2p", "p2c"}:
        refuse.append(("pos_att_type", terms, "a subset of c2p, p2c"))
    if cfg.relative_attention and cfg.position_biased_input:
        refuse.append(
            ("position_biased_input", True, "false with relative_attention (one positional scheme)")
        )
    if not cfg.relative_attention and terms:
        refuse.append(("pos_att_type", terms, "empty without relative_attention"))
    norm_rel = [x.strip() for x in str(getattr(cfg, "norm_rel_ebd", "none")).lower().split("|")]
    if set(norm_rel) - {"none", "layer_norm"}:
        refuse.append(("norm_rel_ebd", cfg.norm_rel_ebd, "'layer_norm' or 'none'"))
    if refuse:
        raise SpecError(
            [f"config.json {key}: given {given!r}, allowed: {allowed}" for key, given, allowed in refuse]
        )
    act = _activation(cfg.hidden_act, "hidden_act")
    p_hidden = cfg.hidden_dropout_prob
    if cfg.relative_attention:
        buckets = getattr(cfg, "position_buckets", -1)
        reach = getattr(cfg, "max_relative_positions", -1)
        positional = {
            "kind": "disentangled",
            "pos_att_type": terms,
            "position_buckets": max(buckets, 0),
            "max_relative_positions": reach if reach >= 1 else None,
            "norm_rel_ebd": "layer_norm" in norm_rel,
            "share_att_key": bool(getattr(cfg, "share_att_key", False)),
            "dropout": p_hidden,
        }
    else:
        positional = {"kind": "learned" if cfg.position_biased_input else "none"}
    legacy = getattr(cfg, "legacy", True)
    data = _bert_body(cfg, name, act, max_seq_len=cfg.max_position_embeddings, positional=positional)
    # the new head (legacy false) always decodes with the word embeddings
    data["head"] = (
        None
        if head is None
        else {"kind": head, "activation": act, "tied": bool(cfg.tie_word_embeddings) or not legacy}
    )
    return data


def _bert_body(cfg, name: str, act: str, max_seq_len: int, positional: dict) -> dict:
    """The spec fields BERT, RoBERTa and DeBERTa share: post-LN layers with a GELU-family
    MLP, an embedding LayerNorm, BERT's dropouts and init."""
    p_hidden = cfg.hidden_dropout_prob
    return dict(
        name=name,
        vocab_size=cfg.vocab_size,
        d_model=cfg.hidden_size,
        n_layers=cfg.num_hidden_layers,
        n_heads=cfg.num_attention_heads,
        d_ff=cfg.intermediate_size,
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


def key_map(family: str, spec, legacy: bool = True) -> list[tuple[str, list[str]]]:
    """(our key, transformers keys) for every weight; keys relative to the base model, head
    keys relative to the masked-LM model (prefix ``@``). ``legacy``: DeBERTa's MLM head
    layout (``cls.predictions`` if true, ``lm_predictions.lm_head`` if false)."""
    norm_keys = ["weight"] + (["bias"] if spec.bias.norm else [])
    pairs: list[tuple[str, list[str]]] = []

    def lin(ours: str, theirs: list[str], bias: bool) -> None:
        pairs.append((f"{ours}.weight", [f"{t}.weight" for t in theirs]))
        if bias:
            pairs.append((f"{ours}.bias", [f"{t}.bias" for t in theirs]))

    def norm(ours: str, theirs: str) -> None:
        for k in norm_keys:
            pairs.append((f"{ours}.{k}", [f"{theirs}.{k}"]))

    e = "encoder.embeddings"
    b = spec.bias
    if family in ("bert", "roberta"):
        pairs.append((f"{e}.tok.weight", ["embeddings.word_embeddings.weight"]))
        pairs.append((f"{e}.positional.weight", ["embeddings.position_embeddings.weight"]))
        pairs.append((f"{e}.types.weight", ["embeddings.token_type_embeddings.weight"]))
        norm(f"{e}.norm", "embeddings.LayerNorm")
        for i in range(spec.n_layers):
            o, t = f"encoder.layers.{i}", f"encoder.layer.{i}"
            lin(f"{o}.attn.qkv", [f"{t}.attention.self.{x}" for x in ("query", "key", "value")], b.qkv)
            lin(f"{o}.attn.out", [f"{t}.attention.output.dense"], b.attn_out)
            norm(f"{o}.attn_norm", f"{t}.attention.output.LayerNorm")
            lin(f"{o}.mlp.wi", [f"{t}.intermediate.dense"], b.mlp_in)
            lin(f"{o}.mlp.wo", [f"{t}.output.dense"], b.mlp_out)
            norm(f"{o}.mlp_norm", f"{t}.output.LayerNorm")
        if spec.head is not None:
            if family == "bert":
                lin("head.dense", ["@cls.predictions.transform.dense"], b.head)
                norm("head.norm", "@cls.predictions.transform.LayerNorm")
                pairs.append(("head.bias", ["@cls.predictions.bias"]))
                untied = "@cls.predictions.decoder.weight"
            else:
                lin("head.dense", ["@lm_head.dense"], b.head)
                norm("head.norm", "@lm_head.layer_norm")
                pairs.append(("head.bias", ["@lm_head.bias"]))
                untied = "@lm_head.decoder.weight"
            if not spec.head.tied:
                # untied, transformers 5.x uses the decoder's own bias (older files: the head's)
                pairs[-1] = ("head.bias", [f"{untied[: -len('weight')]}bias|{pairs[-1][1][0]}"])
                pairs.append(("head.decoder.weight", [untied]))
            if spec.head.kind == "nsp":
                lin("head.pooler", ["pooler.dense"], True)
                lin("head.nsp", ["@cls.seq_relationship"], True)
        return pairs
    if family == "deberta-v2":
        p = spec.positional
        pairs.append((f"{e}.tok.weight", ["embeddings.word_embeddings.weight"]))
        if p.kind == "learned":
            pairs.append((f"{e}.positional.weight", ["embeddings.position_embeddings.weight"]))
        if spec.type_vocab_size > 0:
            pairs.append((f"{e}.types.weight", ["embeddings.token_type_embeddings.weight"]))
        norm(f"{e}.norm", "embeddings.LayerNorm")
        if p.kind == "disentangled":
            pairs.append((f"{e}.positional.rel_embeddings.weight", ["encoder.rel_embeddings.weight"]))
            if p.norm_rel_ebd:
                norm(f"{e}.positional.norm", "encoder.LayerNorm")
        for i in range(spec.n_layers):
            o, t = f"encoder.layers.{i}", f"encoder.layer.{i}.attention"
            lin(f"{o}.attn.qkv", [f"{t}.self.{x}_proj" for x in ("query", "key", "value")], b.qkv)
            if p.kind == "disentangled" and not p.share_att_key:  # separate position projections
                if "c2p" in p.pos_att_type:
                    lin(f"{o}.attn.positional.key", [f"{t}.self.pos_key_proj"], b.qkv)
                if "p2c" in p.pos_att_type:
                    lin(f"{o}.attn.positional.query", [f"{t}.self.pos_query_proj"], b.qkv)
            lin(f"{o}.attn.out", [f"{t}.output.dense"], b.attn_out)
            norm(f"{o}.attn_norm", f"{t}.output.LayerNorm")
            t = f"encoder.layer.{i}"
            lin(f"{o}.mlp.wi", [f"{t}.intermediate.dense"], b.mlp_in)
            lin(f"{o}.mlp.wo", [f"{t}.output.dense"], b.mlp_out)
            norm(f"{o}.mlp_norm", f"{t}.output.LayerNorm")
        if spec.head is not None and legacy:
            lin("head.dense", ["@cls.predictions.transform.dense"], b.head)
            norm("head.norm", "@cls.predictions.transform.LayerNorm")
            if spec.head.tied:
                pairs.append(("head.bias", ["@cls.predictions.bias"]))
            else:  # an untied legacy decoder is a Linear with a bias of its own
                pairs.append(("head.decoder.weight", ["@cls.predictions.decoder.weight"]))
                pairs.append(("head.bias", ["@cls.predictions.decoder.bias"]))
        elif spec.head is not None:
            lin("head.dense", ["@lm_predictions.lm_head.dense"], b.head)
            norm("head.norm", "@lm_predictions.lm_head.LayerNorm")
            pairs.append(("head.bias", ["@lm_predictions.lm_head.bias"]))
        return pairs
    pairs.append((f"{e}.tok.weight", ["embeddings.tok_embeddings.weight"]))
    norm(f"{e}.norm", "embeddings.norm")
    for i in range(spec.n_layers):
        o = f"encoder.layers.{i}"
        if i > 0:
            norm(f"{o}.attn_norm", f"layers.{i}.attn_norm")
        lin(f"{o}.attn.qkv", [f"layers.{i}.attn.Wqkv"], b.qkv)
        lin(f"{o}.attn.out", [f"layers.{i}.attn.Wo"], b.attn_out)
        norm(f"{o}.mlp_norm", f"layers.{i}.mlp_norm")
        lin(f"{o}.mlp.wi", [f"layers.{i}.mlp.Wi"], b.mlp_in)
        lin(f"{o}.mlp.wo", [f"layers.{i}.mlp.Wo"], b.mlp_out)
    norm("encoder.final_norm", "final_norm")
    if spec.head is not None:
        lin("head.dense", ["@head.dense"], b.head)
        norm("head.norm", "@head.norm")
        if b.decoder:
            pairs.append(("head.bias", ["@decoder.bias"]))
        if not spec.head.tied:
            pairs.append(("head.decoder.weight", ["@decoder.weight"]))
    return pairs


BASE_PREFIX = {"bert": "bert.", "roberta": "roberta.", "modernbert": "model.", "deberta-v2": "deberta."}


def read_weights(hf_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of a transformers directory: safetensors (single or sharded) or a
    ``pytorch_model.bin`` loaded with ``weights_only=True`` (never unpickles code)."""
    from safetensors.torch import load_file

    files = sorted(hf_dir.glob("*.safetensors"))
    if files:
        out: dict[str, torch.Tensor] = {}
        for f in files:
            out.update(load_file(str(f)))
        return out
    binary = hf_dir / "pytorch_model.bin"
    if binary.is_file():
        try:
            return torch.load(binary, map_location="cpu", weights_only=True)
        except Exception as e:  # an unpicklable (code-carrying) file is refused, not run
            raise SpecError(
                f"import-hf: given {str(binary)!r}, allowed: a weights-only checkpoint ({e.__class__.__name__})"
            ) from None
    raise SpecError(
        f"import-hf: given {str(hf_dir)!r}, allowed: a directory with *.safetensors or pytorch_model.bin"
    )


def _lookup(weights: dict, key: str, family: str) -> torch.Tensor | None:
    """Find a transformers key whether the checkpoint is a base model or a head model."""
    if "|" in key:  # alternatives, first found wins
        return next((t for alt in key.split("|") if (t := _lookup(weights, alt, family)) is not None), None)
    head_key = key.startswith("@")
    key = key.lstrip("@")
    candidates = [key] if head_key else [key, BASE_PREFIX[family] + key]
    for k in candidates:
        if k in weights:
            return weights[k]
        legacy = k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        if legacy in weights:
            return weights[legacy]
    return None


def import_hf(hf_dir: str | Path, out_dir: str | Path | None, name: str | None = None):
    """Convert a transformers directory into a bertsmith model directory (none written when
    ``out_dir`` is None); returns the model."""
    from bertsmith import registry

    hf_dir = Path(hf_dir)
    family, cfg, raw = _config(hf_dir)
    spec = spec_from_config(family, cfg, raw, name=name or hf_dir.name or "imported")
    registry.check(spec, build_meta=False)
    weights = read_weights(hf_dir)
    model = registry.build(spec, init=False)
    state = {}
    missing = []
    for ours, theirs in key_map(family, spec, legacy=getattr(cfg, "legacy", True)):
        parts = [_lookup(weights, t, family) for t in theirs]
        if any(p is None for p in parts):
            missing.append(theirs[0].lstrip("@"))
            continue
        state[ours] = torch.cat(parts, 0) if len(parts) > 1 else parts[0]
    if missing:
        raise SpecError(
            f"import-hf: weights missing from {str(hf_dir)!r}: {', '.join(missing[:4])}"
            f"{' ...' if len(missing) > 4 else ''}"
        )
    result = model.load_state_dict(state, strict=False)
    expected_missing = {"head.decoder.weight"} if spec.head is not None and spec.head.tied else set()
    if set(result.missing_keys) - expected_missing:
        raise SpecError(
            f"import-hf: spec and weights disagree: {sorted(set(result.missing_keys) - expected_missing)[:4]}"
        )
    if out_dir is not None:
        tok = hf_dir / "tokenizer.json"
        registry.save(model, out_dir, tokenizer=tok if tok.is_file() else None)
    return model

"""DeBERTa-v2/v3 (``model_type: deberta-v2``): BERT's post-LN layers with disentangled attention.

transformers reads ``position_buckets``, ``share_att_key`` and ``norm_rel_ebd`` from the
config with getattr defaults (-1, False, "none"), so absent keys mean those values here too.
Two MLM head layouts exist (``legacy`` in the config): ``cls.predictions`` like BERT's, or
``lm_predictions.lm_head``, which always decodes with the word embeddings.
"""

from __future__ import annotations

from bertsmith.registry.errors import SpecError
from bertsmith.train.interop.bert import OLDER_NAMES, body, body_config, embedding_keys, layer_keys
from bertsmith.train.interop.family import Family, Keys, activation


def _refusals(cfg, terms: list[str], norm_rel: list[str]) -> list[str]:
    """What of a DeBERTa config no spec holds, as ``SpecError`` lines."""
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
    if set(terms) - {"c2p", "p2c"}:
        refuse.append(("pos_att_type", terms, "a subset of c2p, p2c"))
    if cfg.relative_attention and cfg.position_biased_input:
        refuse.append(
            ("position_biased_input", True, "false with relative_attention (one positional scheme)")
        )
    if not cfg.relative_attention and terms:
        refuse.append(("pos_att_type", terms, "empty without relative_attention"))
    if set(norm_rel) - {"none", "layer_norm"}:
        refuse.append(("norm_rel_ebd", cfg.norm_rel_ebd, "'layer_norm' or 'none'"))
    return [f"config.json {key}: given {given!r}, allowed: {allowed}" for key, given, allowed in refuse]


def _positional(cfg, terms: list[str], norm_rel: list[str]) -> dict:
    """Relative attention as the ``disentangled`` scheme; else learned positions or none."""
    if not cfg.relative_attention:
        return {"kind": "learned" if cfg.position_biased_input else "none"}
    buckets = getattr(cfg, "position_buckets", -1)
    reach = getattr(cfg, "max_relative_positions", -1)
    return {
        "kind": "disentangled",
        "pos_att_type": terms,
        "position_buckets": max(buckets, 0),
        "max_relative_positions": reach if reach >= 1 else None,
        "norm_rel_ebd": "layer_norm" in norm_rel,
        "share_att_key": bool(getattr(cfg, "share_att_key", False)),
        "dropout": cfg.hidden_dropout_prob,
    }


def _position_projections(p) -> list[tuple[str, str]]:
    """(our name, theirs) of the separate position projections: none when shared with the
    content's key and query (``share_att_key``)."""
    if p.kind != "disentangled" or p.share_att_key:
        return []
    out = [("key", "pos_key_proj")] if "c2p" in p.pos_att_type else []
    return out + ([("query", "pos_query_proj")] if "p2c" in p.pos_att_type else [])


class DebertaV2(Family):
    model_type = "deberta-v2"
    title = "DeBERTa-v2"
    class_prefix = "DebertaV2"
    base_prefix = "deberta."
    older_names = OLDER_NAMES

    def spec_data(self, cfg, name: str, head: str | None) -> dict:
        terms = list(cfg.pos_att_type or [])
        norm_rel = [x.strip() for x in str(getattr(cfg, "norm_rel_ebd", "none")).lower().split("|")]
        refuse = _refusals(cfg, terms, norm_rel)
        if refuse:
            raise SpecError(refuse)
        act = activation(cfg.hidden_act, "hidden_act")
        positional = _positional(cfg, terms, norm_rel)
        legacy = getattr(cfg, "legacy", True)
        data = body(cfg, name, act, max_seq_len=cfg.max_position_embeddings, positional=positional)
        # the new head (legacy false) always decodes with the word embeddings
        data["head"] = (
            None
            if head is None
            else {"kind": head, "activation": act, "tied": bool(cfg.tie_word_embeddings) or not legacy}
        )
        return data

    def config(self, spec, specials: dict[str, int]) -> dict:
        p = spec.positional
        rel = p.kind == "disentangled"
        return dict(
            body_config(spec),
            max_position_embeddings=spec.max_seq_len,
            relative_attention=rel,
            position_biased_input=p.kind == "learned",
            pos_att_type=list(p.pos_att_type) if rel else [],
            position_buckets=p.position_buckets if rel and p.position_buckets > 0 else -1,
            max_relative_positions=(p.max_relative_positions or -1) if rel else -1,
            norm_rel_ebd="layer_norm" if rel and p.norm_rel_ebd else "none",
            share_att_key=bool(rel and p.share_att_key),
            legacy=True,
        )

    def key_map(self, spec, legacy: bool = True) -> list[tuple[str, list[str]]]:
        """``legacy``: the MLM head's layout (``cls.predictions`` if true,
        ``lm_predictions.lm_head`` if false). The relative position table sits in the
        encoder there, in the positional block here."""
        p = spec.positional
        keys = Keys(spec)
        embedding_keys(keys, positional=p.kind == "learned", types=spec.type_vocab_size > 0)
        if p.kind == "disentangled":
            keys.add("encoder.embeddings.positional.rel_embeddings.weight", "encoder.rel_embeddings.weight")
            if p.norm_rel_ebd:
                keys.norm("encoder.embeddings.positional.norm", "encoder.LayerNorm")
        for i in range(spec.n_layers):
            layer_keys(keys, i, proj="_proj", positional=_position_projections(p))
        if spec.head is not None and legacy:
            keys.head_transform("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm")
            if spec.head.tied:
                keys.add("head.bias", "@cls.predictions.bias")
            else:  # an untied legacy decoder is a Linear with a bias of its own
                keys.add("head.decoder.weight", "@cls.predictions.decoder.weight")
                keys.add("head.bias", "@cls.predictions.decoder.bias")
        elif spec.head is not None:
            keys.head_transform("lm_predictions.lm_head.dense", "lm_predictions.lm_head.LayerNorm")
            keys.add("head.bias", "@lm_predictions.lm_head.bias")
        return keys.pairs


FAMILY = DebertaV2()

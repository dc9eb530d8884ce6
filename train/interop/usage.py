"""Trying a model: ``bertsmith fill-mask`` and ``bertsmith embed``, with the run's own tokenizer.

    load_for_use(src)            a run or model directory -> model, tokenizer, special tokens
    fill_mask(used, text, k)     the k likeliest tokens at each mask, as transformers'
                                 ``pipeline("fill-mask")`` reports them (score, token,
                                 token_str, sequence)
    embed_texts(used, texts)     one pooled vector per text (mean or [CLS]), as
                                 sentence-transformers computes it

Both tokenize with ``tokenizer.json`` (its post-processor adds [CLS]/[SEP] or <s>/</s>) and run
bertsmith's model in fp32 on the CPU; the exports (``--to hf``, ``--to sentence-transformers``,
``--to onnx``) are checked against these same functions, and the tests hold the real clients
to them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from bertsmith import registry
from bertsmith.blocks.encoder import EncoderModel
from bertsmith.registry.errors import SpecError
from bertsmith.registry.io import read_tokenizer
from bertsmith.train.sources import Source, finished_model

POOLINGS = ("mean", "cls")


@dataclass
class Usable:
    """A model ready to try: the model (eval), its tokenizer and special tokens, where it came from."""

    model: EncoderModel
    tokenizer: object  # tokenizers.Tokenizer
    tokens: dict[str, str]  # role -> token ("mask" -> "[MASK]")
    ids: dict[str, int]  # role -> id
    source: Source


def load_for_use(src: str | os.PathLike, who: str) -> Usable:
    """The model of a finished run or a model directory, with its ``tokenizer.json``; one
    ``SpecError`` line naming ``who`` when there is no model or no tokenizer."""
    from bertsmith.train.interop.export import check_pad, tokenizer_specials

    source = finished_model(src, who)
    specials = tokenizer_specials(source.model_dir)
    if specials is None:
        raise SpecError(
            f"{who}: given {str(source.path)!r}, a model without tokenizer.json; allowed: a run or "
            "model directory with the tokenizer it was trained with"
        )
    tokens, ids = specials
    _, tokenizer = read_tokenizer(source.model_dir / "tokenizer.json")
    tokenizer.no_padding()
    tokenizer.no_truncation()
    model = registry.load(source.model_dir).eval()
    check_pad(model.spec, ids)
    return Usable(model, tokenizer, tokens, ids, source)


def encoder_only(model: EncoderModel) -> EncoderModel:
    """``model`` without its head (the same encoder module, shared), its spec headless too."""
    bare = EncoderModel(model.encoder, None)
    bare.spec = model.spec.model_copy(update={"head": None})
    return bare.eval()


def default_pooling(spec) -> str:
    """What the model was fine-tuned to pool with (a classification head's), else mean."""
    return getattr(spec.head, "pooling", None) or "mean"


# --- fill-mask ---------------------------------------------------------------------------------


def has_mlm_head(spec) -> bool:
    return spec.head is not None and "masked_lm" in registry.REGISTRY.get("head", spec.head.kind).provides


def fill_mask(used: Usable, text: str, top_k: int = 5) -> list[list[dict]]:
    """For each mask in ``text`` (in order), the ``top_k`` likeliest tokens: dicts with
    ``score`` (softmax probability), ``token`` (id), ``token_str`` and ``sequence`` (the text
    with that mask filled in, as transformers' fill-mask pipeline decodes it)."""
    spec, tok = used.model.spec, used.tokenizer
    where = str(used.source.path)
    if not has_mlm_head(spec):
        head = spec.head.kind if spec.head is not None else "none"
        raise SpecError(
            f"fill-mask: given {where!r}, a model without a masked-LM head (head: {head}); "
            "allowed: a model pre-trained with masked language modelling"
        )
    if "mask" not in used.ids:
        raise SpecError(f"fill-mask: given {where!r}, whose tokenizer has no mask token")
    if top_k < 1:
        raise SpecError(f"fill-mask --top-k: given {top_k}, allowed: 1 or more")
    mask_id = used.ids["mask"]
    ids = tok.encode(text).ids
    at = [i for i, t in enumerate(ids) if t == mask_id]
    if not at:
        raise SpecError(
            f"fill-mask: given {text!r}, which has no mask; allowed: text with {used.tokens['mask']} "
            "(this model's mask token) where a word is to be filled in"
        )
    if len(ids) > spec.max_seq_len:
        raise SpecError(
            f"fill-mask: given a text of {len(ids)} tokens, allowed: at most {spec.max_seq_len} "
            "(the model's max_seq_len)"
        )
    with torch.no_grad():
        logits = used.model(torch.tensor([ids])).logits[0, at]  # [M, V]
    probs = logits.float().softmax(-1)
    values, preds = probs.topk(min(top_k, probs.shape[-1]))
    single = len(at) == 1
    out = []
    for i, (vals, toks) in enumerate(zip(values.tolist(), preds.tolist(), strict=True)):
        row = []
        for score, token in zip(vals, toks, strict=True):
            filled = list(ids)
            filled[at[i]] = token
            # as the pipeline: special tokens are dropped from the sequence only with one mask,
            # so that the other masks stay visible
            sequence = tok.decode(filled, skip_special_tokens=single)
            row.append(
                {"score": score, "token": token, "token_str": tok.decode([token]), "sequence": sequence}
            )
        out.append(row)
    return out


# --- embed -------------------------------------------------------------------------------------


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """[B, L, D] hidden states of a right-padded batch -> [B, D]: the first token ([CLS]) or
    the mean over real tokens."""
    if pooling == "cls":
        return hidden[:, 0]
    m = mask[..., None].to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def padded(tokenizer, texts: list[str], max_len: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask`` of ``texts``, each truncated to
    ``max_len`` tokens (special tokens kept, as transformers' tokenizers truncate)."""
    tokenizer.enable_truncation(max_len)
    try:
        encoded = [e.ids for e in tokenizer.encode_batch(texts)]
    finally:
        tokenizer.no_truncation()
    L = max(len(e) for e in encoded)
    ids = torch.full((len(texts), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(texts), L), dtype=torch.long)
    for row, e in enumerate(encoded):
        ids[row, : len(e)] = torch.tensor(e, dtype=torch.long)
        mask[row, : len(e)] = 1
    return ids, mask


def embed_texts(
    used: Usable, texts: list[str], pooling: str = "mean", normalize: bool = False, batch_size: int = 32
) -> torch.Tensor:
    """[N, D] fp32: one vector per text, batched by length (longest first, as
    sentence-transformers does), in the order given."""
    if pooling not in POOLINGS:
        raise SpecError(f"embed --pooling: given {pooling!r}, allowed: {', '.join(POOLINGS)}")
    if batch_size < 1:
        raise SpecError(f"embed --batch-size: given {batch_size}, allowed: 1 or more")
    model = encoder_only(used.model)
    spec = model.spec
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out = torch.empty(len(texts), spec.d_model)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            ids, mask = padded(used.tokenizer, [texts[i] for i in rows], spec.max_seq_len, spec.pad_token_id)
            hidden = model(ids, mask).last_hidden_state.float()
            vectors = pool(hidden, mask, pooling)
            out[rows] = F.normalize(vectors, p=2, dim=1) if normalize else vectors
    return out


def read_lines(path: str) -> list[str]:
    """The lines of ``path`` (``-``: standard input), without their line endings."""
    import sys

    if path == "-":
        text = sys.stdin.read()
    else:
        p = Path(path).expanduser()
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            why = "not UTF-8" if isinstance(e, UnicodeDecodeError) else (e.strerror or str(e))
            raise SpecError(
                f"embed: given {path!r}, allowed: a readable UTF-8 text file or - ({why})"
            ) from None
    lines = text.splitlines()
    if not lines:
        raise SpecError(f"embed: given {path!r}, which has no lines; allowed: one text per line")
    return lines

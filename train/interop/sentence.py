"""``bertsmith export --to sentence-transformers``: a directory ``SentenceTransformer(DIR)`` loads.

The encoder without its head is exported as a transformers directory (``export.plan_hf``: the
transformers class where the spec is one, remote code otherwise, checked like ``--to hf``; for
BERT and RoBERTa, whose base classes carry a pooler, the class with the model's head, from which
``AutoModel`` reads the encoder);
sentence-transformers itself then writes its modules around it (``Transformer`` with
``max_seq_length`` = the spec's ``max_seq_len``, ``Pooling``: mean or [CLS], optionally
``Normalize``), so the layout is whatever the installed sentence-transformers reads. The pooling
defaults to a fine-tuned classifier's, else mean.

Before the directory appears, it is loaded with ``SentenceTransformer`` and its embeddings of a
padded batch of texts (short to longer than the local window) must equal ``bertsmith embed``'s
(``usage.embed_texts``) within ``TOLERANCE`` × their scale; everything is written into a
temporary sibling of ``out`` and renamed at the end.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path

from bertsmith.registry.errors import SpecError
from bertsmith.registry.jsonfile import read_json
from bertsmith.registry.outputs import check_target, new_dir
from bertsmith.train.interop.family import quiet_transformers

TOLERANCE = 1e-5  # SentenceTransformer vs bertsmith embed, relative to the embeddings' scale (fp32)
FLAG = "export --out"
EXTRA = "pip install 'bertsmith[sentence-transformers]'"

SENTENCE = "Return the sum of the numbers in the list, or zero when the list is empty."
PROBE_TEXTS = [
    "Hello world.",
    SENTENCE,
    " ".join([SENTENCE] * 30),  # a few hundred tokens: past local windows (truncated to max_seq_len)
    "x",
    "Split the string at each separator and return the parts as a list of strings.",
]


def require_sentence_transformers() -> None:
    if importlib.util.find_spec("sentence_transformers") is None:
        raise SpecError(
            "export --to sentence-transformers: needs sentence-transformers, not installed; "
            f"allowed: after {EXTRA}"
        )


def _transformer(path: Path, max_seq_length: int, remote: bool):
    """sentence-transformers' ``Transformer`` module over the transformers directory ``path``
    (its keyword names changed in version 6: ``model_kwargs``, formerly ``model_args``)."""
    from sentence_transformers import models

    kw = {"trust_remote_code": True} if remote else {}
    params = inspect.signature(models.Transformer).parameters
    if "model_kwargs" in params:
        extra = {"model_kwargs": kw, "processor_kwargs": kw, "config_kwargs": kw}
    else:
        extra = {"model_args": kw, "tokenizer_args": kw, "config_args": kw}
    return models.Transformer(str(path), max_seq_length=max_seq_length, **extra)


def _card(text: str, pooling: str, normalize: bool, remote: bool) -> str:
    """The transformers export's card, as a sentence-transformers model."""
    trust = ", trust_remote_code=True" if remote else ""
    usage = [
        "## Sentence embeddings",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "",
        f'model = SentenceTransformer("path/to/this/directory"{trust})',
        'vectors = model.encode(["a sentence", "another one"])',
        "```",
        "",
        f"Pooling: {pooling}{' then L2 normalisation' if normalize else ''}; the same vectors as "
        f"`bertsmith embed --pooling {pooling}{' --normalize' if normalize else ''}` on the run.",
        "",
    ]
    text = text.replace("library_name: transformers", "library_name: sentence-transformers", 1)
    head, sep, rest = text.partition("\n## ")
    return head + "\n" + "\n".join(usage) + sep.lstrip("\n") + rest if sep else text + "\n" + "\n".join(usage)


def export_sentence_transformers(
    src: str | os.PathLike,
    out: str | os.PathLike,
    pooling: str | None = None,
    normalize: bool = False,
    remote_code: bool = False,
    force: bool = False,
) -> dict:
    """Write ``src``'s encoder as a sentence-transformers directory ``out``; returns what was
    written and measured: ``arch`` (the transformers class it loads), ``kind`` (native or remote), ``pooling``, ``normalize``,
    ``max_seq_length``, ``diff`` (max |SentenceTransformer − bertsmith embed|) and ``hf_diffs``."""
    from bertsmith.train.interop.card import model_card
    from bertsmith.train.interop.export import check_export, plan_hf, write_files
    from bertsmith.train.interop.usage import (
        POOLINGS,
        default_pooling,
        embed_texts,
        encoder_only,
        load_for_use,
    )

    out = Path(out).expanduser()
    check_target(out, FLAG, force)
    require_sentence_transformers()
    if pooling is not None and pooling not in POOLINGS:
        raise SpecError(f"export --pooling: given {pooling!r}, allowed: {', '.join(POOLINGS)}")
    used = load_for_use(src, "export")
    pooling = pooling or default_pooling(used.model.spec)
    bare = encoder_only(used.model)
    plan = plan_hf(bare, force_remote=remote_code, specials=used.ids)  # SpecError here writes nothing
    if plan.kind == "remote" and not remote_code and used.model.spec.head is not None:
        # BERT's and RoBERTa's base classes hold a pooler that a headless model lacks (BERT's
        # NSP head has it): the class with the head is exact, and AutoModel reads its encoder
        with_head = plan_hf(used.model, specials=used.ids)
        if with_head.kind == "native":
            plan, bare = with_head, used.model
    remote = plan.kind == "remote"
    from sentence_transformers import SentenceTransformer, models

    with new_dir(out, FLAG, force) as tmp, tempfile.TemporaryDirectory(prefix="bertsmith-st-") as staging:
        hf = Path(staging)
        write_files(hf, plan, bare, used.source, used.tokens)
        hf_diffs = check_export(hf, plan, bare)
        with quiet_transformers(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            transformer = _transformer(hf, bare.spec.max_seq_len, remote)
            modules = [transformer, models.Pooling(bare.spec.d_model, pooling_mode=pooling)]
            if normalize:
                modules.append(models.Normalize())
            SentenceTransformer(modules=modules, device="cpu").save(str(tmp))
            # the card of what sentence-transformers saved: the base class (no head)
            saved = read_json(tmp / "config.json").get("architectures") or [plan.arch]
            card = model_card(encoder_only(used.model), replace(plan, arch=saved[0]), used.source, True)
            (tmp / "README.md").write_text(_card(card, pooling, normalize, remote), encoding="utf-8")
            loaded = SentenceTransformer(str(tmp), device="cpu", trust_remote_code=remote)
            theirs = loaded.encode(PROBE_TEXTS, batch_size=len(PROBE_TEXTS), convert_to_tensor=True)
        ours = embed_texts(used, PROBE_TEXTS, pooling, normalize, batch_size=len(PROBE_TEXTS))
        diff = (theirs.double().cpu() - ours.double()).abs().max().item()
        scale = ours.abs().max().item()
        if not diff <= TOLERANCE * max(1.0, scale):
            raise RuntimeError(
                f"export: SentenceTransformer's embeddings differ from bertsmith's by {diff:.3g}"
            )
    return {
        "arch": saved[0],  # the class SentenceTransformer loads (the base model's)
        "kind": plan.kind,
        "reason": plan.reason,
        "pooling": pooling,
        "normalize": normalize,
        "max_seq_length": bare.spec.max_seq_len,
        "diff": diff,
        "hf_diffs": hf_diffs,
    }

"""Trying a model: ``fill-mask`` and ``embed``."""

from __future__ import annotations

import json
from pathlib import Path

from bertsmith.registry.errors import SpecError


def _cmd_fill_mask(args) -> None:
    from bertsmith.train.interop.usage import fill_mask, load_for_use

    used = load_for_use(args.source, "fill-mask")
    results = fill_mask(used, args.text, args.top_k)
    if args.json:  # the pipeline's shape: a list for one mask, a list of lists for several
        print(json.dumps(results[0] if len(results) == 1 else results, ensure_ascii=False, indent=2))
        return
    for i, row in enumerate(results):
        if len(results) > 1:
            print(f"mask {i + 1} of {len(results)}:")
        width = max(len(repr(r["token_str"])) for r in row)
        for r in row:  # one line per token, whatever the sequence holds
            sequence = r["sequence"].replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")
            print(f"  {r['score']:.4f}  {repr(r['token_str']):<{width}}  {sequence}")


def _cmd_embed(args) -> None:
    import numpy as np

    from bertsmith.registry.outputs import check_target, new_file
    from bertsmith.train.interop.usage import default_pooling, embed_texts, load_for_use, read_lines

    out = None if args.out in (None, "-") else Path(args.out).expanduser()
    if out is not None:
        if out.suffix not in (".npy", ".jsonl"):
            raise SpecError(
                f"embed --out: given {args.out!r}, allowed: a path ending in .npy or .jsonl, or -"
            )
        check_target(out, "embed --out", args.force, directory=False)
    used = load_for_use(args.source, "embed")
    texts = read_lines(args.input)
    pooling = args.pooling or default_pooling(used.model.spec)
    vectors = embed_texts(used, texts, pooling, args.normalize, args.batch_size).numpy()

    def jsonl() -> str:
        return "".join(
            json.dumps({"text": t, "embedding": v.tolist()}, ensure_ascii=False) + "\n"
            for t, v in zip(texts, vectors, strict=True)
        )

    if out is None:
        print(jsonl(), end="")
    elif out.suffix == ".npy":

        def write(p: Path) -> None:
            with open(p, "wb") as f:
                np.save(f, vectors)

        new_file(out, write, "embed --out", args.force)
    else:
        new_file(out, lambda p: p.write_text(jsonl(), encoding="utf-8"), "embed --out", args.force)
    if out is not None:
        norm = ", normalised" if args.normalize else ""
        print(
            f"embedded {len(texts)} lines -> {out} ({vectors.shape[1]} dimensions, {pooling} pooling{norm})"
        )


def add_fill_mask(sub) -> None:
    p = sub.add_parser(
        "fill-mask",
        help="the likeliest tokens at each mask of a text, from a run or model directory",
        description="Tokenize TEXT with the model's own tokenizer.json and print, for each mask "
        "token in it (the mask the model was trained with: [MASK] or <mask>), the TOP_K likeliest "
        "tokens with their probabilities and the filled-in text, as transformers' fill-mask "
        "pipeline reports them. Needs a masked-LM head.",
    )
    p.add_argument("source", metavar="RUN_DIR|MODEL_DIR")
    p.add_argument("text", help="text with one or more mask tokens")
    p.add_argument("--top-k", type=int, default=5, help="tokens per mask (default 5)")
    p.add_argument("--json", action="store_true", help="print the results as the pipeline's JSON")
    p.set_defaults(fn=_cmd_fill_mask)


def add_embed(sub) -> None:
    p = sub.add_parser(
        "embed",
        help="one vector per input line (pooled hidden states), to .npy or JSON lines",
        description="Embed each line of FILE (- for standard input) with the model's tokenizer "
        "(truncated to its max_seq_len): the mean of the last hidden states over the line's "
        "tokens, or its first token ([CLS]); a fine-tuned classifier's pooling by default. "
        "The same vectors as the model's `export --to sentence-transformers`.",
    )
    p.add_argument("source", metavar="RUN_DIR|MODEL_DIR")
    p.add_argument("input", metavar="FILE|-", help="text, one input per line")
    p.add_argument(
        "--out",
        default=None,
        help="a new .npy file (an N x D float32 array) or .jsonl file ({text, embedding} per "
        "line); default: JSON lines on standard output",
    )
    p.add_argument(
        "--pooling",
        choices=["mean", "cls"],
        default=None,
        help="mean of the tokens, or the first token (default: the fine-tuned head's, else mean)",
    )
    p.add_argument("--normalize", action="store_true", help="scale each vector to unit length")
    p.add_argument("--batch-size", type=int, default=32, help="lines per forward pass (default 32)")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.set_defaults(fn=_cmd_embed)

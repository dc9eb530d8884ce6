"""Measure the sentence-transformers and ONNX round trips of each family's tiny recipe and of
non-native compositions (the README's table).

    .venv/bin/python scripts/export_roundtrips.py RUN_DIR [--out DIR]

Each model is the recipe with its own initialisation (seed 0) and RUN_DIR's tokenizer (the
main job's run, say); it is exported with ``export --to sentence-transformers`` and
``export --to onnx --int8``, each of which loads the result in its client and compares it with
bertsmith before writing it. Printed: one markdown row per model with the largest differences
those checks measured.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from bertsmith import registry
from bertsmith.train.interop.export import tokenizer_specials
from bertsmith.train.interop.onnx_export import export_onnx
from bertsmith.train.interop.sentence import export_sentence_transformers
from bertsmith.train.sources import finished_model

CASES = [  # (label, recipe, overrides)
    ("bert-tiny", "bert-tiny", []),
    ("roberta-tiny", "roberta-tiny", []),
    ("deberta-tiny", "deberta-tiny", []),
    ("modernbert-tiny", "modernbert-tiny", []),
    ("mosaicbert-tiny", "mosaicbert-tiny", []),
    ("modernbert-tiny + ALiBi", "modernbert-tiny", ["model/positional=alibi"]),
    ("bert-tiny + local windows", "bert-tiny", ["model/attention=alternating"]),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a finished run (or model directory) whose tokenizer the models use")
    ap.add_argument("--out", default=None, help="keep the exports here (default: a temporary directory)")
    args = ap.parse_args()
    source = finished_model(args.run)
    tokenizer = source.model_dir / "tokenizer.json"
    _, ids = tokenizer_specials(source.model_dir)
    vocab = registry.load_spec(source.model_dir / "spec.yaml").vocab_size
    root = Path(args.out or tempfile.mkdtemp(prefix="bertsmith-roundtrips-"))
    print(
        "| model | transformers form | sentence-transformers max abs diff | ONNX max abs diff "
        "(hidden, logits) | ONNX int8 max abs diff | output scale |"
    )
    print("|---|---|---|---|---|---|")
    for label, recipe, overrides in CASES:
        torch.manual_seed(0)
        spec = registry.compose(
            recipe, [*overrides, f"model.vocab_size={vocab}", f"model.pad_token_id={ids['pad']}"]
        )
        d = registry.save(
            registry.build(spec).eval(), root / label.replace(" ", "").replace("+", "-"), tokenizer=tokenizer
        )
        start = time.perf_counter()
        st = export_sentence_transformers(d, root / f"{d.name}-st")
        onnx = export_onnx(d, root / f"{d.name}-onnx", variants=("int8",))
        int8 = onnx.variants["int8"]
        form = st["arch"] + (" (remote code)" if st["kind"] == "remote" else "")
        print(
            f"| {label} | {form} | {st['diff']:.1e} | {onnx.diffs['last_hidden_state']:.1e}, "
            f"{onnx.diffs['logits']:.1e} | {max(int8['last_hidden_state'], int8['logits']):.2g} | "
            f"{onnx.diffs['scale']:.3g} |",
            flush=True,
        )
        print(f"  ({label}: {time.perf_counter() - start:.0f} s)", file=sys.stderr)
    print(f"exports in {root}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The transformers commands: ``import-hf`` and ``export``."""

from __future__ import annotations

from pathlib import Path

from bertsmith.registry.errors import SpecError


def _cmd_import_hf(args) -> None:
    from bertsmith.train.interop.hf import import_hf

    model = import_hf(args.hf_dir, Path(args.out).expanduser(), name=args.name, force=args.force)
    n = sum(p.numel() for p in model.encoder.parameters())
    print(
        f"imported {args.hf_dir} -> {args.out} ({model.spec.name}, {n:,} encoder parameters, "
        f"head: {model.spec.head.kind if model.spec.head else 'none'})"
    )


ONLY = {  # option -> the --to it belongs to
    "remote_code": ("hf", "sentence-transformers"),
    "pooling": ("sentence-transformers",),
    "normalize": ("sentence-transformers",),
    "no_head": ("onnx",),
    "fp16": ("onnx",),
    "int8": ("onnx",),
}


def _check_options(args) -> None:
    for key, targets in ONLY.items():
        if getattr(args, key) not in (None, False) and args.to not in targets:
            flag = "--" + key.replace("_", "-")
            raise SpecError(
                f"{flag}: given with --to {args.to}, allowed: only with --to {' or '.join(targets)}"
            )


def _cmd_export(args) -> None:
    _check_options(args)
    if args.to == "recipe":
        from bertsmith.train.interop.export import export_recipe

        spec = export_recipe(args.source, args.out, force=args.force)
        print(f"exported recipe {args.out} ({spec.name}); train it with: bertsmith train model={args.out}")
    elif args.to == "hf":
        _export_hf(args)
    elif args.to == "sentence-transformers":
        _export_sentence(args)
    else:
        _export_onnx(args)


def _why_remote(reason: str) -> str:
    return f"\n  why not a transformers class: {reason}" if reason else ""


def _export_hf(args) -> None:
    from bertsmith.train.interop.export import export_hf

    plan, diffs = export_hf(args.source, args.out, remote_code=args.remote_code, force=args.force)
    worst = max(diffs.values(), default=0.0)
    if plan.kind == "native":
        print(
            f"exported {args.out} as transformers {plan.arch}; outputs match bertsmith's within {worst:.1e}"
        )
    else:
        print(
            f"exported {args.out} as remote code ({plan.arch}, load with trust_remote_code=True); "
            f"outputs match bertsmith's within {worst:.1e}" + _why_remote(plan.reason)
        )


def _export_sentence(args) -> None:
    from bertsmith.train.interop.sentence import export_sentence_transformers

    got = export_sentence_transformers(
        args.source, args.out, args.pooling, args.normalize, args.remote_code, force=args.force
    )
    trust = ", trust_remote_code=True" if got["kind"] == "remote" else ""
    print(
        f"exported {args.out} for sentence-transformers (SentenceTransformer({str(args.out)!r}{trust})): "
        f"{got['arch']}, {got['pooling']} pooling{', normalised' if got['normalize'] else ''}, "
        f"max_seq_length {got['max_seq_length']}; embeddings match `bertsmith embed` within {got['diff']:.1e}"
        + _why_remote(got["reason"])
    )


def _export_onnx(args) -> None:
    from bertsmith.train.interop.onnx_export import TOLERANCE, export_onnx, worst

    variants = tuple(v for v in ("fp16", "int8") if getattr(args, v))
    report = export_onnx(args.source, args.out, head=not args.no_head, variants=variants, force=args.force)
    print(
        f"exported {args.out}/model.onnx (opset {report.opset}; inputs {', '.join(report.inputs)}; "
        f"outputs {', '.join(report.outputs)}); ONNX Runtime matches bertsmith within {worst(report.diffs):.1e} "
        f"(checked against {TOLERANCE:g} x scale)\n"
        f"  attention: the {report.kernel} kernel on the padded batch; sequences up to "
        f"{report.max_seq_len} tokens, right-padded"
    )
    for name, d in report.variants.items():
        w = max(v for k, v in d.items() if k != "scale")
        print(
            f"  model_{name}.onnx: max difference from bertsmith's fp32 outputs {w:.3g} (scale {d['scale']:.3g})"
        )


FORCE_HELP = (
    "replace an existing --out (a file or a non-empty directory; refused without --force); "
    "the old one is removed only once the new one is complete"
)


def add_import_hf(sub) -> None:
    p = sub.add_parser(
        "import-hf",
        help="convert a transformers BERT/RoBERTa/ModernBERT/DeBERTa-v2/v3 directory",
        description="Read a transformers directory (config.json + weights) of a BERT, "
        "RoBERTa, ModernBERT or DeBERTa-v2/v3 model, base or masked-LM, and write a "
        "bertsmith model directory (spec.yaml + model.safetensors), new or empty unless --force; "
        "it appears complete or not at all. Never runs code from the directory.",
    )
    p.add_argument("hf_dir")
    p.add_argument("--out", required=True, help="model directory to write (new or empty)")
    p.add_argument("--name", default=None, help="spec name (default: the directory's name)")
    p.add_argument("--force", action="store_true", help=FORCE_HELP)
    p.set_defaults(fn=_cmd_import_hf)


def add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="a run or model directory as a recipe, or a transformers, sentence-transformers "
        "or ONNX directory",
        description="--to recipe: write the spec as a standalone recipe YAML (every slot and size "
        "stated; `bertsmith train model=FILE` trains it). --to hf: write a transformers "
        "directory (config.json, model.safetensors, tokenizer files, README.md model card): the "
        "transformers class where the spec is exactly BERT, RoBERTa, DeBERTa-v2/v3 or ModernBERT, "
        "otherwise remote code (modeling_bertsmith.py; trust_remote_code=True). --to "
        "sentence-transformers: the encoder (no head) as such a directory, with "
        "sentence-transformers' pooling (and normalisation) modules around it; needs "
        "bertsmith[sentence-transformers]. --to onnx: model.onnx with dynamic batch and sequence "
        "axes (torch's ONNX exporter; eager attention on the right-padded batch), optionally "
        "fp16 and int8 variants; needs bertsmith[onnx]. Every export is loaded back by its "
        "client (transformers, SentenceTransformer, ONNX Runtime) and checked against "
        "bertsmith's outputs before it appears at --out. An existing --out (file or non-empty "
        "directory) is replaced only with --force.",
    )
    p.add_argument("source", metavar="RUN_DIR|MODEL_DIR")
    p.add_argument(
        "--to",
        required=True,
        choices=["recipe", "hf", "sentence-transformers", "onnx"],
        help="what to write",
    )
    p.add_argument("--out", required=True, help="a new .yaml file (recipe) or a new directory (the others)")
    p.add_argument(
        "--remote-code",
        action="store_true",
        help="--to hf, sentence-transformers: write remote code even where a transformers class holds the model",
    )
    p.add_argument(
        "--pooling",
        choices=["mean", "cls"],
        default=None,
        help="--to sentence-transformers: mean of the tokens or the first token (default: a "
        "fine-tuned classifier's pooling, else mean)",
    )
    p.add_argument(
        "--normalize", action="store_true", help="--to sentence-transformers: L2-normalise the embeddings"
    )
    p.add_argument("--no-head", action="store_true", help="--to onnx: the encoder only (last_hidden_state)")
    p.add_argument(
        "--fp16", action="store_true", help="--to onnx: also model_fp16.onnx (fp16 weights and compute)"
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="--to onnx: also model_int8.onnx (ONNX Runtime's dynamic quantisation)",
    )
    p.add_argument("--force", action="store_true", help=FORCE_HELP)
    p.set_defaults(fn=_cmd_export)

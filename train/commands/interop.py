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


def _cmd_export(args) -> None:
    from bertsmith.train.interop.export import export_hf, export_recipe

    if args.to == "recipe":
        if args.remote_code:
            raise SpecError("--remote-code: given with --to recipe, allowed: only with --to hf")
        spec = export_recipe(args.source, args.out, force=args.force)
        print(f"exported recipe {args.out} ({spec.name}); train it with: bertsmith train model={args.out}")
        return
    plan, diffs = export_hf(args.source, args.out, remote_code=args.remote_code, force=args.force)
    worst = max(diffs.values(), default=0.0)
    if plan.kind == "native":
        print(
            f"exported {args.out} as transformers {plan.arch}; outputs match bertsmith's within {worst:.1e}"
        )
    else:
        print(
            f"exported {args.out} as remote code ({plan.arch}, load with trust_remote_code=True); "
            f"outputs match bertsmith's within {worst:.1e}"
            + (f"\n  why not a transformers class: {plan.reason}" if plan.reason else "")
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
        help="a run or model directory as a standalone recipe or a transformers directory",
        description="--to recipe: write the spec as a standalone recipe YAML (every slot and size "
        "stated; `bertsmith train model=FILE` trains it). --to hf: write a transformers "
        "directory (config.json, model.safetensors, tokenizer files, README.md model card): the "
        "transformers class where the spec is exactly BERT, RoBERTa, DeBERTa-v2/v3 or ModernBERT, "
        "otherwise remote code (modeling_bertsmith.py; trust_remote_code=True). The export is "
        "loaded back and checked against bertsmith's outputs before it appears at --out. An "
        "existing --out (file or non-empty directory) is replaced only with --force.",
    )
    p.add_argument("source", metavar="RUN_DIR|MODEL_DIR")
    p.add_argument("--to", required=True, choices=["recipe", "hf"], help="what to write")
    p.add_argument("--out", required=True, help="a new .yaml file (recipe) or a new directory (hf)")
    p.add_argument(
        "--remote-code",
        action="store_true",
        help="--to hf: write remote code even where a transformers class holds the model",
    )
    p.add_argument("--force", action="store_true", help=FORCE_HELP)
    p.set_defaults(fn=_cmd_export)

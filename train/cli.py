"""The ``bertsmith`` command line.

Every command prints one line per problem and exits with code 2 for mistakes a user can
fix (bad recipe, bad override, bad file); bugs still raise with a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

import yaml

from bertsmith.registry.errors import SpecError
from bertsmith.train.tools.bench_cases import CASES  # no torch: --help stays quick


def _plain(value):
    """A default as plain data (another slot's entry, e.g. the MLP's activation, as a mapping)."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, tuple):
        return list(value)
    return value


def _cmd_blocks(args) -> None:
    from bertsmith.registry import REGISTRY
    from bertsmith.registry.core import BUILTIN
    from bertsmith.registry.schema import param_docs, spec_key_docs

    rows = []
    for e in REGISTRY:
        params = {}
        docs = param_docs(e)
        for name, f in e.params.model_fields.items():
            if name == "kind":
                continue
            params[name] = {
                "default": _plain(e.defaults()[name]),
                "type": getattr(f.annotation, "__name__", str(f.annotation)),
                "doc": docs[name],
            }
        rows.append(
            {
                "slot": e.slot,
                "name": e.name,
                "params": params,
                "doc": e.doc,
                "source": e.source,
                "provides": sorted(e.provides),
                "requires": [{"slot": r.slot, "any_of": list(r.any_of), "why": r.why} for r in e.requires],
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    slot = None
    for r in rows:
        if r["slot"] != slot:
            slot = r["slot"]
            print(f"\n{slot}")
        ps = ", ".join(f"{k}={v['default']!r}" for k, v in r["params"].items())
        print(f"  {r['name']:<15} {r['doc']}")
        if ps:
            print(f"  {'':<15} params: {ps}")
            for k, v in r["params"].items():
                print(f"  {'':<15}   {k}: {v['doc']}")
        if r["requires"]:
            needs = "; ".join(f"{q['slot']} with {' or '.join(q['any_of'])}" for q in r["requires"])
            print(f"  {'':<15} needs: {needs}")
        if r["source"] != BUILTIN:
            print(f"  {'':<15} from: {r['source']} (plugin)")
    print("\nkeys (outside the blocks; set with model.<key>=<value>; `bertsmith schema` for editors)")
    for key, doc in spec_key_docs().items():
        print(f"  {key:<17} {doc}")


def _cmd_schema(args) -> None:
    from bertsmith.registry.schema import recipe_schema

    text = json.dumps(recipe_schema(), indent=2, ensure_ascii=False) + "\n"
    if args.out is None:
        sys.stdout.write(text)
        return
    from pathlib import Path

    from bertsmith.registry.io import atomic_write

    out = Path(args.out).expanduser()
    if out.is_dir():
        raise SpecError(f"--out: given {str(out)!r}, allowed: a file path (it is a directory)")
    atomic_write(out, lambda p: p.write_text(text, encoding="utf-8"))
    print(f"wrote {out}")


def _cmd_inspect(args) -> None:
    from bertsmith import registry
    from bertsmith.registry.spec import spec_dict

    if args.seq_len is not None and args.seq_len < 1:
        raise SpecError(f"--seq-len: given {args.seq_len}, allowed: a positive integer")
    spec = registry.validate(args.recipe, args.overrides)
    report = {"spec": spec_dict(spec), **registry.cost(spec, args.seq_len)}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    p, f = report["params"], report["flops_per_token"]
    print(yaml.safe_dump(report["spec"], sort_keys=False).rstrip())
    print("\nparams (encoder body: embeddings, layers, final norm)")
    print(f"  total          {p['total']:>14,}")
    print(f"  embedding      {p['embedding']:>14,}")
    print(f"  non_embedding  {p['non_embedding']:>14,}")
    print(f"  head           {p['head']:>14,}  (not in total; tied weights not counted)")
    print(f"\nforward FLOPs per token at seq_len {f['seq_len']}")
    print(f"  encoder        {f['encoder']:>14,}  (linear {f['linear']:,}, attention {f['attention']:,})")
    print(f"  head           {f['head']:>14,}  (per decoded token)")
    plan = report["plan"]
    kinds = ["G" if layer["window"] is None else "L" for layer in plan]
    windows = sorted({layer["window"] for layer in plan if layer["window"] is not None})
    print(f"\nlayer plan  {''.join(kinds)}  (G global, L local window {', '.join(map(str, windows)) or '-'})")
    print("\nnotes" if report["notes"] else "\nnotes: none")
    for n in report["notes"]:
        print(f"  - {n}")


def _cmd_validate(args) -> None:
    from bertsmith import registry

    spec = registry.validate(args.recipe, args.overrides)
    print(f"ok: {spec.name} ({args.recipe})")


def _cmd_import_hf(args) -> None:
    from bertsmith.train.interop.hf import import_hf

    model = import_hf(args.hf_dir, args.out, name=args.name)
    n = sum(p.numel() for p in model.encoder.parameters())
    print(
        f"imported {args.hf_dir} -> {args.out} ({model.spec.name}, {n:,} encoder parameters, "
        f"head: {model.spec.head.kind if model.spec.head else 'none'})"
    )


def _cmd_compare(args) -> None:
    from bertsmith.train.tools.compare import compare

    result = compare(args.sweep_dir, args.metric)
    print(result["table"], end="")
    d = args.sweep_dir.rstrip("/")
    print(f"\nwrote {d}/summary.md, {d}/summary.csv, " + ", ".join(str(p) for p in result["images"]))
    if result["best_run"] is not None:
        print(
            f"export the best variant's recipe:\n  bertsmith export {result['best_run']} --to recipe --out best.yaml"
        )


def _cmd_export(args) -> None:
    from bertsmith.train.interop.export import export_hf, export_recipe

    if args.to == "recipe":
        if args.remote_code:
            raise SpecError("--remote-code: given with --to recipe, allowed: only with --to hf")
        spec = export_recipe(args.source, args.out)
        print(f"exported recipe {args.out} ({spec.name}); train it with: bertsmith train model={args.out}")
        return
    plan, diffs = export_hf(args.source, args.out, remote_code=args.remote_code)
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


def _cmd_bench(args) -> None:
    from bertsmith.train.tools.bench import main as bench_main

    bench_main(args)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="bertsmith",
        description="Compose BERT-family encoders from interchangeable blocks.",
    )
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    over = dict(
        nargs="*",
        metavar="override",
        help="model/<slot>=<entry> or model.<key>=<value> (e.g. model/positional=alibi model.d_model=512)",
    )

    p = sub.add_parser(
        "blocks",
        help="list every registered block with its params and doc, and the spec's other keys",
        description="List every registry entry: slot, name, params with defaults and meaning, doc, "
        "what it needs, and the plugin it comes from (built-ins say nothing); then the spec's keys "
        "outside the blocks (d_model, bias.*, dropout.*, ...) with their meaning. Plugins: the "
        "entry-point group bertsmith.blocks and BERTSMITH_PLUGINS=mod1,mod2.",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(fn=_cmd_blocks)

    p = sub.add_parser(
        "schema",
        help="JSON Schema of a model recipe, for editors (completion, hover docs, checks)",
        description="Write a JSON Schema (draft 2020-12) of a model recipe, generated from the spec "
        "and the registry, plugin blocks included: every key with a one-line meaning. Point your "
        "editor at it, e.g. a first line '# yaml-language-server: $schema=recipe.schema.json' "
        "in a recipe (VS Code's YAML extension).",
    )
    p.add_argument("--out", default=None, help="write to this file instead of stdout")
    p.set_defaults(fn=_cmd_schema)

    p = sub.add_parser(
        "inspect",
        help="resolved spec, parameter counts, FLOPs, layer plan, fit notes",
        description="Compose and validate RECIPE, then report its resolved spec, "
        "parameter counts (encoder body), forward FLOPs per token, the "
        "per-layer attention plan and hardware-fit notes.",
    )
    p.add_argument("recipe", help="a name under recipes/model/ (e.g. modernbert-base) or a YAML path")
    p.add_argument("overrides", **over)
    p.add_argument(
        "--seq-len", type=int, default=None, help="sequence length for FLOPs (default: max_seq_len)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(fn=_cmd_inspect)

    p = sub.add_parser(
        "validate",
        help="check a recipe; exit 0, or 2 with one line per problem",
        description="Compose, type-check, check compatibility and build RECIPE on the "
        "meta device. Exit 0 if valid; exit 2 with one line per problem.",
    )
    p.add_argument("recipe")
    p.add_argument("overrides", **over)
    p.set_defaults(fn=_cmd_validate)

    p = sub.add_parser(
        "compare",
        help="table and plots of a sweep (mean ± std over seeds, best marked)",
        description="Read every run of SWEEP_DIR (finished, failed or still running) and write "
        "summary.md, summary.csv, val_loss.png and quality_vs_throughput.png there: one row "
        "per variant (what its overrides change from the sweep's base), seeds averaged.",
    )
    p.add_argument("sweep_dir")
    p.add_argument(
        "--metric",
        default="val_loss",
        help="what picks the best variant: val_loss (default, lower is better), val_mlm_acc, or a "
        "downstream score finetune:TASK/METRIC (e.g. finetune:sst2/accuracy; see bertsmith finetune)",
    )
    p.set_defaults(fn=_cmd_compare)

    sub.add_parser(
        "train",
        add_help=False,
        help="pre-train a recipe with Lightning (Hydra overrides; see `bertsmith train --help`)",
    )
    sub.add_parser(
        "finetune",
        add_help=False,
        help="fine-tune a run or model on a classification, regression or tagging task "
        "(Hydra overrides; see `bertsmith finetune --help`)",
    )

    p = sub.add_parser(
        "bench",
        help="speed and memory against transformers, same weights, side by side",
        description="Time bertsmith against the transformers model with the same config and "
        "weights (imported), in one process: fixed 512-token batches, variable lengths "
        "(64..512; padded for transformers, packed for bertsmith), 4096-token sequences with "
        "window 128 (ModernBERT), and an MLM training step at 30%% masking. Prints tokens/s, "
        "their ratio, peak memory, FLOP/s as a share of a GEMM peak measured here, and the "
        "largest output difference.",
    )
    p.add_argument("--family", nargs="+", default=["modernbert", "bert"], choices=["modernbert", "bert"])
    p.add_argument("--case", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--dtype", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument(
        "--size",
        default="base",
        choices=["tiny", "small", "base", "large"],
        help="width and depth (default base)",
    )
    p.add_argument("--layers", type=int, default=None, help="override the depth (fewer layers: faster)")
    p.add_argument("--batch-tokens", type=int, default=4096, help="real tokens per batch (default 4096)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per side, median taken (default 3)")
    p.add_argument("--kernel", default="sdpa", help="bertsmith's attention kernel (default sdpa)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--json", action="store_true", help="print the results as JSON (table to stderr)")
    p.add_argument("--out", default=None, help="also write the JSON results to this file")
    p.set_defaults(fn=_cmd_bench)

    p = sub.add_parser(
        "import-hf",
        help="convert a transformers BERT/RoBERTa/ModernBERT/DeBERTa-v2/v3 directory",
        description="Read a transformers directory (config.json + weights) of a BERT, "
        "RoBERTa, ModernBERT or DeBERTa-v2/v3 model, base or masked-LM, and write a "
        "bertsmith model directory (spec.yaml + model.safetensors). "
        "Never runs code from the directory.",
    )
    p.add_argument("hf_dir")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--name", default=None, help="spec name (default: the directory's name)")
    p.set_defaults(fn=_cmd_import_hf)

    p = sub.add_parser(
        "export",
        help="a run or model directory as a standalone recipe or a transformers directory",
        description="--to recipe: write the spec as a standalone recipe YAML (every slot and size "
        "stated; `bertsmith train model=FILE` trains it). --to hf: write a transformers "
        "directory (config.json, model.safetensors, tokenizer files, README.md model card): the "
        "transformers class where the spec is exactly BERT, RoBERTa, DeBERTa-v2/v3 or ModernBERT, "
        "otherwise remote code (modeling_bertsmith.py; trust_remote_code=True). The export is "
        "loaded back and checked against bertsmith's outputs before it appears at --out.",
    )
    p.add_argument("source", metavar="RUN_DIR|MODEL_DIR")
    p.add_argument("--to", required=True, choices=["recipe", "hf"], help="what to write")
    p.add_argument("--out", required=True, help="a .yaml file (recipe) or a new directory (hf)")
    p.add_argument(
        "--remote-code",
        action="store_true",
        help="--to hf: write remote code even where a transformers class holds the model",
    )
    p.set_defaults(fn=_cmd_export)
    return ap


_NO_RECIPES = ("compare",)  # commands that read no recipe, spec or block


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "train":  # a Hydra app: its arguments are overrides, not flags
        from bertsmith.train.pretrain.app import main as train_main

        return train_main(argv[1:])
    if argv and argv[0] == "finetune":  # a Hydra app too
        from bertsmith.train.finetune.app import main as finetune_main

        return finetune_main(argv[1:])
    args = parser().parse_args(argv)
    try:
        if args.command not in _NO_RECIPES:
            from bertsmith.registry.composer import prepare

            prepare()  # plugins, and the slot options every recipe composes from
        args.fn(args)
    except SpecError as e:
        for line in e.lines:
            print(f"error: {line}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The commands about recipes and blocks: ``blocks``, ``schema``, ``inspect``, ``validate``."""

from __future__ import annotations

import json
import sys

import yaml

from bertsmith.registry.errors import SpecError

OVERRIDES = dict(
    nargs="*",
    metavar="override",
    help="model/<slot>=<entry> or model.<key>=<value> (e.g. model/positional=alibi model.d_model=512)",
)


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

    from bertsmith.registry.outputs import new_file

    out = Path(args.out).expanduser()
    new_file(out, lambda p: p.write_text(text, encoding="utf-8"), "schema --out", args.force)
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


def add_blocks(sub) -> None:
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


def add_schema(sub) -> None:
    p = sub.add_parser(
        "schema",
        help="JSON Schema of a model recipe, for editors (completion, hover docs, checks)",
        description="Write a JSON Schema (draft 2020-12) of a model recipe, generated from the spec "
        "and the registry, plugin blocks included: every key with a one-line meaning. Point your "
        "editor at it, e.g. a first line '# yaml-language-server: $schema=recipe.schema.json' "
        "in a recipe (VS Code's YAML extension).",
    )
    p.add_argument("--out", default=None, help="write to this file instead of stdout (a new file)")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.set_defaults(fn=_cmd_schema)


def add_inspect(sub) -> None:
    p = sub.add_parser(
        "inspect",
        help="resolved spec, parameter counts, FLOPs, layer plan, fit notes",
        description="Compose and validate RECIPE, then report its resolved spec, "
        "parameter counts (encoder body), forward FLOPs per token, the "
        "per-layer attention plan and hardware-fit notes.",
    )
    p.add_argument("recipe", help="a name under recipes/model/ (e.g. modernbert-base) or a YAML path")
    p.add_argument("overrides", **OVERRIDES)
    p.add_argument(
        "--seq-len", type=int, default=None, help="sequence length for FLOPs (default: max_seq_len)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(fn=_cmd_inspect)


def add_validate(sub) -> None:
    p = sub.add_parser(
        "validate",
        help="check a recipe; exit 0, or 2 with one line per problem",
        description="Compose, type-check, check compatibility and build RECIPE on the "
        "meta device. Exit 0 if valid; exit 2 with one line per problem.",
    )
    p.add_argument("recipe")
    p.add_argument("overrides", **OVERRIDES)
    p.set_defaults(fn=_cmd_validate)

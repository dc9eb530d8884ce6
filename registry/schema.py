"""A JSON Schema of a model recipe, from the spec and the registry (plugins included).

``bertsmith schema > recipe.schema.json`` gives editors completion, hover text and checks
for recipe files (VS Code's YAML extension: ``# yaml-language-server: $schema=...`` at the top
of a recipe, or ``yaml.schemas`` in the settings). It takes every form a recipe has:

- standalone: every required size and the positional scheme stated, each slot a mapping
  ``{kind: <entry>, ...}`` (or the entry's bare name);
- extending: a ``defaults`` list (base recipes, ``<slot>: <entry>``, ``_self_``); then
  nothing is required and a slot's mapping may leave out ``kind`` (the base names it).

Every key carries a one-line ``description``: the spec's field descriptions for the top-level
keys, and for a block's params the field's description or, failing that, the sentence of the
params model's docstring that names the field (``param_docs``). ``bertsmith blocks`` shows
the same lines.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from bertsmith.registry.core import REGISTRY, SLOTS, Entry

# Used only where the spec's own field has no description (the spec's wins).
_FALLBACK = {
    "name": "the model's name (spec.yaml, exports and run directories show it)",
    "vocab_size": "rows of the token embedding (the tokenizer's vocabulary, rounded up)",
    "d_model": "width of the residual stream (hidden size)",
    "n_layers": "number of encoder layers",
    "n_heads": "attention heads per layer (d_model / n_heads is the head dimension)",
    "d_ff": "width the MLP's activation sees (GLU: each of its two halves)",
    "max_seq_len": "longest sequence the model takes",
    "type_vocab_size": "token-type (segment) embeddings; 0 for none",
    "pad_token_id": "the padding token's id",
    "bias": "bias toggles per site",
    "dropout": "dropout probabilities per site",
    "bias.qkv": "bias of the attention's query, key and value projections",
    "bias.attn_out": "bias of the attention's output projection",
    "bias.mlp_in": "bias of the MLP's input projection",
    "bias.mlp_out": "bias of the MLP's output projection",
    "bias.norm": "bias (beta) of every norm that has one",
    "bias.head": "bias of the heads' transform layers",
    "bias.decoder": "bias of the MLM decoder (the vocabulary logits)",
    "dropout.embedding": "dropout on the embedding output",
    "dropout.attention": "dropout on the attention probabilities",
    "dropout.attn_out": "dropout on the attention block's output",
    "dropout.mlp": "dropout on the MLP block's output",
}
DEFAULTS_DOC = (
    "base recipes and one block per slot, composed in order before this file's own keys "
    "(_self_): e.g. [modernbert-base, {override positional: alibi}, _self_]"
)
_TICKS = re.compile(r"``?([^`]+)``?")


def _slot_doc(slot: str) -> str:

    from bertsmith import registry

    f = registry.spec.EncoderSpec.model_fields.get(slot)
    text = f.description if f is not None and f.description else f"the {slot} entry"
    return f"{text} (a mapping with kind, or a bare name; `bertsmith blocks` lists them)"


def _one_line(text: str) -> str:
    return " ".join(_TICKS.sub(r"\1", text).split()).rstrip(".")


def _doc_clauses(doc: str) -> list[str]:
    """A docstring cut into clauses: at ``;`` and at sentence ends (a full stop before a
    capital letter or a backticked name), not inside ``torch.compile(...)``."""
    text = " ".join(doc.split())
    return [c.strip() for c in re.split(r";\s*|(?<=\.)\s+(?=[A-Z`])", text) if c.strip()]


def _base_fields(params: type) -> dict[str, Any]:
    """Field infos of ``params`` and its bases (a resolved model keeps them on its base)."""
    out: dict[str, Any] = {}
    for cls in params.__mro__:
        for name, f in (getattr(cls, "model_fields", None) or {}).items():
            out.setdefault(name, []).append(f)
    return out


def param_docs(entry: Entry) -> dict[str, str]:
    """One line per param of ``entry`` (``kind`` left out): the field's description, else the
    clause of the params model's docstring that names it, else the entry's doc."""
    from bertsmith.registry.plugins import _ref_fields

    fields = _base_fields(entry.params)
    docs_of = [c for cls in entry.params.__mro__ for c in _doc_clauses(cls.__doc__ or "")][:40]
    refs = _ref_fields(entry.params)
    out = {}
    for name in entry.params.model_fields:
        if name == "kind":
            continue
        desc = next((f.description for f in fields.get(name, []) if f.description), None)
        if not desc:  # the clause of the docstring that starts with the field's name
            tick = f"``{name}``"
            clause = next((c.lstrip("(") for c in docs_of if c.lstrip("(").startswith(tick)), None)
            if clause is not None:
                rest = clause[len(tick) :]
                desc = rest[1:].strip() if rest.startswith(":") else name + rest
        if not desc and name in refs:
            desc = f"the {refs[name]} entry ({{kind, ...}}; a bare name is accepted)"
        if not desc:
            desc = f"a setting of {entry.slot} {entry.name} ({entry.doc.rstrip('.')})"
        out[name] = _one_line(desc)
    return out


def spec_key_docs() -> dict[str, str]:
    """One line per key of the spec outside the blocks: top-level keys (slots included) and
    the keys of ``bias`` and ``dropout``."""

    from bertsmith import registry

    spec = registry.spec.EncoderSpec
    out = {}
    for name, f in spec.model_fields.items():
        if name in SLOTS:
            out[name] = _slot_doc(name).split(" (a mapping")[0]
        else:
            out[name] = f.description or _FALLBACK.get(name, name)
        sub = getattr(f.annotation, "model_fields", None)
        if sub:
            for k, g in sub.items():
                out[f"{name}.{k}"] = g.description or _FALLBACK.get(f"{name}.{k}", f"{k} ({name})")
    ordered = {}
    for k, v in out.items():
        ordered[k] = v
        if k == "mlp":
            ordered["mlp.activation"] = (
                "the activation entry, chosen inside the MLP ({kind, ...} or a bare name)"
            )
    return {k: _one_line(v) for k, v in ordered.items()}


# --- the schema --------------------------------------------------------------------------------


def _def_name(slot: str, name: str) -> str:
    return f"{slot}.{name}"


def _strip_titles(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_titles(v) for k, v in node.items() if k != "title" or not isinstance(v, str)}
    if isinstance(node, list):
        return [_strip_titles(v) for v in node]
    return node


def _entry_schema(entry: Entry, defs: dict) -> dict:
    """The mapping ``{kind: <entry>, params...}`` of one entry."""
    from bertsmith.registry.plugins import _ref_fields

    raw = entry.params.model_json_schema(ref_template="#/$defs/{model}")
    for name, sub in raw.pop("$defs", {}).items():  # a plugin's params may nest models
        defs.setdefault(name, _strip_titles(sub))
    refs = _ref_fields(entry.params)
    docs = param_docs(entry)
    props = {}
    for name, prop in raw.get("properties", {}).items():
        if name == "kind":
            props[name] = {
                "enum": [entry.name, *entry.aliases],  # an old name (relu2) reads as its entry
                "description": f"{entry.name}: {_one_line(entry.doc)}",
            }
            continue
        if name in refs:  # another slot's entry: the slot's own schema (a bare name too)
            prop = {"$ref": f"#/$defs/slot.{refs[name]}"}
        prop = _strip_titles(dict(prop))
        prop["description"] = docs.get(name, name)
        props[name] = prop
    out = {
        "type": "object",
        "description": _one_line(entry.doc),
        "properties": props,
        "required": ["kind"],
        "additionalProperties": False,
    }
    return out


def _partial_schema(slot: str, defs: dict) -> dict:
    """A slot mapping without ``kind`` (an extending recipe sets values of the base's block):
    any param of any of the slot's entries."""
    props: dict[str, Any] = {}
    for entry in REGISTRY.entries[slot].values():
        for name, prop in defs[_def_name(slot, entry.name)]["properties"].items():
            if name != "kind":
                props.setdefault(name, prop)
    return {
        "type": "object",
        "description": f"settings of the {slot} block a base recipe chose",
        "properties": props,
        "not": {"required": ["kind"]},
        "additionalProperties": False,
    }


def recipe_schema() -> dict:
    """The JSON Schema (draft 2020-12) of a model recipe, from the registry as loaded now."""
    from bertsmith.registry.composer import model_names, prepare, slot_options

    prepare()  # plugin blocks are part of the schema

    from bertsmith import registry

    spec = registry.spec.EncoderSpec
    base = spec.model_json_schema(ref_template="#/$defs/{model}")
    defs: dict[str, Any] = {}
    for slot in SLOTS:
        for entry in REGISTRY.entries[slot].values():
            defs[_def_name(slot, entry.name)] = _entry_schema(entry, defs)
    for slot in SLOTS:
        names = [*REGISTRY.names(slot), *REGISTRY.alias_names(slot)]  # what `kind` may say
        bare = {"type": "string", "enum": names, "description": f"a {slot} entry by name"}
        # a mapping with kind: the schema of the entry it names (precise errors, completion)
        chosen = {
            "type": "object",
            "required": ["kind"],
            "properties": {"kind": {"enum": names, "description": f"which {slot} entry"}},
            "allOf": [
                {
                    "if": {"properties": {"kind": {"enum": [e.name, *e.aliases]}}},
                    "then": {"$ref": f"#/$defs/{_def_name(slot, e.name)}"},
                }
                for e in REGISTRY.entries[slot].values()
            ],
        }
        defs[f"slot.{slot}"] = {
            "description": _slot_doc(slot),
            "anyOf": [chosen, bare, _partial_schema(slot, defs)],
        }
        defs[f"full.{slot}"] = {
            "anyOf": [chosen, bare, {"type": "null"}] if slot == "head" else [chosen, bare]
        }

    key_docs = spec_key_docs()
    props: dict[str, Any] = {
        "defaults": {
            "description": DEFAULTS_DOC,
            "type": "array",
            "items": {
                "anyOf": [
                    {"enum": ["_self_", *model_names()], "description": "_self_ or a base recipe"},
                    *(
                        {
                            "type": "object",
                            "description": f"the {slot} block: {', '.join(slot_options(slot))}",
                            "patternProperties": {
                                f"^((override|optional) )?{slot}$": {"enum": [*slot_options(slot), None]}
                            },
                            "minProperties": 1,
                            "maxProperties": 1,
                            "additionalProperties": False,
                        }
                        for slot in SLOTS
                        if REGISTRY.names(slot)
                    ),
                ]
            },
        }
    }
    for name in spec.model_fields:
        if name in SLOTS:
            prop: dict[str, Any] = {"$ref": f"#/$defs/slot.{name}"}
            if name == "head":
                prop = {"anyOf": [prop, {"type": "null"}]}
        else:
            prop = _strip_titles(copy.deepcopy(base["properties"][name]))
            ref = prop.pop("$ref", None)
            if ref:  # inline bias / dropout with a description per key
                sub = _strip_titles(copy.deepcopy(base["$defs"][ref.rsplit("/", 1)[1]]))
                for k, p in sub.get("properties", {}).items():
                    p["description"] = key_docs.get(f"{name}.{k}", k)
                prop.update(sub)
        prop["description"] = key_docs.get(name, name)
        props[name] = prop
    required = list(base.get("required", []))
    standalone = {
        "required": required,
        "properties": {
            s: {"$ref": f"#/$defs/full.{s}", "description": props[s]["description"]}
            for s in SLOTS
            if s in props
        },
    }
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://bertsmith/recipe.schema.json",
        "title": "bertsmith model recipe",
        "description": "A model recipe (recipes/model/*.yaml, a file given to inspect/validate/train, "
        "or what `export --to recipe` writes). Generated by `bertsmith schema` from the registry.",
        "type": "object",
        "properties": props,
        "additionalProperties": False,
        # without a defaults list the recipe is standalone: sizes and every slot's kind stated
        "if": {"not": {"required": ["defaults"]}},
        "then": standalone,
        "$defs": defs,
    }
    return _prune(schema)


def _prune(schema: dict) -> dict:
    """Drop definitions nothing refers to (a params model's own copies of another slot's)."""
    import json

    defs, keep, todo = schema["$defs"], set(), [schema]
    while todo:
        text = json.dumps({k: v for k, v in todo.pop().items() if k != "$defs"})
        for name in re.findall(r'"#/\$defs/([^"]+)"', text):
            if name not in keep and name in defs:
                keep.add(name)
                todo.append(defs[name])
    schema["$defs"] = {k: v for k, v in defs.items() if k in keep}
    return schema

"""The typed spec: ``EncoderSpec``, built from the registry's params models.

Each slot field is a discriminated union (on ``kind``) of every params model registered for
that slot, so a new block adds itself to the spec by registering. Cross-field rules and
slot compatibility live in ``registry.rules``; this module checks types and ranges.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Annotated, Any, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
    create_model,
)

from bertsmith import blocks  # noqa: F401  (fills the registry)
from bertsmith.registry.core import REGISTRY, SLOT_KEYS, SlotRef
from bertsmith.registry.errors import SpecError, choice, nearest, shown


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BiasSpec(_Frozen):
    """Bias toggles per site: attention qkv and output, MLP in and out, norms, head
    transforms, MLM decoder."""

    qkv: bool = True
    attn_out: bool = True
    mlp_in: bool = True
    mlp_out: bool = True
    norm: bool = True
    head: bool = True
    decoder: bool = True


class DropoutSpec(_Frozen):
    """Dropout probabilities: embedding output, attention probabilities, attention output,
    MLP output."""

    embedding: float = Field(0.0, ge=0, lt=1)
    attention: float = Field(0.0, ge=0, lt=1)
    attn_out: float = Field(0.0, ge=0, lt=1)
    mlp: float = Field(0.0, ge=0, lt=1)


# Upper bounds far past any published encoder (XLM-R's 250k vocabulary, 8k-token contexts,
# 48 layers), so a typo like d_model=1e30 or n_layers=1e9 is an error line instead of an
# overflow inside torch or a meta build that never ends.
LIMITS = {
    "vocab_size": 2**22,
    "d_model": 2**16,
    "n_layers": 1024,
    "d_ff": 2**20,
    "max_seq_len": 2**20,
    "type_vocab_size": 2**16,
}
# sizes are integers, not anything that converts to one: `n_layers: true` is a mistake, not 1
_Int = Annotated[int, Strict()]


def _refs(model: type[BaseModel]) -> dict[str, str]:
    """Fields of ``model`` that hold another slot's entry: field name -> slot."""
    out = {}
    for name, f in model.model_fields.items():
        ref = next((m for m in f.metadata if isinstance(m, SlotRef)), None)
        if ref is not None:
            out[name] = ref.slot
    return out


def _as_entry(slot: str):
    """Before validation of a slot's field: a bare name reads as ``{kind: name}``, and an old
    name (an alias, e.g. ``relu2``) as the entry and params it stands for."""

    def convert(value):
        if isinstance(value, str):
            value = {"kind": value}
        if isinstance(value, dict) and isinstance(value.get("kind"), str):
            name, implied = REGISTRY.resolve(slot, value["kind"])
            if implied or name != value["kind"]:
                value = {**implied, **value, "kind": name}
        return value

    return BeforeValidator(convert)


def _union(slot: str):
    models = tuple(e.params for e in REGISTRY.entries[slot].values())
    inner = models[0] if len(models) == 1 else Annotated[Union[models], Field(discriminator="kind")]  # noqa: UP007
    return Annotated[inner, _as_entry(slot)]


def _default_entry(slot: str, given: Any):
    """A default factory: the entry ``given`` names (a name or a mapping), parsed."""
    return lambda: TypeAdapter(_union(slot)).validate_python(given)


# fields of params models that hold another slot's entry: field name -> slot
REF_FIELDS: dict[str, str] = {}


def _resolve_refs() -> None:
    """Give every params model with ``SlotRef`` fields those slots' unions (once per model),
    in the registry itself, so every reader of ``entry.params`` sees the full type."""
    for slot in REGISTRY.entries:
        for name, entry in list(REGISTRY.entries[slot].items()):
            declared = getattr(entry.params, "__declared__", entry.params)  # as registered
            refs = _refs(declared)
            if not refs:
                continue
            REF_FIELDS.update(refs)
            fields = {}
            for field, target in refs.items():
                f = declared.model_fields[field]
                fields[field] = (
                    _union(target),
                    Field(default_factory=_default_entry(target, f.default), description=f.description),
                )
            model = create_model(declared.__name__, __base__=declared, **fields)
            model.__doc__ = declared.__doc__
            model.__declared__ = declared
            model.__module__ = __name__  # importable under its name, so specs pickle
            globals()[model.__name__] = model
            REGISTRY.entries[slot][name] = replace(entry, params=model)


def _default(slot: str, name: str) -> Any:
    return REGISTRY.get(slot, name).params()


# top-level spec keys that hold a slot's entry (the activation sits inside the MLP)
SLOT_FIELDS = tuple(slot for slot, key in SLOT_KEYS.items() if key == slot)


def _build_spec() -> type[BaseModel]:
    _resolve_refs()
    model = create_model(
        "EncoderSpec",
        __base__=_Frozen,
        __doc__="A whole encoder: sizes, one entry per slot, bias toggles, dropouts.",
        name=(str, Field("encoder", max_length=200, description="the model's name")),
        vocab_size=(
            _Int,
            Field(..., gt=0, le=LIMITS["vocab_size"], description="rows of the token embedding"),
        ),
        d_model=(_Int, Field(..., gt=0, le=LIMITS["d_model"], description="width of the residual stream")),
        n_layers=(_Int, Field(..., gt=0, le=LIMITS["n_layers"], description="number of encoder layers")),
        n_heads=(_Int, Field(..., gt=0, le=LIMITS["d_model"], description="attention heads per layer")),
        d_ff=(_Int, Field(..., gt=0, le=LIMITS["d_ff"], description="width the MLP's activation sees")),
        max_seq_len=(
            _Int,
            Field(512, gt=0, le=LIMITS["max_seq_len"], description="longest sequence the model takes"),
        ),
        type_vocab_size=(
            _Int,
            Field(
                0,
                ge=0,
                le=LIMITS["type_vocab_size"],
                description="token-type (segment) embeddings; 0 for none",
            ),
        ),
        pad_token_id=(_Int, Field(0, ge=0, description="the padding token's id")),
        positional=(_union("positional"), Field(..., description=_SLOT_DOCS["positional"])),
        attention=(_union("attention"), _slot_field("attention", "global")),
        kernel=(_union("kernel"), _slot_field("kernel", "sdpa")),
        mlp=(_union("mlp"), _slot_field("mlp", "mlp")),
        norm=(_union("norm"), _slot_field("norm", "layernorm")),
        placement=(_union("placement"), _slot_field("placement", "pre")),
        bias=(BiasSpec, Field(default_factory=BiasSpec, description="bias toggles per site")),
        dropout=(
            DropoutSpec,
            Field(default_factory=DropoutSpec, description="dropout probabilities per site"),
        ),
        head=(_union("head") | None, _slot_field("head", "mlm")),
        init=(_union("init"), _slot_field("init", "bert_normal")),
    )
    return model


_SLOT_DOCS = {
    "positional": "how positions enter: an embedding, rotated q/k or a score bias",
    "attention": "which layers attend globally and which in a local window",
    "kernel": "the attention kernel (how scores are computed)",
    "mlp": "the feed-forward block, with its activation",
    "norm": "the norm, its epsilon, and the embedding/final norms",
    "placement": "where norms sit around each sublayer (the residual wiring)",
    "head": "the head on the final hidden states (null for none)",
    "init": "the weight initialisation scheme",
}


def _slot_field(slot: str, default: str):
    return Field(default_factory=lambda: _default(slot, default), description=_SLOT_DOCS[slot])


EncoderSpec = _build_spec()
_built_for = REGISTRY.version


def refresh_spec() -> None:
    """Rebuild ``EncoderSpec`` from the registry as it is now (after plugins registered)."""
    global EncoderSpec, _built_for
    EncoderSpec = _build_spec()
    _built_for = REGISTRY.version


def spec_model() -> type[BaseModel]:
    """``EncoderSpec`` for the registry as it is now: rebuilt when a block was registered
    since (a plugin, or a block defined in a notebook)."""
    if _built_for != REGISTRY.version:
        refresh_spec()
    return EncoderSpec


def _slot_at(loc: tuple, i: int) -> str | None:
    """The slot whose entry ``loc[i]`` names, if ``loc[:i]`` leads to a slot's field."""
    key = loc[i - 1] if i else None
    if i == 1 and key in SLOT_FIELDS:
        return key
    if i >= 3 and key in REF_FIELDS:
        return REF_FIELDS[key]
    return None


def _strip_tags(loc: tuple) -> tuple[tuple, str | None, str | None]:
    """(location without the union tags pydantic inserts, last slot, last tag):
    ``mlp.glu.activation.relu.power`` -> ``mlp.activation.power``."""
    out, slot, tag = [], None, None
    for i, part in enumerate(loc):
        s = _slot_at(loc, i)
        if s is not None and (part in REGISTRY.entries[s] or part in ("str", "dict")):
            slot, tag = s, part
            continue
        out.append(part)
    return tuple(out), slot, tag


def _fields_of(loc: tuple) -> list[str]:
    """Allowed keys at ``loc`` (a pydantic error location, tags included)."""
    if not loc:
        return list(spec_model().model_fields)
    _, slot, tag = _strip_tags(loc)
    if slot is not None and tag in REGISTRY.entries[slot]:
        return list(REGISTRY.get(slot, tag).params.model_fields)
    sub = {"bias": BiasSpec, "dropout": DropoutSpec}.get(loc[0])
    return list(sub.model_fields) if sub else []


def _line(err: dict, prefix: str) -> str:
    loc = tuple(str(x) for x in err["loc"])
    etype, given = err["type"], err.get("input")
    path, slot, tag = _strip_tags(loc)
    key = prefix + ".".join(path)
    if etype in ("union_tag_invalid", "union_tag_not_found"):
        slot = _slot_at(loc, len(loc)) or slot
        given = given.get("kind") if isinstance(given, dict) else given
        if etype == "union_tag_not_found":
            return f"{key}.kind: missing; allowed: {', '.join(REGISTRY.names(slot))}"
        return choice(f"{key}.kind", given, REGISTRY.names(slot))
    if etype == "extra_forbidden":
        allowed = [f for f in _fields_of(loc[:-1]) if f != "kind"]
        where = f" for {tag}" if tag else ""
        if len(loc) == 1 and loc[0] in SLOT_KEYS and SLOT_KEYS[loc[0]] != loc[0]:
            return f"{key}: misplaced; the {loc[0]} entry belongs at {prefix}{SLOT_KEYS[loc[0]]}"
        return (
            f"{key}: unknown key{where}; allowed: {', '.join(allowed) or 'none'}{nearest(loc[-1], allowed)}"
        )
    if etype == "missing":
        return f"{key}: missing; a value is required"
    field_slot = _slot_at(loc, len(loc))
    if field_slot is not None and not isinstance(given, dict):
        names = ", ".join(REGISTRY.names(field_slot))
        return f"{key}: given {shown(given)}, allowed: a mapping with 'kind' (one of {names})"
    msg = err["msg"]
    for lead in ("Input should be ", "Value error, "):
        msg = msg.removeprefix(lead)
    return f"{key}: given {shown(given)}, allowed: {msg}"


def _non_finite(node, key: str) -> list[str]:
    """One line per inf or nan anywhere in ``node`` (YAML reads 1e400 as inf): no size, rate
    or epsilon of a model is meant to be one, and every block would pass it through."""
    if isinstance(node, float) and not math.isfinite(node):
        return [f"{key}: given {node!r}, allowed: a finite number"]
    if isinstance(node, dict):
        return [line for k, v in node.items() for line in _non_finite(v, f"{key}.{k}")]
    if isinstance(node, list):
        return [line for i, v in enumerate(node) for line in _non_finite(v, f"{key}[{i}]")]
    return []


def _old_placement(data: dict, prefix: str) -> dict:
    """``norm.placement: post`` (the spelling before placement was a slot) -> ``placement:
    {kind: post}``; refused when it contradicts a ``placement`` given as well."""
    norm = data.get("norm")
    if not isinstance(norm, dict) or "placement" not in norm:
        return data
    norm = dict(norm)
    old = norm.pop("placement")
    new = data.get("placement")
    kind = new.get("kind") if isinstance(new, dict) else new
    if new is not None and kind != old:
        raise SpecError(
            f"{prefix}norm.placement: given {shown(old)} (the old spelling) while {prefix}placement "
            f"is {shown(kind)}; allowed: one of them — placement is a slot now: "
            f"placement: {{kind: {old}}} (model/placement={old})"
        )
    return {**data, "norm": norm, "placement": new if new is not None else {"kind": old}}


def parse_spec(data: dict, prefix: str = "model.") -> BaseModel:
    """Validate a plain mapping into an ``EncoderSpec``; raise ``SpecError`` with one line per
    problem, each naming the key (``prefix`` + dotted path), what was given and what is allowed."""
    if not isinstance(data, dict):
        raise SpecError(f"{prefix.rstrip('.') or 'spec'}: given {type(data).__name__}, allowed: a mapping")
    if bad := _non_finite(data, prefix.rstrip(".")):
        raise SpecError(bad)
    data = _old_placement(data, prefix)
    try:
        return spec_model().model_validate(data)
    except ValidationError as e:
        raise SpecError(dict.fromkeys(_line(err, prefix) for err in e.errors())) from None


def spec_dict(spec: BaseModel) -> dict:
    """The spec as plain data, each slot's ``kind`` first (for YAML a person reads)."""

    def order(node):
        if isinstance(node, dict):
            keys = sorted(node, key=lambda k: k != "kind")
            return {k: order(node[k]) for k in keys}
        return node

    return order(spec.model_dump(mode="json"))


def __getattr__(name: str):
    """A resolved params model of a plugin's block, in a process that has not loaded the
    plugins yet (a spec unpickled in a DDP worker): load them, then look again."""
    if name.startswith("__"):
        raise AttributeError(name)
    from bertsmith.registry.plugins import load_plugins

    load_plugins()
    spec_model()
    if name in globals():
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

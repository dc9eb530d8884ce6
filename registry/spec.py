"""The typed spec: ``EncoderSpec``, built from the registry's params models.

Each slot field is a discriminated union (on ``kind``) of every params model registered for
that slot, so a new block adds itself to the spec by registering. Cross-field rules and
slot compatibility live in ``registry.rules``; this module checks types and ranges.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, create_model

import blocks  # noqa: F401  (fills the registry)
from registry.core import REGISTRY
from registry.errors import SpecError, choice, nearest, shown


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


def _slot_type(slot: str):
    models = tuple(e.params for e in REGISTRY.entries[slot].values())
    if len(models) == 1:
        return models[0]
    return Annotated[Union[models], Field(discriminator="kind")]  # noqa: UP007


def _default(slot: str, name: str) -> Any:
    return REGISTRY.get(slot, name).params()


EncoderSpec = create_model(
    "EncoderSpec",
    __base__=_Frozen,
    __doc__="A whole encoder: sizes, one entry per slot, bias toggles, dropouts.",
    name=(str, Field("encoder", max_length=200)),
    vocab_size=(_Int, Field(..., gt=0, le=LIMITS["vocab_size"])),
    d_model=(_Int, Field(..., gt=0, le=LIMITS["d_model"])),
    n_layers=(_Int, Field(..., gt=0, le=LIMITS["n_layers"])),
    n_heads=(_Int, Field(..., gt=0, le=LIMITS["d_model"])),
    d_ff=(_Int, Field(..., gt=0, le=LIMITS["d_ff"])),
    max_seq_len=(_Int, Field(512, gt=0, le=LIMITS["max_seq_len"])),
    type_vocab_size=(_Int, Field(0, ge=0, le=LIMITS["type_vocab_size"])),
    pad_token_id=(_Int, Field(0, ge=0)),
    positional=(_slot_type("positional"), ...),
    attention=(_slot_type("attention"), Field(default_factory=lambda: _default("attention", "global"))),
    kernel=(_slot_type("kernel"), Field(default_factory=lambda: _default("kernel", "sdpa"))),
    mlp=(_slot_type("mlp"), Field(default_factory=lambda: _default("mlp", "mlp"))),
    norm=(_slot_type("norm"), Field(default_factory=lambda: _default("norm", "layernorm"))),
    bias=(BiasSpec, Field(default_factory=BiasSpec)),
    dropout=(DropoutSpec, Field(default_factory=DropoutSpec)),
    head=(_slot_type("head") | None, Field(default_factory=lambda: _default("head", "mlm"))),
    init=(_slot_type("init"), Field(default_factory=lambda: _default("init", "bert_normal"))),
)

SLOT_FIELDS = ("positional", "attention", "kernel", "mlp", "norm", "head", "init")


def _fields_of(loc: tuple) -> list[str]:
    """Allowed keys at ``loc`` (a pydantic error location, tag included for slots)."""
    if not loc:
        return list(EncoderSpec.model_fields)
    if loc[0] in SLOT_FIELDS and len(loc) >= 2 and loc[1] in REGISTRY.entries.get(loc[0], {}):
        return list(REGISTRY.get(loc[0], loc[1]).params.model_fields)
    sub = {"bias": BiasSpec, "dropout": DropoutSpec}.get(loc[0])
    return list(sub.model_fields) if sub else []


def _line(err: dict, prefix: str) -> str:
    loc = tuple(str(x) for x in err["loc"])
    etype, given = err["type"], err.get("input")
    # discriminated unions put the tag in the location: positional.rope.theta -> positional.theta
    tag = loc[1] if len(loc) > 1 and loc[0] in SLOT_FIELDS else None
    path = loc[:1] + loc[2:] if tag in REGISTRY.entries.get(loc[0], {}) else loc
    key = prefix + ".".join(path)
    if etype in ("union_tag_invalid", "union_tag_not_found"):
        slot = loc[0]
        given = given.get("kind") if isinstance(given, dict) else given
        if etype == "union_tag_not_found":
            return f"{key}.kind: missing; allowed: {', '.join(REGISTRY.names(slot))}"
        return choice(f"{key}.kind", given, REGISTRY.names(slot))
    if etype == "extra_forbidden":
        parent = loc[:-1]
        allowed = [f for f in _fields_of(parent) if f != "kind"]
        where = f" for {tag}" if tag else ""
        return (
            f"{key}: unknown key{where}; allowed: {', '.join(allowed) or 'none'}{nearest(loc[-1], allowed)}"
        )
    if etype == "missing":
        return f"{key}: missing; a value is required"
    if len(loc) == 1 and loc[0] in SLOT_FIELDS and not isinstance(given, dict):
        return f"{key}: given {shown(given)}, allowed: a mapping with 'kind' (one of {', '.join(REGISTRY.names(loc[0]))})"
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


def parse_spec(data: dict, prefix: str = "model.") -> BaseModel:
    """Validate a plain mapping into an ``EncoderSpec``; raise ``SpecError`` with one line per
    problem, each naming the key (``prefix`` + dotted path), what was given and what is allowed."""
    if not isinstance(data, dict):
        raise SpecError(f"{prefix.rstrip('.') or 'spec'}: given {type(data).__name__}, allowed: a mapping")
    if bad := _non_finite(data, prefix.rstrip(".")):
        raise SpecError(bad)
    try:
        return EncoderSpec.model_validate(data)
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

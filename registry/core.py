"""The registry of blocks: one table of entries per slot, filled by ``@register``.

A block module declares itself once::

    class RopeParams(Params):
        theta: float = 10000.0

    @register("positional", "rope", params=RopeParams, provides={"rotary"})
    class Rope(PositionalScheme): ...

``register`` adds ``kind: Literal["rope"]`` to the params model, so the slot's spec type
(built in ``registry.spec``) is a discriminated union of every registered params model and a
new block needs no edit to the spec. Compatibility is data: ``provides`` lists capabilities an
entry offers (a kernel's ``window``, ``bias``, ...), ``requires`` lists what it needs of
another slot; ``registry.rules`` checks both before anything is built.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, create_model

# The one list of slots, in the order a reader meets them. ``SLOT_KEYS`` says where each
# slot's entry sits in the spec (the activation is chosen inside the MLP).
SLOTS = ("positional", "attention", "kernel", "mlp", "activation", "norm", "placement", "head", "init")
SLOT_KEYS = {slot: slot for slot in SLOTS} | {"activation": "mlp.activation"}
# where a block comes from when it is not a plugin's
BUILTIN = "bertsmith"


class Params(BaseModel):
    """Base of every entry's params model: frozen, unknown keys refused, types strict (``true``
    is not 1, ``1.5`` is not an integer; an integer is accepted where a float belongs)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


@dataclass(frozen=True)
class SlotRef:
    """Marks a params field that holds an entry of another slot, e.g. the MLP's activation::

        activation: Annotated[Any, SlotRef("activation")] = "gelu"

    In the spec the field becomes that slot's ``{kind, ...}`` union (a bare name reads as
    ``{kind: name}``); the block receives the chosen entry's params and builds it with the
    ``make_<slot>`` callable the builder passes (``make_activation(params)``)."""

    slot: str


@dataclass(frozen=True)
class Requirement:
    """Entry needs, of the entry chosen for ``slot``, one of the capabilities ``any_of``.

    ``when`` (optional) restricts the requirement to specs where it returns True, e.g. a
    window is needed only when the attention plan has a local layer.
    """

    slot: str
    any_of: tuple[str, ...]
    why: str
    when: Callable[[Any], bool] | None = None


@dataclass(frozen=True)
class Entry:
    slot: str
    name: str
    obj: Any
    params: type[Params]
    provides: frozenset[str] = frozenset()
    requires: tuple[Requirement, ...] = ()
    doc: str = ""
    # ``check(spec) -> list[str]``: the entry's own rules on the whole spec, one line each
    check: Callable[[Any], list[str]] | None = None
    # old spellings of this entry: name -> params it stands for (``relu2`` -> relu, power 2)
    aliases: dict[str, dict[str, Any]] = field(default_factory=dict)
    # the plugin module that registered it, or ``BUILTIN``
    source: str = BUILTIN

    def defaults(self) -> dict[str, Any]:
        """Params with their defaults (required params show as ``None``)."""
        out = {}
        for name, f in self.params.model_fields.items():
            if name == "kind":
                continue
            out[name] = None if f.is_required() else f.get_default(call_default_factory=True)
        return out


@dataclass
class Registry:
    """Entries by slot and name. ``REGISTRY`` is the process-wide instance."""

    entries: dict[str, dict[str, Entry]] = field(default_factory=lambda: {s: {} for s in SLOTS})
    # bumped by every registration, so the spec knows when to rebuild its unions
    version: int = 0

    def add(self, entry: Entry) -> None:
        if entry.slot not in self.entries:
            raise ValueError(f"unknown slot {entry.slot!r}; slots are {', '.join(SLOTS)}")
        taken = {**self.entries[entry.slot], **self.alias_names(entry.slot)}
        for name in (entry.name, *entry.aliases):
            if name in taken:
                first = taken[name]
                raise RegistrationError(
                    f"{entry.slot} entry {name!r} from {entry.source} is already registered by "
                    f"{first.source}; allowed: a name no other {entry.slot} entry uses"
                )
        self.entries[entry.slot][entry.name] = entry
        self.version += 1

    def get(self, slot: str, name: str) -> Entry:
        return self.entries[slot][name]

    def remove(self, slot: str, name: str) -> None:
        """Forget an entry (tests, notebooks that redefine a block)."""
        del self.entries[slot][name]
        self.version += 1

    def alias_names(self, slot: str) -> dict[str, Entry]:
        """Old spellings of the slot's entries -> the entry each stands for."""
        return {a: e for e in self.entries[slot].values() for a in e.aliases}

    def resolve(self, slot: str, name: str) -> tuple[str, dict[str, Any]]:
        """(entry name, params an alias stands for) for ``name`` (an entry or an alias)."""
        if name in self.entries[slot]:
            return name, {}
        entry = self.alias_names(slot).get(name)
        return (entry.name, dict(entry.aliases[name])) if entry else (name, {})

    def names(self, slot: str) -> list[str]:
        return list(self.entries[slot])

    def __iter__(self):
        for slot in SLOTS:
            yield from self.entries[slot].values()


REGISTRY = Registry()


class RegistrationError(ValueError):
    """A block registered under a name that is taken (a plugin may not shadow a built-in)."""


# ``register`` stamps entries with this while a plugin module is being imported
_current_source = [BUILTIN]


def _first_doc_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def register(
    slot: str,
    name: str,
    params: type[Params] = Params,
    provides: set[str] | frozenset[str] = frozenset(),
    requires: tuple[Requirement, ...] | list[Requirement] = (),
    check: Callable[[Any], list[str]] | None = None,
    aliases: dict[str, dict[str, Any]] | None = None,
):
    """Class or function decorator: make ``obj`` the ``slot`` entry called ``name``.

    The entry's params model is ``params`` with a ``kind: Literal[name]`` field added; its
    one-line doc (shown by ``bertsmith blocks``) is the first line of ``obj``'s docstring.
    ``check(spec)`` returns the entry's own problems with a whole spec (one line each, e.g.
    RoPE's ``dim`` against the head dimension); ``aliases`` maps old names to the params they
    stand for, so a recipe or ``spec.yaml`` that names them still loads.
    """

    def deco(obj):
        model = create_model(
            f"{slot.title()}_{name.replace('-', '_')}",
            __base__=params,
            kind=(Literal[name], name),
        )
        model.__doc__ = params.__doc__
        # importable under its name, so specs pickle (DDP spawn, multiprocessing launchers)
        model.__module__ = __name__
        globals()[model.__name__] = model
        REGISTRY.add(
            Entry(
                slot=slot,
                name=name,
                obj=obj,
                params=model,
                provides=frozenset(provides),
                requires=tuple(requires),
                doc=_first_doc_line(obj),
                check=check,
                aliases=dict(aliases or {}),
                source=_current_source[-1],
            )
        )
        return obj

    return deco


# called when a name is missing here (``registry.plugins`` adds ``load_plugins``): a params
# model of a plugin's block that this process has not registered yet, met while unpickling a
# spec in a DDP or launcher worker
on_missing_name: list[Callable[[], Any]] = []


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    for hook in on_missing_name:
        hook()
        if name in globals():
            return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

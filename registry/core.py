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

SLOTS = ("positional", "attention", "kernel", "mlp", "activation", "norm", "head", "init")


class Params(BaseModel):
    """Base of every entry's params model: frozen, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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

    def add(self, entry: Entry) -> None:
        if entry.slot not in self.entries:
            raise ValueError(f"unknown slot {entry.slot!r}; slots are {', '.join(SLOTS)}")
        if entry.name in self.entries[entry.slot]:
            raise ValueError(f"{entry.slot} entry {entry.name!r} is registered twice")
        self.entries[entry.slot][entry.name] = entry

    def get(self, slot: str, name: str) -> Entry:
        return self.entries[slot][name]

    def names(self, slot: str) -> list[str]:
        return list(self.entries[slot])

    def __iter__(self):
        for slot in SLOTS:
            yield from self.entries[slot].values()


REGISTRY = Registry()


def _first_doc_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def register(
    slot: str,
    name: str,
    params: type[Params] = Params,
    provides: set[str] | frozenset[str] = frozenset(),
    requires: tuple[Requirement, ...] | list[Requirement] = (),
):
    """Class or function decorator: make ``obj`` the ``slot`` entry called ``name``.

    The entry's params model is ``params`` with a ``kind: Literal[name]`` field added; its
    one-line doc (shown by ``bertsmith blocks``) is the first line of ``obj``'s docstring.
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
            )
        )
        return obj

    return deco

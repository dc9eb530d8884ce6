"""Plugins: blocks registered by modules outside this repository.

Two ways to name them, both read by ``load_plugins()``:

- the entry-point group ``bertsmith.blocks`` of installed packages (``pyproject.toml``)::

      [project.entry-points."bertsmith.blocks"]
      squareplus = "bertsmith_squareplus"

- the environment variable ``BERTSMITH_PLUGINS=mod1,mod2``: modules importable from the
  current ``sys.path`` (the working directory is added at its end, so a researcher's
  ``my_blocks.py`` next to the recipe loads without packaging, and cannot shadow bertsmith's
  own packages).

Importing a plugin runs its ``@register(...)`` decorators; each entry it adds is stamped with
the plugin's module name (``Entry.source``), which ``bertsmith blocks`` shows and ``spec.yaml``
records. Plugins are installed or chosen code, trusted like bertsmith itself; recipes still
never name or load code. Every command and ``registry.compose/build/load`` call
``load_plugins()`` before they read a recipe or a spec; it is idempotent and cheap after the
first call.

A plugin that cannot be imported (missing, raising, or registering a name that is already
taken, e.g. shadowing a built-in block) is one ``SpecError`` line naming it; the entries it
registered before failing are removed again.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from bertsmith.registry.core import BUILTIN, REGISTRY, SLOT_KEYS, SLOTS, _current_source, on_missing_name
from bertsmith.registry.errors import SpecError, shown

ENTRY_POINT_GROUP = "bertsmith.blocks"
ENV = "BERTSMITH_PLUGINS"

# module name -> where it was named ("entry point NAME (DIST)" or "BERTSMITH_PLUGINS")
_loaded: dict[str, str] = {}
_entry_points: list[tuple[str, str]] | None = None  # read once: installed packages do not change


def _from_entry_points() -> list[tuple[str, str]]:
    """(module, origin) for every entry point of the group, sorted by name (stable order)."""
    global _entry_points
    if _entry_points is None:
        from importlib.metadata import entry_points

        found = []
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.name, e.value)):
            dist = getattr(getattr(ep, "dist", None), "name", None)
            origin = f"entry point {ep.name!r}" + (f" of {dist}" if dist else "")
            found.append((ep.value.split(":", 1)[0].strip(), origin))
        _entry_points = found
    return _entry_points


def _from_env() -> list[tuple[str, str]]:
    text = os.environ.get(ENV, "")
    return [(m.strip(), ENV) for m in text.split(",") if m.strip()]


def plugin_modules() -> list[tuple[str, str]]:
    """(module, origin) of every plugin named now: entry points first, then the variable."""
    out: dict[str, str] = {}
    for module, origin in [*_from_entry_points(), *_from_env()]:
        out.setdefault(module, origin)
    return list(out.items())


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    line = text.splitlines()[0].strip()
    return line if len(line) <= 300 else line[:297] + "..."


def _snapshot() -> dict[str, dict[str, Any]]:
    return {slot: dict(REGISTRY.entries[slot]) for slot in REGISTRY.entries}


def _restore(snapshot: dict[str, dict[str, Any]]) -> None:
    for slot, entries in snapshot.items():
        REGISTRY.entries[slot].clear()
        REGISTRY.entries[slot].update(entries)


def _import(module: str) -> None:
    """Import ``module`` with ``register`` stamping its entries; one line if it fails."""
    if not all(part.isidentifier() for part in module.split(".")):
        raise SpecError(f"plugin {shown(module)}: not a module name, allowed: dotted Python identifiers")
    before = _snapshot()
    _current_source.append(module)
    try:
        importlib.import_module(module)
    except (Exception, SystemExit) as e:  # any failure of foreign code is the plugin's, one line
        _restore(before)
        for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
            del sys.modules[name]  # so a later call reports the same error, not a half import
        raise SpecError(f"plugin {module!r}: {_first_line(e)}") from None
    finally:
        _current_source.pop()


def _refresh() -> None:
    """Make everything built from the registry see the new entries: the spec's unions and
    the Hydra options ``model/<slot>=<name>``."""
    if "bertsmith.registry.spec" in sys.modules:
        sys.modules["bertsmith.registry.spec"].refresh_spec()
    if "bertsmith.registry.composer" in sys.modules:
        sys.modules["bertsmith.registry.composer"].register_configs()


def load_plugins() -> list[str]:
    """Import every plugin not imported yet (entry points, then ``BERTSMITH_PLUGINS``);
    returns the plugin modules loaded so far. Idempotent; raises ``SpecError`` (one line
    naming the plugin) when one cannot be imported."""
    from bertsmith import blocks  # noqa: F401  (built-ins first: a plugin may not take their names)

    new = False
    todo = plugin_modules()
    if any(origin == ENV for _, origin in todo):
        # as ``python -m`` does for the working directory, but last: a user's blocks.py or
        # train.py must not shadow bertsmith's packages
        cwd = os.getcwd()
        if cwd not in sys.path and "" not in sys.path:
            sys.path.append(cwd)
    try:
        for module, origin in todo:
            if module in _loaded:
                continue
            _import(module)
            _loaded[module] = origin
            new = True
    finally:
        if new:
            _refresh()
    return list(_loaded)


def loaded() -> dict[str, str]:
    """Plugin modules imported so far -> where each was named."""
    return dict(_loaded)


# --- what a spec owes to plugins ---------------------------------------------------------------


def _get(data: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data


def _kind_of(node: Any) -> str | None:
    if isinstance(node, str):
        return node
    if isinstance(node, dict) and isinstance(node.get("kind"), str):
        return node["kind"]
    return getattr(node, "kind", None) if not isinstance(node, (dict, list)) else None


def slot_nodes(data: Any) -> list[tuple[str, str, str]]:
    """(spec key, slot, entry name) of every block a spec or recipe mapping names: each slot
    at its key (``SLOT_KEYS``), and slots held inside another entry's params (a ``SlotRef``
    field, e.g. the MLM head's ``activation``). ``data`` is a mapping or an ``EncoderSpec``."""
    if hasattr(data, "model_dump"):
        data = data.model_dump(mode="json")
    out: dict[str, tuple[str, str, str]] = {}
    todo = [(SLOT_KEYS[slot], slot) for slot in SLOTS]
    while todo:
        key, slot = todo.pop(0)
        kind = _kind_of(_get(data, key))
        if kind is None or key in out:
            continue
        name, _ = REGISTRY.resolve(slot, kind)
        out[key] = (key, slot, name)
        entry = REGISTRY.entries[slot].get(name)
        for field, target in (_ref_fields(entry.params) if entry else {}).items():
            todo.append((f"{key}.{field}", target))
    return list(out.values())


def _ref_fields(params) -> dict[str, str]:
    """Fields of a params model holding another slot's entry (``SlotRef``): name -> slot.
    The spec gives such fields the slot's union in a subclass; the mark stays on the base."""
    import bertsmith.registry.core as core

    ref_type = getattr(core, "SlotRef", None)
    if ref_type is None:
        return {}
    out: dict[str, str] = {}
    for cls in params.__mro__:
        for name, f in (getattr(cls, "model_fields", None) or {}).items():
            ref = next((m for m in f.metadata if isinstance(m, ref_type)), None)
            if ref is not None and name in params.model_fields:
                out.setdefault(name, ref.slot)
    return out


def plugin_sources(spec) -> dict[str, str]:
    """Spec key -> plugin module for every block of ``spec`` that is not built in (empty
    when the spec uses built-ins only). ``registry.save`` records it in ``spec.yaml`` as
    ``plugins:``, so a reader knows what to install."""
    out = {}
    for key, slot, name in slot_nodes(spec):
        entry = REGISTRY.entries[slot].get(name)
        if entry is not None and entry.source != BUILTIN:
            out[key] = entry.source
    return out


def missing_plugin_line(key: str, kind: str, plugin: str, prefix: str = "spec.") -> str:
    """One line for a block whose plugin is not loaded."""
    return (
        f"{prefix}{key}.kind: given {shown(kind)} from plugin {plugin!r}, which is not loaded; "
        f"allowed: install the package that provides it, or set {ENV}={plugin}"
    )


def missing_plugin_lines(data: Any, recorded: Any, prefix: str = "spec.") -> list[str]:
    """Lines for the blocks of ``data`` (a spec mapping, e.g. ``spec.yaml``) that ``recorded``
    (its ``plugins:`` mapping, spec key -> module) attributes to a plugin that is not loaded
    (call ``load_plugins()`` first); an empty list when every block is known."""
    if recorded in (None, {}):
        return []
    if not isinstance(recorded, dict) or not all(isinstance(v, str) for v in recorded.values()):
        return [f"{prefix}plugins: given {shown(recorded)}, allowed: a mapping of spec key -> plugin module"]
    lines = []
    for key, plugin in recorded.items():
        kind = _kind_of(_get(data, str(key)))
        slot = next((s for s in SLOTS if SLOT_KEYS[s] == key), None)
        if slot is None:  # a slot held inside another entry: find it by walking the spec
            slot = next((s for k, s, _ in slot_nodes(data) if k == key), None)
        if kind is None or slot is None:
            continue  # the spec's own validation names a missing or misplaced block
        name, _ = REGISTRY.resolve(slot, kind)
        if name not in REGISTRY.entries[slot]:
            lines.append(missing_plugin_line(str(key), kind, plugin, prefix))
    return lines


on_missing_name.append(load_plugins)  # see registry.core.on_missing_name

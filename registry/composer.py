"""``compose(recipe, overrides) -> EncoderSpec`` through Hydra's compose API.

A recipe is a name under ``recipes/model/`` or a path to a YAML file. Overrides use one
syntax everywhere: ``model/positional=alibi`` swaps a slot's block, ``model.d_model=512``
sets a value. Setting a value is allowed for any key the spec knows, even one the recipe
does not state (defaults live in the params models), so ``model.x=`` overrides are passed to
Hydra as ``++model.x=``; the spec then rejects unknown keys with the nearest match.

Every registered entry is a Hydra option ``model/<slot>=<name>`` without a YAML file: the
options are generated from the registry into Hydra's ConfigStore (``register_configs``),
each the node ``{kind: <name>}`` at the slot's key (``model.mlp.activation`` for the
activation). A YAML file under ``recipes/model/<slot>/`` exists only for a preset with values.

A slot swapped on the command line always wins over the recipe body: the swap is applied
after composition (``apply_swaps``), whatever form the recipe has — a family recipe, a recipe
that extends one and states the slot in its body after ``_self_``, or a standalone recipe
without a defaults list (the form ``inspect`` and ``export --to recipe`` print). Where a swap
cannot apply, one line says why.

When a recipe or an override swaps a slot's block, the inherited settings that belong to
another block of that slot are dropped (``modernbert-base model/positional=alibi`` drops the
RoPE thetas, as does a recipe that extends modernbert-base with ``override positional:
alibi``). A key no block of the slot knows is still an error (a typo), and settings given
explicitly on the command line are always kept and validated.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from bertsmith.registry.core import REGISTRY, SLOT_KEYS, SLOTS
from bertsmith.registry.errors import SpecError, choice, nearest, shown, unusual_characters
from bertsmith.registry.spec import parse_spec
from bertsmith.registry.yamlfile import read_yaml

RECIPES = Path(__file__).resolve().parent.parent / "recipes"

# `model/<slot>=<name>`; `+model/...` and `++model/...` (Hydra's own hint) read the same
_GROUP = re.compile(r"^\+{0,2}model/(?P<slot>[^=@]*)=(?P<name>.*)$", re.S)
_VALUE = re.compile(r"^(?P<pfx>\+{0,2})model\.(?P<path>[^=]+)=(?P<value>.*)$", re.S)


def model_names() -> list[str]:
    """Every model recipe under ``recipes/model/``."""
    return sorted(p.stem for p in (RECIPES / "model").glob("*.yaml"))


# --- slot options: registry entries, their old names, and preset files -------------------------


def presets(slot: str) -> list[str]:
    """Preset files of ``slot`` (``recipes/model/<slot>/<name>.yaml``: an entry with values)."""
    return sorted(p.stem for p in (RECIPES / "model" / slot).glob("*.yaml"))


def slot_options(slot: str) -> list[str]:
    """What ``model/<slot>=`` and a recipe's ``<slot>: <name>`` default may name: every
    entry, every old name of one (``relu2``), every preset file."""
    return list(dict.fromkeys([*REGISTRY.names(slot), *REGISTRY.alias_names(slot), *presets(slot)]))


_stored: tuple = ()


def register_configs() -> None:
    """Make every registered entry (and old name) the Hydra option ``model/<slot>=<name>``:
    the node ``{kind: <name>}`` (an old name: the entry and the params it stands for) at
    ``model.<slot key>``, in Hydra's ConfigStore. A preset file of the same name wins (it is
    not stored). Cheap when nothing was registered since the last call."""
    from hydra.core.config_store import ConfigStore

    signature = tuple((e.slot, e.name, tuple(e.aliases)) for e in REGISTRY)
    global _stored
    if signature == _stored and _in_store():
        return
    cs = ConfigStore.instance()
    for slot in SLOTS:
        files = set(presets(slot))
        for name in [*REGISTRY.names(slot), *REGISTRY.alias_names(slot)]:
            if name in files:
                continue
            entry, implied = REGISTRY.resolve(slot, name)
            cs.store(
                group=f"model/{slot}",
                name=name,
                node={"kind": entry, **implied},
                package=f"model.{SLOT_KEYS[slot]}",
                provider="bertsmith",
            )
    _stored = signature


def _in_store() -> bool:
    """Whether the ConfigStore still holds our options (a test may have cleared it)."""
    from hydra.core.config_store import ConfigStore

    groups = ConfigStore.instance().repo.get("model", {})
    return all(
        f"{names[0]}.yaml" in groups.get(slot, {}) or names[0] in presets(slot)
        for slot in SLOTS
        if (names := REGISTRY.names(slot))
    )


def prepare() -> None:
    """Before any recipe is composed: load plugins, then generate the slot options."""
    from bertsmith.registry.plugins import load_plugins

    load_plugins()
    register_configs()


_PACKAGE = re.compile(r"^\s*#\s*@package\b\s*(?P<package>\S*)")


def _read_yaml(path: Path, what: str) -> tuple[dict, str]:
    """(mapping, text) of a YAML file; one line for a missing, empty or broken file."""
    data = read_yaml(path, what)
    text = path.read_text(encoding="utf-8")
    if data is None:
        raise SpecError(f"{what}: given {str(path)!r}, allowed: a non-empty recipe (the file is empty)")
    if not isinstance(data, dict):
        raise SpecError(f"{what}: given {str(path)!r}, allowed: a YAML mapping, not a {type(data).__name__}")
    return data, text


def read_recipe_file(path: Path) -> dict:
    """Load a recipe file's YAML safely; one clear line for a missing, empty or broken file.

    A recipe file is data about the model: it may not move itself out of the ``model``
    package (``# @package _global_`` would let it set ``hydra.callbacks``, which Hydra
    instantiates) nor retarget or include itself through its defaults list."""
    if not path.is_file():
        raise SpecError(
            f"model: given {str(path)!r}, allowed: an existing recipe file or one of "
            f"{', '.join(model_names())}"
        )
    data, text = _read_yaml(path, "model")
    for line in text.splitlines():
        if not line.strip().startswith("#") and line.strip():
            break  # Hydra reads directives from the leading comments only
        if (m := _PACKAGE.match(line)) and m["package"] not in ("model", "_group_"):
            raise SpecError(
                f"model: given {str(path)!r} with '# @package {m['package']}', allowed: no @package "
                "line (a recipe file configures the model only)"
            )
    _check_defaults(path, data.get("defaults"))
    return data


def _check_defaults(path: Path, defaults) -> None:
    """A recipe file's defaults may name base recipes (``recipes/model/``) and one block per
    slot (``positional: rope``, ``override positional: alibi``), nothing else: no
    ``@package`` retargeting, no absolute paths into other groups, no reference to itself.
    A block is a registered entry, an old name of one or a preset file (the same options
    ``model/<slot>=`` takes). Names are checked here so that a typo is the same one line in
    every command."""
    if defaults is None:
        return
    where = f"model: given {str(path)!r}"
    if not isinstance(defaults, list):
        raise SpecError(
            f"{where} whose defaults is a {type(defaults).__name__}, allowed: a list "
            "(e.g. [modernbert-base, {override positional: alibi}, _self_])"
        )
    for entry in defaults:
        if isinstance(entry, str):
            if entry != "_self_" and entry not in model_names():
                hint = ""
                if "=" in entry or ":" in entry:
                    hint = " (a slot's block is written 'slot: name', a mapping)"
                raise SpecError(
                    f"{where} whose defaults name {shown(entry)}, allowed: _self_ or a recipe "
                    f"({', '.join(model_names())}){nearest(entry, model_names())}{hint}"
                )
            continue
        if not isinstance(entry, dict) or len(entry) != 1:
            raise SpecError(
                f"{where} with defaults entry {shown(entry)}, allowed: a name or one 'slot: block'"
            )
        ((key, value),) = entry.items()
        group = str(key).removeprefix("override ").removeprefix("optional ").strip()
        if group not in SLOTS:
            raise SpecError(
                f"{where} whose defaults name the group {shown(str(key))}, allowed: "
                f"{', '.join(SLOTS)}, each optionally after 'override '{nearest(group, SLOTS)}"
            )
        options = slot_options(group)
        if value is not None and value not in options:
            raise SpecError(
                f"{where} whose defaults name {group} {shown(value)}, allowed: "
                f"{', '.join(options)}{nearest(value, options)}"
            )


def _groups_in_tree(data: dict, seen: frozenset[str] = frozenset()) -> set[str]:
    """Slots a recipe's defaults tree selects (its own defaults and its base recipes')."""
    found: set[str] = set()
    for entry in data.get("defaults") or []:
        if isinstance(entry, str) and entry != "_self_" and entry not in seen:
            base = RECIPES / "model" / f"{entry}.yaml"
            if base.is_file():
                found |= _groups_in_tree(_read_yaml(base, "model")[0], seen | {entry})
        elif isinstance(entry, dict) and len(entry) == 1:
            (key,) = entry
            found.add(str(key).removeprefix("override ").removeprefix("optional ").strip())
    return found


def missing_slots(recipe: str | dict) -> list[str]:
    """Slots that ``recipe`` (a name under ``recipes/model/`` or a recipe mapping) selects
    nowhere in its defaults tree: ``model/<slot>=`` has nothing there for Hydra to replace."""
    data = (
        recipe if isinstance(recipe, dict) else _read_yaml(RECIPES / "model" / f"{recipe}.yaml", "model")[0]
    )
    found = _groups_in_tree(data)
    return [s for s in SLOTS if s not in found and REGISTRY.names(s)]


def swappable_copy(path: Path, tmp: Path, name: str) -> str:
    """Copy the recipe at ``path`` to ``tmp/model/<name>.yaml`` for Hydra, its defaults list
    naming every slot (``<slot>: null`` where its tree selects none), so that Hydra accepts
    ``model/<slot>=...`` (a sweep included) for a recipe of any form; the swap itself is
    applied after composition (``apply_swaps``). Returns the option name."""
    data = read_recipe_file(path)
    missing = missing_slots(data)
    (tmp / "model").mkdir(parents=True, exist_ok=True)
    out = tmp / "model" / f"{name}.yaml"
    if not missing:
        shutil.copyfile(path, out)
        return name
    own = data.get("defaults")
    # without a defaults list the body is all there is: it comes last, as Hydra would put it
    data["defaults"] = [{s: None} for s in missing] + (own if own is not None else ["_self_"])
    out.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return name


def file_option_name(path: Path) -> str:
    return f"_file_{re.sub(r'[^A-Za-z0-9_-]', '_', path.stem)}"


def recipe_path(recipe: str) -> Path:
    """The recipe file ``recipe`` names, symbolic links resolved; a loop of links is one line
    (a missing file is ``read_recipe_file``'s)."""
    path = Path(recipe).expanduser()
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # ELOOP: RuntimeError before Python 3.13
        raise SpecError(
            f"model: given {str(path.absolute())!r}, allowed: an existing recipe file "
            "(it is a loop of symbolic links)"
        ) from None


@contextmanager
def _search_dir_for(recipe: str):
    """Yield (name, extra search dir or None) so Hydra finds ``recipe`` as a ``model`` option."""
    if recipe.endswith((".yaml", ".yml")) or "/" in recipe or Path(recipe).is_file():
        path = recipe_path(recipe)
        read_recipe_file(path)
        tmp = Path(tempfile.mkdtemp(prefix="bertsmith-recipe-"))
        try:
            (tmp / "model").mkdir()
            name = file_option_name(path)
            shutil.copyfile(path, tmp / "model" / f"{name}.yaml")
            yield name, tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        if recipe not in model_names():
            raise SpecError(choice("model", recipe, model_names()))
        yield recipe, None


# --- overrides ---------------------------------------------------------------------------------


def parse_swap(ov: str) -> tuple[str, list[str]] | None:
    """(slot, names) of a ``model/<slot>=a[,b]`` override, checked against the options; None
    for any other override."""
    m = _GROUP.match(ov)
    if not m:
        return None
    slot, value = m["slot"], m["name"]
    if slot not in SLOTS:
        raise SpecError(choice("model/<slot>", slot, SLOTS))
    names = [n.strip() for n in value.split(",")]  # a multirun sweep lists several
    for one in names:
        if one not in slot_options(slot):
            raise SpecError(choice(f"model/{slot}", one, slot_options(slot)))
    return slot, names


def hydra_overrides(overrides: list[str], others: bool = False) -> tuple[list[str], set[str]]:
    """Rewrite user overrides for Hydra: (overrides, keys set explicitly).

    ``model/<slot>=`` (also written ``+model/<slot>=``) is passed on as ``model/<slot>=``;
    ``model.<key>=`` as ``++model.<key>=``. ``others``: pass overrides that are not about the
    model through unchanged (``train``); otherwise they are an error (``inspect``, ``validate``)."""
    out, explicit = [], set()
    for ov in overrides:
        if ov.startswith("~model/"):
            slot = ov[len("~model/") :].split("=", 1)[0]
            raise SpecError(
                f"model/{slot}: given {shown(ov)}, allowed: model/{slot}=<name> (a slot's block is "
                "swapped, not deleted)"
            )
        if re.match(r"^\+{0,2}model/[^=]*@", ov):
            raise SpecError(
                f"override: given {shown(ov)}, allowed: model/<slot>=<name> (a block sits at its "
                "slot's key; @package is not taken)"
            )
        if swap := parse_swap(ov):
            slot, names = swap
            out.append(f"model/{slot}={','.join(names)}")
        elif m := _VALUE.match(ov):
            _check_syntax(ov)
            explicit.add(m["path"].strip())
            out.append(f"++model.{m['path']}={m['value']}")
        elif others:
            _check_syntax(ov)
            out.append(ov)
        else:
            raise SpecError(f"override: given {ov!r}, allowed: model/<slot>=<name> or model.<key>=<value>")
    return out, explicit


def model_overrides(overrides: list[str], sweep: bool = False) -> tuple[dict[str, str], set[str]]:
    """(slot swaps, keys set explicitly) of one run's overrides (a sweep's job has one value
    each; ``sweep``: the command line of a grid, where a swap may list several, ``a,b``). A
    slot swapped twice, or swapped and its ``kind`` also set, is one line."""
    swaps: dict[str, str] = {}
    explicit: dict[str, str] = {}
    for ov in overrides:
        if swap := parse_swap(ov):
            slot, names = swap
            if len(names) != 1 and not sweep:
                raise SpecError(
                    f"model/{slot}: given {','.join(names)!r}, allowed: one name (several are a sweep: "
                    "bertsmith train -m ...)"
                )
            value = ",".join(names)
            if slot in swaps and swaps[slot] != value:
                raise SpecError(
                    f"model/{slot}: given {swaps[slot]!r} and {value!r}, allowed: one block per slot"
                )
            swaps[slot] = value
        elif m := _VALUE.match(ov):
            explicit[m["path"].strip()] = m["value"]
    for slot, name in swaps.items():
        key = SLOT_KEYS[slot]
        for set_key in (f"{key}.kind", key):
            if set_key in explicit:
                raise SpecError(
                    f"model/{slot}: given {name!r} and model.{set_key}={explicit[set_key]}, "
                    f"allowed: one of them"
                )
    return swaps, set(explicit)


def _check_syntax(ov: str) -> None:
    """One line naming the override Hydra's grammar cannot read (instead of Hydra's
    lexer message about the whole command)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    # model.x=... is passed on as ++model.x=..., which reads the same
    try:
        OverridesParser.create().parse_override(ov)
    except HydraException as e:
        why = " ".join(str(e).split())[:120]
        raise SpecError(
            f"override: given {shown(ov)}, allowed: key=value in Hydra's override syntax "
            f"(quote values with special characters; {why}){unusual_characters(ov)}"
        ) from None


def reject_targets(node, path: str = "model") -> None:
    """Refuse ``_target_`` anywhere: recipes cannot name Python objects to import or call."""
    if isinstance(node, dict):
        for k, v in node.items():
            key = f"{path}.{k}" if path else str(k)
            if str(k) == "_target_":
                raise SpecError(
                    f"{key}: given {v!r}, allowed: nothing; recipes choose blocks and "
                    "settings by name and cannot name Python objects"
                )
            reject_targets(v, key)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            reject_targets(v, f"{path}[{i}]")


# --- after composition: swaps, foreign settings, misplaced keys --------------------------------


def _fields(slot: str, name: str) -> set[str]:
    entry = REGISTRY.entries[slot].get(name)
    return set(entry.params.model_fields) if entry else set()


def _slot_fields(slot: str) -> set[str]:
    return {f for e in REGISTRY.entries[slot].values() for f in e.params.model_fields}


def _swap_node(slot: str, name: str) -> dict:
    """The node ``model/<slot>=<name>`` puts at the slot's key: ``{kind: name}``, an old
    name's entry and params, or a preset file's mapping."""
    if name in presets(slot):
        path = RECIPES / "model" / slot / f"{name}.yaml"
        data, _ = _read_yaml(path, f"model/{slot}")
        if not isinstance(data.get("kind"), str):
            raise SpecError(
                f"model/{slot}: preset {str(path)!r} has no 'kind', allowed: a mapping with kind "
                f"(one of {', '.join(REGISTRY.names(slot))}) and its values"
            )
        try:
            return OmegaConf.to_container(OmegaConf.create(data), resolve=True)
        except Exception as e:  # an interpolation that needs the rest of the recipe
            raise SpecError(
                f"model/{slot}: preset {str(path)!r} could not be read on its own: {' '.join(str(e).split())[:200]}"
            ) from None
    entry, implied = REGISTRY.resolve(slot, name)
    return {"kind": entry, **implied}


def _spec_default(key: str):
    """The spec's default for a top-level key, as plain data (None if it has none)."""

    from bertsmith import registry

    f = registry.spec.EncoderSpec.model_fields.get(key)
    if f is None or f.is_required():
        return None
    value = f.get_default(call_default_factory=True)
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


def apply_swaps(model: dict, swaps: dict[str, str], explicit: set[str] = frozenset()) -> None:
    """Put each swapped slot's block in place, after the recipe body: ``model/<slot>=X``
    always yields X. Settings of the old block that X also takes are kept (``norm.eps``),
    those only another block of the slot takes are dropped (RoPE's thetas), unknown ones are
    kept for the spec to name (a typo); values the swap brings (an old name's or a preset's)
    win over the recipe's, values set on the command line win over both."""
    for slot, name in swaps.items():
        key = SLOT_KEYS[slot]
        *parents, last = key.split(".")
        node = model
        for i, part in enumerate(parents):
            child = node.get(part)
            if child is None and i == 0:  # the recipe leaves the parent to its default
                child = node[part] = _spec_default(part)
            elif isinstance(child, str):  # the parent's entry by its bare name
                child = node[part] = {"kind": child}
            if not isinstance(child, dict):
                at = ".".join(parents[: i + 1])
                raise SpecError(
                    f"model/{slot}: given {name!r}, cannot apply: model.{at} is {shown(child)}, "
                    f"allowed: a mapping with 'kind' there"
                )
            node = child
        new = _swap_node(slot, name)
        old = node.get(last)
        if isinstance(old, str):
            old = {"kind": old}
        if old is not None and not isinstance(old, dict):
            raise SpecError(
                f"model/{slot}: given {name!r}, cannot apply: model.{key} is {shown(old)}, "
                "allowed: a mapping with 'kind' there"
            )
        own, others = _fields(slot, new["kind"]), _slot_fields(slot)
        for k, v in (old or {}).items():
            if k == "kind":
                continue
            if f"{key}.{k}" in explicit or (k not in new and (k in own or k not in others)):
                new[k] = v
        node[last] = new


def _slot_nodes(model: dict) -> list[tuple[str, str, dict]]:
    """(key, slot, node) of every block mapping in ``model`` whose kind is registered."""
    from bertsmith.registry.plugins import _get, slot_nodes

    out = []
    for key, slot, name in slot_nodes(model):
        node = _get(model, key)
        if isinstance(node, dict) and name in REGISTRY.entries[slot]:
            out.append((key, slot, node))
    return out


def _drop_foreign(model: dict, explicit: set[str]) -> None:
    """Drop settings that belong to another block of the same slot (see module doc)."""
    for key, slot, node in _slot_nodes(model):
        name, implied = REGISTRY.resolve(slot, node["kind"])
        own = _fields(slot, name) | set(implied)
        others = _slot_fields(slot)
        for k in list(node):
            if k not in own and k in others and f"{key}.{k}" not in explicit:
                del node[k]


def _misplaced(model: dict) -> list[str]:
    """Lines for settings written where they do not belong but that a block elsewhere takes
    (``theta`` at the top of a recipe, ``power`` in ``mlp`` instead of ``mlp.activation``)."""

    from bertsmith import registry

    top = set(registry.spec.EncoderSpec.model_fields)
    where: dict[str, list[str]] = {}
    for slot in SLOTS:
        for e in REGISTRY.entries[slot].values():
            for f in e.params.model_fields:
                if f != "kind":
                    where.setdefault(f, [])
                    loc = f"{SLOT_KEYS[slot]}.{f}"
                    if loc not in where[f]:
                        where[f].append(loc)

    def line(key: str, k: str, inside: str | None) -> str | None:
        places = [p for p in where.get(k, []) if p != f"{inside}.{k}"]
        if not places or k in SLOTS:
            return None
        return f"model.{key}: misplaced; it is a block setting that belongs at " + " or ".join(
            f"model.{p}" for p in places[:3]
        )

    lines = []
    for k in model:
        if k not in top and (ln := line(str(k), str(k), None)):
            lines.append(ln)
    for key, slot, node in _slot_nodes(model):
        known = _slot_fields(slot)
        for k in node:
            if k not in known and (ln := line(f"{key}.{k}", str(k), key)):
                lines.append(ln)
    return lines


def finish_model_config(data: dict, explicit: set[str], swaps: dict[str, str] | None = None) -> dict:
    """Refuse ``_target_``; apply the command line's slot swaps after the recipe body; drop
    settings that belong to another block of a slot; name misplaced settings."""
    reject_targets(data)
    data.pop("defaults", None)
    if swaps:
        apply_swaps(data, swaps, explicit)
    _drop_foreign(data, explicit)
    _drop_inherited_skip_first(data, explicit)
    if lines := _misplaced(data):
        raise SpecError(lines)
    return data


def _drop_inherited_skip_first(model: dict, explicit: set[str]) -> None:
    """``norm.skip_first`` inherited from a pre-norm recipe (ModernBERT) means nothing under a
    placement that has no first norm to skip (``modernbert-tiny model/placement=deepnorm``):
    like a swapped block's settings, it is dropped; given on the command line, it is kept and
    refused by the rules."""
    node, norm = model.get("placement"), model.get("norm")
    kind = node.get("kind") if isinstance(node, dict) else node
    if not isinstance(norm, dict) or not norm.get("skip_first") or "norm.skip_first" in explicit:
        return
    entry = REGISTRY.entries["placement"].get(kind) if isinstance(kind, str) else None
    if entry is not None and "skip_first" not in entry.provides:
        norm["skip_first"] = False


def compose_config(recipe: str, overrides: list[str] = ()) -> dict:
    """The recipe with overrides applied, as a plain dict (before the spec parses it)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    prepare()
    hydra_ovs, explicit = hydra_overrides(list(overrides))
    swaps, _ = model_overrides(list(overrides))
    # swaps are applied after composition (they must beat the recipe body), not by Hydra
    hydra_ovs = [o for o in hydra_ovs if not _GROUP.match(o)]
    with _search_dir_for(recipe) as (name, extra):
        ovs = [f"model={name}", *hydra_ovs]
        if extra is not None:
            ovs.append(f"hydra.searchpath=[file://{extra}]")
        try:
            with initialize_config_dir(config_dir=str(RECIPES), version_base="1.3"):
                cfg = hydra_compose(config_name="compose", overrides=ovs)
        except (HydraException, OmegaConfBaseException, ValueError) as e:
            raise SpecError(
                f"model: recipe {recipe!r} could not be composed: {' '.join(str(e).split())[:300]}"
            ) from None
        except RecursionError:
            raise SpecError(
                f"model: recipe {recipe!r} could not be composed: its defaults or interpolations "
                "refer back to themselves"
            ) from None
    model = cfg.model
    if not isinstance(model, DictConfig):
        raise SpecError(f"model: given {recipe!r}, allowed: a recipe that is a YAML mapping")
    try:
        data = OmegaConf.to_container(model, resolve=True)
    except OmegaConfBaseException as e:
        raise SpecError(f"model: interpolation failed: {' '.join(str(e).split())[:300]}") from None
    except RecursionError:
        raise SpecError("model: interpolation failed: a value refers back to itself") from None
    return finish_model_config(data, explicit, swaps)


def compose(recipe: str, overrides: list[str] = ()):
    """Compose ``recipe`` with ``overrides`` into a frozen ``EncoderSpec``.

    Raises ``SpecError`` (one line per problem) for anything the user can fix.
    """
    return parse_spec(compose_config(recipe, overrides))

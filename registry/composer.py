"""``compose(recipe, overrides) -> EncoderSpec`` through Hydra's compose API.

A recipe is a name under ``recipes/model/`` or a path to a YAML file. Overrides use one
syntax everywhere: ``model/positional=alibi`` swaps a slot's block, ``model.d_model=512``
sets a value. Setting a value is allowed for any key the spec knows, even one the recipe
does not state (defaults live in the params models), so ``model.x=`` overrides are passed to
Hydra as ``++model.x=``; the spec then rejects unknown keys with the nearest match.

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

from registry.core import REGISTRY
from registry.errors import SpecError, choice, nearest, shown, unusual_characters
from registry.spec import SLOT_FIELDS, parse_spec

RECIPES = Path(__file__).resolve().parent.parent / "recipes"

_GROUP = re.compile(r"^model/(?P<slot>[a-z_]+)=(?P<name>.*)$")
_VALUE = re.compile(r"^(?P<pfx>\+{0,2})model\.(?P<path>[^=]+)=(?P<value>.*)$", re.S)


def model_names() -> list[str]:
    """Every model recipe under ``recipes/model/``."""
    return sorted(p.stem for p in (RECIPES / "model").glob("*.yaml"))


class _UniqueKeyLoader(yaml.SafeLoader):
    """``safe_load`` that refuses a key given twice in one mapping (Hydra refuses it later,
    with a traceback; plain PyYAML would silently keep the last value)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_PACKAGE = re.compile(r"^\s*#\s*@package\b\s*(?P<package>\S*)")


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
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except UnicodeDecodeError:
        raise SpecError(f"model: given {str(path)!r}, allowed: a UTF-8 YAML file") from None
    except OSError as e:
        raise SpecError(f"model: given {str(path)!r}, allowed: a readable file ({e.strerror})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        what = getattr(e, "problem", None) or "parse error"
        raise SpecError(f"model: given {str(path)!r}, allowed: valid YAML ({what}{where})") from None
    except RecursionError:  # deeply nested flow collections
        raise SpecError(f"model: given {str(path)!r}, allowed: YAML nested less deeply") from None
    if data is None:
        raise SpecError(f"model: given {str(path)!r}, allowed: a non-empty recipe (the file is empty)")
    if not isinstance(data, dict):
        raise SpecError(f"model: given {str(path)!r}, allowed: a YAML mapping, not a {type(data).__name__}")
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
    slot group (``positional: rope``, ``override positional: alibi``), nothing else: no
    ``@package`` retargeting, no absolute paths into other groups, no reference to itself.
    Names are checked here so that a typo is the same one line in every command."""
    if defaults is None:
        return
    where = f"model: given {str(path)!r}"
    if not isinstance(defaults, list):
        raise SpecError(
            f"{where} whose defaults is a {type(defaults).__name__}, allowed: a list "
            "(e.g. [modernbert-base, {override positional: alibi}, _self_])"
        )
    groups = sorted(p.name for p in (RECIPES / "model").iterdir() if p.is_dir())
    for entry in defaults:
        if isinstance(entry, str):
            if entry != "_self_" and entry not in model_names():
                raise SpecError(
                    f"{where} whose defaults name {shown(entry)}, allowed: _self_ or a recipe "
                    f"({', '.join(model_names())}){nearest(entry, model_names())}"
                )
            continue
        if not isinstance(entry, dict) or len(entry) != 1:
            raise SpecError(
                f"{where} with defaults entry {shown(entry)}, allowed: a name or one 'slot: block'"
            )
        ((key, value),) = entry.items()
        group = str(key).removeprefix("override ").removeprefix("optional ").strip()
        if group not in groups:
            raise SpecError(
                f"{where} whose defaults name the group {shown(str(key))}, allowed: "
                f"{', '.join(groups)}, each optionally after 'override '{nearest(group, groups)}"
            )
        options = sorted(p.stem for p in (RECIPES / "model" / group).glob("*.yaml"))
        if value is not None and value not in options:
            raise SpecError(
                f"{where} whose defaults name {group} {shown(value)}, allowed: "
                f"{', '.join(options)}{nearest(value, options)}"
            )


@contextmanager
def _search_dir_for(recipe: str):
    """Yield (name, extra search dir or None) so Hydra finds ``recipe`` as a ``model`` option."""
    if recipe.endswith((".yaml", ".yml")) or "/" in recipe or Path(recipe).is_file():
        path = Path(recipe).expanduser().resolve()
        read_recipe_file(path)
        tmp = Path(tempfile.mkdtemp(prefix="bertsmith-recipe-"))
        try:
            (tmp / "model").mkdir()
            name = f"_file_{re.sub(r'[^A-Za-z0-9_-]', '_', path.stem)}"
            shutil.copyfile(path, tmp / "model" / f"{name}.yaml")
            yield name, tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        if recipe not in model_names():
            raise SpecError(choice("model", recipe, model_names()))
        yield recipe, None


def hydra_overrides(overrides: list[str], others: bool = False) -> tuple[list[str], set[str]]:
    """Rewrite user overrides for Hydra: (overrides, keys set explicitly).

    ``others``: pass overrides that are not about the model through unchanged (``train``);
    otherwise they are an error (``inspect``, ``validate``)."""
    out, explicit = [], set()
    for ov in overrides:
        if m := _GROUP.match(ov):  # block names are checked against the registry below
            slot, name = m["slot"], m["name"]
            if slot not in (*SLOT_FIELDS, "activation"):
                raise SpecError(choice("model/<slot>", slot, [*SLOT_FIELDS, "activation"]))
            for one in name.split(","):  # a multirun sweep lists several
                if one not in REGISTRY.entries[slot]:
                    raise SpecError(choice(f"model/{slot}", one, REGISTRY.names(slot)))
            out.append(ov)
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


def _drop_foreign(model: dict, explicit: set[str]) -> None:
    """Drop settings that belong to another block of the same slot (see module doc)."""
    for slot in SLOT_FIELDS:
        node = model.get(slot)
        if not isinstance(node, dict) or node.get("kind") not in REGISTRY.entries[slot]:
            continue
        own = REGISTRY.get(slot, node["kind"]).params.model_fields
        others = {f for e in REGISTRY.entries[slot].values() for f in e.params.model_fields}
        for key in list(node):
            if key not in own and key in others and f"{slot}.{key}" not in explicit:
                del node[key]


def compose_config(recipe: str, overrides: list[str] = ()) -> dict:
    """The recipe with overrides applied, as a plain dict (before the spec parses it)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    hydra_ovs, explicit = hydra_overrides(list(overrides))
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
    return finish_model_config(data, explicit)


def finish_model_config(data: dict, explicit: set[str]) -> dict:
    """Refuse ``_target_``; drop settings that belong to another block of a slot."""
    reject_targets(data)
    data.pop("defaults", None)
    _drop_foreign(data, explicit)
    return data


def compose(recipe: str, overrides: list[str] = ()):
    """Compose ``recipe`` with ``overrides`` into a frozen ``EncoderSpec``.

    Raises ``SpecError`` (one line per problem) for anything the user can fix.
    """
    return parse_spec(compose_config(recipe, overrides))

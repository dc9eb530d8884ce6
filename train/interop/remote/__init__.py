"""Remote-code exports: one self-contained ``modeling_bertsmith.py`` built from bertsmith's
own sources, for compositions no transformers class holds.

The file is the concatenation of::

    train/interop/remote/stubs.py     stand-ins for registry.core / pydantic (register, Params, ...)
    blocks/<slot>.py ...       the block modules the spec uses, plus what they import
    registry/builder.py        the one builder, unchanged
    train/interop/remote/modeling.pytransformers' PreTrainedConfig / PreTrainedModel wrappers

each copied verbatim except for its imports of bertsmith modules and pydantic, which are
dropped because the names they bring are defined in the same file. The result imports only
torch, transformers and the standard library, and runs bertsmith's forward pass exactly.

A block defined outside ``blocks/`` (a plugin registered by user code), or one whose source
imports another third-party package, cannot be copied this way: ``refusals`` names its slot.
"""

from __future__ import annotations

import ast
import inspect
import sys
from importlib import import_module
from pathlib import Path

from bertsmith import registry
from bertsmith.registry.core import BUILTIN
from bertsmith.registry.errors import SpecError

ROOT = Path(__file__).resolve().parents[3]
FILE = "modeling_bertsmith.py"
# the order a reader meets the blocks in the generated file (dependencies still come first)
BLOCKS = "bertsmith.blocks"
READING_ORDER = [f"{BLOCKS}.{m}" for m in ("stream", "roles", "kernel", "positional", "attention", "encoder")]
READING_ORDER += [f"{BLOCKS}.{m}" for m in ("mlp", "activation", "norm", "placement", "head")]
OWN_PACKAGES = ("bertsmith", "pydantic")  # imports dropped from copied sources
ALLOWED_IMPORTS = {"torch", "transformers", *sys.stdlib_module_names}
# the transformers class that carries a head, by what the head provides (auto_map name,
# class in modeling.py); a head that provides ``next_sentence`` also serves AutoModelForPreTraining
HEAD_CLASSES = {
    "masked_lm": ("AutoModelForMaskedLM", "BertsmithForMaskedLM"),
    "sequence_labels": ("AutoModelForSequenceClassification", "BertsmithForSequenceClassification"),
}


def head_class(spec) -> tuple[str, str] | None:
    """(auto_map name, class) for the spec's head, or None if no remote-code class carries it."""
    provides = registry.REGISTRY.get("head", spec.head.kind).provides
    return next((cls for cap, cls in HEAD_CLASSES.items() if cap in provides), None)


def chosen_entries(spec) -> list[tuple[str, str, str]]:
    """(spec key, slot, entry name) of every block the model is built from (``init`` is not:
    exported weights are loaded, never initialised)."""
    from bertsmith.registry.rules import chosen_entries as chosen

    return [(key, entry.slot, entry.name) for key, entry, _ in chosen(spec) if entry.slot != "init"]


def _module_of(slot: str, name: str) -> str:
    return inspect.getmodule(registry.REGISTRY.get(slot, name).obj).__name__


def _path_of(module: str) -> Path:
    return Path(import_module(module).__file__)


def _imports(tree: ast.AST) -> set[str]:
    """Top-level packages a source imports, skipping ``try`` blocks (as transformers'
    ``check_imports`` does)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Try):
            return
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _foreign(path: Path) -> list[str]:
    """Third-party packages (other than torch, transformers and bertsmith's own) a file imports."""
    imported = _imports(ast.parse(path.read_text(encoding="utf-8")))
    return sorted(imported - ALLOWED_IMPORTS - set(OWN_PACKAGES) - {"__future__"})


# what a plugin's module may import of bertsmith and still be copied: the block API
PLUGIN_API = ("bertsmith.registry.core", "bertsmith.registry.errors", "pydantic", BLOCKS)


def _plugin_problem(module: str) -> str | None:
    """Why a plugin's module cannot be copied into a remote-code file, or None if it can: a
    single-file module that imports only torch, the standard library and bertsmith's block
    API (``registry.core``, ``registry.errors``, ``blocks.*``)."""
    path = _path_of(module)
    if path.name == "__init__.py":
        return "a package (only a single-file module can be copied)"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    own = {
        n.module
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom)
        and n.level == 0
        and n.module
        and n.module.split(".")[0] in OWN_PACKAGES
    }
    beyond = sorted(m for m in own if m != "bertsmith" and not m.startswith(PLUGIN_API))
    if beyond:
        return f"imports {', '.join(beyond)} (beyond the block API: bertsmith, bertsmith.blocks)"
    if extra := _foreign(path):
        return (
            f"imports {', '.join(extra)} (a remote-code export must load with torch and transformers alone)"
        )
    return None


def refusals(spec) -> list[str]:
    """One line per slot whose block cannot be copied into a remote-code file."""
    lines = []
    for key, slot, name in chosen_entries(spec):
        module = _module_of(slot, name)
        plugin = registry.REGISTRY.get(slot, name).source != BUILTIN
        if plugin and (why := _plugin_problem(module)):
            lines.append(
                f"{key}: given {name!r}, a block of plugin {module!r}, which {why}; allowed: a plugin "
                "module that needs only torch and bertsmith's block API, or a native family"
            )
        elif not plugin and not module.startswith(BLOCKS + "."):
            lines.append(
                f"{key}: given {name!r}, a block registered by module {module!r} outside bertsmith's "
                "blocks/ package; allowed: blocks from blocks/ (a remote-code export copies only their source)"
            )
        elif not plugin and (extra := _foreign(_path_of(module))):
            lines.append(
                f"{key}: given {name!r}, whose source {module.replace('.', '/')}.py imports "
                f"{', '.join(extra)}; allowed: blocks that need only torch (a remote-code export "
                "must load with torch and transformers alone)"
            )
    if spec.head is not None and head_class(spec) is None:
        able = [e.name for e in registry.REGISTRY.entries["head"].values() if e.provides & set(HEAD_CLASSES)]
        lines.append(
            f"model.head: given {spec.head.kind!r}, which no remote-code class carries; "
            f"allowed: {', '.join(able)} or none"
        )
    return lines


def _block_dependencies(module: str) -> list[str]:
    tree = ast.parse(_path_of(module).read_text(encoding="utf-8"))
    return [
        n.module
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith(BLOCKS + ".")
    ]


def modules_for(spec) -> list[str]:
    """The block modules the spec needs, each after the modules it imports."""
    wanted = [
        "bertsmith.blocks.stream",
        "bertsmith.blocks.attention",
        "bertsmith.blocks.encoder",
    ]  # the builder and its imports
    wanted += [_module_of(slot, name) for _, slot, name in chosen_entries(spec)]
    order: list[str] = []

    def add(module: str) -> None:
        if module in order:
            return
        for dep in _block_dependencies(module):
            add(dep)
        order.append(module)

    for module in sorted(
        set(wanted), key=lambda m: (READING_ORDER.index(m) if m in READING_ORDER else 99, m)
    ):
        add(module)
    return order


def _strip_own_imports(source: str) -> tuple[str, set[str]]:
    """Drop ``from __future__`` and imports of bertsmith modules / pydantic; returns the
    new source and the names those imports brought (they must be defined in the file)."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    names: set[str] = set()
    spans = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            top = node.module.split(".")[0]
            if top == "__future__" or top in OWN_PACKAGES:
                spans.append(node)
                if top != "__future__":
                    names.update(a.asname or a.name for a in node.names)
        elif isinstance(node, ast.Import) and any(a.name.split(".")[0] in OWN_PACKAGES for a in node.names):
            spans.append(node)
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    for node in sorted(spans, key=lambda n: n.lineno, reverse=True):
        # nested imports become ``pass`` so the block around them stays valid
        keep = [" " * node.col_offset + "pass\n"] if node.col_offset else []
        lines[node.lineno - 1 : node.end_lineno] = keep
    return "".join(lines), names


def _defined(tree: ast.Module) -> set[str]:
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            out.update(t.id for t in targets if isinstance(t, ast.Name))
    return out


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("bertsmith")
    except Exception:  # running from a checkout that is not installed
        return "unknown"


def _shown(path: Path) -> str:
    """A section's name: its path in this repository, or ``plugin <file>`` for a plugin's."""
    try:
        return path.relative_to(ROOT).as_posix()
    except ValueError:
        return f"plugin {path.name}"


def modeling_source(spec) -> str:
    """The self-contained ``modeling_bertsmith.py`` for ``spec`` (``SpecError`` naming the
    slot when a block cannot be copied)."""
    if lines := refusals(spec):
        raise SpecError(lines)
    files = [
        ROOT / "train" / "interop" / "remote" / "stubs.py",
        *(_path_of(m) for m in modules_for(spec)),
        ROOT / "registry" / "builder.py",
        ROOT / "train" / "interop" / "remote" / "modeling.py",
    ]
    sections, needed, owner = [], set(), {}
    for path in files:
        body, names = _strip_own_imports(path.read_text(encoding="utf-8"))
        needed |= names
        for name in _defined(ast.parse(body)):
            if name in owner:  # a bug in bertsmith's sources, not a user mistake
                raise RuntimeError(f"remote code: {name!r} is defined in both {owner[name]} and {path.name}")
            owner[name] = _shown(path)
        rel = _shown(path)
        sections.append(f"# {'-' * 20} {rel} {'-' * max(4, 70 - len(rel))}\n\n{body.strip()}\n")
    listing = "\n".join(f"    {_shown(path)}" for path in files)
    header = (
        f'"""bertsmith remote code for {spec.name!r}, generated by `bertsmith export` '
        f"(bertsmith {_version()}).\n\n"
        "Self-contained: needs torch and transformers only. The sections below are bertsmith's\n"
        "own sources, copied verbatim except for their imports of bertsmith modules and pydantic\n"
        "(the names those brought are defined in this file):\n\n"
        f"{listing}\n\n"
        "config.json's `bertsmith_spec` says which registered blocks to build, with what settings.\n"
        '"""\n\nfrom __future__ import annotations\n\n'
    )
    source = header + "\n\n".join(sections)
    tree = ast.parse(source)
    missing = needed - _defined(tree) - {"annotations"}
    if missing:
        raise RuntimeError(f"remote code: names no section defines: {', '.join(sorted(missing))}")
    foreign = _imports(tree) - ALLOWED_IMPORTS
    if foreign:
        raise RuntimeError(f"remote code imports {', '.join(sorted(foreign))}")
    compile(source, FILE, "exec")
    return source


def classes(spec) -> tuple[str, dict[str, str]]:
    """(the architecture class, the ``auto_map`` of ``config.json``) for ``spec``."""
    module = FILE.removesuffix(".py")
    auto = {"AutoConfig": f"{module}.BertsmithConfig", "AutoModel": f"{module}.BertsmithModel"}
    arch = "BertsmithModel"
    if spec.head is not None:
        auto_name, arch = head_class(spec)
        auto[auto_name] = f"{module}.{arch}"
        if "next_sentence" in registry.REGISTRY.get("head", spec.head.kind).provides:
            auto["AutoModelForPreTraining"] = f"{module}.{arch}"
    return arch, auto

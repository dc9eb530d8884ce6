"""The layering of DESIGN.md, read from the import graph with ``ast`` (imports inside
functions count too):

- ``blocks`` imports nothing of ours but ``registry.core`` / ``registry.errors`` (to register)
  and other blocks; no Hydra, OmegaConf or Lightning;
- ``registry`` imports ``blocks`` (to fill itself) but no Lightning and nothing of ``train``;
- no module imports one that (directly or through others) imports it back.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("blocks", "registry", "train")


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = "bertsmith." + ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


IMPORTS = {name: _imports(path) for name, path in MODULES.items()}


def _graph() -> dict[str, set[str]]:
    """Module -> our modules it imports (a package's own submodules and parents excluded)."""
    return {
        m: {
            x
            for x in names
            if x in MODULES and x != m and not m.startswith(x + ".") and not x.startswith(m + ".")
        }
        for m, names in IMPORTS.items()
    }


def test_blocks_import_only_the_registry_core_and_blocks():
    bad = []
    for m, names in IMPORTS.items():
        if not m.startswith("bertsmith.blocks"):
            continue
        for x in names:
            top = x.split(".")[0]
            ours = x.startswith("bertsmith.")
            if top in ("hydra", "omegaconf", "lightning", "pytorch_lightning"):
                bad.append(f"{m} imports {x}")
            elif ours and not x.startswith(
                ("bertsmith.blocks", "bertsmith.registry.core", "bertsmith.registry.errors")
            ):
                bad.append(f"{m} imports {x}")
    assert bad == []


def test_the_registry_imports_no_lightning_and_nothing_of_train():
    bad = [
        f"{m} imports {x}"
        for m, names in IMPORTS.items()
        if m.startswith("bertsmith.registry")
        for x in names
        if x.split(".")[0] in ("lightning", "pytorch_lightning") or x.startswith("bertsmith.train")
    ]
    assert bad == []


def test_no_import_cycles():
    graph = _graph()
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for x in sorted(graph[m]):
            if state.get(x) == 1:
                cycles.append(" -> ".join([*path[path.index(x) :], x]))
            elif x not in state:
                visit(x)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert cycles == []


def test_the_cycle_check_finds_a_cycle():
    """Not vacuous: a two-module cycle in a made-up graph is found by the same walk."""
    global _graph
    real = _graph
    _graph = lambda: {"a": {"b"}, "b": {"a"}}  # noqa: E731
    try:
        try:
            test_no_import_cycles()
        except AssertionError as e:
            assert "a -> b -> a" in str(e)
        else:
            raise AssertionError("the cycle a <-> b was not found")
    finally:
        _graph = real


def test_every_package_is_in_the_wheel():
    """A new room under ``train/`` (or any package folder) is listed in pyproject.toml's
    ``packages`` and ``package-dir``; otherwise an installed (non-editable) bertsmith lacks it."""
    import tomllib

    tool = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    folders = {
        "bertsmith." + ".".join(p.parent.relative_to(ROOT).parts): p.parent.relative_to(ROOT).as_posix()
        for package in PACKAGES
        for p in (ROOT / package).rglob("__init__.py")
    }
    assert set(folders) <= set(tool["packages"])
    assert {name: tool["package-dir"][name] for name in folders if name in tool["package-dir"]} == folders

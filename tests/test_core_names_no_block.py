"""The core names no block: no registered entry's name is compared against, or listed, in
``registry/``, ``blocks/encoder.py`` or ``train/``. Block-specific rules live on the entries
(``register(..., check=...)``), heads and kernels declare what they provide.

What is flagged, found with ``ast`` (so comments and docstrings do not count):
- a comparison (``==``, ``!=``, ``in``, ``not in``) of a string literal that is a registered
  entry's name with an expression that reads a spec slot's ``kind`` (``spec.head.kind``,
  ``p["kind"]``, ``head.kind``, ...);
- a tuple, list or set literal holding two or more names of entries of one slot (a list of
  head names, say).

Excepted, and why: the transformers interop modules ``train/interop/*.py`` (one per family,
import, export, the model card; not the remote-code builder under ``train/interop/remote/``)
and the bench's transformers side, ``train/tools/bench.py`` and ``bench_cases.py`` (transformers'
own ``attn_implementation`` names, which share some words with kernels), map transformers
families to specs:
which bertsmith entries a ``BertConfig`` or ``ModernBertConfig`` means is a family table, not
a rule of the core. Fine-tuning's task kinds (``classification``, ``regression``,
``token_classification``) are the task's own vocabulary, compared on ``task.kind``, which no
slot reads.
"""

from __future__ import annotations

import ast
from pathlib import Path

from bertsmith import registry  # noqa: F401  (fills the registry)
from bertsmith.registry.core import REGISTRY

ROOT = Path(__file__).resolve().parent.parent
CORE = [*sorted((ROOT / "registry").glob("*.py")), ROOT / "blocks" / "encoder.py"]
CORE += sorted(p for p in (ROOT / "train").rglob("*.py"))
INTEROP = {*(ROOT / "train" / "interop").glob("*.py"), *(ROOT / "train" / "tools").glob("bench*.py")}
NAMES = {e.name: e.slot for e in REGISTRY}
SLOT_WORDS = {*REGISTRY.entries, "p", "spec", "kind"}


def _reads_kind(node: ast.AST) -> bool:
    """Whether ``node`` reads a spec slot's ``kind`` (``x.kind`` / ``x["kind"]``), not a task's."""
    if isinstance(node, ast.Attribute) and node.attr == "kind":
        return "task" not in ast.unparse(node.value)
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
        return node.slice.value == "kind"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
        return bool(node.args) and isinstance(node.args[0], ast.Constant) and node.args[0].value == "kind"
    return False


def _names_in(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in NAMES:
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [n for elt in node.elts for n in _names_in(elt)]
    return []


def offences(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    # ``Literal["classification", ...]``: a type's own vocabulary (a task kind), not a list of entries
    typed = {
        id(n.slice)
        for n in ast.walk(tree)
        if isinstance(n, ast.Subscript) and ast.unparse(n.value).endswith("Literal")
    }
    found = []
    for node in ast.walk(tree):
        if id(node) in typed:
            continue
        where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            names = [n for side in sides for n in _names_in(side)]
            if names and any(_reads_kind(side) for side in sides):
                found.append(f"{where}: compares a slot's kind with {names}")
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            names = _names_in(node)
            slots = [NAMES[n] for n in names]
            if any(slots.count(s) >= 2 for s in set(slots)):
                found.append(f"{where}: lists entries {names}")
    return found


def test_the_core_names_no_block():
    found = [line for path in CORE if path not in INTEROP for line in offences(path)]
    assert found == []


def test_the_guard_finds_what_it_guards_against(tmp_path):
    """The check is not vacuous: each pattern it forbids is found in a file that has it."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        'if spec.head.kind == "nsp": pass\n'
        'HEADS = ("mlm", "nsp", "emd")\n'
        'if p["kind"] != "rope": pass\n'
        'if task.kind == "classification": pass\n'  # a task kind: allowed
    )
    global ROOT
    root, ROOT = ROOT, tmp_path
    try:
        found = offences(bad)
    finally:
        ROOT = root
    assert [line.split(":")[1] for line in found] == ["1", "2", "3"], found

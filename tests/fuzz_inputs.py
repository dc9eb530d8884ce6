"""Valid inputs, and the hypothesis strategies that break them, for ``tests/test_fuzz.py``.

A :class:`Case` is one mutated file: the bytes to put at a name in a copy of a valid
directory (or a special file in its place: a directory, a FIFO, a symlink, a sparse giant)
and the list of edits that made it, which is what a failure report shows.

Mutations, by format:

- YAML (recipes, ``spec.yaml``) and JSON (``config.json``, safetensors headers): the
  document is parsed and edited as a tree (a value replaced by another type: bool, float,
  huge or negative int, string, list, mapping, null, inf/nan; a key deleted or added; a value
  wrapped in a list; the whole document replaced by a scalar or a list), then written back
  and edited as text (truncated, bytes inserted or overwritten, a line duplicated — a
  duplicate key — or deleted, a tab for an indent, a BOM, UTF-16, a second document). Some
  values are placeholders expanded after writing: deep nesting (``[[[...]]]`` 100,000
  deep), integers of thousands of digits, ``1.0e+99999``, a "billion laughs" alias tree,
  megabyte strings. YAML alone also gets anchors and aliases, tags (``!!python/...``,
  ``!!binary``, ``!!set``, timestamps), merge keys, YAML 1.1 oddities (``1:20``, ``0x40``,
  ``yes``) and complex keys.
- safetensors: the 8-byte header length (0, past the end, 2**64-1, ...), the header's
  tensors (dtype, shape, data_offsets: beyond the file, reversed, overlapping; entries or
  fields removed, renamed, added), the length kept or made to lie, the file truncated,
  emptied, padded, its data made non-finite.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import struct
from pathlib import Path

import yaml
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent


class Seeds(dict):
    """label -> bytes of the valid inputs a strategy starts from (a short repr: hypothesis
    prints a strategy's arguments)."""

    def __repr__(self) -> str:
        return f"Seeds({sorted(self)})"


class Case:
    """One mutated input file: ``data`` at ``name`` in a copy of the seed directory ``seed``,
    or ``special`` (``dir``, ``fifo``, ``missing``, ``symlink:TARGET``, ``sparse:BYTES``).
    Not a dataclass: hypothesis would print every byte of a failing case, not ``__repr__``."""

    def __init__(self, seed: str, name: str, data: bytes | None, special: str | None, edits: tuple[str, ...]):
        self.seed, self.name, self.data, self.special, self.edits = seed, name, data, special, edits

    def describe(self) -> str:
        what = f"{len(self.data)} bytes" if self.data is not None else self.special
        return f"{self.seed}/{self.name} ({what}): " + ("; ".join(self.edits) or "unchanged")

    def __repr__(self) -> str:  # what hypothesis prints for a failing example
        return f"Case({self.describe()})"


def write_case(directory: Path, case: Case) -> None:
    """Put ``case`` into ``directory`` (a copy of its seed directory)."""
    p = directory / case.name
    if p.is_symlink() or p.is_file():
        p.unlink()
    if case.special is None:
        p.write_bytes(case.data)
    elif case.special == "missing":
        pass
    elif case.special == "dir":
        p.mkdir()
        (p / "inner").write_bytes(b"{}")
    elif case.special == "fifo":
        os.mkfifo(p)
    elif case.special.startswith("sparse:"):
        with open(p, "wb") as f:
            f.truncate(int(case.special.split(":", 1)[1]))
    elif case.special.startswith("symlink:"):
        target = case.special.split(":", 1)[1]
        os.symlink(case.name if target == "{self}" else target, p)
    else:
        raise ValueError(case.special)


# --- hostile values -------------------------------------------------------------------------------

SPECIAL_INTS = [
    0, 1, -1, 2, 3, 7, 63, 64, 65, 1023, 1024, 1025, 65535, 65536, 65537, 2**20, 2**20 + 1,
    2**22, 2**22 + 1, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 10**30,
    -(2**31), -(2**63),
]  # fmt: skip
SPECIAL_FLOATS = [
    0.0,
    -0.0,
    0.5,
    1.0,
    2.0,
    32.0,
    64.0,
    -1.0,
    1e-30,
    1e30,
    1e308,
    math.inf,
    -math.inf,
    math.nan,
]
SPECIAL_STRS = [
    "", " ", "0", "32", "1e3", "true", "null", "~", "none", "rope", "gelu", "layernorm", "pre",
    "mlm", "bert", "modernbert", "deberta-v2", "_self_", "_target_", "os.system",
    "${oc.env:HOME}", "${now:%Y}", "${missing}", "???", "../../etc/passwd", "/dev/zero",
    "\x00", "\t", "\u202e", "\ud800", "r\u043epe", "é", "\U0001f642", "x" * 5000, "1" * 5000,
]  # fmt: skip
# placeholders expanded after the document is written out (see ``_expand``)
PLACEHOLDERS_JSON = [
    "@@DEEPLIST_100@@", "@@DEEPLIST_2000@@", "@@DEEPLIST_100000@@", "@@DEEPMAP_2000@@",
    "@@DEEPMAP_100000@@", "@@BIGINT_5000@@", "@@BIGINT_100000@@", "@@HUGEFLOAT_1@@",
    "@@LONGSTR_3000000@@",
]  # fmt: skip
PLACEHOLDERS_YAML = [*PLACEHOLDERS_JSON, "@@LAUGHS_4@@", "@@LAUGHS_9@@"]

HOSTILE_KEYS = ["_target_", "__class__", "auto_map", "defaults", "plugins", "hydra", "kind", "", "0"]


def scalars(placeholders: list[str]):
    return st.one_of(
        st.sampled_from(SPECIAL_INTS),
        st.sampled_from(SPECIAL_FLOATS),
        st.booleans(),
        st.none(),
        st.sampled_from(SPECIAL_STRS),
        st.sampled_from(placeholders),
        st.integers(),
        st.floats(),
        st.text(max_size=12),
    )


def values(placeholders: list[str], keys: list[str]):
    """Any value a document could hold, small and nested."""
    return st.recursive(
        scalars(placeholders),
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(st.one_of(st.sampled_from(keys), st.text(max_size=6)), inner, max_size=4),
        ),
        max_leaves=8,
    )


def _expand(kind: str, n: int, fmt: str) -> str:
    if kind == "DEEPLIST":
        return "[" * n + "]" * n
    if kind == "DEEPMAP":
        return ('{"a": ' if fmt == "json" else "{a: ") * n + "1" + "}" * n
    if kind == "BIGINT":
        return "9" * n
    if kind == "HUGEFLOAT":
        return "1.0e+99999"
    if kind == "LONGSTR":
        return '"' + "x" * n + '"'
    if kind == "LAUGHS":  # n levels of 9 aliases each: 9**n nodes once expanded
        levels = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
        for i in range(1, n + 1):
            levels.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
        return "{" + ", ".join(levels) + "}"
    raise ValueError(kind)


_PLACEHOLDER = re.compile(r"""(['"]?)@@([A-Z]+)_(\d+)@@\1""")


def expand_placeholders(text: str, fmt: str) -> str:
    return _PLACEHOLDER.sub(lambda m: _expand(m.group(2), int(m.group(3)), fmt), text)


# --- tree edits -----------------------------------------------------------------------------------


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


def _set(doc, path, value):
    if not path:
        return value
    node = doc
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return doc


def _delete(doc, path):
    node = doc
    for part in path[:-1]:
        node = node[part]
    del node[path[-1]]
    return doc


def _get(doc, path):
    for part in path:
        doc = doc[part]
    return doc


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}...({len(text)} chars)"


@st.composite
def tree_edit(draw, doc, value_strategy, keys: list[str]):
    """One edit of the tree ``doc`` (edited in place where it can be); returns (doc, what)."""
    paths = list(_paths(doc))
    path = paths[draw(st.integers(0, len(paths) - 1))]
    node = _get(doc, path)
    ops = ["replace"] + (["delete"] if path else []) + (["add"] if isinstance(node, dict) else []) + ["wrap"]
    op = draw(st.sampled_from(ops))
    where = "$" + "".join(f"[{p!r}]" for p in path)
    if op == "replace":
        value = copy.deepcopy(draw(value_strategy))  # sampled values are shared objects
        return _set(doc, path, value), f"{where} = {_short(value)}"
    if op == "delete":
        return _delete(doc, path), f"del {where}"
    if op == "add":
        key = draw(st.one_of(st.sampled_from(keys + HOSTILE_KEYS), st.text(min_size=1, max_size=8)))
        value = copy.deepcopy(draw(value_strategy))
        node[key] = value
        return doc, f"{where}[{key!r}] = {_short(value)}"
    wrapped = draw(st.sampled_from(["list", "kind"]))
    new = [copy.deepcopy(node)] if wrapped == "list" else {"kind": copy.deepcopy(node)}
    return _set(doc, path, new), f"{where} wrapped in a {wrapped}"


def _all_keys(doc) -> list[str]:
    keys = set()
    for path in _paths(doc):
        if path and isinstance(path[-1], str):
            keys.add(path[-1])
    return sorted(keys)


# --- text edits -----------------------------------------------------------------------------------

YAML_SNIPPETS = [
    "{k}: !!python/object/apply:os.system ['true']",
    "{k}: !!python/name:os.system",
    "{k}: !!python/object/new:int [1]",
    "{k}: !!binary aGVsbG8=",
    "{k}: !!set {{a: null}}",
    "{k}: !!omap [{{a: 1}}]",
    "{k}: !!timestamp 2001-12-14",
    "{k}: 2001-12-14",
    "{k}: 2001-12-14t21:59:43.10-05:00",
    "{k}: 1:20",
    "{k}: 0x40",
    "{k}: 0o100",
    "{k}: 0b1000000",
    "{k}: 1_024",
    "{k}: +64",
    "{k}: 64.",
    "{k}: 6.4e+1",
    "{k}: .inf",
    "{k}: -.inf",
    "{k}: .nan",
    "{k}: yes",
    "{k}: off",
    "{k}: ~",
    "{k}: !!int '64'",
    "{k}: !!float '64'",
    "{k}: !!str 64",
    "{k}: !!bool maybe",
    "{k}: !!null ''",
    "{k}: !custom 1",
    "<<: {{d_model: 64, n_heads: 2}}",
    "<<: [{{n_heads: 2}}, {{n_layers: 1}}]",
    "? [a, b]\n: 1",
    "? {{a: 1}}\n: 1",
    "{k}: |\n  block\n  text",
    "{k}: >-\n  folded",
    '{k}: "\\x00\\uffff\\ud800"',
    "{k}: &a 1\nzz_alias: *a",
    "{k}: &a {{kind: rope}}\nzz_alias: *a",
    "---\n{k}: 1",
    "...",
    "%TAG ! tag:example.com,2000:\n---",
    "%YAML 1.1\n---",
    "{k}: [1, 2",
    "{k}:\n\t- 1",
    "{k}: @",
    "{k}: `",
    "{k}: *undefined",
    "{k}: {{{{a: 1}}: 2}}",
]
JSON_SNIPPETS = [
    '"{k}": NaN,',
    '"{k}": Infinity,',
    '"{k}": -Infinity,',
    '"{k}": 1e999,',
    '"{k}": 1E400,',
    '"{k}": 99999999999999999999999999999999,',
    '"{k}": -0,',
    '"{k}": 32.0,',
    '"{k}": true,',
    '"{k}": "\\ud800",',
    '"{k}": "\\u0000",',
    '"{k}": [],',
    '"{k}": {{}},',
    '"{k}": null,',
    "'{k}': 1,",
    '"{k}": 1,,',
    '"{k}": 01,',
    '"{k}": 0x20,',
    "// a comment",
    "/* a comment */",
    '"{k}": 1 // trailing',
    '"{k}": "a" "b",',
    '"{k}": [1, 2,],',
]

_TOP_KEY = re.compile(r"^\s*\"?([A-Za-z_][\w.-]*)\"?\s*:")


@st.composite
def text_edit(draw, data: bytes, fmt: str):
    """One edit of the text ``data``; returns (data, what)."""
    ops = [
        "truncate",
        "insert",
        "overwrite",
        "dup_line",
        "del_line",
        "snippet",
        "tab",
        "encoding",
        "append_doc",
    ]
    if fmt == "yaml":
        ops.append("anchor_alias")
    op = draw(st.sampled_from(ops))
    lines = data.split(b"\n")
    if op == "truncate":
        k = draw(st.integers(0, max(len(data) - 1, 0)))
        return data[:k], f"truncated to {k} bytes"
    if op == "insert":
        k = draw(st.integers(0, len(data)))
        junk = draw(st.binary(min_size=1, max_size=8))
        return data[:k] + junk + data[k:], f"inserted {junk!r} at byte {k}"
    if op == "overwrite":
        if not data:
            return b"\xff", "overwrote an empty file with b'\\xff'"
        k = draw(st.integers(0, len(data) - 1))
        b = draw(st.integers(0, 255))
        return data[:k] + bytes([b]) + data[k + 1 :], f"byte {k} = {b:#04x}"
    if op in ("dup_line", "del_line", "tab"):
        i = draw(st.integers(0, max(len(lines) - 1, 0)))
        if op == "dup_line":
            lines.insert(i, lines[i] if lines else b"")
            return b"\n".join(lines), f"line {i + 1} duplicated"
        if op == "del_line":
            if lines:
                del lines[i]
            return b"\n".join(lines), f"line {i + 1} deleted"
        if lines:
            lines[i] = b"\t" + lines[i].lstrip(b" ")
        return b"\n".join(lines), f"line {i + 1} indented with a tab"
    if op == "snippet":
        snippets = YAML_SNIPPETS if fmt == "yaml" else JSON_SNIPPETS
        snippet = draw(st.sampled_from(snippets))
        keyed = [
            (i, m.group(1))
            for i, line in enumerate(lines)
            if (m := _TOP_KEY.match(line.decode("utf-8", "replace")))
        ]
        i, key = keyed[draw(st.integers(0, len(keyed) - 1))] if keyed else (0, "k")
        text = snippet.format(k=key).encode("utf-8", "surrogatepass")
        if draw(st.booleans()):
            lines[i : i + 1] = [text]  # (YAML: the replaced key's block lines stay, now under the snippet)
            return b"\n".join(lines), f"line {i + 1} replaced by {text!r}"
        lines.insert(i, text)
        return b"\n".join(lines), f"{text!r} inserted before line {i + 1}"
    if op == "encoding":
        how = draw(st.sampled_from(["bom", "utf-16", "utf-32", "latin-1 é", "nul"]))
        if how == "bom":
            return b"\xef\xbb\xbf" + data, "UTF-8 BOM prepended"
        if how in ("utf-16", "utf-32"):
            return data.decode("utf-8", "replace").encode(how), f"re-encoded as {how}"
        if how == "nul":
            return data + b"\x00", "NUL byte appended"
        return data.replace(b"e", b"\xe9", 1), "a latin-1 byte (0xe9) for the first 'e'"
    if op == "append_doc":
        extra = b"\n---\nname: second\n" if fmt == "yaml" else b'\n{"model_type": "bert"}\n'
        return data + extra, "a second document appended"
    # anchor_alias: an anchor on one top-level value and an alias to it at another
    keyed = [i for i, line in enumerate(lines) if re.match(rb"^[A-Za-z_]\w*:", line)]
    if len(keyed) < 2:
        return b"a: &x [1]\nb: *x\n" + data, "an anchor and an alias prepended"
    i = keyed[draw(st.integers(0, len(keyed) - 1))]
    j = keyed[draw(st.integers(0, len(keyed) - 1))]
    key_i, _, rest_i = lines[i].partition(b":")
    lines[i] = key_i + b": &anc" + rest_i
    if j != i:
        end = next((k for k in keyed if k > j), len(lines))
        lines[j:end] = [lines[j].partition(b":")[0] + b": *anc"]
    return b"\n".join(lines), f"anchor on line {i + 1}, alias at line {j + 1}"


# --- documents ------------------------------------------------------------------------------------


def dump(doc, fmt: str) -> bytes:
    if fmt == "json":
        text = json.dumps(doc, indent=2)  # ensure_ascii: lone surrogates become \ud800 escapes
        return expand_placeholders(text, "json").encode("utf-8")
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=1000)
    return expand_placeholders(text, "yaml").encode("utf-8", "surrogatepass")


def parse(data: bytes, fmt: str):
    return json.loads(data) if fmt == "json" else yaml.safe_load(data)


SPECIALS = ["dir", "fifo", "missing", "symlink:/dev/zero", "symlink:/dev/urandom", "symlink:{self}",
            "symlink:does-not-exist", "symlink:/", "sparse:4294967296"]  # fmt: skip


@st.composite
def mutated_document(draw, seeds: dict[str, bytes], name: str, fmt: str, extra_values=None):
    """A seed document (``seeds``: label -> bytes) with 1-4 tree and text edits, or a special
    file in its place (1 in 16)."""
    labels = sorted(seeds)
    label = labels[draw(st.integers(0, len(labels) - 1))]
    roll = draw(st.integers(0, 15))
    if roll == 15:
        special = draw(st.sampled_from(SPECIALS))
        return Case(label, name, None, special, (f"{name} is {special}",))
    if roll == 14:  # a document that is not a mapping at all
        top = draw(st.sampled_from(["[]", "[1, 2]", "42", "-1", "3.5", "true", "null", '"text"', "", "{}"]))
        return Case(label, name, top.encode(), None, (f"the whole document is {top!r}",))
    doc = parse(seeds[label], fmt)
    keys = _all_keys(doc)
    base = values(PLACEHOLDERS_YAML if fmt == "yaml" else PLACEHOLDERS_JSON, keys)
    value_strategy = st.one_of(extra_values, base) if extra_values is not None else base
    edits = []
    n_tree = draw(st.integers(0, 3))
    for _ in range(n_tree):
        doc, what = draw(tree_edit(doc, value_strategy, keys))
        edits.append(what)
    data = dump(doc, fmt) if n_tree else seeds[label]
    n_text = draw(st.integers(0 if n_tree else 1, 2))
    for _ in range(n_text):
        data, what = draw(text_edit(data, fmt))
        edits.append(what)
    return Case(label, name, data, None, tuple(edits))


# --- recipes and spec.yaml -----------------------------------------------------------------------

BLOCK_NAMES = [
    "alibi", "disentangled", "learned", "none", "rope", "sinusoidal", "t5", "alternating", "global",
    "local", "eager", "flash_attn", "flex", "sdpa", "xformers", "glu", "mlp", "gelu", "gelu_tanh",
    "relu", "relu2", "silu", "swish", "tanh", "layernorm", "rmsnorm", "scalenorm", "deepnorm", "post",
    "pre", "sandwich", "classification", "emd", "mlm", "nsp", "token_classification", "bert_normal",
    "full_megatron", "megatron",
]  # fmt: skip
DEFAULTS_ENTRIES = [
    "bert-base", "modernbert-base", "deberta-v3-base", "_self_", "override positional: alibi",
    "positional: nope", "norm: rmsnorm", "../../../etc/passwd", "/model/bert-base", "model/bert-base",
    "optional bert-base", "bert-base@_here_", "bert-tiny", "recipe", "hydra/launcher: basic",
    "override hydra/job_logging: disabled", "db@_global_: x", "${oc.env:HOME}",
]  # fmt: skip
SPEC_VALUES = st.one_of(
    st.sampled_from(BLOCK_NAMES),
    st.builds(lambda k: {"kind": k}, st.sampled_from(BLOCK_NAMES)),
)
RECIPE_VALUES = st.one_of(
    SPEC_VALUES,
    st.sampled_from(DEFAULTS_ENTRIES),
    st.lists(st.sampled_from(DEFAULTS_ENTRIES), min_size=1, max_size=4),
    st.sampled_from(
        [
            {"override positional": "alibi"},
            {"hydra/launcher": "basic"},
            {"positional": None},
            {"override hydra": "x"},
            {"norm": ["rmsnorm"]},
        ]
    ),  # fmt: skip
)


# --- config.json ----------------------------------------------------------------------------------

CONFIG_VALUES = st.one_of(
    st.sampled_from(["bert", "roberta", "modernbert", "deberta-v2", "deberta", "gpt2", "BERT", "", "bert "]),
    st.sampled_from(
        ["gelu", "gelu_new", "relu", "silu", "swish", "tanh", "nope", "absolute", "relative_key"]
    ),
    st.sampled_from([["full_attention"] * 5, ["sliding_attention"], [], ["c2p", "p2c"], ["none"]]),
    st.sampled_from([{"rope_theta": 0.0, "rope_type": "default"}, {"rope_type": "yarn"}, {}]),
)


@st.composite
def config_at_size_limits(draw, seeds: dict[str, bytes]):
    """A config whose sizes are at (or just past) the spec's limits: tiny weights, a huge model."""
    labels = sorted(seeds)
    label = labels[draw(st.integers(0, len(labels) - 1))]
    doc = json.loads(seeds[label])
    sizes = {
        "hidden_size": draw(st.sampled_from([32, 65536, 65536 * 2])),
        "num_hidden_layers": draw(st.sampled_from([4, 1024, 1025])),
        "intermediate_size": draw(st.sampled_from([48, 2**20, 2**20 + 1])),
        "vocab_size": draw(st.sampled_from([89, 2**22, 2**22 + 1])),
        "max_position_embeddings": draw(st.sampled_from([128, 2**20, 2**20 + 1])),
    }
    doc.update(sizes)
    return Case(label, "config.json", json.dumps(doc, indent=2).encode(), None, (f"sizes {sizes}",))


def config_cases(seeds: dict[str, bytes]):
    return st.one_of(
        mutated_document(seeds, "config.json", "json", CONFIG_VALUES),
        config_at_size_limits(seeds),
    )


# --- safetensors ----------------------------------------------------------------------------------

DTYPES = ["F32", "F16", "BF16", "F64", "I8", "U8", "I16", "I32", "I64", "U64", "BOOL",
          "F8_E4M3", "F8_E5M2", "C64", "f32", "float32", "", "X"]  # fmt: skip
SHAPES = [[], [0], [-1], [1], [2**31], [2**40, 2**40], [2**63], [2**64], [1] * 64, [0, 32], ["32"], [32.0],
          [True], None, 32, "32", [[32]]]  # fmt: skip
LENGTHS = [0, 1, 7, 8, 2**31, 2**32, 100_000_000, 100_000_001, 2**63 - 1, 2**63, 2**64 - 1]


def split_safetensors(data: bytes):
    n = struct.unpack("<Q", data[:8])[0]
    return n, json.loads(data[8 : 8 + n]), data[8 + n :]


def join_safetensors(header, body: bytes, length: int | None = None) -> bytes:
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h) if length is None else length) + h + body


@st.composite
def tensor_edit(draw, header: dict, body_len: int):
    """One edit of one tensor entry of a safetensors header (in place); returns what."""
    names = sorted(k for k in header if k != "__metadata__")
    if not names:
        header["extra"] = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
        return "a 4-byte tensor 'extra' added to an empty header"
    name = names[draw(st.integers(0, len(names) - 1))]
    entry = header[name]
    if not isinstance(entry, dict):
        header[name] = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
        return f"{name} = a 4-byte F32 entry (was {_short(entry)})"
    op = draw(
        st.sampled_from(
            ["shape", "dtype", "offsets", "transpose", "drop_field", "delete", "rename", "add", "swap"]
        )
    )
    if op == "shape":
        shape = draw(st.one_of(st.sampled_from(SHAPES), st.lists(st.integers(-2, 2**33), max_size=4)))
        entry["shape"] = copy.deepcopy(shape)
        return f"{name}.shape = {_short(shape)}"
    if op == "dtype":
        entry["dtype"] = draw(st.sampled_from(DTYPES))
        return f"{name}.dtype = {entry['dtype']!r}"
    if op == "offsets":
        offsets = entry.get("data_offsets")
        ints = isinstance(offsets, list) and len(offsets) == 2 and all(type(x) is int for x in offsets)
        begin, end = offsets if ints else (0, 4)
        choices = [
            [begin, body_len + 4], [end, begin], [-1, end], [begin, begin], [begin], [begin, end, end],
            [0, 2**64], [2**63, 2**63 + end - begin], [str(begin), str(end)], [float(begin), float(end)],
            [0, end - begin], None, [body_len, body_len + end - begin],
        ]  # fmt: skip
        entry["data_offsets"] = copy.deepcopy(draw(st.sampled_from(choices)))
        return f"{name}.data_offsets = {entry['data_offsets']!r} (body is {body_len} bytes)"
    if op == "transpose":
        shape = entry.get("shape") if isinstance(entry.get("shape"), list) else [1]
        entry["shape"] = list(reversed(shape)) + ([] if len(shape) > 1 else [1])
        return f"{name}.shape reversed to {entry['shape']} (same bytes)"
    if op == "drop_field":
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
        entry.pop(field, None)
        return f"{name}.{field} removed"
    if op == "delete":
        del header[name]
        return f"{name} removed"
    if op == "rename":
        new = draw(
            st.sampled_from([name + ".x", name.replace("weight", "bias"), "", "__metadata__", names[0]])
        )
        header[new] = header.pop(name)
        return f"{name} renamed to {new!r}"
    if op == "add":
        header[name + ".extra"] = dict(entry)
        return f"{name}.extra added (a copy of {name})"
    other = names[draw(st.integers(0, len(names) - 1))]
    if not isinstance(header.get(other), dict):
        return f"{name}: no swap ({other} is not an entry)"
    entry["data_offsets"], header[other]["data_offsets"] = (
        header[other].get("data_offsets"),
        entry.get("data_offsets"),
    )
    return f"data_offsets of {name} and {other} swapped"


@st.composite
def safetensors_cases(draw, seeds: dict[str, bytes], name: str = "model.safetensors"):
    labels = sorted(seeds)
    label = labels[draw(st.integers(0, len(labels) - 1))]
    data = seeds[label]
    n, header, body = split_safetensors(data)
    kind = draw(st.sampled_from(["tensor", "length", "file", "header", "special"]))
    if kind == "special":
        special = draw(st.sampled_from(SPECIALS))
        return Case(label, name, None, special, (f"{name} is {special}",))
    if kind == "length":
        length = draw(
            st.one_of(
                st.sampled_from(LENGTHS + [n - 1, n + 1, len(data), len(data) - 7]), st.integers(0, 2**64 - 1)
            )
        )
        return Case(
            label, name, struct.pack("<Q", length) + data[8:], None, (f"header length {n} -> {length}",)
        )
    if kind == "file":
        op = draw(
            st.sampled_from(["truncate", "empty", "append", "pad", "nonfinite", "zeros", "header_bytes"])
        )
        if op == "truncate":
            k = draw(st.integers(1, len(data) - 1))
            return Case(label, name, data[:k], None, (f"truncated to {k} of {len(data)} bytes",))
        if op == "empty":
            return Case(label, name, b"", None, ("empty file",))
        if op == "append":
            junk = draw(st.binary(min_size=1, max_size=64))
            return Case(label, name, data + junk, None, (f"{len(junk)} bytes appended",))
        if op == "pad":
            pad = draw(st.sampled_from([b" " * 8, b"\x00" * 8, b"\n" * 8, b"}" * 8]))
            h = data[8 : 8 + n] + pad
            return Case(
                label, name, struct.pack("<Q", len(h)) + h + body, None, (f"header padded with {pad[:1]!r}",)
            )
        if op in ("nonfinite", "zeros"):
            fill = (
                draw(st.sampled_from([b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f", b"\x00\x00\x80\xff"]))
                if op == "nonfinite"
                else b"\0\0\0\0"
            )
            return Case(
                label, name, data[: 8 + n] + fill * (len(body) // 4), None, (f"every weight {fill!r}",)
            )
        k = draw(st.integers(8, 8 + n - 1))
        b = draw(st.sampled_from([0x00, 0xFF, 0x80, ord("{"), ord('"')]))
        return Case(
            label, name, data[:k] + bytes([b]) + data[k + 1 :], None, (f"header byte {k} = {b:#04x}",)
        )
    edits = []
    if kind == "tensor":
        for _ in range(draw(st.integers(1, 3))):
            edits.append(draw(tensor_edit(header, len(body))))
    else:  # the header as a JSON tree
        value_strategy = st.one_of(
            st.sampled_from(DTYPES),
            st.sampled_from(SHAPES),
            values(PLACEHOLDERS_JSON, ["dtype", "shape", "data_offsets"]),
        )
        for _ in range(draw(st.integers(1, 2))):
            header, what = draw(
                tree_edit(header, value_strategy, ["dtype", "shape", "data_offsets", "__metadata__"])
            )
            edits.append(what)
    h = expand_placeholders(json.dumps(header, separators=(",", ":")), "json").encode("utf-8")
    h += b" " * (-len(h) % 8)
    lie = draw(st.booleans()) and len(h) != n
    edits.append(
        f"header length left at {n} (header is now {len(h)} bytes)" if lie else "header length updated"
    )
    return Case(label, name, struct.pack("<Q", n if lie else len(h)) + h + body, None, tuple(edits))


# --- the valid inputs -----------------------------------------------------------------------------

# recipes in each form the README documents, besides the family recipes under recipes/model/
EXTRA_RECIPES = {
    "small-swiglu.yaml": """\
name: small-swiglu
vocab_size: 32768
d_model: 512
n_layers: 8
n_heads: 8
d_ff: 1376
max_seq_len: 1024
positional: {kind: rope, theta: 10000.0}
attention: {kind: local, window: 256}
mlp: {kind: glu, activation: silu}
norm: {kind: rmsnorm, eps: 1.0e-6}
placement: pre
bias: {qkv: false, attn_out: false, mlp_in: false, mlp_out: false}
""",
    "mine.yaml": """\
defaults:
  - modernbert-tiny
  - override positional: alibi
  - _self_
name: mine
n_layers: 4
norm: {kind: rmsnorm, eps: 1.0e-6}
""",
    "deberta-ish.yaml": """\
defaults:
  - deberta-tiny
  - _self_
name: deberta-ish
n_layers: 2
positional: {kind: disentangled}
placement: post
""",
}


def recipe_seeds() -> dict[str, bytes]:
    seeds = Seeds({p.name: p.read_bytes() for p in sorted((ROOT / "recipes" / "model").glob("*-tiny.yaml"))})
    seeds.update({k: v.encode() for k, v in EXTRA_RECIPES.items()})
    return seeds


SMALL = [
    "model.d_model=64",
    "model.n_heads=2",
    "model.d_ff=96",
    "model.vocab_size=128",
    "model.max_seq_len=64",
]


def build_fixtures(base: Path) -> dict[str, Path]:
    """The valid directories the fuzz targets start from: two bertsmith model directories
    (BERT and ModernBERT blocks) and two transformers directories (tests/helpers.py's tiny
    BERT and ModernBERT configs, saved as safetensors)."""
    import torch
    from helpers import TINY_BERT, TINY_MODERNBERT
    from transformers import BertConfig, BertForMaskedLM, ModernBertConfig, ModernBertForMaskedLM

    from bertsmith import registry

    torch.manual_seed(0)
    dirs = {
        "model-bert": base / "model-bert",
        "model-modernbert": base / "model-modernbert",
        "hf-bert": base / "hf-bert",
        "hf-modernbert": base / "hf-modernbert",
    }
    registry.save(
        registry.build(registry.compose("bert-tiny", ["model.n_layers=1", *SMALL])), dirs["model-bert"]
    )
    registry.save(
        registry.build(registry.compose("modernbert-tiny", ["model.n_layers=2", *SMALL])),
        dirs["model-modernbert"],
    )
    BertForMaskedLM(BertConfig(**TINY_BERT)).save_pretrained(dirs["hf-bert"], safe_serialization=True)
    ModernBertForMaskedLM(ModernBertConfig(**TINY_MODERNBERT)).save_pretrained(
        dirs["hf-modernbert"], safe_serialization=True
    )
    return dirs


def dir_seeds(dirs: dict[str, Path], prefix: str, name: str) -> dict[str, bytes]:
    """``name`` of every fixture directory whose label starts with ``prefix``."""
    return Seeds({label: (d / name).read_bytes() for label, d in dirs.items() if label.startswith(prefix)})


def copy_tree(src: Path, dst: Path) -> None:
    """Copy a directory that may hold FIFOs, symlinks (kept as links) and sparse files."""
    import shutil
    import stat

    dst.mkdir(parents=True, exist_ok=True)
    for entry in os.scandir(src):
        s, d = Path(entry.path), dst / entry.name
        mode = os.lstat(s).st_mode
        if stat.S_ISLNK(mode):
            os.symlink(os.readlink(s), d)
        elif stat.S_ISDIR(mode):
            copy_tree(s, d)
        elif stat.S_ISFIFO(mode):
            os.mkfifo(d)
        elif stat.S_ISREG(mode):
            size = os.lstat(s).st_size
            if size > 64 << 20:  # a sparse giant: same size, not copied byte by byte
                with open(d, "wb") as f:
                    f.truncate(size)
            else:
                shutil.copy2(s, d)


def snapshot(directory: Path) -> dict:
    """Every entry under ``directory`` with its type and content hash (links not followed,
    FIFOs not opened, files over 64 MiB by size and mtime)."""
    import hashlib
    import stat

    out = {}
    for root, dirnames, filenames in os.walk(directory, followlinks=False):
        for entry in sorted(dirnames + filenames):
            p = Path(root, entry)
            st_ = os.lstat(p)
            rel = str(p.relative_to(directory))
            if stat.S_ISLNK(st_.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISREG(st_.st_mode):
                if st_.st_size > 64 << 20:
                    out[rel] = ("file", st_.st_size, st_.st_mtime_ns)
                else:
                    out[rel] = ("file", st_.st_size, hashlib.sha256(p.read_bytes()).hexdigest())
            elif stat.S_ISDIR(st_.st_mode):
                out[rel] = ("dir",)
            else:
                out[rel] = ("special", stat.S_IFMT(st_.st_mode))
    return out

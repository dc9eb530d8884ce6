"""The one JSON reader of files bertsmith did not write itself (``config.json``, run summaries,
caches it finds on disk): bounded and strict.

Only a regular file is opened (a FIFO named ``config.json`` would block ``open`` forever), its
size is capped before it is read, a key given twice in one object is an error (``json`` keeps
the last one), so are ``NaN``/``Infinity`` (not JSON), and nesting is capped (deep nesting
makes ``json`` recurse). Every problem is one ``SpecError`` line naming the file, and the line
and column where the parser has them.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from bertsmith.registry.errors import SpecError

MAX_BYTES = 64 * 2**20  # a transformers config is a few kB; a run summary less
MAX_DEPTH = 32


def regular_file(path: str | os.PathLike, what: str, max_bytes: int | None = None) -> int:
    """The size of ``path``, which must be a regular file (symlinks followed) of at most
    ``max_bytes``; ``SpecError`` otherwise. Checked with ``stat``, so nothing is opened."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise SpecError(f"{what}: given {str(path)!r}, allowed: an existing file ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "a special file (FIFO, device or socket)"
        raise SpecError(f"{what}: given {str(path)!r}, allowed: a regular file, not {kind}")
    if max_bytes is not None and st.st_size > max_bytes:
        raise SpecError(
            f"{what}: given {str(path)!r} of {st.st_size:,} bytes, allowed: at most {max_bytes:,} bytes"
        )
    return st.st_size


class _Refused(ValueError):
    pass


def _pairs(pairs: list[tuple[str, object]]) -> dict:
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise _Refused(f"duplicate key {k!r}")
        out[k] = v
    return out


def _constant(name: str):
    raise _Refused(f"{name} is not a JSON number")


def depth(value: object) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        children = v.values() if isinstance(v, dict) else v if isinstance(v, list) else ()
        stack.extend((c, d + 1) for c in children)
    return deepest


def loads(text: str | bytes, where: str, max_depth: int = MAX_DEPTH, one_line: bool = False):
    """Parse ``text`` strictly (see the module's docstring); ``where`` starts the error line
    (``"config.json: given '/m/config.json'"``). ``one_line``: ``text`` is one line of a file
    (a JSONL row) and ``where`` names that line, so errors give only the column."""

    def refuse(why: str):
        return SpecError(f"{where}, allowed: strict JSON ({why})")

    try:
        if isinstance(text, bytes):  # json would guess UTF-16/32 from the first bytes
            text = text.decode("utf-8")
        value = json.loads(text, object_pairs_hook=_pairs, parse_constant=_constant)
    except json.JSONDecodeError as e:
        at = f"column {e.colno}" if one_line else f"line {e.lineno} column {e.colno}"
        raise refuse(f"{e.msg} at {at}") from None
    except _Refused as e:
        raise refuse(str(e)) from None
    except UnicodeDecodeError:
        raise refuse("not UTF-8 text") from None
    except RecursionError:
        raise refuse(f"nested more than {max_depth} levels deep") from None
    except ValueError as e:  # an integer of more than sys.get_int_max_str_digits() digits
        raise refuse(" ".join(str(e).split(";")[0].split())[:100]) from None
    if depth(value) > max_depth:
        raise refuse(f"nested more than {max_depth} levels deep")
    return value


def read_json(
    path: str | os.PathLike, what: str | None = None, max_bytes: int = MAX_BYTES, kind: type | None = dict
):
    """The parsed JSON file at ``path`` (an object unless ``kind`` says otherwise)."""
    path = Path(path)
    what = what or path.name
    regular_file(path, what, max_bytes)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise SpecError(f"{what}: given {str(path)!r}, allowed: a readable file ({e.strerror})") from None
    value = loads(raw, f"{what}: given {str(path)!r}")
    if kind is not None and not isinstance(value, kind):
        raise SpecError(
            f"{what}: given {str(path)!r} holding a JSON {_json_type(value)}, allowed: a JSON {_json_type(kind())}"
        )
    return value


def _json_type(value: object) -> str:
    for t, name in (
        (bool, "boolean"),
        (dict, "object"),
        (list, "array"),
        (str, "string"),
        (type(None), "null"),
    ):
        if isinstance(value, t):
            return name
    return "number"

"""Where training text comes from: documents, in a deterministic order, with a stable split.

Sources (``data.source``):

- ``stdlib``: the docstrings of the running Python's standard library, read with ``ast``
  (nothing is imported or executed) — real English text on every machine, no download;
- ``files``: a ``.txt`` / ``.jsonl`` / ``.parquet`` file or a folder of them (``.txt``:
  documents separated by blank lines, a line of only spaces counting as blank; ``.jsonl`` /
  ``.parquet``: the ``text_column``);
- ``hf``: a Hugging Face ``datasets`` dataset by name or local path (``name``, ``split``,
  ``text_column``; ``streaming`` for corpora larger than memory).

A document belongs to the validation split iff a hash of its text falls below
``val_fraction``, so the split does not depend on order, streaming or sharding.

A corpus is read once, before training, unless it is streamed: then it is read again every
epoch, and a file that disappears or changes into something unreadable mid-run stops the run
with one error line (the last checkpoint is kept). Documents longer than ``data.seq_len`` are
split into several sequences, never truncated (``train.packing.split_documents``).
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import inspect
import json
import os
import re
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from bertsmith.registry.errors import SpecError
from bertsmith.registry.outputs import check_writable_dir

TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")
_SKIP_DIRS = {
    "test",
    "tests",
    "idlelib",
    "site-packages",
    "dist-packages",
    "lib2to3",
    "turtledemo",
    "__pycache__",
    "ensurepip",
    "venv",
}
MIN_DOC_CHARS = 40
_BLANK_LINE = re.compile(r"\n[ \t\f\v]*\n")


def cache_dir() -> Path:
    """``$BERTSMITH_CACHE`` or ``~/.cache/bertsmith``."""
    root = os.environ.get("BERTSMITH_CACHE") or Path.home() / ".cache" / "bertsmith"
    return Path(root)


def needs_cache(tcfg) -> bool:
    """Whether a pre-training job with ``tcfg`` writes to the cache: the standard library's
    docstrings when not cached yet, and any tokenizer it trains (under a lock file there)."""
    stdlib = tcfg.data.source == "stdlib" and not _stdlib_cache().is_file()
    return stdlib or (tcfg.tokenizer.kind != "file" and not tcfg.init_from)


def check_cache(tcfg) -> None:
    """Before a run directory is created: the cache, where the job writes to it, is a
    writable directory or can be made one (one line naming ``BERTSMITH_CACHE`` otherwise)."""
    if needs_cache(tcfg):
        check_writable_dir(cache_dir(), "BERTSMITH_CACHE")


def cache_error(path: Path, e: OSError) -> SpecError:
    """One line for a cache file that cannot be written (a cache made unwritable mid-run)."""
    return SpecError(
        f"BERTSMITH_CACHE: given {str(cache_dir())!r}, allowed: a writable directory "
        f"(writing {str(path)!r}: {e.strerror or e})"
    )


def is_val(doc: str, val_fraction: float) -> bool:
    """Stable split: the first 8 bytes of the text's blake2b hash, as a fraction of 2^64."""
    h = int.from_bytes(hashlib.blake2b(doc.encode("utf-8"), digest_size=8).digest(), "big")
    return h / 2**64 < val_fraction


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("test"))
        files += [
            Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py") and not f.startswith("test")
        ]
    return files


def _docstrings(path: Path) -> Iterator[str]:
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError, OSError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                text = inspect.cleandoc(doc).strip()
                if len(text) >= MIN_DOC_CHARS:
                    yield text


def stdlib_documents() -> list[str]:
    """The standard library's docstrings (deduplicated, in file order), cached per Python."""
    cache = _stdlib_cache()
    if cache.is_file():
        try:
            return json.loads(cache.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            pass  # a damaged cache is rebuilt below
    seen, docs = set(), []
    for path in _stdlib_files():
        for doc in _docstrings(path):
            if doc not in seen:
                seen.add(doc)
                docs.append(doc)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(docs), encoding="utf-8")
        os.replace(tmp, cache)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise cache_error(cache, e) from None
    return docs


def _stdlib_cache() -> Path:
    v = sys.version_info
    where = hashlib.sha256(sysconfig.get_paths()["stdlib"].encode()).hexdigest()[:8]
    return cache_dir() / f"stdlib-docstrings-{v.major}.{v.minor}.{v.micro}-{where}.json"


def _read_text(path: Path, errors: str) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SpecError(f"data.path: {str(path)!r} disappeared while being read") from None
    except OSError as e:
        raise SpecError(f"data.path: given {str(path)!r}, allowed: a readable file ({e.strerror})") from None
    try:
        return data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        raise SpecError(
            f"data.path: given {str(path)!r}, allowed: UTF-8 text (undecodable byte "
            f"at offset {e.start}; set data.errors=replace to replace such bytes)"
        ) from None


def _file_documents(path: Path, text_column: str, errors: str) -> Iterator[str]:
    if path.suffix == ".txt":
        # a line of spaces or tabs separates documents like an empty one: it looks the same
        for block in _BLANK_LINE.split(_read_text(path, errors).replace("\r\n", "\n")):
            if block.strip():
                yield block.strip()
    elif path.suffix == ".jsonl":
        for i, line in enumerate(_read_text(path, errors).splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise SpecError(
                    f"data.path: given {str(path)!r}, allowed: JSON lines (line {i} is not JSON)"
                ) from None
            text = row.get(text_column) if isinstance(row, dict) else None
            if not isinstance(text, str):
                raise SpecError(
                    f"data.text_column: given {text_column!r}, allowed: a string "
                    f"field of every row ({path.name} line {i} has none)"
                )
            if text.strip():
                yield text.strip()
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path, columns=[text_column])
        except (KeyError, ValueError) as e:
            raise SpecError(
                f"data.text_column: given {text_column!r}, allowed: a column of "
                f"{path.name} ({' '.join(str(e).split())[:120]})"
            ) from None
        for text in table.column(text_column).to_pylist():
            if isinstance(text, str) and text.strip():
                yield text.strip()


def file_paths(path: str | os.PathLike) -> list[Path]:
    """The data files at ``path`` (a file, or a folder searched recursively), sorted."""
    p = Path(path).expanduser()
    if p.is_file():
        if p.suffix not in TEXT_SUFFIXES:
            raise SpecError(
                f"data.path: given {str(p)!r}, allowed: a {', '.join(TEXT_SUFFIXES)} file or a folder"
            )
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in TEXT_SUFFIXES)
        if not files:
            raise SpecError(
                f"data.path: given {str(p)!r}, allowed: a folder holding {', '.join(TEXT_SUFFIXES)} files (it has none)"
            )
        return files
    raise SpecError(f"data.path: given {str(p)!r}, allowed: an existing file or folder")


DATA_FILE_KINDS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text", ".csv": "csv"}


def load_hf_dataset(
    name: str, split: str, config: str | None = None, streaming: bool = False, key: str = "data.name"
):
    """One split of a ``datasets`` dataset: a Hub name (+ ``config``), a ``save_to_disk``
    folder, or a local data file; anything ``datasets`` cannot load is one ``SpecError`` line
    about ``key`` (shared by pre-training corpora and fine-tuning tasks)."""
    import datasets

    local = Path(name).expanduser()
    try:
        if local.is_dir() and any((local / n).is_file() for n in ("dataset_dict.json", "dataset_info.json")):
            ds = datasets.load_from_disk(str(local))
            return ds[split] if isinstance(ds, datasets.DatasetDict) else ds
        if local.is_file():
            kind = DATA_FILE_KINDS.get(local.suffix)
            if kind is None:
                raise SpecError(f"{key}: given {name!r}, allowed: a dataset name, folder or data file")
            return datasets.load_dataset(kind, data_files=str(local), split=split, streaming=streaming)
        return datasets.load_dataset(name, config, split=split, streaming=streaming)
    except SpecError:
        raise
    except Exception as e:  # datasets raises many types for "not found" / "no network"
        raise SpecError(
            f"{key}: given {name!r} (split {split!r}), allowed: a loadable dataset "
            f"({type(e).__name__}: {' '.join(str(e).split())[:160]})"
        ) from None


def hf_documents(name: str, split: str, text_column: str, streaming: bool) -> Iterator[str]:
    """Documents of a ``datasets`` dataset (a Hub name, or a local folder / data file)."""
    ds = load_hf_dataset(name, split, streaming=streaming)
    for row in _readable(ds, name):
        text = row.get(text_column)
        if text is None:
            raise SpecError(f"data.text_column: given {text_column!r}, allowed: one of {', '.join(row)}")
        if isinstance(text, str) and text.strip():
            yield text.strip()


def _readable(ds, name: str) -> Iterator[dict]:
    """The rows of ``ds``; a streamed file that is gone or unreadable is one error line."""
    rows = iter(ds)
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except OSError as e:
            raise SpecError(
                f"data.name: given {name!r}, allowed: a readable dataset ({e.strerror or e})"
            ) from None
        yield row


def documents(data) -> Iterator[str]:
    """Every document of the configured source, in a deterministic order."""
    if data.source == "stdlib":
        yield from stdlib_documents()
    elif data.source == "files":
        if not data.path:
            raise SpecError("data.path: given None, allowed: a file or folder (data.source=files)")
        for f in file_paths(data.path):
            if not f.exists():
                raise SpecError(f"data.path: {str(f)!r} disappeared while being read")
            yield from _file_documents(f, data.text_column, data.errors)
    else:
        if not data.name:
            raise SpecError("data.name: given None, allowed: a dataset name or path (data.source=hf)")
        yield from hf_documents(data.name, data.split, data.text_column, data.streaming)


def fingerprint(data) -> str:
    """A cheap identity of the configured corpus (for caching tokenizers)."""
    h = hashlib.sha256()
    h.update(f"{data.source}|{data.name}|{data.split}|{data.text_column}|{data.errors}".encode())
    if data.source == "stdlib":
        h.update(sysconfig.get_paths()["stdlib"].encode() + str(sys.version_info).encode())
    elif data.source == "files" and data.path:
        for f in file_paths(data.path):
            st = f.stat()
            h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]

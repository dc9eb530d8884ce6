"""Fine-tuning examples: read (files or ``datasets``), label, tokenise, batch.

Rows come from ``.csv`` / ``.tsv`` / ``.jsonl`` / ``.parquet`` files or a ``datasets``
dataset; ``data.text_column`` (+ ``data.text_pair_column``) and ``data.label_column`` name
the fields. Sequence inputs become ``[CLS] a [SEP]`` or ``[CLS] a [SEP] b [SEP]`` with token
types 0/1 (when the model has a type vocabulary), cut longest-first to ``data.max_len``.
Token classification reads a list of words and a list of tags per row (a string is split on
whitespace, so a CSV cell ``"New York is big"`` is four words); each word's tag goes to its
first sub-token, the others get -100 and are not scored.

Every row is checked before anything is encoded (``check_example``), in every split: text a
string (empty allowed; for token classification a list of non-empty strings, or a string);
a label a scalar — an integer or a name for classification, a finite number for
regression, a list of such tags as long as the words for token classification — and not
missing: ``None``, NaN and the strings ``""``, ``None``, ``null``, ``NaN``, ``n/a`` (any case,
stripped) are refused. JSONL is strict JSON (no ``NaN``/``Infinity``, at most ``MAX_DEPTH``
levels of nesting); a CSV row has as many fields as the header. An error is one line naming
the file, the data row (and the file line) and the column.

Batches are padded ``[B, L]`` with an attention mask (the encoder unpads them once), and the
training batch at step ``s`` is a pure function of ``(seed, s)``, so ``resume=true`` replays
the same order.
"""

from __future__ import annotations

import csv
import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from bertsmith.registry.errors import SpecError, nearest
from bertsmith.registry.jsonfile import loads
from bertsmith.train.pretrain.tokenizer import Tok

IGNORE = -100
SUFFIXES = (".csv", ".tsv", ".jsonl", ".parquet")


@dataclass
class Example:
    text: str | list[str]
    pair: str | None
    label: object  # raw label: int, float, str or a list of those (token classification)
    origin: str = ""  # where it was read: "FILE row N (line L)", for error lines


MAX_DEPTH = 64  # nesting of a JSONL row (objects and lists) beyond which it is refused


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:120]


def _jsonl_rows(p: Path, path: str, key: str) -> tuple[list[dict], list[int]]:
    """Rows of a JSONL file and the file line of each; each line is strict JSON
    (``registry.jsonfile``: no NaN, bounded depth) and an error names its line."""
    rows, lines = [], []
    with p.open(encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"data.{key}: {path} line {i}"
            row = loads(line, where, MAX_DEPTH, one_line=True)
            if not isinstance(row, dict):
                raise SpecError(
                    f"{where} holds a JSON {type(row).__name__}, allowed: one JSON object per line"
                )
            rows.append(row)
            lines.append(i)
    return rows, lines


def _csv_rows(p: Path, path: str, key: str) -> tuple[list[dict], list[int]]:
    """Rows of a CSV/TSV file and the file line each ends on; a row with more or fewer
    fields than the header is refused."""
    rows, lines = [], []
    with p.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t" if p.suffix == ".tsv" else ",")
        for n, row in enumerate(reader, 1):
            if None in row or None in row.values():
                header = len(reader.fieldnames or ())
                given = header + len(row.get(None, ())) - sum(v is None for v in row.values())
                raise SpecError(
                    f"data.{key}: {path} row {n} (line {reader.line_num}) has {given} fields, "
                    f"allowed: {header} (as many as the header)"
                )
            rows.append(row)
            lines.append(reader.line_num)
    return rows, lines


def _read_file(path: str, key: str) -> tuple[list[dict], list[int] | None]:
    """(rows, the file line of each row, or None for parquet) of a data file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise SpecError(f"data.{key}: given {path!r}, allowed: an existing {', '.join(SUFFIXES)} file")
    if p.suffix not in SUFFIXES:
        raise SpecError(f"data.{key}: given {path!r}, allowed: a {', '.join(SUFFIXES)} file")
    try:
        if p.suffix in (".csv", ".tsv"):
            return _csv_rows(p, path, key)
        if p.suffix == ".jsonl":
            return _jsonl_rows(p, path, key)
        import pyarrow.parquet as pq

        return pq.read_table(p).to_pylist(), None
    except (UnicodeDecodeError, ValueError, OSError, csv.Error) as e:
        raise SpecError(
            f"data.{key}: given {path!r}, allowed: a readable {p.suffix} file ({_one_line(e)})"
        ) from None
    except Exception as e:  # pyarrow's own errors (ArrowInvalid is a ValueError; others are not)
        if type(e).__module__.startswith("pyarrow"):
            raise SpecError(
                f"data.{key}: given {path!r}, allowed: a readable {p.suffix} file ({_one_line(e)})"
            ) from None
        raise


def _read_hf(cfg, split: str, key: str) -> list[dict]:
    """Rows of a ``datasets`` dataset: a Hub name (+ ``data.config``), a ``save_to_disk``
    folder, or a local data file."""
    from bertsmith.train.pretrain.corpus import load_hf_dataset

    return [dict(r) for r in load_hf_dataset(cfg.name, split, cfg.config, key=f"data.{key}")]


_MISSING = object()


def _examples(rows: list[dict], cfg, where: str, lines: list[int] | None = None) -> list[Example]:
    """Examples of ``rows`` (read from ``where``), each knowing its row (and file line)."""
    if not rows:
        raise SpecError(f"data: {where} has no rows; allowed: a file or split with examples")
    columns = list(rows[0])
    for key in ("text_column", "text_pair_column", "label_column"):
        col = getattr(cfg, key)
        if col is not None and col not in columns:
            raise SpecError(
                f"data.{key}: given {col!r}, allowed: a column of {where}: {', '.join(columns)}"
                f"{nearest(col, columns)}"
            )
    pair = cfg.text_pair_column
    out = []
    for n, r in enumerate(rows, 1):
        origin = f"{where} row {n}" + (f" (line {lines[n - 1]})" if lines else "")
        for key in ("text_column", "text_pair_column", "label_column"):
            col = getattr(cfg, key)
            if col is not None and r.get(col, _MISSING) is _MISSING:
                raise SpecError(f"data.{key}: {origin} has no {col!r} field; allowed: every row has it")
        out.append(Example(r[cfg.text_column], r[pair] if pair else None, r[cfg.label_column], origin))
    return out


def _file_examples(path: str, key: str, cfg) -> list[Example]:
    rows, lines = _read_file(path, key)
    return _examples(rows, cfg, path, lines)


def load_examples(cfg) -> tuple[list[Example], list[Example]]:
    """(train, validation) examples of ``data`` (a ``FinetuneDataConfig``)."""
    if cfg.source == "files":
        train = _file_examples(cfg.train, "train", cfg)
        val = _file_examples(cfg.validation, "validation", cfg) if cfg.validation else None
    else:
        train = _examples(_read_hf(cfg, cfg.train_split, "train_split"), cfg, f"{cfg.name}:{cfg.train_split}")
        val = None
        if cfg.validation_split:
            rows = _read_hf(cfg, cfg.validation_split, "validation_split")
            val = _examples(rows, cfg, f"{cfg.name}:{cfg.validation_split}")
    if val is None:  # hold out a fixed fraction
        order = list(range(len(train)))
        random.Random(cfg.split_seed).shuffle(order)
        n_val = max(1, round(len(train) * cfg.val_fraction))
        if n_val >= len(train):
            raise SpecError(
                f"data.val_fraction: given {cfg.val_fraction}, allowed: a fraction that leaves training "
                f"examples ({len(train)} in all)"
            )
        held = set(order[:n_val])
        val = [train[i] for i in sorted(held)]
        train = [e for i, e in enumerate(train) if i not in held]
    return train[: cfg.max_train], val[: cfg.max_val]


# --- labels -----------------------------------------------------------------------------


def _as_int(x) -> int | None:
    if isinstance(x, bool):
        return int(x)
    if isinstance(x, int):
        return x
    if isinstance(x, float) and x.is_integer():
        return int(x)
    if isinstance(x, str) and x.strip().lstrip("-").isdigit():
        return int(x)
    return None


def _words(x) -> list:
    return x.split() if isinstance(x, str) else list(x)


def label_space(train: list[Example], task) -> tuple[int, list[str] | None]:
    """(num_labels, label names or None) from ``task`` and the training labels."""
    if task.kind == "regression":
        return 1, None
    raw = (
        [t for e in train for t in _words(e.label)]
        if task.kind == "token_classification"
        else [e.label for e in train]
    )
    if task.labels:
        return len(task.labels), list(task.labels)
    ints = [_as_int(x) for x in raw]
    if all(i is not None for i in ints):
        n = task.num_labels or max(ints) + 1
        return n, None
    names = sorted({str(x) for x in raw})
    if task.num_labels is not None and task.num_labels != len(names):
        raise SpecError(
            f"task.num_labels: given {task.num_labels}, but the training labels are {len(names)} names "
            f"({', '.join(names[:8])}{', ...' if len(names) > 8 else ''}); allowed: {len(names)}, or task.labels=[...]"
        )
    return len(names), names


def label_id(x, num_labels: int, names: list[str] | None, where: str) -> int:
    if names is not None and str(x) in names:
        return names.index(str(x))
    i = _as_int(x)
    if i is None or not 0 <= i < num_labels:
        allowed = ", ".join(names) if names else f"integers 0..{num_labels - 1}"
        raise SpecError(
            f"task.num_labels: {where} has label {x!r}, allowed: {allowed} (num_labels={num_labels})"
        )
    return i


def _float_label(x, where: str) -> float:
    try:
        value = float(x)
    except (TypeError, ValueError):
        value = None
    if isinstance(x, bool) or value is None or not math.isfinite(value):
        raise SpecError(
            f"data.label_column: {where} has label {x!r}, allowed: a finite number (regression)"
        ) from None
    return value


# label values that mean "no label" (compared stripped and lower-cased): refused in every split
MISSING_LABELS = frozenset({"", "none", "null", "nan", "n/a"})


def _shown(x) -> str:
    text = repr(x)
    return text if len(text) <= 60 else text[:57] + "..."


def _refuse(key: str, e: Example, column: str, x, allowed: str) -> SpecError:
    where = e.origin or "an example"
    return SpecError(f"data.{key}: {where}, column {column!r}: given {_shown(x)}, allowed: {allowed}")


def _missing(x) -> bool:
    if x is None:
        return True
    if isinstance(x, float) and math.isnan(x):
        return True
    return isinstance(x, str) and x.strip().lower() in MISSING_LABELS


def _check_label(x, kind: str) -> str | None:
    """What is wrong with one label (a tag, for token classification), or None."""
    if _missing(x):
        return "a label (empty, None, null, NaN and n/a mean no label)"
    if kind == "regression":
        try:
            ok = not isinstance(x, bool) and math.isfinite(float(x))
        except (TypeError, ValueError):
            ok = False
        return None if ok else "a finite number (regression)"
    if isinstance(x, float) and not x.is_integer():
        return "an integer or a name (numbers are task=regression)"
    if not isinstance(x, (str, int, float)):  # bool is an int
        return "an integer or a name"
    return None


def check_example(e: Example, task, cfg=None) -> None:
    """One example's types: text (and pair) a string — for token classification a list of
    strings or a string of whitespace-separated words; the label a scalar (a list of as many
    as the words, for token classification) that is not empty or None-like. ``SpecError``
    naming the example's file, row and column."""
    cols = {
        "text_column": getattr(cfg, "text_column", "text"),
        "text_pair_column": getattr(cfg, "text_pair_column", "text_pair"),
        "label_column": getattr(cfg, "label_column", "label"),
    }
    if task.kind == "token_classification":
        words = e.text
        if isinstance(words, str):
            words = words.split()
        elif not isinstance(words, list) or not all(isinstance(w, str) and w.strip() for w in words):
            allowed = "a list of words (non-empty strings) or a string"
            raise _refuse("text_column", e, cols["text_column"], e.text, allowed)
        if not words:
            raise _refuse("text_column", e, cols["text_column"], e.text, "at least one word")
        tags = e.label.split() if isinstance(e.label, str) else e.label
        if not isinstance(tags, list):
            allowed = "a list of tags or a string of them"
            raise _refuse("label_column", e, cols["label_column"], e.label, allowed)
        if len(tags) != len(words):
            raise _refuse(
                "label_column",
                e,
                cols["label_column"],
                e.label,
                f"one tag per word ({len(words)} words, {len(tags)} tags)",
            )
        for tag in tags:
            if (wrong := _check_label(tag, "classification")) is not None:
                raise _refuse("label_column", e, cols["label_column"], e.label, f"tags that are each {wrong}")
        return
    if not isinstance(e.text, str):
        raise _refuse("text_column", e, cols["text_column"], e.text, "a string")
    pair_given = cfg is not None and cfg.text_pair_column is not None
    if (pair_given or e.pair is not None) and not isinstance(e.pair, str):
        raise _refuse("text_pair_column", e, cols["text_pair_column"], e.pair, "a string")
    if (wrong := _check_label(e.label, task.kind)) is not None:
        raise _refuse("label_column", e, cols["label_column"], e.label, wrong)


def check_labels(train: list[Example], val: list[Example], task, cfg=None) -> tuple[int, list[str] | None]:
    """Every example's types checked (``check_example``; ``cfg``, the data settings, names
    the columns), then the label space, with every label checked against it."""
    for e in (*train, *val):
        check_example(e, task, cfg)
    num_labels, names = label_space(train, task)
    for examples, where in ((train, "the training data"), (val, "the validation data")):
        for e in examples:
            at = e.origin or where
            if task.kind == "regression":
                _float_label(e.label, at)
            elif task.kind == "classification":
                label_id(e.label, num_labels, names, at)
            else:
                for tag in _words(e.label):
                    label_id(tag, num_labels, names, at)
    return num_labels, names


# --- encoding and batches ------------------------------------------------------------------


def _cut(a: list[int], b: list[int], room: int) -> tuple[list[int], list[int]]:
    """Longest-first truncation so that len(a) + len(b) <= room."""
    a, b = list(a), list(b)
    while len(a) + len(b) > room:
        (a if len(a) >= len(b) else b).pop()
    return a, b


def encode(
    examples: list[Example], tok: Tok, task, num_labels: int, names, max_len: int, types: bool, where: str
) -> list[dict]:
    """Token ids (+ types) and label(s) of each example, with the special tokens added."""
    out = []
    if task.kind == "token_classification":
        words = [[str(w) for w in _words(e.text)] for e in examples]
        encs = tok.tokenizer.encode_batch(words, is_pretokenized=True, add_special_tokens=False)
        for n, (e, ws, enc) in enumerate(zip(examples, words, encs, strict=True)):
            tags = _words(e.label)
            if len(tags) != len(ws):
                raise SpecError(
                    f"data.label_column: {where} row {n + 1} has {len(ws)} words and {len(tags)} tags; "
                    "allowed: one tag per word"
                )
            ids, labels, prev = enc.ids[: max_len - 2], [], None
            for w in enc.word_ids[: max_len - 2]:
                first = w is not None and w != prev
                labels.append(label_id(tags[w], num_labels, names, where) if first else IGNORE)
                prev = w
            out.append({"ids": [tok.cls_id, *ids, tok.sep_id], "label": [IGNORE, *labels, IGNORE]})
        return out
    texts = tok.encode([str(e.text) for e in examples])
    pairs = tok.encode([str(e.pair) for e in examples]) if examples and examples[0].pair is not None else None
    for n, e in enumerate(examples):
        if task.kind == "regression":
            label = _float_label(e.label, where)
        else:
            label = label_id(e.label, num_labels, names, where)
        if pairs is None:
            a = texts[n][: max_len - 2]
            ids, tt = [tok.cls_id, *a, tok.sep_id], [0] * (len(a) + 2)
        else:
            a, b = _cut(texts[n], pairs[n], max_len - 3)
            ids = [tok.cls_id, *a, tok.sep_id, *b, tok.sep_id]
            tt = [0] * (len(a) + 2) + [1] * (len(b) + 1)
        out.append({"ids": ids, "types": tt if types else None, "label": label})
    return out


def collate(items: list[dict], pad_id: int) -> dict:
    """Padded ``input_ids``, ``attention_mask`` [B, L] (+ ``token_type_ids``) and ``labels``:
    [B] (long, or float for regression) or [B, L] (token classification)."""
    L = max(len(x["ids"]) for x in items)
    ids = torch.full((len(items), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), L), dtype=torch.long)
    for i, x in enumerate(items):
        ids[i, : len(x["ids"])] = torch.tensor(x["ids"])
        mask[i, : len(x["ids"])] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if items[0].get("types") is not None:
        tt = torch.zeros((len(items), L), dtype=torch.long)
        for i, x in enumerate(items):
            tt[i, : len(x["types"])] = torch.tensor(x["types"])
        batch["token_type_ids"] = tt
    first = items[0]["label"]
    if isinstance(first, list):
        labels = torch.full((len(items), L), IGNORE, dtype=torch.long)
        for i, x in enumerate(items):
            labels[i, : len(x["label"])] = torch.tensor(x["label"])
    else:
        labels = torch.tensor(
            [x["label"] for x in items], dtype=torch.float if isinstance(first, float) else torch.long
        )
    batch["labels"] = labels
    return batch


class StepBatches(Dataset):
    """Training batch at micro-step ``s``: epochs are seeded permutations of the examples,
    laid end to end, and step ``s`` takes the next ``batch_size`` of them."""

    def __init__(self, items: list[dict], batch_size: int, seed: int, pad_id: int):
        self.items, self.bs, self.seed, self.pad_id = items, min(batch_size, len(items)), seed, pad_id
        self._perm: dict[int, list[int]] = {}

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._perm:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            # a batch may straddle two epochs; older permutations are not needed again
            self._perm = {e: o for e, o in self._perm.items() if e >= epoch - 1}
            self._perm[epoch] = torch.randperm(len(self.items), generator=g).tolist()
        return self._perm[epoch]

    def __len__(self) -> int:  # indexed by step; the sampler is endless
        return 2**62

    def __getitem__(self, step: int) -> dict:
        n = len(self.items)
        picked = []
        for k in range(step * self.bs, (step + 1) * self.bs):
            picked.append(self.items[self._order(k // n)[k % n]])
        return collate(picked, self.pad_id)


def val_batches(items: list[dict], batch_size: int, pad_id: int) -> list[dict]:
    return [collate(items[i : i + batch_size], pad_id) for i in range(0, len(items), batch_size)]

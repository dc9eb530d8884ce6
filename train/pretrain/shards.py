"""Tokenised, packed shards: ``bertsmith data prepare`` writes them, ``data=shards`` reads them.

The engine is ``litdata`` (Lightning's): ``litdata.optimize`` writes chunked binary shards in
parallel worker processes, ``litdata.StreamingDataset`` reads any row by index. A prepared
directory holds::

    DIR/manifest.json      tokens, documents, rows, seq_len, packing efficiency, the tokenizer's
                           sha256, the source's fingerprint, the split rule, the shard files
    DIR/tokenizer.json     the tokenizer the rows were made with
    DIR/token_counts.json  training-token frequencies (the unigram baseline)
    DIR/train/, DIR/val/   litdata shards (index.json + chunk-*.bin), one item per packed row

A row is stored as one int32 array ``[n, len_1 .. len_n, ids of sequence 1 .. n]``.

Rows are made exactly as the in-memory path makes them (``data._split``'s documents,
``split_documents``, best-fit ``pack``) but packed per group of ``pack_docs`` training
documents, so that memory does not grow with the corpus: when the corpus has at most
``pack_docs`` training documents the rows, their order and so every batch equal the in-memory
path's. Training from shards keeps the step-indexed order of ``data.PretrainBatches``: the
batch of step s is rows of a seeded permutation of the row index, rank r of w takes the
micro-batches r, r+w, ..., so a resumed run replays exactly.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from bertsmith.registry.errors import SpecError
from bertsmith.registry.jsonfile import read_json
from bertsmith.registry.outputs import new_dir
from bertsmith.train.pretrain import corpus
from bertsmith.train.pretrain.packing import Sequence, best_fit, split_documents

FORMAT = 1
MANIFEST = "manifest.json"
COUNTS = "token_counts.json"
SPLITS = ("train", "val")


# --- prepare -----------------------------------------------------------------------------------


def split_stream(d) -> Iterator[tuple[bool, str]]:
    """(is_val, document) in corpus order, with ``data._split``'s rule and limits (``max_docs``
    training documents, at most ``max_val_docs`` validation ones), streamed."""
    n_train = n_val = 0
    for doc in corpus.documents(d):
        if corpus.is_val(doc, d.val_fraction):
            if n_val < d.max_val_docs:
                n_val += 1
                yield True, doc
        else:
            n_train += 1
            yield False, doc
        if d.max_docs and n_train >= d.max_docs and (n_val >= d.max_val_docs or n_train >= 10 * d.max_docs):
            return


def encode_row(row: list[list[int]]):
    import numpy as np

    return np.array([len(row), *(len(s) for s in row), *(t for s in row for t in s)], dtype=np.int32)


def decode_row(arr) -> list[Sequence]:
    flat = arr.tolist()
    n = flat[0]
    out, at = [], 1 + n
    for length in flat[1 : 1 + n]:
        out.append(Sequence(flat[at : at + length]))
        at += length
    return out


_TOKENIZERS: dict = {}


def pack_group(path: str, tokenizer_path: str, seq_len: int, stats_dir: str):
    """litdata worker: the packed rows of one group of documents (a JSON-lines file), in
    ``pack``'s order; the group's counts go to ``stats_dir``."""
    from bertsmith.train.pretrain.tokenizer import load_tokenizer

    if tokenizer_path not in _TOKENIZERS:
        _TOKENIZERS[tokenizer_path] = load_tokenizer(tokenizer_path)
    tok = _TOKENIZERS[tokenizer_path]
    with open(path, encoding="utf-8") as f:
        docs = [json.loads(line) for line in f]
    seqs = split_documents(tok.encode(docs), seq_len, tok.cls_id, tok.sep_id)
    lengths = [len(s.ids) for s in seqs]
    groups = best_fit(lengths, seq_len)
    counts = Counter(t for s in seqs for t in s.ids)
    stats = {
        "documents": len(docs),
        "sequences": len(seqs),
        "tokens": sum(lengths),
        "rows": len(groups),
        "counts": sorted(counts.items()),
    }
    Path(stats_dir, Path(path).stem + ".json").write_text(json.dumps(stats))
    for g in groups:
        yield encode_row([seqs[i].ids for i in g])


def _write_group(work: Path, name: str, docs: list[str]) -> str:
    p = work / f"{name}.jsonl"
    with open(p, "w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps(doc) + "\n")
    return str(p)


def _optimize(groups: list[str], out: Path, tok_path: Path, seq_len: int, stats: Path, workers: int) -> None:
    from contextlib import redirect_stdout
    from functools import partial

    import litdata

    stats.mkdir(exist_ok=True)
    with redirect_stdout(sys.stderr):  # litdata's chatter; its progress bar is on stderr already
        litdata.optimize(
            fn=partial(pack_group, tokenizer_path=str(tok_path), seq_len=seq_len, stats_dir=str(stats)),
            inputs=groups,
            output_dir=str(out),
            chunk_bytes="64MB",
            num_workers=max(1, min(workers, len(groups))),
            keep_data_ordered=True,  # each worker a contiguous slice: rows in group order
            reorder_files=False,
            start_method="spawn",
        )


def _shard_files(root: Path) -> dict[str, int]:
    return {
        str(p.relative_to(root)): p.stat().st_size
        for split in SPLITS
        for p in sorted((root / split).iterdir())
        if p.is_file()
    }


def check_installed() -> None:
    try:
        import litdata  # noqa: F401
    except ImportError:
        raise SpecError(
            "data: shards need litdata, allowed: pip install 'bertsmith[shards]' (or scripts/setup)"
        ) from None


def prepare(tcfg, out: str, workers: int = 1, pack_docs: int = 10000, force: bool = False) -> dict:
    """Tokenise, pack and write ``tcfg``'s corpus to ``out``; returns the manifest."""
    from bertsmith.train.pretrain.tokenizer import get_tokenizer

    check_installed()
    d = tcfg.data
    if d.source == "shards":
        raise SpecError("data: given 'shards', allowed: stdlib, files or hf (a corpus to prepare)")
    if tcfg.objective.nsp:
        raise SpecError("objective.nsp: given true, allowed: false (shards hold MLM rows)")
    t0 = time.time()
    with new_dir(out, "--out", force) as tmp:
        work = tmp / ".work"
        work.mkdir()
        groups, buf, tok_docs, val_docs, held = [], [], [], [], None
        n_train = 0
        for is_val, doc in split_stream(d):
            if is_val:
                val_docs.append(doc)
                continue
            n_train += 1
            if len(tok_docs) < d.tokenizer_docs:
                tok_docs.append(doc)
            if held is not None:  # one document behind: a corpus without validation lends its last
                buf.append(held)
                if len(buf) == pack_docs:
                    groups.append(_write_group(work, f"group-{len(groups):06d}", buf))
                    buf = []
            held = doc
            if n_train % 100_000 == 0:
                print(f"bertsmith: read {n_train:,} training documents", file=sys.stderr, flush=True)
        if held is None:
            raise SpecError(
                f"data: given a corpus with no training documents ({d.source}"
                f"{' ' + str(d.path or d.name) if (d.path or d.name) else ''}), allowed: a corpus with text"
            )
        if val_docs:
            buf.append(held)
        elif n_train > 1:  # as data._split: hold out the last document (not trained on)
            val_docs, n_train = [held], n_train - 1
            if n_train < d.tokenizer_docs:
                tok_docs.pop()
        else:
            buf.append(held)
            val_docs = [held]
        if buf:
            groups.append(_write_group(work, f"group-{len(groups):06d}", buf))
        tok = get_tokenizer(tcfg.tokenizer, corpus.fingerprint(d) + f"|{d.max_docs}", tok_docs)
        del tok_docs
        tok_path = tmp / "tokenizer.json"
        tok.save(tok_path)
        read_s = time.time() - t0
        print(
            f"bertsmith: {n_train:,} training and {len(val_docs):,} validation documents in "
            f"{len(groups)} group(s); tokenising and packing with {workers} worker(s)",
            file=sys.stderr,
            flush=True,
        )
        val_group = _write_group(work, "val", val_docs)
        _optimize(groups, tmp / "train", tok_path, d.seq_len, work / "stats", workers)
        _optimize([val_group], tmp / "val", tok_path, d.seq_len, work / "val-stats", 1)
        train_stats = [json.loads(p.read_text()) for p in sorted((work / "stats").glob("*.json"))]
        val_stats = json.loads(next((work / "val-stats").glob("*.json")).read_text())
        counts: Counter = Counter()
        for s in train_stats:
            counts.update(dict(s["counts"]))
        total = {k: sum(s[k] for s in train_stats) for k in ("documents", "sequences", "tokens", "rows")}
        if total["rows"] == 0 or val_stats["rows"] == 0:
            raise SpecError("data: given a corpus that makes no packed rows, allowed: a larger corpus")
        (tmp / COUNTS).write_text(json.dumps({str(k): v for k, v in sorted(counts.items())}))
        shutil.rmtree(work)
        from importlib.metadata import PackageNotFoundError, version

        try:
            bs_version = version("bertsmith")
        except PackageNotFoundError:
            bs_version = "unknown"
        manifest = {
            "format": FORMAT,
            "bertsmith_version": bs_version,
            "engine": "litdata",
            "seq_len": d.seq_len,
            "train": {
                **total,
                "packing_efficiency": total["tokens"] / (total["rows"] * d.seq_len),
                "groups": len(groups),
            },
            "val": {k: val_stats[k] for k in ("documents", "sequences", "tokens", "rows")},
            "pack_docs": pack_docs,
            "tokenizer_sha256": tok.sha256,
            "tokenizer_size": tok.size,
            "source": {
                **{
                    k: v for k, v in d.model_dump(mode="json").items() if k not in ("batch_size", "streaming")
                },
                "fingerprint": corpus.fingerprint(d),
            },
            "split_rule": (
                f"a document is validation iff blake2b-64(text)/2^64 < val_fraction={d.val_fraction} "
                f"(at most max_val_docs={d.max_val_docs}); max_docs={d.max_docs} training documents, "
                "as bertsmith train's in-memory path; packed best-fit per group of "
                f"{pack_docs} training documents"
            ),
            "files": _shard_files(tmp),
            "prepare_s": round(time.time() - t0, 2),
            "read_s": round(read_s, 2),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


# --- read --------------------------------------------------------------------------------------


def read_manifest(path: str | os.PathLike) -> dict:
    """The manifest of a prepared directory, its shard files checked (present, same size)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise SpecError(
            f"data.path: given {str(path)!r}, allowed: a directory made by bertsmith data prepare"
        )
    if not (root / MANIFEST).exists():
        raise SpecError(
            f"data.path: given {str(path)!r}, allowed: a directory made by bertsmith data prepare "
            f"(it has no {MANIFEST})"
        )
    m = read_json(root / MANIFEST, "data.path")
    if not isinstance(m, dict) or m.get("format") != FORMAT or not isinstance(m.get("files"), dict):
        raise SpecError(f"data.path: given {str(path)!r}, allowed: a {MANIFEST} of format {FORMAT}")
    for split in SPLITS:
        if not (root / split / "index.json").is_file():
            raise SpecError(f"data.path: {str(root / split / 'index.json')!r} is missing; prepare again")
    for name, size in m["files"].items():
        f = root / name
        if not f.is_file():
            raise SpecError(f"data.path: shard {str(f)!r} is missing; prepare again")
        if f.stat().st_size != size:
            raise SpecError(
                f"data.path: shard {str(f)!r} has {f.stat().st_size:,} bytes, the manifest "
                f"{size:,} (truncated or changed); prepare again"
            )
    return m


def check(tcfg) -> dict:
    """Before training starts: the directory, its shards, the tokenizer and seq_len."""
    from bertsmith.train.pretrain.tokenizer import file_sha256

    check_installed()
    d = tcfg.data
    if not d.path or d.path == "???":
        raise SpecError("data.path: missing; give data.path=DIR, a directory made by bertsmith data prepare")
    m = read_manifest(d.path)
    root = Path(d.path).expanduser()
    if file_sha256(root / "tokenizer.json") != m["tokenizer_sha256"]:
        raise SpecError(
            f"data.path: {str(root / 'tokenizer.json')!r} is not the tokenizer the shards were made with "
            f"(sha256 {m['tokenizer_sha256'][:12]}); prepare again"
        )
    if tcfg.tokenizer.kind == "file":
        sha = (
            file_sha256(Path(tcfg.tokenizer.path).expanduser() / "tokenizer.json")
            if Path(tcfg.tokenizer.path).expanduser().is_dir()
            else file_sha256(tcfg.tokenizer.path)
        )
        if sha != m["tokenizer_sha256"]:
            raise SpecError(
                f"tokenizer.path: given {tcfg.tokenizer.path!r} (sha256 {str(sha)[:12]}), allowed: the "
                f"tokenizer {str(d.path)!r} was prepared with (sha256 {m['tokenizer_sha256'][:12]}); "
                "leave tokenizer unset to use it"
            )
    if d.seq_len != m["seq_len"]:
        raise SpecError(
            f"data.seq_len: given {d.seq_len}, allowed: {m['seq_len']} (the seq_len {str(d.path)!r} "
            "was packed to)"
        )
    if tcfg.objective.nsp:
        raise SpecError("objective.nsp: given true, allowed: false with data=shards (shards hold MLM rows)")
    if tcfg.objective.masking == "static":
        raise SpecError("objective.masking: given 'static', allowed: 'dynamic' with data=shards")
    if d.streaming:
        raise SpecError(
            "data.streaming: given true, allowed: false with data=shards (rows are read by index)"
        )
    if d.batch_size > m["train"]["rows"]:
        raise SpecError(
            f"data.batch_size: given {d.batch_size} rows, allowed: at most the {m['train']['rows']} "
            f"packed rows of {str(d.path)!r}"
        )
    return m


def with_shard_tokenizer(tcfg, resolved: dict):
    """(tcfg, resolved) with ``tokenizer=file`` of the shards' ``tokenizer.json`` unless one was given."""
    if tcfg.tokenizer.kind == "file":
        return tcfg, resolved
    from bertsmith.train.pretrain.config import TokenizerConfig

    tk = TokenizerConfig(kind="file", path=str(Path(tcfg.data.path).expanduser() / "tokenizer.json"))
    return tcfg.model_copy(update={"tokenizer": tk}), {**resolved, "tokenizer": tk.model_dump()}


class ShardRows:
    """The packed rows of one split, read by index (a list-like for ``data.Rows``)."""

    def __init__(self, path: Path):
        from litdata import StreamingDataset

        self.path = Path(path)
        # rows are read at random: decoded one at a time, and every chunk kept memory-mapped
        # (litdata keeps max(4, max_pre_download) maps; a row in an unmapped chunk costs ~1 ms)
        chunks = len(read_json(self.path / "index.json", "data.path").get("chunks", []))
        self.ds = StreamingDataset(str(self.path), batch_decode=0, max_pre_download=min(max(4, chunks), 1024))

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return decode_row(self.ds[int(i)])

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __getstate__(self):  # a DataLoader worker or a spawned rank opens its own reader
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])


def build_data(cfg, seed: int):
    """``data.Data`` from a prepared directory: step-indexed training batches over its rows,
    the validation rows in memory."""
    from bertsmith.train.pretrain.data import (
        Data,
        Rows,
        StepSampler,
        ValBatches,
        train_batches,
        unigram_loss,
    )
    from bertsmith.train.pretrain.tokenizer import load_tokenizer

    d, obj = cfg.data, cfg.objective
    m = check(cfg)
    root = Path(d.path).expanduser()
    tok = load_tokenizer(cfg.tokenizer.path if cfg.tokenizer.kind == "file" else root / "tokenizer.json")
    t = m["train"]
    rows = Rows(ShardRows(root / "train"), t["packing_efficiency"], t["tokens"])
    train = train_batches(cfg, rows, tok, seed)  # static masks were refused by check()
    val_rows = Rows(list(ShardRows(root / "val")), 1.0, m["val"]["tokens"])
    val = ValBatches(train, val_rows, obj.eval_mask_ratio)
    counts = Counter({int(k): v for k, v in read_json(root / COUNTS, "data.path").items()})
    stats = {
        "train_docs": t["documents"],
        "packing_efficiency": t["packing_efficiency"],
        "train_tokens": t["tokens"],
        "rows": t["rows"],
        "steps_per_epoch": train.per_epoch,
        "val_docs": m["val"]["documents"],
        "val_batches": len(val),
        "unigram_val_loss": unigram_loss(counts, val, tok.size),
        "tokenizer_size": tok.size,
    }
    return Data(tok, train, val, StepSampler(), stats)


def bench(path: str, batch_size: int = 16, steps: int = 200, seed: int = 0) -> dict:
    """Tokens/s of the shard reader: step-indexed batches (rows read, collated and masked, as
    training gets them) in this process."""
    from bertsmith.train.pretrain.config import ObjectiveConfig
    from bertsmith.train.pretrain.data import PretrainBatches, Rows
    from bertsmith.train.pretrain.tokenizer import load_tokenizer

    m = read_manifest(path)
    root = Path(path).expanduser()
    tok = load_tokenizer(root / "tokenizer.json")
    t = m["train"]
    rows = Rows(ShardRows(root / "train"), t["packing_efficiency"], t["tokens"])
    batches = PretrainBatches(
        rows, min(batch_size, t["rows"]), m["seq_len"], ObjectiveConfig(mask_ratio=0.3), tok, seed, False
    )
    batches[0]  # opens the reader
    tokens, t0 = 0, time.perf_counter()
    for step in range(1, steps + 1):
        tokens += int(batches[step]["input_ids"].numel())
    s = time.perf_counter() - t0
    return {"steps": steps, "tokens": tokens, "seconds": s, "tokens_per_s": tokens / s}

"""Batches for pre-training: packed rows of sequences, MLM masking, a resumable order.

Every batch is a pure function of ``(seed, step)``: the row order of an epoch is a seeded
permutation and dynamic masks are drawn from a generator seeded by the step, so a resumed run
sees exactly the batches an uninterrupted one would have seen. Under DDP, rank r of w takes
the micro-batches r, r+w, r+2w, ...

A batch is a packed stream::

    input_ids [T]   labels [T] (-100 = not predicted)   cu_seqlens [B+1]   max_seqlen
    token_type_ids [T] and nsp_labels [B] when the objective has NSP
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, IterableDataset, Sampler

from bertsmith.registry.errors import SpecError
from bertsmith.train.pretrain import corpus
from bertsmith.train.pretrain.packing import Sequence, best_fit, efficiency, nsp_pairs, split_documents
from bertsmith.train.pretrain.tokenizer import Tok, get_tokenizer

IGNORE = -100


def mask_tokens(
    ids: torch.Tensor,
    maskable: torch.Tensor,
    ratio: float,
    tok: Tok,
    gen: torch.Generator,
    p_mask: float = 0.8,
    p_random: float = 0.1,
):
    """BERT masking: pick each maskable token with probability ``ratio``; of those, replace
    ``p_mask`` with [MASK], ``p_random`` with a random real token, keep the rest.
    Returns (inputs, labels) with labels -100 where nothing is predicted."""
    picked = (torch.rand(ids.shape, generator=gen) < ratio) & maskable
    labels = torch.where(picked, ids, torch.full_like(ids, IGNORE))
    roll = torch.rand(ids.shape, generator=gen)
    inputs = ids.clone()
    inputs[picked & (roll < p_mask)] = tok.mask_id
    randomize = picked & (roll >= p_mask) & (roll < p_mask + p_random)
    low = max(tok.special_ids) + 1
    inputs[randomize] = torch.randint(low, tok.size, (int(randomize.sum()),), generator=gen)
    return inputs, labels


def _generator(*keys: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(hash(keys) & 0x7FFF_FFFF_FFFF)
    return g


@dataclass
class Rows:
    """Packed rows, each a list of sequences, plus what masking needs."""

    rows: list[list[Sequence]]
    efficiency: float
    n_tokens: int

    def collate(self, rows: list[list[Sequence]], seq_len: int) -> dict:
        seqs = [s for row in rows for s in row]
        ids = torch.tensor([t for s in seqs for t in s.ids], dtype=torch.long)
        lens = torch.tensor([0] + [len(s.ids) for s in seqs])
        batch = {"input_ids": ids, "cu_seqlens": torch.cumsum(lens, 0).to(torch.int32), "max_seqlen": seq_len}
        if seqs and seqs[0].types is not None:
            batch["token_type_ids"] = torch.tensor([t for s in seqs for t in s.types])
            batch["nsp_labels"] = torch.tensor([s.nsp_label for s in seqs])
        return batch


def pack(seqs: list[Sequence], seq_len: int) -> Rows:
    lengths = [len(s.ids) for s in seqs]
    groups = best_fit(lengths, seq_len)
    return Rows([[seqs[i] for i in g] for g in groups], efficiency(groups, lengths, seq_len), sum(lengths))


class PretrainBatches(Dataset):
    """Training batches by step: ``self[step]`` is the batch of that micro-step."""

    def __init__(
        self,
        rows: Rows,
        rows_per_batch: int,
        seq_len: int,
        objective,
        tok: Tok,
        seed: int,
        static_masks: bool,
        batch_warmup_steps: int = 0,
        batch_warmup_start: float = 1.0,
    ):
        self.rows, self.per_batch, self.seq_len = rows, rows_per_batch, seq_len
        self.objective, self.tok, self.seed = objective, tok, seed
        self.per_epoch = max(1, len(rows.rows) // rows_per_batch)
        self.warmup_steps, self.warmup_start = batch_warmup_steps, batch_warmup_start
        self._perm: tuple[int, torch.Tensor] | None = None  # (epoch, its row permutation), kept
        self.static = None
        if static_masks:  # BERT: one mask per row, drawn once
            self.static = [
                self._mask(rows.collate([r], seq_len), _generator(seed, -1, i), objective.mask_ratio)
                for i, r in enumerate(rows.rows)
            ]

    def rows_at(self, step: int) -> list[int]:
        epoch, pos = divmod(step, self.per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, torch.randperm(len(self.rows.rows), generator=_generator(self.seed, epoch)))
        chosen = self._perm[1][pos * self.per_batch : (pos + 1) * self.per_batch].tolist()
        if self.warmup_steps and step < self.warmup_steps:  # batch-size warmup: a prefix
            frac = self.warmup_start + (1 - self.warmup_start) * step / self.warmup_steps
            chosen = chosen[: max(1, math.ceil(frac * len(chosen)))]
        return chosen

    def _mask(self, batch: dict, gen: torch.Generator, ratio: float) -> dict:
        ids = batch["input_ids"]
        maskable = ~torch.isin(ids, torch.tensor(self.tok.special_ids))
        batch["input_ids"], batch["labels"] = mask_tokens(
            ids, maskable, ratio, self.tok, gen, self.objective.mask_token, self.objective.random_token
        )
        return batch

    def __len__(self) -> int:  # a map-style dataset indexed by step; the sampler is endless
        return 2**62

    def __getitem__(self, step: int) -> dict:
        chosen = self.rows_at(step)
        if self.static is not None:
            parts = [self.static[i] for i in chosen]
            return _concat(parts, self.seq_len)
        batch = self.rows.collate([self.rows.rows[i] for i in chosen], self.seq_len)
        return self._mask(batch, _generator(self.seed, 1, step), self.objective.mask_ratio)


def _concat(parts: list[dict], seq_len: int) -> dict:
    out = {"max_seqlen": seq_len}
    for key in parts[0]:
        if key == "max_seqlen":
            continue
        if key == "cu_seqlens":
            offsets, cu = 0, [torch.zeros(1, dtype=torch.int32)]
            for p in parts:
                cu.append(p["cu_seqlens"][1:] + offsets)
                offsets += int(p["cu_seqlens"][-1])
            out[key] = torch.cat(cu)
        else:
            out[key] = torch.cat([p[key] for p in parts])
    return out


class StepSampler(Sampler):
    """Endless micro-step indices for one rank, starting after ``start`` consumed ones."""

    def __init__(self, rank: int = 0, world: int = 1):
        self.rank, self.world, self.start = rank, world, 0

    def __iter__(self) -> Iterator[int]:
        i = self.start
        while True:
            yield i * self.world + self.rank
            i += 1


class ValBatches(Dataset):
    """A fixed validation set: masks drawn once at ``eval_mask_ratio``."""

    def __init__(self, train: PretrainBatches, rows: Rows, ratio: float):
        per = train.per_batch
        self.batches = []
        for b in range(math.ceil(len(rows.rows) / per)):
            batch = rows.collate(rows.rows[b * per : (b + 1) * per], train.seq_len)
            self.batches.append(train._mask(batch, _generator(train.seed, 2, b), ratio))

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict:
        return self.batches[i]


class StreamingBatches(IterableDataset):
    """Batches packed on the fly from a document stream (corpora larger than memory).

    Documents are tokenized in chunks and packed best-fit within a buffer of sequences;
    order follows the stream (no global shuffle). Resuming skips the batches already seen,
    which is deterministic because the stream and the masks are.
    """

    def __init__(
        self, data, tok: Tok, objective, seq_len: int, rows_per_batch: int, seed: int, buffer_docs: int = 2000
    ):
        self.data, self.tok, self.objective = data, tok, objective
        self.seq_len, self.per_batch, self.seed, self.buffer = seq_len, rows_per_batch, seed, buffer_docs
        self.start, self.rank, self.world = 0, 0, 1
        self._masker = PretrainBatches(Rows([], 1.0, 0), rows_per_batch, seq_len, objective, tok, seed, False)

    def _row_batches(self) -> Iterator[list[list[Sequence]]]:
        while True:  # epochs
            docs, pending = [], []
            stream = (d for d in corpus.documents(self.data) if not corpus.is_val(d, self.data.val_fraction))
            for doc in stream:
                docs.append(doc)
                if len(docs) == self.buffer:
                    pending += pack(self._sequences(docs), self.seq_len).rows
                    docs = []
                    while len(pending) >= self.per_batch:
                        yield pending[: self.per_batch]
                        pending = pending[self.per_batch :]
            if docs:
                pending += pack(self._sequences(docs), self.seq_len).rows
            while len(pending) >= self.per_batch:
                yield pending[: self.per_batch]
                pending = pending[self.per_batch :]

    def _sequences(self, docs: list[str]) -> list[Sequence]:
        return split_documents(self.tok.encode(docs), self.seq_len, self.tok.cls_id, self.tok.sep_id)

    def __iter__(self) -> Iterator[dict]:
        i = 0
        try:
            for rows in self._row_batches():
                if i >= self.start * self.world and i % self.world == self.rank:
                    batch = Rows(rows, 1.0, 0).collate(rows, self.seq_len)
                    yield self._masker._mask(batch, _generator(self.seed, 1, i), self.objective.mask_ratio)
                i += 1
        except SpecError as e:  # the corpus changed under a running job: say so, and what is kept
            raise SpecError(
                [
                    f"{line} (during training, at batch {i}: a streaming corpus is read again every "
                    "epoch; restore it, then resume=true continues from the last checkpoint)"
                    for line in e.lines
                ]
            ) from None


@dataclass
class Data:
    """Everything the training loop needs from the data side."""

    tok: Tok
    train: Dataset
    val: ValBatches
    sampler: StepSampler | None
    stats: dict


def unigram_loss(train_tokens: Counter, val: ValBatches, vocab: int) -> float:
    """Cross-entropy of predicting the validation masked tokens from training unigram
    frequencies (add-one smoothed): the baseline a model must beat to have learned context."""
    total = sum(train_tokens.values()) + vocab
    nll, n = 0.0, 0
    for b in val.batches:
        for t in b["labels"][b["labels"] != IGNORE].tolist():
            nll -= math.log((train_tokens.get(t, 0) + 1) / total)
            n += 1
    return nll / max(1, n)


def train_batches(cfg, rows: Rows, tok: Tok, seed: int) -> PretrainBatches:
    """``PretrainBatches`` of ``rows`` as ``cfg`` (a ``TrainConfig``) sets them up: batch size,
    length, objective, masking and batch-size warmup (the in-memory path and the shards')."""
    d, obj, sched = cfg.data, cfg.objective, cfg.schedule
    return PretrainBatches(
        rows,
        d.batch_size,
        d.seq_len,
        obj,
        tok,
        seed,
        obj.masking == "static",
        sched.batch_warmup_steps,
        sched.batch_warmup_start,
    )


def _split(d) -> tuple[list[str], list[str]]:
    """The corpus's training and validation documents (``corpus.is_val`` decides; streaming
    keeps only what the tokenizer trains on, otherwise every document or ``max_docs``)."""
    val_docs, train_docs = [], []
    limit = d.tokenizer_docs if d.streaming else d.max_docs
    for doc in corpus.documents(d):
        if corpus.is_val(doc, d.val_fraction):
            if len(val_docs) < d.max_val_docs:
                val_docs.append(doc)
        else:
            train_docs.append(doc)
        if (
            limit
            and len(train_docs) >= limit
            and (len(val_docs) >= d.max_val_docs or len(train_docs) >= 10 * limit)
        ):
            break
    if not train_docs:
        raise SpecError(
            f"data: given a corpus with no training documents ({d.source}"
            f"{' ' + str(d.path or d.name) if (d.path or d.name) else ''}), allowed: "
            "a corpus with text"
        )
    if not val_docs:  # tiny corpora: hold out the last document rather than fail
        val_docs = [train_docs.pop()] if len(train_docs) > 1 else list(train_docs)
    return train_docs, val_docs


def _streamed_train(cfg, tok, sequences, train_docs: list[str], seed: int):
    """Training batches read from the corpus as they are needed; token counts from a sample."""
    d = cfg.data
    train = StreamingBatches(d, tok, cfg.objective, d.seq_len, d.batch_size, seed)
    template = PretrainBatches(Rows([], 1.0, 0), d.batch_size, d.seq_len, cfg.objective, tok, seed, False)
    stats = {"train_docs": None, "packing_efficiency": None, "train_tokens": None}
    counts = Counter(t for s in sequences(train_docs[:2000]) for t in s.ids)
    return train, template, stats, counts, None


def _packed_train(cfg, tok, sequences, train_docs: list[str], seed: int):
    """Training batches from every document, packed into rows once (held in memory)."""
    d = cfg.data
    rows = pack(sequences(train_docs), d.seq_len)
    if len(rows.rows) < d.batch_size:
        raise SpecError(
            f"data.batch_size: given {d.batch_size} rows, allowed: at most the "
            f"{len(rows.rows)} packed rows this corpus makes at seq_len {d.seq_len}"
        )
    train = train_batches(cfg, rows, tok, seed)
    counts = Counter(t for row in rows.rows for s in row for t in s.ids)
    stats = {
        "train_docs": len(train_docs),
        "packing_efficiency": rows.efficiency,
        "train_tokens": rows.n_tokens,
        "rows": len(rows.rows),
        "steps_per_epoch": train.per_epoch,
    }
    return train, train, stats, counts, StepSampler()


def build_data(cfg, seed: int) -> Data:
    """Read the corpus, get the tokenizer, build train and validation batches."""
    d, obj = cfg.data, cfg.objective
    if d.streaming and obj.nsp:
        raise SpecError("objective.nsp: given true, allowed: false with data.streaming=true")
    if d.streaming and obj.masking == "static":
        raise SpecError("objective.masking: given 'static', allowed: 'dynamic' with data.streaming=true")
    train_docs, val_docs = _split(d)
    tok = get_tokenizer(
        cfg.tokenizer, corpus.fingerprint(d) + f"|{d.max_docs}", train_docs[: d.tokenizer_docs]
    )
    rng = random.Random(seed)

    def sequences(texts: list[str]) -> list[Sequence]:
        ids = tok.encode(texts)
        if obj.nsp:
            return nsp_pairs(ids, d.seq_len, tok.cls_id, tok.sep_id, rng)
        return split_documents(ids, d.seq_len, tok.cls_id, tok.sep_id)

    val_rows = pack(sequences(val_docs), d.seq_len)
    if not val_rows.rows:
        raise SpecError("data: given a validation split with no usable sequences, allowed: a larger corpus")
    make_train = _streamed_train if d.streaming else _packed_train
    train, template, stats, counts, sampler = make_train(cfg, tok, sequences, train_docs, seed)
    val = ValBatches(template, val_rows, obj.eval_mask_ratio)
    stats.update(
        val_docs=len(val_docs),
        val_batches=len(val),
        unigram_val_loss=unigram_loss(counts, val, tok.size),
        tokenizer_size=tok.size,
    )
    return Data(tok, train, val, sampler, stats)

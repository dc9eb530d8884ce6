"""Tokenizers with the ``tokenizers`` library: trained on the corpus (cached) or loaded.

``tokenizer.kind``: ``wordpiece`` (BERT-style: lower-cased, [CLS]/[SEP]/[MASK]),
``bpe`` (RoBERTa/ModernBERT-style byte-level BPE: <s>/</s>/<mask>), or ``file`` (a
``tokenizer.json`` or a transformers tokenizer directory at ``tokenizer.path``). The model's
``vocab_size`` is the tokenizer's, rounded up to a multiple of 64 (the extra rows are never
produced by the tokenizer).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from registry.errors import SpecError
from train.corpus import cache_dir

SPECIALS = {
    "wordpiece": {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"},
    "bpe": {"cls": "<s>", "pad": "<pad>", "sep": "</s>", "unk": "<unk>", "mask": "<mask>"},
}


@dataclass
class Tok:
    """A tokenizer plus the ids of its special tokens."""

    tokenizer: Tokenizer
    cls_id: int
    sep_id: int
    mask_id: int
    pad_id: int
    unk_id: int

    @property
    def size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @property
    def padded_size(self) -> int:
        return -(-self.size // 64) * 64

    @property
    def special_ids(self) -> list[int]:
        return sorted({self.cls_id, self.sep_id, self.mask_id, self.pad_id, self.unk_id})

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids without special tokens (the data pipeline adds them)."""
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def save(self, path: Path) -> None:
        self.tokenizer.save(str(path))


def _with_specials(tokenizer: Tokenizer, names: dict[str, str] | None = None) -> Tok:
    vocab = tokenizer.get_vocab()
    candidates = {
        "cls": ["[CLS]", "<s>", "<cls>"],
        "sep": ["[SEP]", "</s>", "<sep>"],
        "mask": ["[MASK]", "<mask>"],
        "pad": ["[PAD]", "<pad>"],
        "unk": ["[UNK]", "<unk>"],
    }
    ids = {}
    for role, options in candidates.items():
        options = [names[role]] if names else options
        found = next((vocab[t] for t in options if t in vocab), None)
        if found is None:
            raise SpecError(
                f"tokenizer.path: given a tokenizer without a {role} token, allowed: "
                f"one with one of {', '.join(options)}"
            )
        ids[f"{role}_id"] = found
    return Tok(tokenizer, **ids)


def train_tokenizer(
    kind: str, texts: Iterable[str], vocab_size: int, min_frequency: int = 2, lowercase: bool = True
) -> Tok:
    """Train a ``wordpiece`` or byte-level ``bpe`` tokenizer on ``texts``."""
    sp = SPECIALS[kind]
    if kind == "wordpiece":
        tk = Tokenizer(models.WordPiece(unk_token=sp["unk"]))
        tk.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
        tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tk.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(sp.values()),
            show_progress=False,
        )
    else:
        tk = Tokenizer(models.BPE(unk_token=sp["unk"]))
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(sp.values()),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    tk.train_from_iterator(texts, trainer=trainer)
    tok = _with_specials(tk, sp)
    cls, sep = sp["cls"], sp["sep"]
    tk.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tok.cls_id), (sep, tok.sep_id)],
    )
    return tok


def load_tokenizer(path: str | os.PathLike) -> Tok:
    """A ``tokenizer.json`` file, or a directory holding one (transformers layout)."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise SpecError(
            f"tokenizer.path: given {str(path)!r}, allowed: a tokenizer.json or a directory holding one"
        )
    try:
        tk = Tokenizer.from_file(str(p))
    except Exception as e:  # tokenizers raises plain Exception on malformed files
        raise SpecError(
            f"tokenizer.path: given {str(p)!r}, allowed: a valid tokenizer.json "
            f"({' '.join(str(e).split())[:100]})"
        ) from None
    return _with_specials(tk)


def get_tokenizer(cfg, corpus_id: str, texts: Iterable[str]) -> Tok:
    """Load ``cfg.path`` (kind ``file``) or train on ``texts``, cached by corpus and settings."""
    if cfg.kind == "file":
        return load_tokenizer(cfg.path)
    key = json.dumps([corpus_id, cfg.kind, cfg.vocab_size, cfg.min_frequency, cfg.lowercase])
    cache = cache_dir() / "tokenizers" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    cache.parent.mkdir(parents=True, exist_ok=True)
    # The tokenizers trainers break ties between equally frequent merges in hash-map order,
    # so two trainings can differ slightly: the cache (shared by the jobs of a sweep, under a
    # lock so parallel jobs train once) is what makes runs with the same settings identical.
    with open(cache.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if cache.is_file():
            try:
                return _with_specials(Tokenizer.from_file(str(cache)), SPECIALS[cfg.kind])
            except Exception:  # a damaged cache entry is retrained below
                pass
        tok = train_tokenizer(cfg.kind, texts, cfg.vocab_size, cfg.min_frequency, cfg.lowercase)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tok.save(tmp)
        os.replace(tmp, cache)
        return tok

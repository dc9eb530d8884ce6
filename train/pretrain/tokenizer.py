"""Tokenizers with the ``tokenizers`` library: trained on the corpus (cached) or loaded.

``tokenizer.kind``: ``wordpiece`` (BERT-style: lower-cased, [CLS]/[SEP]/[MASK]),
``bpe`` (RoBERTa/ModernBERT-style byte-level BPE: <s>/</s>/<mask>), or ``file`` (a
``tokenizer.json`` or a transformers tokenizer directory at ``tokenizer.path``). The model's
``vocab_size`` is the tokenizer's, rounded up to a multiple of 64 (the extra rows are never
produced by the tokenizer).

Training is deterministic: the same documents, settings and ``tokenizers`` version give the
same ``tokenizer.json`` in every process and on every machine (whatever PYTHONHASHSEED,
RAYON_NUM_THREADS or TOKENIZERS_PARALLELISM), so the jobs of a grid train on one tokenizer
wherever they run. The trainers break ties between equally frequent merges by token id.
Byte-level BPE's ids are fixed (specials, then the 256-character byte alphabet in code-point
order, then merges), but the WordPiece trainer numbered its ``##c`` pieces in the order of a
Rust hash map seeded anew in every process, so every process learnt a slightly different
vocabulary (on the default corpus, 66 of 8192 tokens and 3228 ids differed between two
processes). Here the pieces are numbered first, in code-point order.

A tokenizer's identity is ``tokenizer_sha256``: the SHA-256 of its ``tokenizer.json`` in
canonical form (keys sorted, no whitespace), recorded in a run's ``summary.json``, shown by
``bertsmith compare`` and checked when a run is resumed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tokenizers import (
    AddedToken,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from bertsmith.registry.errors import SpecError
from bertsmith.registry.io import read_tokenizer
from bertsmith.train.pretrain.corpus import cache_dir, cache_error

SPECIALS = {
    "wordpiece": {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"},
    "bpe": {"cls": "<s>", "pad": "<pad>", "sep": "</s>", "unk": "<unk>", "mask": "<mask>"},
}


# bumped when a kind's training changes what it learns, so caches made before are not reused:
# wordpiece 2 numbers the ##c pieces in a fixed order (1 numbered them in hash-map order);
# bpe 2 strips the space before <mask> (lstrip), as RoBERTa's does
TRAINING_VERSION = {"wordpiece": 2, "bpe": 2}


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

    @property
    def sha256(self) -> str:
        """SHA-256 of the canonical ``tokenizer.json`` (see ``tokenizer_sha256``)."""
        return tokenizer_sha256(self.tokenizer.to_str())


def tokenizer_sha256(tokenizer_json: str | bytes) -> str:
    """SHA-256 (hex) of a ``tokenizer.json``'s contents in canonical form (keys sorted, no
    whitespace), so a file saved with indentation and the same tokenizer in memory agree."""
    canonical = json.dumps(
        json.loads(tokenizer_json), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def file_sha256(path: str | os.PathLike) -> str | None:
    """``tokenizer_sha256`` of a ``tokenizer.json`` file; None if it is missing or not JSON."""
    try:
        return tokenizer_sha256(Path(path).read_bytes())
    except (OSError, ValueError):  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None


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
    pieces: list[str] = []
    if kind == "wordpiece":
        tk = Tokenizer(models.WordPiece(unk_token=sp["unk"]))
        tk.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
        tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tk.decoder = decoders.WordPiece()
        texts = texts if isinstance(texts, (list, tuple)) else list(texts)  # read twice
        pieces = continuation_pieces(tk, texts)
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            # the ##c pieces go in as special tokens only so that they are numbered here, in a
            # fixed order, not by the trainer in hash-map order (the merges' tie-break)
            special_tokens=[*sp.values(), *pieces],
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
    if pieces:  # ordinary vocabulary entries again, not added tokens matched before splitting
        state = json.loads(tk.to_str())
        state["added_tokens"] = [t for t in state["added_tokens"] if t["content"] in sp.values()]
        tk = Tokenizer.from_str(json.dumps(state))
    if kind == "bpe":  # as RoBERTa's: "the <mask>" masks " word" (one token with its space),
        # the unit the model was trained to predict, not a lone space and then the word
        tk.add_special_tokens([AddedToken(sp["mask"], lstrip=True, special=True, normalized=False)])
    tok = _with_specials(tk, sp)
    cls, sep = sp["cls"], sp["sep"]
    tk.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tok.cls_id), (sep, tok.sep_id)],
    )
    return tok


def continuation_pieces(tk: Tokenizer, texts: Iterable[str], prefix: str = "##") -> list[str]:
    """The ``##c`` pieces the WordPiece trainer creates for ``texts``: one for every character
    ``c`` that follows another inside a word, sorted by code point. The words are those of
    ``tk``'s own normalizer and pre-tokenizer, counted by a word-level trainer (in Rust and in
    parallel, as the WordPiece trainer counts them)."""
    words = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    words.normalizer, words.pre_tokenizer = tk.normalizer, tk.pre_tokenizer
    words.train_from_iterator(
        texts, trainer=trainers.WordLevelTrainer(vocab_size=2**31, min_frequency=0, show_progress=False)
    )
    chars = {c for word in words.get_vocab() for c in word[1:]}
    return [prefix + c for c in sorted(chars)]


def load_tokenizer(path: str | os.PathLike) -> Tok:
    """A ``tokenizer.json`` file, or a directory holding one (transformers layout)."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "tokenizer.json"
    if not (p.exists() or p.is_symlink()):
        raise SpecError(
            f"tokenizer.path: given {str(path)!r}, allowed: a tokenizer.json or a directory holding one"
        )
    # a regular file of bounded size that parses (a FIFO or a link to anything else: one line)
    return _with_specials(read_tokenizer(p, key="tokenizer.path")[1])


def get_tokenizer(cfg, corpus_id: str, texts: Iterable[str]) -> Tok:
    """Load ``cfg.path`` (kind ``file``) or train on ``texts``, cached by corpus and settings."""
    if cfg.kind == "file":
        return load_tokenizer(cfg.path)
    key = [corpus_id, cfg.kind, cfg.vocab_size, cfg.min_frequency, cfg.lowercase]
    if cfg.kind in TRAINING_VERSION:  # not the cached tokenizers of an older training
        key.append(TRAINING_VERSION[cfg.kind])
    cache = cache_dir() / "tokenizers" / f"{hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]}.json"
    # Training is deterministic (see the module's docstring); the cache, shared by the jobs of
    # a sweep under a lock so that parallel jobs train once, only saves the time. The run
    # checked it is writable (corpus.check_cache); one that became unwritable is one line.
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        lock = open(cache.with_suffix(".lock"), "w")  # closed by the with below
    except OSError as e:
        raise cache_error(cache.with_suffix(".lock"), e) from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if cache.is_file():
            try:
                return _with_specials(Tokenizer.from_file(str(cache)), SPECIALS[cfg.kind])
            except Exception:  # a damaged cache entry is retrained below
                pass
        tok = train_tokenizer(cfg.kind, texts, cfg.vocab_size, cfg.min_frequency, cfg.lowercase)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        try:
            tmp.write_text(tok.tokenizer.to_str(pretty=True), encoding="utf-8")  # as Tokenizer.save
            os.replace(tmp, cache)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise cache_error(cache, e) from None
        return tok

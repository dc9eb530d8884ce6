"""Tokenizer training is deterministic: the same documents and settings give the same
``tokenizer.json`` (the same ``tokenizer_sha256``) in any process, so every job of a grid
trains on one tokenizer whichever machine or node it runs on.

Before, WordPiece's ``##c`` pieces were numbered in the order of a Rust hash map seeded per
process, and ties between equally frequent merges are broken by those numbers: two processes
trained different vocabularies from the same corpus (8 of 8 fresh processes gave 8 hashes
on these 300 documents at vocabulary 512). Byte-level BPE was already deterministic.
"""

import json
import os
import subprocess
import sys

import pytest
from helpers import ROOT
from tokenizers import Tokenizer

from bertsmith.train.pretrain import corpus
from bertsmith.train.pretrain.config import TokenizerConfig
from bertsmith.train.pretrain.tokenizer import (
    SPECIALS,
    continuation_pieces,
    file_sha256,
    get_tokenizer,
    load_tokenizer,
    tokenizer_sha256,
    train_tokenizer,
)

KINDS = ("wordpiece", "bpe")

TRAIN = """
import json, sys
from bertsmith.train.pretrain.tokenizer import train_tokenizer
docs = json.load(open(sys.argv[1], encoding="utf-8"))
print(json.dumps({kind: train_tokenizer(kind, docs, 512).sha256 for kind in ("wordpiece", "bpe")}))
"""


@pytest.fixture(scope="module")
def docs():
    return corpus.stdlib_documents()[:300]


def test_two_fresh_processes_train_the_same_tokenizers(docs, tmp_path):
    """Different PYTHONHASHSEED, Rayon thread counts and TOKENIZERS_PARALLELISM: one hash per
    kind, the same as this process's."""
    path = tmp_path / "docs.json"
    path.write_text(json.dumps(docs), encoding="utf-8")
    hashes = []
    for seed, threads, parallel in (("0", "1", "false"), ("12345", "2", "true")):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": seed,
               "RAYON_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": parallel}  # fmt: skip
        p = subprocess.run(
            [sys.executable, "-c", TRAIN, str(path)], env=env, capture_output=True, text=True, timeout=300
        )
        assert p.returncode == 0, p.stderr[-3000:]
        hashes.append(json.loads(p.stdout))
    here = {kind: train_tokenizer(kind, docs, 512).sha256 for kind in KINDS}
    assert hashes[0] == hashes[1] == here


@pytest.mark.parametrize("kind", KINDS)
def test_the_hash_is_that_of_the_file_in_any_form(kind, docs, tmp_path, monkeypatch):
    """Trained, saved (indented), loaded, and from the cache: one ``tokenizer_sha256``."""
    monkeypatch.setenv("BERTSMITH_CACHE", str(tmp_path / "cache"))
    tok = get_tokenizer(TokenizerConfig(kind=kind, vocab_size=512), "corpus-a", docs)
    cached = get_tokenizer(TokenizerConfig(kind=kind, vocab_size=512), "corpus-a", iter(()))
    tok.save(tmp_path / "tokenizer.json")
    assert len(tok.sha256) == 64
    assert tok.sha256 == cached.sha256 == file_sha256(tmp_path / "tokenizer.json")
    assert load_tokenizer(tmp_path / "tokenizer.json").sha256 == tok.sha256
    text = (tmp_path / "tokenizer.json").read_text()
    assert tokenizer_sha256(json.dumps(json.loads(text), indent=4)) == tok.sha256  # formatting aside
    state = json.loads(text)
    state["model"]["vocab"] = dict(reversed(state["model"]["vocab"].items()))  # the same mapping
    assert tokenizer_sha256(json.dumps(state)) == tok.sha256
    vocab = state["model"]["vocab"]
    a, b = list(vocab)[:2]
    vocab[a], vocab[b] = vocab[b], vocab[a]  # two tokens swap ids: another tokenizer
    assert tokenizer_sha256(json.dumps(state)) != tok.sha256
    assert file_sha256(tmp_path / "missing.json") is None
    (tmp_path / "bad.json").write_text("{not json")
    assert file_sha256(tmp_path / "bad.json") is None


def test_wordpiece_pieces_are_ordinary_vocabulary(docs):
    """The ``##c`` pieces are numbered first (in code-point order) by passing them to the
    trainer as special tokens; in the result they are plain vocabulary, not added tokens."""
    tok = train_tokenizer("wordpiece", docs, 512)
    state = json.loads(tok.tokenizer.to_str())
    assert [t["content"] for t in state["added_tokens"]] == list(SPECIALS["wordpiece"].values())
    vocab = state["model"]["vocab"]
    pieces = sorted((t for t in vocab if t.startswith("##") and len(t) == 3), key=lambda t: vocab[t])
    assert pieces == sorted(pieces) and [vocab[t] for t in pieces] == list(range(5, 5 + len(pieces)))
    assert tok.tokenizer.encode("##e").tokens == ["[CLS]", "#", "#", "e", "[SEP]"]  # split, not matched
    assert "##ing" in tok.tokenizer.encode("returning").tokens or len(tok.encode(["returning"])[0]) > 1


def test_continuation_pieces_are_those_the_trainer_makes():
    """Every character after the first of a word, after normalisation and pre-tokenisation:
    accents stripped, punctuation and CJK split off, case folded."""
    from tokenizers import models, normalizers, pre_tokenizers

    tk = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    texts = ["Café au lait, s'il vous plaît!", "数据 ab-cd", "X", "ÀÉ"]
    assert continuation_pieces(tk, texts) == ["##" + c for c in "abdefilostu"]
    words = [w for t in texts for w, _ in tk.pre_tokenizer.pre_tokenize_str(tk.normalizer.normalize_str(t))]
    assert continuation_pieces(tk, texts) == sorted({"##" + c for w in words for c in w[1:]})

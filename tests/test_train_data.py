"""Training data pieces, each against an independent expectation."""

import json
import math
from collections import Counter

import pytest
import torch

from bertsmith.registry.errors import SpecError
from bertsmith.train.pretrain import corpus
from bertsmith.train.pretrain.config import DataConfig, ScheduleConfig, TokenizerConfig, TrainConfig
from bertsmith.train.pretrain.data import IGNORE, build_data, mask_tokens
from bertsmith.train.pretrain.optim import lr_factor, param_groups
from bertsmith.train.pretrain.packing import best_fit, efficiency, nsp_pairs, split_documents
from bertsmith.train.pretrain.tokenizer import Tok, get_tokenizer, train_tokenizer


def test_best_fit_places_every_sequence_once_within_capacity():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 129, (500,), generator=g).tolist()
    rows = best_fit(lengths, 128)
    placed = sorted(i for r in rows for i in r)
    assert placed == list(range(500))
    assert all(sum(lengths[i] for i in r) <= 128 for r in rows)
    lower_bound = math.ceil(sum(lengths) / 128)
    assert len(rows) <= lower_bound * 1.05  # best fit decreasing is near-optimal here
    assert efficiency(rows, lengths, 128) == pytest.approx(sum(lengths) / (len(rows) * 128))


def test_best_fit_prefers_the_tightest_row():
    # 6 and 5 open two rows; 4 fits only the row with 5 left... the 10-row has room 4
    assert best_fit([6, 5, 4], 10) == [[0, 2], [1]]


def test_split_documents_chunks_long_documents():
    seqs = split_documents([list(range(10, 25))], seq_len=8, cls=1, sep=2)
    assert [s.ids for s in seqs] == [[1, *range(10, 16), 2], [1, *range(16, 22), 2], [1, 22, 23, 24, 2]]


def test_nsp_pairs_labels_and_segments():
    import random

    docs = [list(range(100 * d, 100 * d + 40)) for d in range(1, 21)]
    pairs = nsp_pairs(docs, seq_len=32, cls=1, sep=2, rng=random.Random(0))
    labels = Counter(p.nsp_label for p in pairs)
    assert 0.3 < labels[1] / len(pairs) < 0.7
    for p in pairs:
        assert p.ids[0] == 1 and p.ids[-1] == 2 and len(p.ids) <= 32
        first_sep = p.ids.index(2)
        assert p.types == [0] * (first_sep + 1) + [1] * (len(p.ids) - first_sep - 1)
        a, b = p.ids[1:first_sep], p.ids[first_sep + 1 : -1]
        same_doc = a[0] // 100 == b[0] // 100 and b[0] == a[-1] + 1
        assert same_doc == (p.nsp_label == 0)


def _tok(vocab: int = 50) -> Tok:
    from tokenizers import Tokenizer, models

    words = {f"w{i}": i for i in range(vocab)}
    return Tok(
        Tokenizer(models.WordLevel(words, unk_token="w4")), cls_id=0, sep_id=1, mask_id=2, pad_id=3, unk_id=4
    )


def test_mask_tokens_ratio_and_80_10_10():
    tok = _tok()
    ids = torch.randint(5, 50, (200_000,))
    maskable = torch.ones_like(ids, dtype=torch.bool)
    maskable[::10] = False  # e.g. [CLS]/[SEP] positions
    inputs, labels = mask_tokens(ids, maskable, 0.3, tok, torch.Generator().manual_seed(1))
    picked = labels != IGNORE
    assert not picked[~maskable].any()
    assert picked.sum() / maskable.sum() == pytest.approx(0.3, abs=0.005)
    assert torch.equal(labels[picked], ids[picked])
    masked = (inputs == tok.mask_id) & picked
    kept = (inputs == ids) & picked
    assert masked.sum() / picked.sum() == pytest.approx(0.8, abs=0.01)
    # kept = the 10% left alone + random draws that hit the same token (1/45 of 10%)
    assert kept.sum() / picked.sum() == pytest.approx(0.1 + 0.1 / 45, abs=0.01)
    assert inputs[picked & ~masked].min() >= 5  # random replacements are never special
    assert torch.equal(inputs[~picked], ids[~picked])


def test_schedules():
    total = 100
    wsd = ScheduleConfig(kind="wsd", warmup=10, decay=0.2, decay_shape="1-sqrt")
    assert lr_factor(0, total, wsd) == pytest.approx(0.1)
    assert lr_factor(9, total, wsd) == pytest.approx(1.0)
    assert lr_factor(50, total, wsd) == 1.0
    assert lr_factor(80, total, wsd) == 1.0
    assert lr_factor(85, total, wsd) == pytest.approx(1 - math.sqrt(5 / 20))
    assert lr_factor(100, total, wsd) == pytest.approx(0.0)
    lin = ScheduleConfig(kind="linear", warmup=0.1, min_ratio=0.1)
    assert lr_factor(55, total, lin) == pytest.approx(0.1 + 0.9 * 0.5)
    cos = ScheduleConfig(kind="cosine", warmup=0)
    assert lr_factor(50, total, cos) == pytest.approx(0.5)


def test_no_weight_decay_on_biases_and_norms():
    from bertsmith import registry

    model = registry.build(registry.compose("bert-tiny", ["model.n_layers=1"]))
    decay, no_decay = param_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].endswith("weight") and p.dim() == 2 for p in decay["params"])
    assert any("norm" in names[id(p)] for p in no_decay["params"])
    assert all(p.dim() == 1 for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0


def test_stdlib_corpus_is_real_english_and_split_is_stable():
    docs = corpus.stdlib_documents()
    assert len(docs) > 2000
    text = " ".join(docs[:500]).lower()
    for word in (" the ", " return ", " of ", " is "):
        assert word in text
    assert corpus.stdlib_documents() == docs  # cached, same order
    val = [d for d in docs if corpus.is_val(d, 0.05)]
    assert 0.03 < len(val) / len(docs) < 0.07
    assert val == [d for d in reversed(docs) if corpus.is_val(d, 0.05)][::-1]


def test_file_sources(tmp_path):
    (tmp_path / "a.txt").write_text("first doc line one\nline two\n\nsecond doc\n\n\n")
    rows = [{"text": "json doc one"}, {"text": "json doc two"}]
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["parquet doc"], "other": [1]}), tmp_path / "c.parquet")
    data = DataConfig(source="files", path=str(tmp_path))
    assert list(corpus.documents(data)) == [
        "first doc line one\nline two",
        "second doc",
        "json doc one",
        "json doc two",
        "parquet doc",
    ]


def test_undecodable_bytes_one_clear_error(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"good text\n\nbad \xff\xfe bytes")
    with pytest.raises(SpecError, match=r"data.path: .*undecodable byte at offset 15"):
        list(corpus.documents(DataConfig(source="files", path=str(tmp_path / "bad.txt"))))
    docs = list(
        corpus.documents(DataConfig(source="files", path=str(tmp_path / "bad.txt"), errors="replace"))
    )
    assert docs[1] == "bad \ufffd\ufffd bytes"


def test_missing_path_and_empty_corpus(tmp_path):
    with pytest.raises(SpecError, match="data.path: given .*allowed: an existing file or folder"):
        list(corpus.documents(DataConfig(source="files", path=str(tmp_path / "nope"))))
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    cfg = TrainConfig(data=DataConfig(source="files", path=str(tmp_path / "empty.txt")))
    with pytest.raises(SpecError, match="no training documents"):
        build_data(cfg, 0)


def test_hf_datasets_source_offline_with_a_local_file(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"body": f"document number {i}"}) for i in range(5)))
    data = DataConfig(source="hf", name=str(path), text_column="body")
    assert list(corpus.documents(data)) == [f"document number {i}" for i in range(5)]
    streamed = DataConfig(source="hf", name=str(path), text_column="body", streaming=True)
    assert list(corpus.documents(streamed)) == [f"document number {i}" for i in range(5)]


@pytest.mark.parametrize("kind", ["bpe", "wordpiece"])
def test_tokenizer_training_padding_and_cache(kind, tmp_path, monkeypatch):
    docs = corpus.stdlib_documents()[:400]  # from the session's cache (tests/conftest.py)
    monkeypatch.setenv("BERTSMITH_CACHE", str(tmp_path))  # the tokenizer cache under test
    cfg = TokenizerConfig(kind=kind, vocab_size=1000)
    tok = get_tokenizer(cfg, "corpus-a", docs)
    assert tok.size <= 1000 and tok.padded_size % 64 == 0 and tok.padded_size >= tok.size
    ids = tok.encode(["Return the value of the attribute."])[0]
    assert tok.unk_id not in ids and len(ids) < 12
    assert list((tmp_path / "tokenizers").glob("*.json"))
    again = get_tokenizer(cfg, "corpus-a", iter(()))  # from the cache: no text needed
    assert again.encode(["Return the value"]) == tok.encode(["Return the value"])
    assert again.tokenizer.get_vocab() == tok.tokenizer.get_vocab()
    other = get_tokenizer(TokenizerConfig(kind=kind, vocab_size=512), "corpus-a", docs)
    assert other.size <= 512  # settings are part of the cache key
    assert train_tokenizer(kind, docs, 1000).size == tok.size


def test_batches_are_a_function_of_the_step_and_pack_real_tokens():
    cfg = TrainConfig(  # the default corpus and tokenizer, from the session's cache
        data=DataConfig(max_docs=300, seq_len=64, batch_size=4), tokenizer=TokenizerConfig(vocab_size=512)
    )
    a, b = build_data(cfg, 0), build_data(cfg, 0)
    for step in (0, 3, 1000):
        x, y = a.train[step], b.train[step]
        assert all(torch.equal(x[k], y[k]) for k in ("input_ids", "labels", "cu_seqlens"))
    batch = a.train[5]
    cu = batch["cu_seqlens"]
    assert cu[-1] == batch["input_ids"].numel() <= 4 * 64
    assert (batch["input_ids"][cu[:-1].long()] == a.tok.cls_id).all()
    assert not torch.equal(a.train[5]["labels"], a.train[5 + a.train.per_epoch]["labels"])  # dynamic
    assert a.stats["packing_efficiency"] > 0.95
    assert a.stats["unigram_val_loss"] > 3

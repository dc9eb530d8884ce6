"""`bertsmith finetune`: metrics against hand-computed values, loaders, encoding, SiFT, and
end to end — from a pre-training grid (then ranked by `compare`), from a resumed
pre-training run, and from an imported transformers model.

The end-to-end task is real and built offline: which family of the standard library a
docstring comes from — GUI (tkinter, turtle) or mail and web (email, mailbox, http, urllib,
smtplib, imaplib). Both classes are sampled to the same size in training and validation, so
chance (and the majority-class baseline) is exactly 0.5; the vocabularies differ (widgets,
canvas, pen vs header, message, URL), so a small encoder can learn it in a few dozen steps.
"""

from __future__ import annotations

import csv
import json
import math
import random
import sysconfig
from pathlib import Path

import pytest
import torch
from helpers import TINY_TRAIN, bertsmith, kill_when

from bertsmith import registry
from bertsmith.train.callbacks import read_metrics
from bertsmith.train.finetune import data as D
from bertsmith.train.finetune import metrics as M
from bertsmith.train.finetune.config import FinetuneDataConfig, TaskConfig, parse_finetune_config
from bertsmith.train.finetune.sift import divergence, perturbed, sift_loss
from bertsmith.train.pretrain.tokenizer import train_tokenizer

CHANCE = 0.5
MARGIN = 0.15  # required above chance; the runs below reach about 0.85-0.9
FAMILIES = {
    "gui": ("tkinter", "turtle"),
    "network": ("email", "mailbox", "http", "urllib", "smtplib", "imaplib"),
}
PRETRAIN = [
    *TINY_TRAIN,
    "trainer.max_steps=30",
    "trainer.val_every=15",
    "trainer.checkpoint.every_n_steps=10",
    "model.n_layers=2",
]
FINETUNE = [  # the settings of every end-to-end fine-tuning below
    "task.name=topic",
    "task.pooling=mean",
    "data.max_len=48",
    "data.batch_size=16",
    "optim.lr=1e-3",
    "trainer.max_steps=60",
    "trainer.val_every=30",
    "trainer.progress=false",
]


def family_docstrings() -> dict[str, list[str]]:
    from bertsmith.train.pretrain.corpus import _docstrings, _stdlib_files

    root = Path(sysconfig.get_paths()["stdlib"])
    owner = {m: label for label, mods in FAMILIES.items() for m in mods}
    seen, docs = set(), {label: [] for label in FAMILIES}
    for path in _stdlib_files():
        label = owner.get(path.relative_to(root).parts[0].removesuffix(".py"))
        for doc in _docstrings(path) if label else ():
            if doc not in seen:
                seen.add(doc)
                docs[label].append(doc)
    return docs


def write_topic_task(out: Path, n_train: int = 200, n_val: int = 100) -> tuple[Path, Path]:
    """train.csv / val.csv with ``n_*`` docstrings per class (no docstring in both)."""
    rng = random.Random(0)
    train, val = [], []
    for label, docs in family_docstrings().items():
        picked = rng.sample(docs, n_train + n_val)
        train += [(d, label) for d in picked[:n_train]]
        val += [(d, label) for d in picked[n_train:]]
    paths = []
    for name, rows in (("train.csv", train), ("val.csv", val)):
        rng.shuffle(rows)
        with (out / name).open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["docstring", "family"])
            w.writerows(rows)
        paths.append(out / name)
    return paths[0], paths[1]


def topic_args(task_files) -> list[str]:
    train, val = task_files
    return [
        f"data.train={train}",
        f"data.validation={val}",
        "data.text_column=docstring",
        "data.label_column=family",
        *FINETUNE,
    ]


def run_inprocess(tmp: Path, init_from, **sections) -> dict:
    """Fine-tune in this process (no Hydra): ``sections`` are config sections as dicts."""
    from bertsmith.train.finetune.run import finetune

    base = {
        "trainer": {"max_steps": 20, "val_every": 20, "log_every": 1, "progress": False},
        "optim": {"lr": 1e-3},
    }
    cfg = {"init_from": str(init_from), **base}
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return finetune(parse_finetune_config(cfg), tmp, {})


@pytest.fixture(scope="module")
def task_files(tmp_path_factory):
    return write_topic_task(tmp_path_factory.mktemp("task"))


@pytest.fixture(scope="module")
def grid(tmp_path_factory, cache, task_files):
    """Two pre-training runs (seeds 0, 1), each then fine-tuned in place by one command."""
    sweep = tmp_path_factory.mktemp("grid") / "sweep"
    run = bertsmith("train", "-m", *PRETRAIN, f"hydra.sweep.dir={sweep}", "seed=0,1", cache=cache)
    assert run.returncode == 0, run.stderr[-3000:]
    ft = bertsmith("finetune", f"init_from={sweep}", *topic_args(task_files), cache=cache)
    assert ft.returncode == 0, ft.stderr[-3000:]
    return sweep, ft


@pytest.fixture(scope="module")
def hf_bert(tmp_path_factory):
    """A random transformers BertForMaskedLM with a WordPiece tokenizer trained here."""
    from transformers import BertConfig, BertForMaskedLM

    d = tmp_path_factory.mktemp("hf") / "tiny-bert"
    docs = [x for v in family_docstrings().values() for x in v]
    tok = train_tokenizer("wordpiece", docs, vocab_size=1024)
    cfg = BertConfig(
        vocab_size=tok.padded_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
        pad_token_id=tok.pad_id,
    )
    torch.manual_seed(0)
    BertForMaskedLM(cfg).save_pretrained(d)
    tok.save(d / "tokenizer.json")
    return d, tok


# --- metrics against hand-computed values ---------------------------------------------------


def test_binary_classification_metrics():
    # TP 3 (0, 3, 5), TN 1 (1), FP 1 (2), FN 1 (4)
    pred, gold = [1, 0, 1, 1, 0, 1], [1, 0, 0, 1, 1, 1]
    got = M.classification_scores(pred, gold, 2)
    assert got["accuracy"] == pytest.approx(4 / 6)
    assert got["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))  # 0.75
    assert got["matthews"] == pytest.approx((3 * 1 - 1 * 1) / math.sqrt(4 * 4 * 2 * 2))  # 0.25
    assert M.matthews([1, 1, 1], [0, 1, 1], 2) == 0.0  # a constant prediction


def test_multiclass_metrics():
    pred, gold = [0, 1, 2, 2, 1, 0], [0, 1, 2, 1, 1, 2]
    got = M.classification_scores(pred, gold, 3)
    assert got["accuracy"] == pytest.approx(4 / 6)
    # per label F1: 0 -> 2·1/(2+1), 1 -> 2·2/(2+3), 2 -> 2·1/(2+2); macro mean
    assert got["f1"] == pytest.approx((2 / 3 + 4 / 5 + 1 / 2) / 3)
    # Gorodkin: s=6, c=4, p=(2,2,2), t=(1,3,2)
    assert got["matthews"] == pytest.approx((4 * 6 - (2 + 6 + 4)) / math.sqrt((36 - 12) * (36 - 14)))


def test_regression_metrics():
    x, y = [1, 2, 3, 4], [2, 4, 5, 4]
    got = M.regression_scores(x, y)
    assert got["pearson"] == pytest.approx(3.5 / math.sqrt(5 * 4.75))
    # ranks of y with the tie averaged: 1, 2.5, 4, 2.5
    assert M.ranks(y) == [1, 2.5, 4, 2.5]
    assert got["spearman"] == pytest.approx(3 / math.sqrt(5 * 4.5))
    assert got["mse"] == pytest.approx((1 + 4 + 4 + 0) / 4)
    assert M.pearson([1, 1, 1], [1, 2, 3]) == 0.0


def test_token_and_entity_metrics():
    names = ["B-LOC", "B-PER", "I-LOC", "I-PER", "O"]
    gold_tags = ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "I-PER", "O"]
    pred_tags = ["B-PER", "I-PER", "O", "B-LOC", "O", "I-PER", "O"]
    assert M.bio_entities(gold_tags) == {("PER", 0, 1), ("LOC", 3, 4), ("PER", 5, 5)}
    got = M.token_scores([[names.index(t) for t in pred_tags]], [[names.index(t) for t in gold_tags]], names)
    assert got["token_accuracy"] == pytest.approx(6 / 7)
    # tokens not O: gold 5, predicted 4, right 4
    assert got["token_f1"] == pytest.approx(2 * 4 / (4 + 5))
    # entities: (PER 0-1) and (PER 5) right, (LOC 3-3) wrong
    assert got["entity_f1"] == pytest.approx(2 * 2 / (3 + 3))
    assert "entity_f1" not in M.token_scores([[0, 1]], [[0, 1]], ["x", "y"])


# --- data: loaders, labels, encoding ---------------------------------------------------------


def _write_all_formats(tmp: Path, rows: list[dict]) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = {f: tmp / f"d.{f}" for f in ("csv", "jsonl", "parquet")}
    with paths["csv"].open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    paths["jsonl"].write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    pq.write_table(pa.Table.from_pylist(rows), paths["parquet"])
    return paths


def test_csv_jsonl_parquet_with_column_mapping_and_held_out_split(tmp_path):
    rows = [{"id": i, "premise": f"first {i}", "hypo": f"second {i}", "y": i % 3} for i in range(40)]
    seen = []
    for fmt, path in _write_all_formats(tmp_path, rows).items():
        cfg = FinetuneDataConfig(
            train=str(path),
            text_column="premise",
            text_pair_column="hypo",
            label_column="y",
            val_fraction=0.25,
        )
        train, val = D.load_examples(cfg)
        assert len(train) == 30 and len(val) == 10, fmt
        texts = sorted(e.text for e in train + val)
        assert texts == sorted(r["premise"] for r in rows)
        assert {e.text for e in train}.isdisjoint(e.text for e in val)
        assert all(e.pair == e.text.replace("first", "second") for e in train + val)
        num_labels, names = D.check_labels(train, val, TaskConfig())
        assert (num_labels, names) == (3, None)  # integer labels, CSV's strings included
        seen.append([e.text for e in val])
    assert seen[0] == seen[1] == seen[2]  # the same held-out examples from every format
    other = D.load_examples(
        FinetuneDataConfig(
            train=str(tmp_path / "d.csv"),
            text_column="premise",
            label_column="y",
            split_seed=1,
            val_fraction=0.25,
        )
    )[1]
    assert sorted(e.text for e in other) != sorted(seen[0])  # the split follows split_seed only


def test_datasets_source_reads_a_local_file(tmp_path):
    rows = [{"sentence": f"s {i}", "label": i % 2} for i in range(10)]
    path = _write_all_formats(tmp_path, rows)["jsonl"]
    cfg = FinetuneDataConfig(source="hf", name=str(path), text_column="sentence", validation_split=None)
    train, val = D.load_examples(cfg)
    assert len(train) + len(val) == 10 and len(val) == 1


def test_string_labels_and_their_names(tmp_path):
    train = [D.Example("a", None, "pos"), D.Example("b", None, "neg")]
    assert D.check_labels(train, train, TaskConfig()) == (2, ["neg", "pos"])
    named = TaskConfig(labels=["pos", "neg"])
    assert D.check_labels(train, train, named) == (2, ["pos", "neg"])


def test_pairs_become_cls_a_sep_b_sep_with_types_and_are_cut_longest_first(hf_bert):
    _, tok = hf_bert
    a, b = "return the message header", "draw a widget"
    ids_a, ids_b = tok.encode([a, b])
    ex = [D.Example(a, b, 1)]
    task = TaskConfig()
    (item,) = D.encode(ex, tok, task, 2, None, max_len=64, types=True, where="t")
    assert item["ids"] == [tok.cls_id, *ids_a, tok.sep_id, *ids_b, tok.sep_id]
    assert item["types"] == [0] * (len(ids_a) + 2) + [1] * (len(ids_b) + 1)
    assert item["label"] == 1
    room = len(ids_b) + 2 + 3  # a is longer: it loses tokens until both fit
    (cut,) = D.encode(ex, tok, task, 2, None, max_len=room, types=True, where="t")
    assert len(cut["ids"]) == room and cut["ids"][-len(ids_b) - 1 : -1] == ids_b


def test_token_labels_go_to_the_first_sub_token(hf_bert):
    _, tok = hf_bert
    words = ["return", "zqxjvkwpyf", "header"]
    pieces = [len(tok.encode([w])[0]) for w in words]
    assert pieces[1] > 1  # a word the vocabulary splits
    task = TaskConfig(kind="token_classification", metric="token_f1")
    (item,) = D.encode(
        [D.Example(words, None, ["O", "B-X", "O"])], tok, task, 2, ["B-X", "O"], 64, False, "t"
    )
    want = [D.IGNORE, 1, 0, *[D.IGNORE] * (pieces[1] - 1), 1, D.IGNORE]
    assert item["label"] == want and len(item["ids"]) == len(want)


def test_training_batches_are_a_function_of_seed_and_step():
    items = [{"ids": [1, i + 5, 2], "types": None, "label": i % 2} for i in range(10)]
    a, b = D.StepBatches(items, 4, seed=3, pad_id=0), D.StepBatches(items, 4, seed=3, pad_id=0)
    for step in (7, 0, 2):  # any order: a resumed run starts in the middle
        assert torch.equal(a[step]["input_ids"], b[step]["input_ids"])
    epoch = torch.cat([a[s]["input_ids"][:, 1] for s in range(5)])[:10]  # 20 rows = 2 epochs
    assert sorted(epoch.tolist()) == list(range(5, 15))  # each example once per epoch


# --- SiFT ---------------------------------------------------------------------------------


@pytest.fixture
def small_classifier():
    spec = registry.compose("bert-tiny", ["model.n_layers=2", "model/head=classification"])
    model = registry.build(spec).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, spec.vocab_size, (4, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 7:] = 0
    return model, ids, mask


def test_sift_zero_perturbation_is_the_clean_forward_and_a_step_raises_the_divergence(small_classifier):
    model, ids, mask = small_classifier
    emb, n = model.encoder.embeddings.tok, int(mask.sum())
    clean = model(ids, mask).logits
    with perturbed(emb, torch.zeros(n, emb.embedding_dim)):
        torch.testing.assert_close(model(ids, mask).logits, clean, atol=1e-6, rtol=0)
    torch.manual_seed(1)
    delta0 = (torch.randn(n, emb.embedding_dim) * 0.05).requires_grad_(True)
    with perturbed(emb, delta0):
        d0 = divergence(model(ids, mask).logits, clean, "classification")
    (g,) = torch.autograd.grad(d0, delta0)
    delta1 = delta0.detach() + 0.05 * g / g.abs().amax(-1, keepdim=True)
    with perturbed(emb, delta1):
        d1 = divergence(model(ids, mask).logits, clean, "classification")
    assert 0 < d0.item() < d1.item()  # the power step moves towards the adversarial direction
    cfg = parse_finetune_config(
        {"init_from": ".", "data": {"train": "x.csv"}, "sift": {"enabled": True}}
    ).sift
    loss = sift_loss(lambda: model(ids, mask).logits, emb, clean, n, "classification", cfg)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert emb.weight.grad is None  # as in DeBERTa, the adversarial loss does not train the table
    assert model.head.classifier.weight.grad.abs().sum() > 0


@pytest.mark.slow
def test_sift_changes_training_and_stays_finite(grid, task_files, tmp_path):
    sweep, _ = grid
    train, val = task_files
    data = {"train": str(train), "validation": str(val), "text_column": "docstring", "label_column": "family"}
    data |= {"max_len": 32, "batch_size": 8, "max_train": 64, "max_val": 32}
    runs = {}
    for on in (False, True):
        out = tmp_path / f"sift-{on}"
        run_inprocess(
            out, sweep / "0", data=data, sift={"enabled": on, "step": 1e-2}, trainer={"max_steps": 4}
        )
        runs[on] = (read_metrics(out / "metrics.csv"), registry.load(out / "model").state_dict())
    with_sift = [r["sift_loss"] for r in runs[True][0] if "sift_loss" in r]
    assert len(with_sift) == 4 and all(math.isfinite(x) and x > 0 for x in with_sift)
    changed = [k for k, v in runs[False][1].items() if not torch.equal(v, runs[True][1][k])]
    assert any(k.startswith("encoder.layers") for k in changed)


# --- end to end ---------------------------------------------------------------------------


@pytest.mark.slow
def test_finetuning_a_pretraining_grid_beats_chance_and_ranks_in_compare(grid):
    from bertsmith.train.tools.compare import compare

    sweep, ft = grid
    scores = []
    for job in ("0", "1"):
        d = sweep / job / "finetune" / "topic"
        for name in ("spec.yaml", "config.yaml", "tokenizer.json", "metrics.csv", "checkpoints/last.ckpt"):
            assert (d / name).is_file(), name
        s = json.loads((d / "summary.json").read_text())
        assert s["steps"] == 60 and s["n_train"] == 400 and s["n_val"] == 200
        assert s["majority_accuracy"] == CHANCE and s["labels"] == ["gui", "network"]
        assert s["metrics"]["accuracy"] >= CHANCE + MARGIN, s
        rows = read_metrics(d / "metrics.csv")
        assert [r["step"] for r in rows if "val_accuracy" in r] == [30, 60]
        assert rows[-1]["val_accuracy"] == pytest.approx(s["metrics"]["accuracy"], abs=1e-5)
        model = registry.load(d / "model")
        assert model.spec.head.kind == "classification" and model.spec.head.num_labels == 2
        scores.append(s["metrics"]["accuracy"])
    print(f"fine-tuned from pre-training runs: accuracy {scores} (chance {CHANCE})")
    assert ft.stdout.count("bertsmith finetune: topic") == 2
    result = compare(sweep, "finetune:topic/accuracy")
    (row,) = result["rows"]  # seeds 0 and 1 are one variant
    assert row["finetune:topic/accuracy"] == pytest.approx(sum(scores) / 2, abs=1e-6)
    assert "topic accuracy" in result["table"] and row["best"]
    assert result["best_run"] == sweep / ("0" if scores[0] >= scores[1] else "1")


@pytest.mark.slow
def test_finetuning_after_interrupted_and_resumed_pretraining_is_the_same(grid, task_files, tmp_path, cache):
    sweep, _ = grid
    cut = tmp_path / "cut"
    proc = bertsmith("train", *PRETRAIN, "seed=0", f"hydra.run.dir={cut}", cache=cache, wait=False)
    ckpt = cut / "checkpoints" / "step=10.ckpt"
    kill_when(proc, ckpt)
    assert not (cut / "model").exists()
    refused = bertsmith("finetune", f"init_from={cut}", *topic_args(task_files), cache=cache)
    assert refused.returncode == 2 and "resume=true" in refused.stderr  # not finished yet
    again = bertsmith("train", *PRETRAIN, "seed=0", f"hydra.run.dir={cut}", "resume=true", cache=cache)
    assert again.returncode == 0, again.stderr[-2000:]
    ft = bertsmith("finetune", f"init_from={cut}", *topic_args(task_files), cache=cache)
    assert ft.returncode == 0, ft.stderr[-2000:]
    resumed = json.loads((cut / "finetune" / "topic" / "summary.json").read_text())
    straight = json.loads((sweep / "0" / "finetune" / "topic" / "summary.json").read_text())
    print(f"fine-tuned from a resumed run: {resumed['metrics']} vs uninterrupted {straight['metrics']}")
    assert resumed["metrics"]["accuracy"] >= CHANCE + MARGIN
    for key, value in straight["metrics"].items():
        assert resumed["metrics"][key] == pytest.approx(value, abs=1e-4), key


def test_finetuning_an_imported_transformers_model_beats_chance(hf_bert, task_files, tmp_path):
    d, _ = hf_bert
    train, val = task_files
    data = {"train": str(train), "validation": str(val), "text_column": "docstring", "label_column": "family"}
    data |= {"max_len": 48, "batch_size": 16}
    s = run_inprocess(
        tmp_path / "run",
        d,
        task={"name": "topic", "pooling": "mean"},
        data=data,
        trainer={"max_steps": 80, "val_every": 80},
    )
    assert s["majority_accuracy"] == CHANCE
    print(
        f"fine-tuned from a random transformers BERT: accuracy {s['metrics']['accuracy']} (chance {CHANCE})"
    )
    assert s["metrics"]["accuracy"] >= CHANCE + MARGIN, s
    spec = registry.load_spec(tmp_path / "run" / "spec.yaml")
    assert spec.positional.kind == "learned" and spec.head.kind == "classification"


@pytest.mark.slow
def test_pairs_regression_and_token_classification_train_with_sane_metrics(grid, hf_bert, tmp_path):
    """Each task learns well above its baseline, on data built so that a tiny model learns it
    in seconds (one thread). Words come from two small topic vocabularies (GUI, NET) and
    fillers; validation is 200 fresh examples.

    - pairs (a random transformers BERT, token types): are segments a and b (4 words each)
      from the same topic? Either segment alone says nothing (exactly chance), so beating
      the majority class means the model reads both. Baseline: ``majority_accuracy`` (0.505
      here); required ``accuracy >= majority + 0.25`` and ``matthews >= 0.5`` (measured: 200
      steps at lr 3e-3, seeds 0-2 from two inits, accuracy 1.0; 0.99-1.0 on 8 more seeds).
    - regression (from a pre-training run): the number of GUI words among 8 (0-8). Baseline:
      predicting the training mean (validation MSE 7.05); required ``mse <= 0.25 x`` that
      and Pearson, Spearman ``>= 0.8`` (40 steps, 3 seeds x 2 pre-training runs: MSE
      0.12-0.16, Pearson >= 0.990, Spearman >= 0.988).
    - token classification (from a pre-training run): runs of GUI words are entities
      (B-GUI, I-GUI), the rest O. Baseline: all O (token accuracy 0.676, entity F1 0);
      required ``token_accuracy >= all-O + 0.15`` and ``entity_f1 >= 0.5`` (60 steps at lr
      2e-3, 3 seeds x 2 pre-training runs: token accuracy 0.985-0.999, entity F1 0.94-0.997).
    """
    import statistics

    sweep, _ = grid
    rng = random.Random(0)
    gui = ["window", "canvas", "widget", "button", "pen", "turtle", "frame", "menu"]
    net = ["header", "message", "mail", "server", "address", "request", "socket", "url"]
    fill = ["the", "a", "of", "and", "to", "is", "in", "for"]

    def files(name: str, make) -> tuple[dict, list[dict], list[dict]]:
        train, val = make(400), make(200)
        for split, rows in (("train", train), ("validation", val)):
            (tmp_path / f"{name}-{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
        paths = {k: str(tmp_path / f"{name}-{k}.jsonl") for k in ("train", "validation")}
        return paths, train, val

    def trainer(steps: int) -> dict:
        return {"max_steps": steps, "val_every": steps, "threads": 1}

    # pairs: same topic or not (XOR of the two segments' topics)
    def pairs(n):
        topics = [(rng.choice((gui, net)), rng.choice((gui, net))) for _ in range(n)]
        return [
            {"a": " ".join(rng.choices(ta, k=4)), "b": " ".join(rng.choices(tb, k=4)), "same": int(ta is tb)}
            for ta, tb in topics
        ]

    paths, _, _ = files("pairs", pairs)
    data = {**paths, "text_column": "a", "text_pair_column": "b", "label_column": "same", "max_len": 32}
    s = run_inprocess(tmp_path / "pairs", hf_bert[0], data=data, trainer=trainer(200), optim={"lr": 3e-3})
    assert set(s["metrics"]) == {"accuracy", "f1", "matthews"}
    assert s["metrics"]["accuracy"] >= s["majority_accuracy"] + 0.25, s
    assert s["metrics"]["matthews"] >= 0.5 and math.isfinite(s["val_loss"]), s

    # regression: how many of the 8 words are GUI words
    def counts(n):
        rows = []
        for _ in range(n):
            p = rng.random()
            words = [rng.choice(gui) if rng.random() < p else rng.choice(net) for _ in range(8)]
            rows.append({"text": " ".join(words), "gui": float(sum(w in gui for w in words))})
        return rows

    import pyarrow as pa
    import pyarrow.parquet as pq

    paths, train, val = files("reg", counts)
    pq.write_table(pa.Table.from_pylist(train), tmp_path / "reg.parquet")  # parquet read too
    data = {"train": str(tmp_path / "reg.parquet"), "validation": paths["validation"], "label_column": "gui"}
    task = {"kind": "regression", "metric": "spearman"}
    s = run_inprocess(
        tmp_path / "reg", sweep / "0", task=task, data=data | {"max_len": 32}, trainer=trainer(40)
    )
    mean = statistics.fmean(r["gui"] for r in train)
    mean_mse = statistics.fmean((r["gui"] - mean) ** 2 for r in val)
    assert s["metrics"]["mse"] <= 0.25 * mean_mse, (s, mean_mse)
    assert s["metrics"]["pearson"] >= 0.8 and s["metrics"]["spearman"] >= 0.8, s
    assert registry.load(tmp_path / "reg" / "model").spec.head.num_labels == 1

    # token classification: runs of GUI words are entities (BIO), the rest O
    def tagged(n):
        rows = []
        for _ in range(n):
            words = [rng.choice(rng.choice((gui, net, fill))) for _ in range(12)]
            tags = []
            for w in words:
                tags.append(("I-GUI" if tags and tags[-1] != "O" else "B-GUI") if w in gui else "O")
            rows.append({"tokens": words, "tags": tags})
        return rows

    paths, _, val = files("tags", tagged)
    data = {**paths, "text_column": "tokens", "label_column": "tags", "max_len": 32}
    task = {"kind": "token_classification", "metric": "entity_f1"}
    s = run_inprocess(
        tmp_path / "tok", sweep / "0", task=task, data=data, trainer=trainer(60), optim={"lr": 2e-3}
    )
    assert set(s["metrics"]) == {"token_accuracy", "token_f1", "entity_f1"}
    assert s["labels"] == ["B-GUI", "I-GUI", "O"]
    all_o = [t for r in val for t in r["tags"]]
    assert s["metrics"]["token_accuracy"] >= all_o.count("O") / len(all_o) + 0.15, s
    assert s["metrics"]["entity_f1"] >= 0.5, s
    rows = read_metrics(tmp_path / "tok" / "metrics.csv")
    assert all(math.isfinite(r["train_loss"]) for r in rows if "train_loss" in r)


# --- mistakes: one line, exit code 2, nothing written --------------------------------------


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        (["data.text_column=body"], "data.text_column"),
        (["task=sst3"], "task"),
        (["task.num_labels=3"], "task.num_labels"),
        (["trainer.max_stps=5"], "trainer.max_stps"),
        (["model.d_model=64"], "model.d_model"),
        (["data.train=/nonexistent/train.csv"], "data.train"),
        (["task.metric=acc"], "task.metric"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(extra, key, hf_bert, task_files, tmp_path, capsys):
    from bertsmith.train.cli import main

    args = [*topic_args(task_files), f"init_from={hf_bert[0]}", f"hydra.run.dir={tmp_path / 'run'}", *extra]
    assert main(["finetune", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {key}"), err
    assert not (tmp_path / "run").exists()


def test_labels_outside_num_labels_are_one_line(hf_bert, tmp_path, capsys):
    from bertsmith.train.cli import main

    (tmp_path / "t.csv").write_text("text,label\n" + "".join(f"row {i},{i % 3}\n" for i in range(20)))
    args = [f"init_from={hf_bert[0]}", f"data.train={tmp_path / 't.csv'}", "task.num_labels=2"]
    assert main(["finetune", *args, f"hydra.run.dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "label '2'" in err[0] and "num_labels=2" in err[0], err


@pytest.mark.slow
def test_train_then_finetune_in_one_command(task_files, cache, tmp_path):
    """``train finetune="..."`` fine-tunes the final model into RUN/finetune/<task>, with the
    same result as fine-tuning the finished run separately; a bad setting there is caught
    before pre-training writes anything."""
    sweep = tmp_path / "sweep"  # a one-job sweep: the grid case, where this is meant to be used
    chained = " ".join(topic_args(task_files))
    r = bertsmith(
        "train", "-m", *PRETRAIN, "seed=0", f"hydra.sweep.dir={sweep}", f"finetune={chained}", cache=cache
    )
    assert r.returncode == 0, r.stderr[-3000:]
    run = sweep / "0"
    one = json.loads((run / "finetune" / "topic" / "summary.json").read_text())
    assert one["metrics"]["accuracy"] >= CHANCE + MARGIN

    apart = tmp_path / "apart"
    r = bertsmith(
        "finetune", f"init_from={run}", *topic_args(task_files), f"hydra.run.dir={apart}", cache=cache
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((apart / "summary.json").read_text())["metrics"] == one["metrics"]

    bad = tmp_path / "bad"
    r = bertsmith("train", *PRETRAIN, f"hydra.run.dir={bad}", "finetune=task=nope", cache=cache)
    assert r.returncode == 2 and r.stderr.startswith("error: finetune: task: given 'nope'"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not bad.exists()

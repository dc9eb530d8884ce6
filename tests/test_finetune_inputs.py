"""`bertsmith finetune` on hostile and broken data files: every one is refused in one line
(exit 2, no traceback) naming the file, the row (and line) and the column, before anything
is written — here into a run directory that already exists, which must stay as it was.
Also: ``tokenizer=FILE`` as documented, the default learning rate, and the line a run that
learned nothing ends with (fine-tuning: the majority class / training mean / majority tag;
pre-training: the unigram loss)."""

from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path

import pytest
from helpers import TINY_TRAIN, run_main

from bertsmith.train.finetune import data as D
from bertsmith.train.finetune import metrics as M
from bertsmith.train.finetune.config import default_lr, parse_finetune_config, with_lr
from bertsmith.train.pretrain.tokenizer import train_tokenizer

GOOD = ["good", "great", "fine", "nice", "lovely"]
BAD = ["bad", "awful", "poor", "dull", "boring"]
THINGS = ["the film", "the book", "the meal", "the show", "the room", "the song"]


def sentences(n: int, seed: int = 0, p_good: float = 0.5) -> list[dict]:
    """``{"text": "the film was great", "label": 1}`` rows (1: a GOOD word), a bag-of-words
    task a tiny model learns in a few dozen steps."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = int(rng.random() < p_good)
        rows.append(
            {"text": f"{rng.choice(THINGS)} was {rng.choice(GOOD if label else BAD)}", "label": label}
        )
    return rows


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A random transformers BertForMaskedLM (32 wide, one layer) and, apart from it, its
    WordPiece tokenizer: the directory holds none, so ``tokenizer=FILE`` is needed."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    root = tmp_path_factory.mktemp("tiny-bert")
    texts = [r["text"] for r in sentences(200)] + ["the film was not good , but a b c d e f g"]
    tok = train_tokenizer("wordpiece", texts, vocab_size=128, min_frequency=1)
    cfg = BertConfig(
        vocab_size=tok.padded_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=tok.pad_id,
    )
    torch.manual_seed(0)
    BertForMaskedLM(cfg).save_pretrained(root / "model")
    tok.save(root / "tokenizer.json")
    with_tok = root / "with-tokenizer"
    BertForMaskedLM(cfg).save_pretrained(with_tok)
    tok.save(with_tok / "tokenizer.json")
    return root / "model", root / "tokenizer.json", with_tok


@pytest.fixture
def existing_run(tmp_path) -> Path:
    """A run directory that already holds something of the user's."""
    d = tmp_path / "run"
    d.mkdir()
    (d / "notes.txt").write_text("mine\n")
    return d


def listing(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def refused(args: list, run_dir: Path) -> str:
    """Run ``bertsmith finetune ARGS`` in this process; assert one line, exit 2, no
    traceback and ``run_dir`` unchanged; return the line."""
    before = listing(run_dir)
    r = run_main("finetune", *args, f"hydra.run.dir={run_dir}", "trainer.progress=false")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr + r.stdout
    assert listing(run_dir) == before
    return lines[0]


# --- hostile data files -------------------------------------------------------------------

ROWS = sentences(12)


def _jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _parquet(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)


def _with(i: int, **changes) -> list[dict]:
    return [{**r, **changes} if n == i else r for n, r in enumerate(ROWS)]


CSV_LINES = "text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in ROWS)

# (name, file name, writer, extra overrides, what the line must hold)
CASES = [
    (
        "empty label",
        "t.csv",
        lambda p: write_csv(p, _with(4, label="")),
        [],
        ["row 5 (line 6)", "'label'", "''"],
    ),
    ("None label", "t.csv", lambda p: write_csv(p, _with(2, label="None")), [], ["row 3", "'None'"]),
    ("null label", "t.csv", lambda p: write_csv(p, _with(0, label=" NULL ")), [], ["row 1", "NULL"]),
    ("NaN label", "t.csv", lambda p: write_csv(p, _with(7, label="nan")), [], ["row 8", "'nan'"]),
    (
        "JSON null label",
        "t.jsonl",
        lambda p: p.write_text(_jsonl(_with(3, label=None))),
        [],
        ["row 4 (line 4)"],
    ),
    (
        "JSON NaN label",
        "t.jsonl",
        lambda p: p.write_text(_jsonl(ROWS[:5]) + '{"text": "x", "label": NaN}\n' + _jsonl(ROWS[5:])),
        [],
        ["line 6", "NaN"],
    ),
    (
        "JSON Infinity text",
        "t.jsonl",
        lambda p: p.write_text(_jsonl(ROWS[:2]) + '{"text": -Infinity, "label": 1}\n'),
        [],
        ["line 3", "Infinity"],
    ),
    (
        "JSON syntax error on line 17",
        "t.jsonl",
        lambda p: p.write_text(_jsonl(ROWS) + "\n\n\n\n" + '{"text": , "label": 1}\n'),
        [],
        ["line 17, allowed: strict JSON (Expecting value at column 10)"],
    ),
    (
        "JSON nested 100 deep",
        "t.jsonl",
        lambda p: p.write_text(_jsonl(ROWS) + '{"text": "x", "label": ' + "[" * 100 + "]" * 100 + "}\n"),
        [],
        ["line 13", "nested more than 64 levels"],
    ),
    (
        "JSON nested 100000 deep (RecursionError)",
        "t.jsonl",
        lambda p: p.write_text(_jsonl(ROWS) + '{"text": ' + "[" * 100_000 + "]" * 100_000 + "}\n"),
        [],
        ["line 13", "nested more than 64 levels"],
    ),
    (
        "JSON array row",
        "t.jsonl",
        lambda p: p.write_text(_jsonl(ROWS) + "[1, 2]\n"),
        [],
        ["line 13 holds a JSON list, allowed: one JSON object per line"],
    ),
    (
        "JSON number as text",
        "t.jsonl",
        lambda p: p.write_text(_jsonl(_with(5, text=17))),
        [],
        ["row 6", "'text'"],
    ),
    ("JSON list as label", "t.jsonl", lambda p: p.write_text(_jsonl(_with(1, label=[0, 1]))), [], ["row 2"]),
    (
        "JSON object as label",
        "t.jsonl",
        lambda p: p.write_text(_jsonl(_with(1, label={"a": 1}))),
        [],
        ["row 2"],
    ),
    (
        "JSON row without the label",
        "t.jsonl",
        lambda p: p.write_text(_jsonl(ROWS) + '{"text": "x"}\n'),
        [],
        ["row 13 (line 13)", "'label'"],
    ),
    (
        "parquet text of token ids",
        "t.parquet",
        lambda p: _parquet(p, [{"text": [5, 6, 7], "label": r["label"]} for r in ROWS]),
        [],
        ["row 1", "'text'", "[5, 6, 7]"],
    ),
    (
        "parquet NaN label",
        "t.parquet",
        lambda p: _parquet(
            p, [{**r, "label": float("nan") if i == 9 else float(r["label"])} for i, r in enumerate(ROWS)]
        ),
        [],
        ["row 10", "'label'"],
    ),
    (
        "CSV row with an extra field",
        "t.csv",
        lambda p: p.write_text(CSV_LINES + "a,1,2\n"),
        [],
        ["row 13 (line 14)", "3 fields"],
    ),
    (
        "CSV row with a missing field",
        "t.csv",
        lambda p: p.write_text(CSV_LINES[:20] + "\nlonely\n" + CSV_LINES[20:]),
        [],
        ["1 fields"],
    ),
    (
        "fractional class",
        "t.jsonl",
        lambda p: p.write_text(_jsonl(_with(6, label=0.5))),
        [],
        ["row 7", "regression"],
    ),
    (
        "regression text",
        "t.csv",
        lambda p: write_csv(p, _with(2, label="high")),
        ["task=regression"],
        ["row 3"],
    ),
    (
        "regression inf",
        "t.csv",
        lambda p: write_csv(p, _with(2, label="inf")),
        ["task=regression"],
        ["row 3"],
    ),
    (
        "tags of another length",
        "t.jsonl",
        lambda p: p.write_text(_jsonl([{"tokens": ["a", "b"], "tags": ["O"]}] * 12)),
        ["task=token_classification"],
        ["row 1", "'tags'", "2 words, 1 tags"],
    ),
    (
        "a None tag",
        "t.jsonl",
        lambda p: p.write_text(
            _jsonl(
                [{"tokens": ["a", "b"], "tags": ["O", "O"]}] * 3
                + [{"tokens": ["a", "b"], "tags": ["O", None]}]
            )
        ),
        ["task=token_classification"],
        ["row 4", "'tags'"],
    ),
    (
        "words that are numbers",
        "t.jsonl",
        lambda p: p.write_text(_jsonl([{"tokens": [3, 4], "tags": ["O", "O"]}] * 3)),
        ["task=token_classification"],
        ["'tokens'", "given [3, 4]"],
    ),
]


@pytest.mark.parametrize(("name", "file", "write", "extra", "holds"), CASES, ids=[c[0] for c in CASES])
def test_a_hostile_training_file_is_one_line_naming_file_row_and_column(
    name, file, write, extra, holds, tiny_bert, existing_run, tmp_path
):
    _, tok, with_tok = tiny_bert
    path = tmp_path / file
    write(path)
    line = refused([f"init_from={with_tok}", f"data.train={path}", *extra], existing_run)
    assert line.startswith("error: data.") and str(path) in line, line
    for part in holds:
        assert part in line, (part, line)


def test_a_missing_label_in_the_validation_file_is_refused_too(tiny_bert, existing_run, tmp_path):
    _, _, with_tok = tiny_bert
    train = write_csv(tmp_path / "train.csv", ROWS)
    val = write_csv(tmp_path / "val.csv", _with(3, label="NaN"))
    line = refused([f"init_from={with_tok}", f"data.train={train}", f"data.validation={val}"], existing_run)
    assert line.startswith("error: data.label_column: ") and f"{val} row 4 (line 5)" in line, line


def test_strict_checks_keep_what_was_accepted(tmp_path):
    """Integer, float-integer, bool and named labels, empty text, whitespace-split words."""
    task = parse_finetune_config({"init_from": ".", "data": {"train": "x.csv"}}).task
    ok = [
        D.Example("a", None, 1),
        D.Example("", None, 1.0),
        D.Example("c", None, True),
        D.Example("d", None, "0"),
    ]
    assert D.check_labels(ok, ok, task) == (2, None)
    tags = parse_finetune_config(
        {
            "init_from": ".",
            "data": {"train": "x.csv"},
            "task": {"kind": "token_classification", "metric": "token_f1"},
        }
    ).task
    words = [D.Example("New York is big", None, "B-LOC I-LOC O O"), D.Example(["a"], None, ["O"])]
    assert D.check_labels(words, words, tags) == (3, ["B-LOC", "I-LOC", "O"])


# --- tokenizer=FILE ---------------------------------------------------------------------


def test_tokenizer_file_as_documented(tiny_bert, tmp_path):
    model, tok, _ = tiny_bert
    train = write_csv(tmp_path / "t.csv", sentences(40))
    args = [f"init_from={model}", f"data.train={train}", "data.max_len=32", "trainer.max_steps=2"]
    args.append("trainer.progress=false")
    missing = run_main("finetune", *args, f"hydra.run.dir={tmp_path / 'none'}")
    assert missing.returncode == 2 and "tokenizer=PATH" in missing.stderr, missing.stderr
    r = run_main("finetune", *args, f"tokenizer={tok}", f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "run" / "tokenizer.json").read_bytes() == tok.read_bytes()
    assert f"tokenizer: {tok}" in (tmp_path / "run" / "config.yaml").read_text()


# --- defaults and a run that learned nothing ---------------------------------------------


def test_default_learning_rate_follows_the_width_and_an_explicit_one_wins():
    assert default_lr(256) == pytest.approx(5e-4)
    assert default_lr(768) == pytest.approx(5e-4 / 9) and default_lr(1024) == pytest.approx(5e-4 / 16)
    assert default_lr(32) == 1e-3  # bounded
    cfg = parse_finetune_config({"init_from": ".", "data": {"train": "x.csv"}})
    assert cfg.optim.lr is None and with_lr(cfg, 768).optim.lr == pytest.approx(5e-4 / 9)
    given = parse_finetune_config({"init_from": ".", "data": {"train": "x.csv"}, "optim": {"lr": 3e-5}})
    assert with_lr(given, 256).optim.lr == 3e-5


def test_baselines():
    assert M.baseline("classification", [0, 0, 1], [0, 1, 1, 1]) == {
        "name": "the majority class",
        "metric": "accuracy",
        "value": 0.25,
    }
    reg = M.baseline("regression", [1.0, 3.0], [2.0, 4.0])
    assert reg["metric"] == "mse" and reg["value"] == pytest.approx((0 + 4) / 2)
    assert M.no_better(4.0, reg) and not M.no_better(1.9, reg)
    tok = M.baseline("token_classification", [[-100, 2, 2, 1, -100]], [[-100, 2, 1, -100]])
    assert tok["value"] == 0.5 and M.no_better(0.5, tok) and not M.no_better(0.6, tok)


def _finetune(tmp: Path, model, tok, train: Path, val: Path, lr: float, steps: int) -> dict:
    from bertsmith.train.finetune.run import finetune

    cfg = {
        "init_from": str(model),
        "tokenizer": str(tok),
        "task": {"pooling": "mean"},
        "data": {"train": str(train), "validation": str(val), "max_len": 16, "batch_size": 16},
        "optim": {"lr": lr},
        "trainer": {"max_steps": steps, "val_every": steps, "log_every": 1, "progress": False, "threads": 1},
    }
    return finetune(parse_finetune_config(cfg), tmp, {})


def test_a_finetune_that_learned_nothing_says_so_and_one_that_learned_does_not(tiny_bert, tmp_path, capsys):
    model, tok, _ = tiny_bert
    train = write_csv(tmp_path / "train.csv", sentences(300, seed=1, p_good=0.3))
    val = write_csv(tmp_path / "val.csv", sentences(100, seed=2, p_good=0.3))
    nothing = _finetune(tmp_path / "nothing", model, tok, train, val, lr=1e-9, steps=2)
    out = capsys.readouterr().out
    assert nothing["learned_nothing"] is True, nothing
    assert nothing["baseline"]["name"] == "the majority class"
    assert nothing["baseline"]["value"] == nothing["majority_accuracy"]
    assert nothing["metrics"]["accuracy"] <= nothing["majority_accuracy"]
    want = f"accuracy {nothing['metrics']['accuracy']:.3f} is no better than the majority class"
    assert want in out and "the model learned nothing; try a higher optim.lr (e.g. 5e-09" in out, out
    saved = json.loads((tmp_path / "nothing" / "summary.json").read_text())
    assert saved["learned_nothing"] is True and saved["baseline"] == nothing["baseline"]

    learned = _finetune(tmp_path / "learned", model, tok, train, val, lr=5e-3, steps=60)
    out = capsys.readouterr().out
    assert learned["learned_nothing"] is False, learned
    assert learned["metrics"]["accuracy"] >= learned["majority_accuracy"] + 0.2, learned
    assert "learned nothing" not in out


def test_pretraining_summary_flags_a_loss_not_below_the_unigram_baseline(tmp_path, capsys):
    from types import SimpleNamespace

    from bertsmith.train.pretrain.loop import summarize

    tok = SimpleNamespace(size=100, sha256="0" * 64)
    data = SimpleNamespace(stats={"unigram_val_loss": 6.8}, tok=tok)
    for val_loss, flagged in ((6.9, True), (6.8, True), (5.2, False)):
        (tmp_path / "metrics.csv").write_text(
            "step,train_loss,lr,tokens_per_s,val_loss,val_mlm_acc,val_nsp_acc\n"
            f"10,7.0,0.001,100,,,\n10,,,,{val_loss},0.1,\n"
        )
        s = summarize(tmp_path, tmp_path / "model", data, 1.0)
        out = capsys.readouterr().out
        assert s["learned_nothing"] is flagged
        assert ("is not below the unigram baseline 6.800: the model learned nothing" in out) is flagged, out


def test_a_one_step_pretraining_run_says_it_learned_nothing(tmp_path):
    one = ["trainer.max_steps=1", "model.n_layers=1", "optim=adamw"]
    r = run_main("train", *TINY_TRAIN, *one, f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["learned_nothing"] is True and not s["val_loss"] < s["unigram_val_loss"], s
    assert "the model learned nothing beyond token frequencies" in r.stdout
    assert math.isfinite(s["val_loss"])

"""`bertsmith train` end to end: every family, resume after a kill, DDP, bad input."""

import json
import shutil

import pytest
from helpers import TINY_TRAIN, bertsmith, kill_when, run_main

from bertsmith import registry
from bertsmith.train.callbacks import read_metrics
from bertsmith.train.pretrain.tokenizer import file_sha256

SMALL = TINY_TRAIN


def train(run_dir, *overrides, cache, wait=True):
    return bertsmith(
        "train", *SMALL, f"hydra.run.dir={run_dir}", *overrides, cache=cache, wait=wait, timeout=600
    )


def train_here(run_dir, *overrides):
    """``train`` in this process, for the refusals (``helpers.run_main``)."""
    return run_main("train", *SMALL, f"hydra.run.dir={run_dir}", *overrides)


FAMILY_EXTRAS = {  # each family also exercises one trainer feature
    "modernbert": [],
    "roberta": ["trainer.precision=bf16-mixed"],
    "bert": ["schedule.batch_warmup_steps=2"],
    "mosaicbert": ["trainer.accumulate=2"],
}


@pytest.mark.parametrize(  # modernbert in the quick suite, the others with -m slow
    "pretrain",
    [pytest.param(f, marks=[] if f == "modernbert" else [pytest.mark.slow]) for f in FAMILY_EXTRAS],
)
def test_each_family_trains_and_writes_a_run_dir(pretrain, tmp_path, cache):
    run = train(
        tmp_path / "run",
        f"pretrain={pretrain}",
        "trainer.max_steps=4",
        "trainer.val_every=2",
        "trainer.checkpoint.every_n_steps=2",
        *FAMILY_EXTRAS[pretrain],
        cache=cache,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    d = tmp_path / "run"
    for name in (
        "spec.yaml",
        "config.yaml",
        "tokenizer.json",
        "metrics.csv",
        "model/spec.yaml",
        "model/model.safetensors",
        "model/tokenizer.json",
        "checkpoints/last.ckpt",
        "checkpoints/step=2.ckpt",
        "checkpoints/step=4.ckpt",
    ):
        assert (d / name).is_file(), name
    rows = read_metrics(d / "metrics.csv")
    assert [r["step"] for r in rows if "train_loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in rows if "val_loss" in r] == [2, 4]
    if pretrain == "bert":
        assert all("val_nsp_acc" in r for r in rows if "val_loss" in r)
    spec = registry.load_spec(d / "spec.yaml")
    assert spec.vocab_size % 64 == 0 and spec.vocab_size >= 512 - 64
    expected_head = "nsp" if pretrain == "bert" else "mlm"
    assert spec.head.kind == expected_head
    assert registry.load(d / "model").spec == spec
    assert "val MLM loss" in run.stdout and str(d / "model") in run.stdout
    # the tokenizer's identity is recorded, and is that of the tokenizer.json it wrote
    sha = file_sha256(d / "tokenizer.json")
    assert json.loads((d / "summary.json").read_text())["tokenizer_sha256"] == sha
    assert file_sha256(d / "model" / "tokenizer.json") == sha
    assert f"sha256 {sha[:12]}" in run.stdout


def test_resume_after_sigkill_gives_the_same_metrics(tmp_path, cache):
    common = [
        "trainer.max_steps=10",
        "trainer.val_every=5",
        "trainer.checkpoint.every_n_steps=2",
        "model.n_layers=2",
    ]
    full = train(tmp_path / "full", *common, cache=cache)
    assert full.returncode == 0, full.stderr[-2000:]
    proc = train(tmp_path / "cut", *common, cache=cache, wait=False)
    ckpt = tmp_path / "cut" / "checkpoints" / "step=4.ckpt"
    kill_when(proc, ckpt)
    assert not (tmp_path / "cut" / "model").exists()
    again = train(tmp_path / "cut", *common, "resume=true", cache=cache)
    assert again.returncode == 0, again.stderr[-2000:]

    def comparable(path):
        return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in read_metrics(path)]

    assert comparable(tmp_path / "cut" / "metrics.csv") == comparable(tmp_path / "full" / "metrics.csv")


@pytest.mark.slow
def test_two_cpu_processes_with_ddp(tmp_path, cache):
    run = train(
        tmp_path / "ddp",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        "trainer.max_steps=3",
        "trainer.val_every=3",
        "model.n_layers=2",
        cache=cache,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rows = read_metrics(tmp_path / "ddp" / "metrics.csv")
    assert [r["step"] for r in rows if "train_loss" in r] == [1, 2, 3]
    assert (tmp_path / "ddp" / "model" / "model.safetensors").is_file()


def test_recipe_file_as_model(tmp_path, cache):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(
        "defaults:\n  - modernbert-tiny\n  - override positional: alibi\n  - _self_\n"
        "name: mine\nn_layers: 2\n"
    )
    run = train(
        tmp_path / "run", f"model={recipe}", "trainer.max_steps=2", "trainer.val_every=2", cache=cache
    )
    assert run.returncode == 0, run.stderr[-2000:]
    spec = registry.load_spec(tmp_path / "run" / "spec.yaml")
    assert (spec.name, spec.positional.kind, spec.n_layers) == ("mine", "alibi", 2)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["data=files", "data.path=/nonexistent/corpus"], "data.path"),
        (["pretrain=bert", "data.seq_len=1024"], "data.seq_len"),
        (["trainer.max_stps=5"], "trainer.max_stps"),
        (["optim=adamx"], "optim"),
        (["objective.mask_ratio=1.5"], "objective.mask_ratio"),
        (["model/positional=rop"], "model/positional"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(overrides, key, tmp_path):
    run = train_here(tmp_path / "run", *overrides)
    assert run.returncode == 2, run.stderr[-2000:]
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {key}"), run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content", [b"", b"\n\n   \n", b"text \xff\xfe here\n"])
def test_bad_corpus_is_one_line_and_exit_2(content, tmp_path):
    (tmp_path / "corpus.txt").write_bytes(content)
    run = train_here(tmp_path / "run", "data=files", f"data.path={tmp_path / 'corpus.txt'}")
    assert run.returncode == 2, run.stderr[-2000:]
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: data"), run.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_an_existing_run_is_never_overwritten(tmp_path, cache):
    first = train(
        tmp_path / "run", "trainer.max_steps=2", "trainer.val_every=2", "model.n_layers=2", cache=cache
    )
    assert first.returncode == 0, first.stderr[-2000:]
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*") if p.is_file()}
    second = train(
        tmp_path / "run", "trainer.max_steps=2", "trainer.val_every=2", "model.n_layers=2", cache=cache
    )
    assert second.returncode == 2
    assert "resume=true" in second.stderr
    after = {
        p: p.stat().st_mtime_ns
        for p in (tmp_path / "run").rglob("*")
        if p.is_file() and ".hydra" not in str(p)
    }
    assert all(before[p] == after[p] for p in after)


def test_streaming_corpus(tmp_path, cache):
    docs = [
        json.dumps({"text": f"Document {i} says that the value of item {i} is {i * i}."}) for i in range(400)
    ]
    (tmp_path / "c.jsonl").write_text("\n".join(docs))
    run = train(
        tmp_path / "run",
        "data=hf",
        f"data.name={tmp_path / 'c.jsonl'}",
        "data.streaming=true",
        "data.val_fraction=0.1",
        "trainer.max_steps=3",
        "trainer.val_every=3",
        "model.n_layers=2",
        cache=cache,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert [r["step"] for r in rows if "train_loss" in r] == [1, 2, 3]


@pytest.mark.slow
def test_multirun_puts_each_job_in_the_sweep_dir(tmp_path, cache):
    run = train(
        tmp_path / "unused",
        "-m",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "seed=0,1",
        "trainer.max_steps=2",
        "trainer.val_every=2",
        "model.n_layers=2",
        cache=cache,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    losses = []
    for job in ("0", "1"):
        d = tmp_path / "sweep" / job
        assert (d / "model" / "model.safetensors").is_file()
        losses.append([r["train_loss"] for r in read_metrics(d / "metrics.csv") if "train_loss" in r])
    assert losses[0] != losses[1]  # the seed is a real axis


def test_resume_with_another_split_of_the_rows_is_refused(tmp_path, cache):
    """Rank r of w takes micro-batches r, r+w, ... of a step: resuming with another number of
    processes (or accumulation) would repeat or skip rows, so it is one line, exit 2."""
    run = tmp_path / "run"
    first = train(run, "trainer.max_steps=2", "trainer.val_every=2", "model.n_layers=1", cache=cache)
    assert first.returncode == 0, first.stderr[-2000:]
    shutil.rmtree(run / "model")  # as if it had been stopped before its end
    (run / "summary.json").unlink()
    ckpt = (run / "checkpoints" / "last.ckpt").read_bytes()
    for more, given in (
        ("trainer.devices=2", "trainer.devices=2"),
        ("trainer.accumulate=2", "trainer.accumulate=2"),
    ):
        again = train_here(
            run,
            "trainer.max_steps=2",
            "trainer.val_every=2",
            "model.n_layers=1",
            "resume=true",
            "trainer.accelerator=cpu",
            more,
        )
        assert again.returncode == 2, again.stderr[-2000:]
        (line,) = again.stderr.splitlines()
        assert line.startswith(f"error: resume: given {given}, allowed: trainer."), line
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == ckpt

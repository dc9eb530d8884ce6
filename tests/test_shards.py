"""`bertsmith data prepare` and `data=shards`: the same rows and batches as the in-memory path,
exact resume, and one line for every bad input."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import ROOT, TINY_TRAIN, bertsmith, kill_when, run_main

pytest.importorskip("litdata")

from bertsmith.train.callbacks import read_metrics  # noqa: E402
from bertsmith.train.pretrain import shards  # noqa: E402
from bertsmith.train.pretrain.config import parse_train_config  # noqa: E402
from bertsmith.train.pretrain.data import build_data, pack  # noqa: E402
from bertsmith.train.pretrain.packing import split_documents  # noqa: E402
from bertsmith.train.pretrain.tokenizer import load_tokenizer  # noqa: E402

CORPUS = ["data.max_docs=300", "data.max_val_docs=16", "data.seq_len=64", "tokenizer.vocab_size=512"]
RUN = [
    *TINY_TRAIN,
    "trainer.max_steps=10",
    "trainer.val_every=5",
    "trainer.checkpoint.every_n_steps=2",
    "model.n_layers=2",
]
BASE = {
    "data": {"max_docs": 300, "max_val_docs": 16, "seq_len": 64, "batch_size": 4},
    "tokenizer": {"vocab_size": 512},
    "objective": {"mask_ratio": 0.3},
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, _session_cache):
    out = tmp_path_factory.mktemp("shards") / "tiny"
    ran = run_main("data", "prepare", *CORPUS, "--out", out, "--workers", "2")
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "rows of seq_len 64" in ran.stdout and "sha256" in ran.stdout
    return out


def shard_cfg(path, **data):
    cfg = parse_train_config(
        {**BASE, "data": {**BASE["data"], "source": "shards", "path": str(path), **data}}
    )
    return shards.with_shard_tokenizer(cfg, {})[0]


def test_prepare_writes_the_in_memory_rows_and_batches(prepared):
    m = json.loads((prepared / "manifest.json").read_text())
    mem = build_data(parse_train_config(BASE), 0)
    sh = shards.build_data(shard_cfg(prepared), 0)
    assert m["seq_len"] == 64 and m["train"]["documents"] == mem.stats["train_docs"] == 300
    assert m["tokenizer_sha256"] == mem.tok.sha256 == sh.tok.sha256
    assert (
        m["train"]["rows"] == len(mem.train.rows.rows) and m["train"]["tokens"] == mem.stats["train_tokens"]
    )
    assert [[s.ids for s in r] for r in sh.train.rows.rows] == [
        [s.ids for s in r] for r in mem.train.rows.rows
    ]
    assert {k: sh.stats[k] for k in mem.stats} == mem.stats  # unigram baseline and efficiency too
    for step in (0, 1, 176, 177, 999):  # across an epoch boundary
        a, b = mem.train[step], sh.train[step]
        assert all(torch.equal(a[k], b[k]) for k in ("input_ids", "labels", "cu_seqlens"))
    assert all(
        torch.equal(a["labels"], b["labels"]) for a, b in zip(mem.val.batches, sh.val.batches, strict=True)
    )


@pytest.mark.slow
def test_groups_over_two_workers_keep_their_order(tmp_path, prepared):
    out = tmp_path / "grouped"
    ran = run_main("data", "prepare", *CORPUS, "--out", out, "--workers", "2", "--pack-docs", "120")
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert json.loads((out / "manifest.json").read_text())["train"]["groups"] == 3
    tok = load_tokenizer(prepared / "tokenizer.json")
    docs = [doc for is_val, doc in shards.split_stream(parse_train_config(BASE).data) if not is_val]
    want = []
    for i in range(0, 300, 120):  # each group packed alone, groups in corpus order
        seqs = split_documents(tok.encode(docs[i : i + 120]), 64, tok.cls_id, tok.sep_id)
        want += [[s.ids for s in r] for r in pack(seqs, 64).rows]
    assert [[s.ids for s in r] for r in shards.ShardRows(out / "train")] == want


def _train(tmp_path, cache, run, *extra, wait=True):
    return bertsmith("train", *RUN, f"hydra.run.dir={tmp_path / run}", *extra, cache=cache, wait=wait)


def _comparable(path):
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in read_metrics(path / "metrics.csv")]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, prepared, cache):
    """An uninterrupted 10-step run from the shards."""
    where = tmp_path_factory.mktemp("runs")
    ran = _train(where, cache, "full", "data=shards", f"data.path={prepared}")
    assert ran.returncode == 0, ran.stderr[-3000:]
    return where / "full"


def test_training_from_shards_resumes_exactly_after_a_kill(tmp_path, prepared, cache, full_run):
    from_shards = ["data=shards", f"data.path={prepared}"]
    proc = _train(tmp_path, cache, "cut", *from_shards, wait=False)
    kill_when(proc, tmp_path / "cut" / "checkpoints" / "step=4.ckpt")
    assert not (tmp_path / "cut" / "model").exists()
    again = _train(tmp_path, cache, "cut", *from_shards, "resume=true")
    assert again.returncode == 0, again.stderr[-2000:]
    assert _comparable(tmp_path / "cut") == _comparable(full_run)
    assert (full_run / "tokenizer.json").read_bytes() == (prepared / "tokenizer.json").read_bytes()


@pytest.mark.slow
def test_training_from_shards_matches_the_in_memory_path(tmp_path, cache, full_run):
    mem = _train(tmp_path, cache, "mem")
    assert mem.returncode == 0, mem.stderr[-3000:]
    assert _comparable(tmp_path / "mem") == _comparable(full_run)  # the same batches: the same losses


def _refused(ran, key: str) -> None:
    lines = ran.stderr.strip().splitlines()
    assert ran.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {key}"), ran.stderr


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, prepared):
    out = tmp_path / "out"
    _refused(run_main("data", "prepare", "--out", prepared), "--out")
    _refused(run_main("data", "prepare", "trainer.max_steps=3", "--out", out), "trainer")
    _refused(run_main("data", "prepare", "data=files", "--out", out), "data.path")
    _refused(run_main("data", "prepare", "--out", out, "--workers", "0"), "--workers")
    assert not out.exists()

    run = tmp_path / "run"

    def train(*extra):
        return run_main("train", *TINY_TRAIN, f"hydra.run.dir={run}", "data=shards", *extra)

    _refused(train(), "data.path")
    _refused(train(f"data.path={tmp_path / 'nope'}"), "data.path")
    _refused(train(f"data.path={prepared}", "data.seq_len=128"), "data.seq_len")
    other = tmp_path / "other.json"  # another tokenizer: one more token
    from tokenizers import Tokenizer

    tk = Tokenizer.from_file(str(prepared / "tokenizer.json"))
    tk.add_tokens(["zzzqqq"])
    tk.save(str(other))
    _refused(train(f"data.path={prepared}", "tokenizer=file", f"tokenizer.path={other}"), "tokenizer.path")

    broken = tmp_path / "broken"
    shutil.copytree(prepared, broken)
    (broken / "tokenizer.json").write_bytes(other.read_bytes())
    _refused(train(f"data.path={broken}"), "data.path")
    (broken / "tokenizer.json").write_bytes((prepared / "tokenizer.json").read_bytes())
    chunk = next((broken / "train").glob("chunk-*.bin"))
    chunk.write_bytes(chunk.read_bytes()[:1000])
    _refused(train(f"data.path={broken}"), "data.path")
    chunk.unlink()
    _refused(train(f"data.path={broken}"), "data.path")
    assert not run.exists()


def test_bench_reads_batches(prepared):
    ran = run_main("data", "bench", prepared, "--steps", "20", "--batch-size", "4")
    assert ran.returncode == 0, ran.stderr
    assert "tokens/s" in ran.stdout


@pytest.mark.slow
def test_ddp_from_shards_resumes_exactly_after_a_kill(tmp_path, prepared, cache):
    ddp = ["data=shards", f"data.path={prepared}", "trainer.devices=2", "trainer.accelerator=cpu"]
    full = _train(tmp_path, cache, "full", *ddp)
    assert full.returncode == 0, full.stderr[-3000:]
    cmd = [
        sys.executable,
        "-m",
        "bertsmith.train.cli",
        "train",
        *RUN,
        f"hydra.run.dir={tmp_path / 'cut'}",
        *ddp,
    ]
    env = {**os.environ, "BERTSMITH_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    ckpt = tmp_path / "cut" / "checkpoints" / "step=4.ckpt"
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its spawned ranks, as a job scheduler does
    proc.wait()
    time.sleep(1)
    again = _train(tmp_path, cache, "cut", *ddp, "resume=true")
    assert again.returncode == 0, again.stderr[-3000:]
    assert _comparable(tmp_path / "cut") == _comparable(tmp_path / "full")

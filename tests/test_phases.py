"""ModernBERT's training phases as presets (phase 1 -> context extension -> decay through
``init_from`` + ``init_spec``), activation checkpointing and ``trainer.compile``."""

import math
import shutil

import pytest
import torch
import yaml
from helpers import TINY_TRAIN, bertsmith, run_main
from safetensors.torch import load_file

from bertsmith import registry
from bertsmith.train.callbacks import read_metrics

TINY = [*TINY_TRAIN, "trainer.val_every=100"]


def _train(run_dir, *overrides, cache):
    run = bertsmith("train", *TINY, f"hydra.run.dir={run_dir}", *overrides, cache=cache, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def test_phase1_extension_decay(tmp_path, cache):
    p1, p2, p3 = tmp_path / "phase1", tmp_path / "phase2", tmp_path / "phase3"
    _train(
        p1,
        "pretrain=modernbert-stable",
        "model.n_layers=3",
        "model.max_seq_len=128",
        "data.seq_len=128",
        "data.batch_size=4",
        "trainer.max_steps=3",
        cache=cache,
    )
    spec1 = yaml.safe_load((p1 / "spec.yaml").read_text())
    assert spec1["positional"]["theta"] == 10000.0 and spec1["max_seq_len"] == 128

    # the extension: the preset's init_spec (theta 160k) plus a length given on the command line
    run = _train(
        p2,
        "pretrain=modernbert-extend",
        f"init_from={p1 / 'model'}",
        "model.max_seq_len=256",  # with init_from: a change to its spec (init_spec.max_seq_len)
        "data.seq_len=256",
        "data.batch_size=2",
        "trainer.max_steps=3",
        cache=cache,
    )
    assert "changed by init_spec" in run.stdout
    spec2 = yaml.safe_load((p2 / "spec.yaml").read_text())
    assert spec2["positional"]["theta"] == 160000.0
    assert spec2["positional"]["local_theta"] == 10000.0
    assert spec2["max_seq_len"] == 256
    assert {k: v for k, v in spec2.items() if k not in ("positional", "max_seq_len")} == {
        k: v for k, v in spec1.items() if k not in ("positional", "max_seq_len")
    }
    config2 = yaml.safe_load((p2 / "config.yaml").read_text())
    assert config2["data"]["seq_len"] == 256 and config2["data"]["batch_size"] == 2
    lrs = [r["lr"] for r in read_metrics(p2 / "metrics.csv") if "lr" in r]
    assert lrs == [pytest.approx(3e-4)] * 3  # a constant lower rate, no warmup

    # phase 1's weights, moved only by 3 steps at 3e-4 (far less than a new initialisation differs)
    w1 = load_file(p1 / "model" / "model.safetensors")
    w2 = load_file(p2 / "model" / "model.safetensors")
    key = next(k for k in sorted(w1) if ".layers.1." in k and w1[k].dim() == 2)  # a random init
    assert w1.keys() == w2.keys()
    fresh = registry.build(registry.load_spec(p1 / "spec.yaml")).state_dict()[key]
    moved, other = (w2[key] - w1[key]).abs().mean(), (fresh - w1[key]).abs().mean()
    assert moved < 3 * 3e-4 and moved < other / 5, (moved, other)

    steps = 10
    _train(
        p3,
        "pretrain=modernbert-decay",
        f"init_from={p2 / 'model'}",
        "data.seq_len=256",
        "data.batch_size=2",
        f"trainer.max_steps={steps}",
        cache=cache,
    )
    assert yaml.safe_load((p3 / "spec.yaml").read_text()) == spec2
    rows = [r for r in read_metrics(p3 / "metrics.csv") if "lr" in r]
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    # the rate a step used: 3e-4 * (1 - sqrt(s / steps)) for 0-based s, down to ~0
    want = [3e-4 * (1 - math.sqrt((r["step"] - 1) / steps)) for r in rows]
    assert [r["lr"] for r in rows] == pytest.approx(want, rel=1e-4)
    assert rows[-1]["lr"] < 0.06 * 3e-4


def _model_dir(tmp_path, recipe: str):
    d = tmp_path / recipe
    registry.save(registry.build(registry.compose(recipe, ["model.n_layers=1", "model.vocab_size=512"])), d)
    return d


def test_init_spec_that_reshapes_a_weight_is_one_line(tmp_path):
    bert = _model_dir(tmp_path, "bert-tiny")  # learned positions: max_seq_len is a weight's shape
    run = run_main("train", f"init_from={bert}", "model.max_seq_len=1024", f"hydra.run.dir={tmp_path / 'r'}")
    assert run.returncode == 2, run.stderr
    (line,) = run.stderr.strip().splitlines()
    assert line.startswith("bertsmith train: init_spec:") or "init_spec:" in line
    assert "positional" in line and "keep every weight's shape" in line
    assert not (tmp_path / "r").exists()


def test_extension_without_init_from_is_one_line(tmp_path):
    run = run_main("train", "pretrain=modernbert-extend", f"hydra.run.dir={tmp_path / 'r'}")
    assert run.returncode == 2, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "init_from: given None" in run.stderr
    assert not (tmp_path / "r").exists()


def _batch(vocab: int, lengths=(30, 20, 14)):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab, (sum(lengths),), generator=g)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    return ids, cu, max(lengths)


def _loss(model, ids, cu, max_len):
    out = model(ids, cu_seqlens=cu, max_seqlen=max_len)
    return torch.nn.functional.cross_entropy(out.logits.float(), ids)


def test_activation_checkpointing_gives_identical_gradients():
    spec = registry.compose(
        "modernbert-tiny",
        ["model.n_layers=3", "model.vocab_size=256", "model.dropout.attn_out=0.3", "model.dropout.mlp=0.3"],
    )
    torch.manual_seed(0)
    model = registry.build(spec).train()
    ids, cu, max_len = _batch(256)
    grads = {}
    for ckpt in (False, True):
        model.encoder.checkpointing = ckpt
        model.zero_grad()
        torch.manual_seed(7)  # the same dropout masks; checkpointing must replay them
        _loss(model, ids, cu, max_len).backward()
        grads[ckpt] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads[False].keys() == grads[True].keys() and grads[False]
    for n in grads[False]:
        assert torch.equal(grads[False][n], grads[True][n]), n


@pytest.mark.slow  # ~60 s of inductor compilation on 2 CPU cores
@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")
def test_compile_gives_the_same_loss_over_three_steps():
    spec = registry.compose(
        "modernbert-tiny", ["model.n_layers=2", "model.d_model=64", "model.d_ff=96", "model.vocab_size=128"]
    )
    ids, cu, max_len = _batch(128)
    losses = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        model = registry.build(spec).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        run = torch.compile(model, dynamic=True) if compiled else model
        losses[compiled] = []
        for _ in range(3):
            loss = _loss(run, ids, cu, max_len)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses[compiled].append(loss.item())
    assert losses[True] == pytest.approx(losses[False], rel=1e-4, abs=1e-5)
    assert losses[False][2] < losses[False][0]

"""``torch.compile`` computes what eager computes, and does not recompile batch after batch.

Training compiles the model with ``torch.compile(model, dynamic=True)``
(``train.pretrain.module.runnable``) and feeds it packed batches (``input_ids [T]``,
``cu_seqlens``, ``max_seqlen``, ``predict``). Here every family's tiny recipe is run both ways
on such a batch, and the logits and every parameter's gradient of the training loss compared;
then ModernBERT is trained for 50 batches of varied lengths while the compiles are counted.

Tolerance: ``max|compiled - eager| <= 1e-4 * max|eager|`` per tensor. Inductor fuses and
re-orders the float32 reductions (matmuls over d_model=256 and d_ff, softmax, layer norm,
the loss's mean), so each result moves by a few ulps of the tensor's largest entries
(float32 eps is 1.2e-7), amplified through the layers and the backward pass: measured on
these models, at most ~1.4e-5 at 2 layers and ~2.5e-5 for ModernBERT at 6. A real
difference moves the logits by far more at these weights (re-drawn N(0, 0.14^2) as
tests/test_parity.py does, so attention is far from uniform): on this batch, ModernBERT's
window 128 -> 96 moves them by 0.44, its local RoPE theta 10k -> 20k by 0.45, one sequence
boundary moved by one token by 1.3.

Dropout is set to 0 in every recipe (and the model kept in train mode, as training runs it),
so both runs compute the same function.

Inductor compiles C++ on these 2 CPU cores: 10-55 s per model, hence ``slow``. Two layers per
model (every family's layer kinds: ModernBERT's global layer 0 and local layer 1) keep that
down; deeper stacks repeat the same code.
"""

from __future__ import annotations

import copy
import random
import shutil
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import randomize_
from torch import nn

from bertsmith import registry

pytestmark = pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler for inductor"
)

RECIPES = Path(__file__).resolve().parent.parent / "recipes" / "model"
FAMILIES = ["bert-tiny", "roberta-tiny", "deberta-tiny", "mosaicbert-tiny", "modernbert-tiny"]
REL_TOL = 1e-4
NO_DROPOUT = [f"model.dropout.{k}=0" for k in ("embedding", "attention", "attn_out", "mlp")]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles from scratch: no graphs, guards or counters of the previous one."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: a second intra-op thread only adds synchronisation on shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_every_tiny_recipe_is_compared():
    assert sorted(FAMILIES) == sorted(p.stem for p in RECIPES.glob("*-tiny.yaml"))


def tiny_spec(name: str, *overrides: str):
    spec = registry.compose(name, [*NO_DROPOUT, *overrides])
    if getattr(spec.positional, "dropout", 0):  # DeBERTa: dropout on the relative embeddings
        spec = registry.compose(name, [*NO_DROPOUT, "model.positional.dropout=0", *overrides])
    return spec


def assert_no_dropout(model: nn.Module) -> None:
    for name, m in model.named_modules():
        assert not (isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0), name
        assert not getattr(m, "dropout", 0), name  # a rate kept as a float (attention, positional)


def packed_batch(vocab: int, lengths: list[int], seed: int):
    """A training batch: packed ids, cu_seqlens (int32), and the tokens to predict (30%, at
    least one per sequence)."""
    g = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    ids = torch.randint(5, vocab, (total,), generator=g)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    predict = torch.rand(total, generator=g) < 0.3
    predict[cu[:-1].long()] = True
    return ids, cu, predict


def mlm_loss(model, ids, cu, max_seqlen, predict):
    """The loss of ``PretrainModule.forward`` (train/pretrain/module.py); labels: the ids."""
    logits = model(ids, cu_seqlens=cu, max_seqlen=max_seqlen, predict=predict).logits
    if logits.shape[0] != int(predict.sum()):  # a dense head decoded every token
        logits = logits[predict]
    return logits, F.cross_entropy(logits.float(), ids[predict])


def rel_diff(got: torch.Tensor, want: torch.Tensor) -> float:
    scale = want.abs().max().item()
    return (got - want).abs().max().item() / scale if scale > 0 else (got - want).abs().max().item()


@pytest.mark.slow  # 10-55 s of inductor compilation per family on 2 CPU cores
@pytest.mark.parametrize("name", FAMILIES)
def test_compiled_matches_eager_forward_and_gradients(name):
    spec = tiny_spec(name, "model.n_layers=2")
    torch.manual_seed(0)
    eager = registry.build(spec).train()
    randomize_(eager, seed=3)
    assert_no_dropout(eager)
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, dynamic=True)
    # ragged, several sequences, one longer than ModernBERT's local window (±64)
    lengths = [97, 40, 14, 9]
    ids, cu, predict = packed_batch(spec.vocab_size, lengths, seed=1)

    results = {}
    for tag, model, module in (("eager", eager, eager), ("compiled", compiled, compiled_model)):
        t0 = time.perf_counter()
        logits, loss = mlm_loss(model, ids, cu, max(lengths), predict)
        loss.backward()
        grads = {n: p.grad for n, p in module.named_parameters()}
        results[tag] = (logits.detach(), loss.detach(), grads, time.perf_counter() - t0)

    (l_e, loss_e, g_e, t_e), (l_c, loss_c, g_c, t_c) = results["eager"], results["compiled"]
    assert l_c.shape == l_e.shape == (int(predict.sum()), spec.vocab_size)
    assert torch.isfinite(l_e).all() and torch.isfinite(loss_e)
    forward = rel_diff(l_c, l_e)
    assert g_e.keys() == g_c.keys()
    missing = [n for n in g_e if (g_e[n] is None) != (g_c[n] is None)]
    assert not missing, f"a gradient only one of the two runs has: {missing}"
    with_grad = [n for n in g_e if g_e[n] is not None]
    assert len(with_grad) == len(g_e), [n for n in g_e if g_e[n] is None]  # every weight is used
    grads = {n: rel_diff(g_c[n], g_e[n]) for n in with_grad}
    worst = max(grads, key=grads.get)
    print(
        f"\n{name}: logits {forward:.2e}, loss {abs(loss_c - loss_e).item() / loss_e.item():.2e}, "
        f"gradients max {grads[worst]:.2e} ({worst}) -- relative to each tensor's max; "
        f"eager {t_e:.1f} s, compiled (first call) {t_c:.1f} s"
    )
    assert forward <= REL_TOL
    assert loss_c.item() == pytest.approx(loss_e.item(), rel=REL_TOL)
    bad = {n: d for n, d in grads.items() if d > REL_TOL}
    assert not bad, bad


# --- recompiles over 50 training batches ----------------------------------------------------

STEPS = 50


@pytest.fixture(scope="module")
def compiles_per_step():
    """ModernBERT (global and local layers) compiled as training compiles it, trained for 50
    packed batches of 1-6 sequences of 16-128 tokens (max_seqlen: the longest); returns the
    step of every graph inductor compiled, and each step's sequence lengths."""
    torch._dynamo.reset()
    spec = tiny_spec("modernbert-tiny", "model.n_layers=2", "model.vocab_size=512")
    torch.manual_seed(0)
    model = registry.build(spec).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    from torch._inductor.compile_fx import compile_fx

    step, compiled_at, batches = 0, [], []

    def counting_inductor(gm, example_inputs):
        compiled_at.append(step)
        return compile_fx(gm, example_inputs)

    run = torch.compile(model, dynamic=True, backend=counting_inductor)
    rng = random.Random(0)
    n_seqs = []
    t0 = time.perf_counter()
    for step in range(STEPS):
        lengths = [rng.randint(16, 128) for _ in range(rng.randint(1, 6))]
        n_seqs.append(len(lengths))
        batches.append(lengths)
        ids, cu, predict = packed_batch(spec.vocab_size, lengths, seed=step)
        _, loss = mlm_loss(run, ids, cu, max(lengths), predict)
        opt.zero_grad()
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - t0
    after2 = [s for s in compiled_at if s >= 2]
    print(
        f"\nmodernbert-tiny (2 layers), {STEPS} batches: {len(compiled_at)} graphs compiled, "
        f"{len(after2)} after the first 2 batches (at steps {sorted(set(after2))}); "
        f"sequences per batch: {n_seqs[:10]}...; {seconds:.0f} s"
    )
    torch._dynamo.reset()
    return compiled_at, batches


def kind(lengths: list[int]) -> tuple[bool, bool]:
    """What dynamo specialises on in a packed batch: one sequence (``cu_seqlens`` of size 2,
    a size-1 dimension), and at most one 64-token band chunk (T <= ModernBERT's window // 2)."""
    return len(lengths) == 1, sum(lengths) <= 64


@pytest.mark.slow  # ~20-50 s: inductor compiles ~13 graphs on 2 CPU cores
def test_no_recompiles_but_for_a_new_kind_of_batch(compiles_per_step):
    """After the first two batches, a graph is compiled only at the first batch of a new kind
    (``kind``: dynamo specialises sizes 0 and 1); every other batch, whatever its lengths and
    number of sequences, reuses the compiled graphs. Measured: 13 graphs in all, 6 of them late
    -- at the first one-sequence batch (step 4) and the first batch of at most 64 tokens
    (step 37). Training batches are data.batch_size rows of data.seq_len: neither kind occurs."""
    compiled_at, batches = compiles_per_step
    assert compiled_at and compiled_at[0] == 0
    seen = {kind(b) for b in batches[:2]}
    first_of_kind = set()
    for step, lengths in enumerate(batches):
        if step >= 2 and kind(lengths) not in seen:
            first_of_kind.add(step)
        seen.add(kind(lengths))
    late = {s for s in compiled_at if s >= 2}
    assert late <= first_of_kind, (sorted(late - first_of_kind), [batches[s] for s in sorted(late)])
    assert len(compiled_at) <= 20, compiled_at

"""``bertsmith bench`` measures what it says: the two sides hold the same weights and give
the same outputs in every case, tokens are counted as real tokens, and the report is whole.

Speed itself is not asserted here (benchmarks are commands, not timed tests)."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from bertsmith.train.tools.bench import CASES, Batch, bench, lengths_for, train_flops
from tests.helpers import run_main


@pytest.fixture(scope="module")
def result():
    return bench(dtypes=("fp32",), size="tiny", layers=2, batch_tokens=700, repeats=1, report=lambda _: None)


def test_every_case_of_every_family_is_measured(result):
    got = {(r["family"], r["case"]) for r in result["rows"]}
    want = {(f, c) for f in ("modernbert", "bert") for c in CASES if not (f == "bert" and c == "long")}
    assert got == want


def test_both_sides_compute_the_same_thing(result):
    """fp32: hidden states (forward cases) and the MLM loss agree to float tolerance, so the
    weights were really shared and the unpadded/banded paths changed no result."""
    for r in result["rows"]:
        assert r["max_diff"] <= 2e-5, r


def test_figures_are_real_tokens_and_finite(result):
    peak = result["gemm_peak"]["fp32"]
    for r in result["rows"]:
        assert r["tokens"] >= (4096 if r["case"] == "long" else 700) or r["case"] == "fixed"
        assert r["ours_tok_s"] > 0 and r["hf_tok_s"] > 0
        assert math.isclose(r["ratio"], r["ours_tok_s"] / r["hf_tok_s"], rel_tol=1e-9)
        assert 0 < r["ours_flops_frac"] < 2 and 0 < r["hf_flops_frac"] < 2
        for side in ("ours", "hf"):
            assert math.isclose(r[f"{side}_flops_frac"], r[f"{side}_flop_s"] / peak, rel_tol=1e-9)
        # the same useful work on both sides: FLOP/s in the ratio of tokens/s
        assert math.isclose(r["ours_flop_s"] / r["hf_flop_s"], r["ratio"], rel_tol=1e-9)
        assert r["compiled"] is False
    assert peak > 1e9
    assert result["env"]["max_len"] == 128 and result["env"]["hf_attn"] == "sdpa"


def test_a_training_step_counts_three_forwards_with_the_head_on_masked_tokens():
    """``train_flops`` is ``train.utilisation``'s count (what a training run's MFU uses) for
    a batch of full sequences: 3 x (encoder + head x masked fraction) per token."""
    from bertsmith import registry
    from bertsmith.train.utilisation import train_flops_per_token

    spec = registry.compose("modernbert-tiny", [])
    gen = torch.Generator().manual_seed(0)
    b = Batch([128] * 6, spec.vocab_size, "cpu", gen)
    fraction = b.predict.sum().item() / b.tokens
    want = train_flops_per_token(spec, 128, fraction)["train"] * b.tokens
    assert math.isclose(train_flops(spec, b), want, rel_tol=1e-9)


def test_variable_batches_pad_for_transformers_and_pack_for_us():
    gen = torch.Generator().manual_seed(0)
    lengths = lengths_for("variable", 2000, 512, gen)
    assert all(64 <= n <= 512 for n in lengths) and sum(lengths) >= 2000
    assert all(16 <= n <= 128 for n in lengths_for("train", 2000, 128, gen))  # --size tiny
    assert len(set(lengths)) > 1
    b = Batch(lengths, 1000, "cpu", gen)
    assert b.ids.shape == (len(lengths), max(lengths)) and b.packed.shape == (sum(lengths),)
    assert torch.equal(b.packed, b.ids[b.mask.bool()])
    assert b.cu.tolist()[-1] == sum(lengths)
    rate = b.masked.sum().item() / sum(lengths)
    assert 0.25 < rate < 0.35  # 30% masking
    assert torch.equal(b.labels_packed, b.ids[b.masked])


def test_cli_json_and_refusals(tmp_path):
    out = tmp_path / "bench.json"
    r = run_main(  # in-process, as are the refusals below
        "bench", "--family", "bert", "--case", "fixed", "mlm", "--dtype", "fp32", "--size", "tiny", "--layers", "1", "--batch-tokens", "512", "--repeats", "1", "--json", "--out", str(out),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    printed = json.loads(r.stdout)  # the table went to stderr: stdout is JSON alone
    assert printed == json.loads(out.read_text())
    got = [(x["family"], x["case"], x["dtype"]) for x in printed["rows"]]
    assert got == [("bert", "fixed", "fp32"), ("bert", "train", "fp32")]  # mlm: train's old name
    assert "ours tok/s" in r.stderr
    if not torch.cuda.is_available():
        r = run_main("bench", "--device", "cuda")
        assert r.returncode == 2 and r.stderr.strip().startswith("error: bench: given --device cuda")
        assert "Traceback" not in r.stderr


def test_a_kernel_that_cannot_run_is_refused_before_any_work():
    from bertsmith.registry.errors import SpecError
    from bertsmith.train.tools.bench import check_kernel

    with pytest.raises(SpecError) as e:
        check_kernel("nope", ["bert"], "cpu", training=True)
    assert e.value.lines == ["--kernel: given 'nope', allowed: eager, sdpa, flex, flash_attn, xformers"]
    with pytest.raises(SpecError) as e:
        check_kernel("flex", ["modernbert"], "cpu", training=True)  # the train case trains
    assert e.value.lines[0].endswith("has a backward pass on cpu; allowed: eager, sdpa")
    check_kernel("flex", ["modernbert", "bert"], "cpu", training=False)  # forward cases only: fine


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")
def test_compiled_rows_compile_both_sides_and_agree():
    """``--compile yes``: both sides under torch.compile still compute the same thing
    (tests/test_compile.py holds compiled to eager for every family)."""
    rows = bench(
        families=("bert",), cases=("fixed",), dtypes=("fp32",), size="tiny", layers=1,
        batch_tokens=256, repeats=1, compile_modes=(True,), report=lambda _: None,
    )["rows"]  # fmt: skip
    assert [(r["case"], r["compiled"]) for r in rows] == [("fixed", True)]
    assert rows[0]["max_diff"] <= 2e-5 and rows[0]["ours_tok_s"] > 0

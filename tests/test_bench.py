"""``bertsmith bench`` measures what it says: the two sides hold the same weights and give
the same outputs in every case, tokens are counted as real tokens, and the report is whole.

Speed itself is not asserted here (benchmarks are commands, not timed tests)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from bertsmith.train.tools.bench import CASES, Batch, bench, lengths_for
from tests.helpers import run_main


@pytest.fixture(scope="module")
def result():
    return bench(dtypes=("fp32",), size="tiny", batch_tokens=700, repeats=1, report=lambda _: None)


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
    for r in result["rows"]:
        assert r["tokens"] >= (4096 if r["case"] == "long" else 700) or r["case"] == "fixed"
        assert r["ours_tok_s"] > 0 and r["hf_tok_s"] > 0
        assert math.isclose(r["ratio"], r["ours_tok_s"] / r["hf_tok_s"], rel_tol=1e-9)
        if r["case"] == "mlm":
            assert r["ours_flops_frac"] is None
        else:
            assert 0 < r["ours_flops_frac"] < 2 and 0 < r["hf_flops_frac"] < 2
    assert result["gemm_peak"]["fp32"] > 1e9


def test_variable_batches_pad_for_transformers_and_pack_for_us():
    gen = torch.Generator().manual_seed(0)
    lengths = lengths_for("variable", 2000, 512, gen)
    assert all(64 <= n <= 512 for n in lengths) and sum(lengths) >= 2000
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
        "bench", "--family", "bert", "--case", "fixed", "--dtype", "fp32", "--size", "tiny", "--batch-tokens", "512", "--repeats", "1", "--json", "--out", str(out),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    printed = json.loads(r.stdout)  # the table went to stderr: stdout is JSON alone
    assert printed == json.loads(out.read_text())
    assert [(x["family"], x["case"], x["dtype"]) for x in printed["rows"]] == [("bert", "fixed", "fp32")]
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
        check_kernel("flex", ["modernbert"], "cpu", training=True)  # the mlm case trains
    assert e.value.lines[0].endswith("has a backward pass on cpu; allowed: eager, sdpa")
    check_kernel("flex", ["modernbert", "bert"], "cpu", training=False)  # forward cases only: fine

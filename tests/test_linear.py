"""fp32 linear layers in oneDNN (blocks/linear.py) compute what torch's BLAS computes.

Values are checked against float64, forward and every gradient; the routing itself is checked
(the autograd node is oneDNN's where it should be, torch's elsewhere), so a test cannot pass
because nothing was routed."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from bertsmith import registry
from bertsmith.blocks import linear

pytestmark = pytest.mark.skipif(linear.backend() != "onednn", reason="fp32 linear layers use BLAS here")


def _grads(x, w, b, routed: bool):
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, b) if t is not None]
    with linear._Mode() if routed else contextlib.nullcontext():
        y = F.linear(*leaves)
    node = type(y.grad_fn).__name__
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(9)).to(y.dtype)
    return y, torch.autograd.grad((y * g).sum(), leaves), node


@pytest.mark.parametrize("shape", [(37, 48), (3, 11, 48), (1, 48)])
@pytest.mark.parametrize("bias", [True, False])
def test_forward_and_gradients_match_float64(shape, bias):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen)
    w = torch.randn(40, 48, generator=gen)
    b = torch.randn(40, generator=gen) if bias else None
    y, grads, node = _grads(x, w, b, routed=True)
    assert node == "_OneDnnLinearBackward"
    y64, grads64, _ = _grads(x.double(), w.double(), None if b is None else b.double(), routed=False)
    assert y.dtype == torch.float32 and y.shape == (*shape[:-1], 40)
    assert (y.double() - y64).abs().max() <= 1e-5 * y64.abs().max()
    for g, g64 in zip(grads, grads64, strict=True):
        assert g.shape == g64.shape and g.is_contiguous()
        assert (g.double() - g64).abs().max() <= 1e-5 * g64.abs().max()


def test_both_layouts_of_the_weight_gradient_agree():
    """dW is computed as dy^T x or (x^T dy)^T, whichever copies less: both, on both sides of
    the switch (more tokens than features, and fewer)."""
    gen = torch.Generator().manual_seed(1)
    for rows in (500, 3):
        x = torch.randn(rows, 24, generator=gen)
        w = torch.randn(64, 24, generator=gen)
        _, (_, dw), _ = _grads(x, w, None, routed=True)
        _, (_, dw64), _ = _grads(x.double(), w.double(), None, routed=False)
        assert (dw.double() - dw64).abs().max() <= 1e-5 * dw64.abs().max()


def test_only_fp32_cpu_outside_autocast_is_routed():
    x, w = torch.randn(5, 8), torch.randn(4, 8)
    with linear._Mode():
        assert type(F.linear(x.double(), w.double()).grad_fn).__name__ != "_OneDnnLinearBackward"
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert F.linear(x, w).dtype == torch.bfloat16  # autocast's bf16 matmul, untouched


def test_the_model_uses_it_and_gives_the_blas_result(monkeypatch):
    """A whole forward and backward: oneDNN vs BLAS within fp32 summation-order error."""
    spec = registry.compose("modernbert-tiny", ["model.n_layers=2"])
    torch.manual_seed(0)
    model = registry.build(spec).eval()
    ids = torch.randint(5, spec.vocab_size, (150,), generator=torch.Generator().manual_seed(2))
    cu = torch.tensor([0, 100, 150], dtype=torch.int32)
    out, calls = {}, []
    apply = linear._OneDnnLinear.apply
    monkeypatch.setattr(linear._OneDnnLinear, "apply", lambda *a: calls.append(1) or apply(*a))
    for choice in ("onednn", "blas"):
        monkeypatch.setattr(linear, "backend", lambda c=choice: c)
        model.zero_grad()
        logits = model(ids, cu_seqlens=cu, max_seqlen=100).logits
        logits.square().mean().backward()
        out[choice] = logits.detach(), [p.grad.clone() for p in model.parameters()]
        if choice == "onednn":  # every linear layer: 2 x (qkv, out, wi, wo) + head dense, decoder
            assert len(calls) == 10
    assert len(calls) == 10  # none with blas
    (a, ga), (b, gb) = out["onednn"], out["blas"]
    assert (a - b).abs().max() <= 1e-5 * b.abs().max()
    for x, y in zip(ga, gb, strict=True):
        assert (x - y).abs().max() <= 1e-4 * y.abs().max()


def test_an_unknown_setting_is_named(monkeypatch):
    monkeypatch.setenv("BERTSMITH_CPU_LINEAR", "fastest")
    linear.backend.cache_clear()
    try:
        with pytest.raises(
            ValueError, match="BERTSMITH_CPU_LINEAR: given 'fastest', allowed: auto, onednn, blas"
        ):
            linear.backend()
        monkeypatch.setenv("BERTSMITH_CPU_LINEAR", "onednn")
        linear.backend.cache_clear()
        assert linear.backend() == "onednn"  # this torch has it (the module's skip says so)
        monkeypatch.setattr(linear.torch.backends.mkldnn, "is_available", lambda: False)
        linear.backend.cache_clear()
        with pytest.raises(ValueError, match="given 'onednn', allowed: auto, blas"):
            linear.backend()  # asked for by name where torch lacks it: an error, not BLAS
        monkeypatch.undo()
        monkeypatch.setenv("BERTSMITH_CPU_LINEAR", "blas")
        linear.backend.cache_clear()
        assert linear.backend() == "blas"
        assert isinstance(linear.fast_linear(torch.device("cpu")), type(linear.contextlib.nullcontext()))
    finally:
        monkeypatch.delenv("BERTSMITH_CPU_LINEAR")
        linear.backend.cache_clear()

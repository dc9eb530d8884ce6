"""The CUDA kernels: flash_attn and xformers, plus sdpa and flex on CUDA, against float64.

Two halves. The CPU half runs everywhere: registering the CUDA-only kernels imports neither
package, validation refuses them in one line where they cannot run, what they declare in
``provides`` is what the rules hold them to, and the whole-model bound is checked with eager
on CPU. The GPU half (``gpu`` marker; skipped without CUDA, and per kernel when its package
is missing -- ``scripts/gpu-check`` fails on such a skip unless told the kernel may be missing)
compares each kernel with a float64 per-sequence reference and with eager in the same dtype
-- packed variable lengths, odd and even windows, ALiBi, dense bias, dropout statistics,
gradients (every kernel here, flex and compiled flex included, has a backward on CUDA) --
and whole models, widely initialised, against eager in float64.

Single attention calls in half precision are held to eager's own error: a kernel in bf16 may
be off the float64 reference by at most twice what eager in bf16 is off, plus a little
(flash-attn's test rule). Whole models are held to a bound derived from the precision they
compute in (``model_tolerance``: unit roundoff, layers, magnitude, reduction length).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import ROOT, randomize_, run_main

from bertsmith import registry
from bertsmith.blocks.kernel_cuda import FlashAttn, Xformers
from bertsmith.blocks.positional import AlibiBias, alibi_slopes
from bertsmith.blocks.stream import stream_from_cu_seqlens
from bertsmith.registry.core import REGISTRY
from bertsmith.registry.rules import availability_problems

CUDA = torch.cuda.is_available()
CUDA_ONLY = {"flash_attn": FlashAttn, "xformers": Xformers}


def cu_of(lengths: list[int], device="cpu") -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)


def _lines(found: list[str], kernel: str) -> list[str]:
    return [line for line in found if line.startswith(f"model.kernel: given {kernel!r}")]


# === CPU: what holds on any machine ==========================================================


def test_importing_blocks_imports_no_cuda_package():
    """``import blocks`` (and building a flash_attn model on meta) adds none of flash_attn,
    xformers or triton to what ``import torch`` alone imported."""
    code = textwrap.dedent(
        """
        import json, sys
        import torch
        before = set(sys.modules)
        from bertsmith import blocks, registry
        spec = registry.compose("modernbert-tiny", ["model/kernel=flash_attn"])
        with torch.device("meta"):
            registry.build(spec, init=False)
        spec = registry.compose("bert-tiny", ["model/kernel=xformers"])
        registry.build(spec, init=False)
        added = set(sys.modules) - before
        print(json.dumps(sorted(m for m in added if m.split(".")[0] in ("flash_attn", "xformers", "triton"))))
        """
    )
    p = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.splitlines()[-1]) == []


def test_declared_capabilities():
    """Pinned, so a change to what a CUDA kernel claims is deliberate (and tested on a GPU)."""
    assert REGISTRY.get("kernel", "flash_attn").provides == {
        "varlen",
        "window",
        "alibi",
        "dropout",
        "backward",
        "device:cuda",
    }
    assert REGISTRY.get("kernel", "xformers").provides == {"varlen", "dropout", "backward", "device:cuda"}


@pytest.mark.parametrize(
    "recipe, overrides, kernel, refused_for",
    [
        ("deberta-tiny", [], "flash_attn", "disentangled"),  # dense c2p/p2c bias: no
        ("mosaicbert-tiny", [], "flash_attn", None),  # ALiBi slopes: yes
        ("modernbert-tiny", [], "flash_attn", None),  # alternating windows: yes
        ("modernbert-tiny", [], "xformers", "alternating"),  # no bidirectional window
        ("mosaicbert-tiny", [], "xformers", "alibi"),  # no ALiBi
        ("deberta-tiny", [], "xformers", "disentangled"),
        ("bert-tiny", [], "xformers", None),  # global attention, learned positions: yes
        ("modernbert-tiny", ["model/attention=global"], "xformers", None),  # RoPE is q/k only
    ],
)
def test_rules_hold_the_cuda_kernels_to_what_they_declare(recipe, overrides, kernel, refused_for):
    spec = registry.compose(recipe, [*overrides, f"model/kernel={kernel}"])
    lines = _lines(registry.problems(spec), kernel)
    if refused_for is None:
        assert lines == []
    else:
        assert len(lines) == 1 and repr(refused_for) in lines[0], lines


@pytest.mark.parametrize("kernel", list(CUDA_ONLY))
def test_cpu_training_is_refused_as_a_device_problem_once(kernel):
    """On CPU the device rule speaks; the availability check adds no second line for it."""
    spec = registry.compose("bert-tiny", [f"model/kernel={kernel}"])
    found = registry.problems(spec, device="cpu", training=True)
    assert any("runs on cpu" in line for line in _lines(found, kernel)), found
    assert availability_problems(spec, "cpu") == []
    assert _lines(registry.problems(spec, device="cuda", training=True), kernel) == []  # backward, dropout


@pytest.mark.skipif(CUDA, reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("kernel, recipe", [("flash_attn", "modernbert-tiny"), ("xformers", "bert-tiny")])
def test_validate_without_cuda_is_one_line_exit_2(kernel, recipe):
    extra = {"flash_attn": "flash", "xformers": "xformers"}[kernel]
    p = run_main("validate", recipe, f"model/kernel={kernel}")  # in-process
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert p.stdout == "" and "Traceback" not in p.stderr
    (line,) = p.stderr.splitlines()
    assert line.startswith(f"error: model.kernel: given {kernel!r}, which needs CUDA"), line
    assert f"pip install 'bertsmith[{extra}]'" in line and "allowed here: eager, sdpa, flex" in line


@pytest.mark.parametrize("kernel", list(CUDA_ONLY))
def test_availability_is_checked_before_a_run_not_when_a_stored_spec_is_read(kernel, monkeypatch):
    """Here, with CUDA faked present and the package faked missing: ``check`` (validate,
    train) refuses in one line naming the package; ``check(build_meta=False)`` (load) reads on."""
    cls = CUDA_ONLY[kernel]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    spec = registry.compose("bert-tiny", [f"model/kernel={kernel}"])
    with pytest.raises(registry.SpecError) as e:
        registry.check(spec, device="cuda", training=True)
    (line,) = e.value.lines
    assert f"{cls.dist} is not installed" in line and f"bertsmith[{cls.extra}]" in line
    registry.check(spec, build_meta=False)


@pytest.mark.parametrize("kernel", list(CUDA_ONLY))
def test_a_call_on_cpu_tensors_raises_one_clear_error(kernel):
    model = registry.build(registry.compose("bert-tiny", [f"model/kernel={kernel}", "model.n_layers=1"]))
    ids = torch.randint(1, 100, (2, 5))
    with pytest.raises(RuntimeError, match=f"kernel '{kernel}' .*CUDA.*cpu tensors"):
        model(ids)
    if not CUDA:  # on a GPU machine other tests import them on purpose
        assert "flash_attn" not in sys.modules and "xformers" not in sys.modules


# === GPU: values against eager ===============================================================


@pytest.fixture(autouse=True, scope="module")
def _exact_fp32_matmuls():
    """fp32 means fp32 here: no TF32 in cuBLAS or cuDNN, whatever the machine's default."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


gpu = pytest.mark.gpu
H, D_HEAD = 4, 64
LENGTHS = [37, 5, 1, 64, 20, 2]  # a one-token and a two-token sequence among them
WINDOWS = [None, 1, 2, 7, 16, 33]  # odd and even; 33 -> ±16 reaches across most sequences
HALF_TOL = 2e-3  # added to twice eager's own bf16 error
FP32_TOL = 1e-4

# (registry name, params, id); flex compiled is the one a run would use on CUDA
KERNELS = [
    ("eager", {}, "eager"),
    ("sdpa", {}, "sdpa"),
    ("flex", {}, "flex"),
    ("flex", {"compile": True}, "flex-compiled"),
    ("flash_attn", {}, "flash_attn"),
    ("xformers", {}, "xformers"),
]


def _why_not(name: str) -> str | None:
    cls = CUDA_ONLY.get(name)
    return None if cls is None or not CUDA else cls.unavailable("cuda")


def _kernel_params(select=lambda name, params: True):
    out = []
    for name, params, kid in KERNELS:
        if not select(name, params):
            continue
        why = _why_not(name)
        marks = [gpu] + ([pytest.mark.skip(reason=f"{name}: {why}")] if why else [])
        out.append(pytest.param(name, params, marks=marks, id=kid))
    return out


def provides(name: str) -> frozenset[str]:
    return REGISTRY.get("kernel", name).provides


def make_kernel(name: str, params: dict):
    entry = REGISTRY.get("kernel", name)
    return entry.obj(**entry.params(**params).model_dump(exclude={"kind"}))


def compute_dtype(name: str, dtype: torch.dtype) -> torch.dtype:
    """The precision a kernel really computes in: flash-attn casts fp32 to bf16."""
    return torch.bfloat16 if name == "flash_attn" and dtype == torch.float32 else dtype


class DenseBias:
    """A learnable score bias in the per-batch layout ``[B, H, Lmax, Lmax]``."""

    def __init__(self, table):
        self.table = table

    def dense(self, stream, q, k):
        return self.table.to(q.dtype)


def reference(leaves, lengths, window, bias_kind, scale):
    """float64, one sequence at a time, differentiable in float64 copies of ``leaves``."""
    q, k, v, *table = leaves
    L = max(lengths)
    idx = torch.arange(L, device=q.device, dtype=torch.float64)
    dist = (idx[:, None] - idx[None, :]).abs()
    slopes = alibi_slopes(q.shape[1]).to(q.device, torch.float64)
    out, start = [], 0
    for b, n in enumerate(lengths):
        qs, ks, vs = (x[start : start + n].transpose(0, 1) for x in (q, k, v))
        scores = qs @ ks.transpose(-1, -2) * scale
        if bias_kind == "dense":
            scores = scores + table[0][b, :, :n, :n]
        if bias_kind == "alibi":
            scores = scores - slopes[:, None, None] * dist[:n, :n]
        if window is not None:
            scores = scores.masked_fill(dist[:n, :n] > window // 2, float("-inf"))
        out.append((torch.softmax(scores, -1) @ vs).transpose(0, 1))
        start += n
    return torch.cat(out)


def inputs(bias_kind, dtype, seed=0):
    """q, k, v [T, H, d] on CUDA in ``dtype`` (+ a float32 dense bias table), and the bias."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    T, L = sum(LENGTHS), max(LENGTHS)
    leaves = [torch.randn(T, H, D_HEAD, device="cuda", generator=g).to(dtype) for _ in range(3)]
    if bias_kind == "dense":
        table = torch.randn(len(LENGTHS), H, L, L, device="cuda", generator=g)
        return [*leaves, table], DenseBias(table)
    if bias_kind == "alibi":
        return leaves, AlibiBias(alibi_slopes(H))
    return leaves, None


def run(name, params, leaves, bias, window, dtype, stream, scale, weight):
    """Output and gradients (None without a backward) of one kernel on ``leaves`` in ``dtype``."""
    cast = [x.detach().to(dtype).requires_grad_() for x in leaves[:3]]
    cast += [x.detach().clone().requires_grad_() for x in leaves[3:]]
    b = DenseBias(cast[3]) if len(cast) > 3 else bias
    out = make_kernel(name, params)(*cast[:3], stream, window=window, bias=b, dropout_p=0.0, scale=scale)
    grads = torch.autograd.grad((out.float() * weight).sum(), cast) if _backward(name) else None
    return out, grads


def _backward(name: str) -> bool:
    return bool(provides(name) & {"backward", "backward:cuda"})


def _err(a, b) -> float:
    return (a.double() - b.double()).abs().max().item()


def _grid():
    cases = []
    for dtype in (torch.float32, torch.bfloat16):
        for window in WINDOWS:
            for bias_kind in (None, "alibi", "dense"):
                cases.append((dtype, window, bias_kind))
    return cases


def _small_grid():
    """Compiled flex recompiles per mask: a few cases, not the whole grid."""
    return [(torch.bfloat16, None, None), (torch.bfloat16, 7, "alibi"), (torch.float32, 16, None)]


def _case_params():
    out = []
    for p in _kernel_params():
        name, params = p.values
        grid = _small_grid() if params.get("compile") else _grid()
        for dtype, window, bias_kind in grid:
            cid = f"{p.id}-{str(dtype)[6:]}-window{window}-{bias_kind}"
            out.append(pytest.param(name, params, dtype, window, bias_kind, marks=p.marks, id=cid))
    return out


@pytest.mark.parametrize("name, params, dtype, window, bias_kind", _case_params())
def test_kernel_matches_reference_on_cuda(name, params, dtype, window, bias_kind):
    caps = provides(name)
    if window is not None and "window" not in caps:
        pytest.skip(f"{name} does not provide window")
    if bias_kind == "dense" and "bias" not in caps:
        pytest.skip(f"{name} does not provide bias")
    if bias_kind == "alibi" and not caps & {"bias", "alibi"}:
        pytest.skip(f"{name} does not provide alibi or bias")
    leaves, bias = inputs(bias_kind, dtype)
    stream = stream_from_cu_seqlens(cu_of(LENGTHS, "cuda"))
    scale = 0.7 / D_HEAD**0.5  # not the default, so a kernel that ignores it fails
    weight = torch.randn(leaves[0].shape, device="cuda", generator=torch.Generator("cuda").manual_seed(1))

    exact = [x.detach().double().requires_grad_() for x in leaves]
    ref = reference(exact, LENGTHS, window, bias_kind, scale)
    ref_grads = torch.autograd.grad((ref * weight.double()).sum(), exact)
    casts = name == "flash_attn" and dtype == torch.float32
    with pytest.warns(UserWarning, match="half precision") if casts else contextlib.nullcontext():
        out, grads = run(name, params, leaves, bias, window, dtype, stream, scale, weight)
    eager_out, eager_grads = run(
        "eager", {}, leaves, bias, window, compute_dtype(name, dtype), stream, scale, weight
    )

    assert out.shape == leaves[0].shape and out.dtype == dtype and out.device.type == "cuda"
    half = compute_dtype(name, dtype) != torch.float32
    tol = (lambda base: 2 * base + HALF_TOL) if half else (lambda base: FP32_TOL)
    err, base = _err(out, ref), _err(eager_out, ref)
    print(f"{name} forward: {err:.2e} (eager {base:.2e})")
    assert err <= tol(base), f"forward off by {err:.3g}; eager in the same dtype: {base:.3g}"
    if grads is None:
        return
    for what, g, e, r in zip(["q", "k", "v", "bias"], grads, eager_grads, ref_grads, strict=False):
        size = r.abs().max().item()
        err, base = _err(g, r) / size, _err(e, r) / size
        print(f"{name} d/d{what}: {err:.2e} (eager {base:.2e}, relative)")
        assert err <= tol(base), f"d/d{what} off by {err:.3g} (relative); eager: {base:.3g}"


@pytest.mark.parametrize("name, params", _kernel_params(lambda n, p: not p.get("compile")))
def test_kernel_never_crosses_sequences_on_cuda(name, params):
    """Changing every token of one sequence leaves the others' outputs bit for bit."""
    (q, k, v), _ = inputs(None, torch.bfloat16)
    stream = stream_from_cu_seqlens(cu_of(LENGTHS, "cuda"))
    kern = make_kernel(name, params)
    before = kern(q, k, v, stream)
    cu = cu_of(LENGTHS)
    s, e = int(cu[3]), int(cu[4])  # the longest sequence
    q2, k2, v2 = (x.clone() for x in (q, k, v))
    for x in (q2, k2, v2):
        x[s:e] = torch.randn(e - s, H, D_HEAD, device="cuda").to(x.dtype) * 10
    after = kern(q2, k2, v2, stream_from_cu_seqlens(cu_of(LENGTHS, "cuda")))
    others = torch.ones(q.shape[0], dtype=torch.bool, device="cuda")
    others[s:e] = False
    assert torch.equal(before[others], after[others])
    assert (before[~others] - after[~others]).abs().max() > 0.1


@pytest.mark.parametrize(
    "name, params", _kernel_params(lambda n, p: "dropout" in provides(n) and not p.get("compile"))
)
def test_kernel_dropout_on_cuda_is_unbiased_and_seeded(name, params):
    """Many copies of one sequence in one stream: each copy dropped differently, their mean
    tends to the output without dropout, and the same seed gives the same drops."""
    n, copies, p = 24, 4000, 0.3
    dtype = compute_dtype(name, torch.float32)
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(n, H, D_HEAD, device="cuda", generator=g).to(dtype) for _ in range(3))
    rep = [x.repeat(copies, 1, 1) for x in (q, k, v)]
    kern = make_kernel(name, params)
    clean = kern(q, k, v, stream_from_cu_seqlens(cu_of([n], "cuda"))).float()
    stream = stream_from_cu_seqlens(cu_of([n] * copies, "cuda"))
    torch.manual_seed(0)
    dropped = kern(*rep, stream, dropout_p=p).float().view(copies, n, H, D_HEAD)
    torch.manual_seed(0)
    again = kern(*rep, stream, dropout_p=p).float().view(copies, n, H, D_HEAD)
    assert torch.equal(dropped, again), "same seed, different dropout"
    assert (dropped[0] - clean).abs().max() > 0.05  # dropout happened
    assert (dropped[0] - dropped[1]).abs().max() > 0.05  # independently per copy
    bound = 6 * v.float().abs().max() * (p / (1 - p)) ** 0.5 / copies**0.5
    slack = 0.0 if dtype == torch.float32 else 1e-2  # bf16 rounding of each output
    assert (dropped.mean(0) - clean).abs().max() <= bound + slack


# --- whole models: eager in float64 is the reference ------------------------------------------

MODELS = {
    "modernbert-tiny": ("modernbert-tiny", []),  # RoPE, alternating windows 128 -> odd/even below
    "modernbert-tiny-oddwindow": ("modernbert-tiny", ["model.attention.window=33"]),
    "mosaicbert-tiny": ("mosaicbert-tiny", []),  # ALiBi, global
    "bert-tiny": ("bert-tiny", []),  # learned positions, global: every kernel can run it
}
MODEL_LENGTHS = [200, 131, 64, 17, 1]
UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float32: 2.0**-24}  # half the gap from 1 to the next value
HIDDEN_FACTOR, GRAD_FACTOR = 2, 4  # per layer; see test_model_on_cuda_matches_float64_eager


def widen_(model, seed: int = 0) -> None:
    """tests/test_parity.py's wide initialisation (``randomize_``: norm weights 1 + 0.1·N,
    everything else s·N), with s = 0.14·√(32 / d_model): the parity models are 32 wide, so
    each linear map has the same gain (0.14·√32 ≈ 0.8) here as there. At the default 0.02
    attention is near uniform and a wrong window or slope moves the hidden states by a few
    percent; at this spread a wrong window moves them by ~30% of their largest value. The
    parity tests' literal 0.14 at d_model 256 (gain 2.2) makes the network chaotic: eager in
    bf16 is then off float64 by 20% (hidden) to 80% (gradients), and no tolerance can tell a
    bug from rounding."""
    randomize_(model, seed=seed, scale=0.14 * (32 / model.spec.d_model) ** 0.5)


def model_tolerance(spec, dtype: torch.dtype, size: float, grads: bool) -> float:
    """Largest absolute error allowed against the float64 reference, for values whose largest
    magnitude is ``size``: ``factor · n_layers · size · (u + u32·√K)``.

    u is the unit roundoff of the precision the operands are rounded to (bf16 under autocast:
    2⁻⁸ ≈ 3.9e-3; fp32: 2⁻²⁴ ≈ 6e-8); u32·√K is fp32 accumulation over K terms (random-walk
    growth; K the longest reduction: max(d_model, d_ff, longest sequence) forward, the number
    of tokens too for weight gradients). Each layer adds a few such roundings on the residual
    stream, so the bound grows with ``n_layers``; the backward pass doubles the matmuls, so
    ``GRAD_FACTOR`` is twice ``HIDDEN_FACTOR``. Measured with eager and sdpa on CPU (bf16
    autocast and fp32 against float64, three seeds, these models and inputs), the per-layer
    constant was at most 0.67 (bf16 hidden), 1.15 (bf16 gradients), 0.09 and 0.21 (fp32): the
    factors 2 and 4 leave 3x (bf16) and 20x (fp32) of room for kernels that round or accumulate
    in another order, and stay well under what a wrong window does (≈ 0.3·size)."""
    K = max(spec.d_model, spec.d_ff, max(MODEL_LENGTHS), sum(MODEL_LENGTHS) if grads else 0)
    unit = UNIT_ROUNDOFF[dtype] + UNIT_ROUNDOFF[torch.float32] * K**0.5
    return (GRAD_FACTOR if grads else HIDDEN_FACTOR) * spec.n_layers * size * unit


def build_on_cuda(model_key: str, name: str, params: dict, state=None, device="cuda"):
    """The model on ``device`` in eval mode, widely initialised (``widen_``) or with ``state``."""
    recipe, overrides = MODELS[model_key]
    spec = registry.compose(recipe, [*overrides, f"model/kernel={name}"])
    spec = spec.model_copy(update={"kernel": REGISTRY.get("kernel", name).params(**params)})
    refused = registry.problems(spec, device=device)  # eval(): attention dropout is off
    if refused:  # the kernel cannot run this configuration; validation says so
        pytest.skip("; ".join(refused))
    model = registry.build(spec, init=False)
    if state is None:
        widen_(model)
    else:
        model.load_state_dict(state)
    return model.to(device).eval()  # dropout off; gradients still flow


def forward_and_grads(model, autocast: bool):
    """Hidden states at the real tokens (float64 for a float64 model, else fp32) and every
    parameter's gradient of a random projection of them."""
    g = torch.Generator().manual_seed(0)
    L = max(MODEL_LENGTHS)
    ids = torch.randint(1, model.spec.vocab_size, (len(MODEL_LENGTHS), L), generator=g)
    mask = (torch.arange(L)[None, :] < torch.tensor(MODEL_LENGTHS)[:, None]).long()
    device = next(model.parameters()).device
    ids, mask = (ids * mask).to(device), mask.to(device)
    model.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        h = model(ids, mask).last_hidden_state[mask.bool()]
    h = h if h.dtype == torch.float64 else h.float()
    w = torch.randn(h.shape, generator=g).to(device)
    (h * w).mean().backward()
    return h.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("model_key", list(MODELS))
@pytest.mark.parametrize("name, params", _kernel_params())
def test_model_on_cuda_matches_float64_eager(name, params, model_key):
    """Hidden states and every parameter's gradient, in fp32 and in bf16 autocast (flash_attn:
    bf16 only), against eager in float64 on the same widely drawn weights (``widen_``), within
    ``model_tolerance`` of the precision computed in. Eager in the same precision is run too and
    its error printed (and named in a failure): when it is out of bounds as well, the bound is
    the suspect, not the kernel. (Eager computes its softmax in fp32 even in float64: one fp32
    rounding of the probabilities, far under the fp32 bound.)"""
    if params.get("compile") and model_key != "modernbert-tiny":
        pytest.skip("compiled flex compiles for tens of seconds per mask: one model is enough")
    eager = build_on_cuda(model_key, "eager", {})
    other = build_on_cuda(model_key, name, params, state=eager.state_dict())
    exact = build_on_cuda(model_key, "eager", {}, state=eager.state_dict()).double()
    spec = exact.spec
    h_ref, g_ref = forward_and_grads(exact, autocast=False)
    assert all(g.dtype == torch.float64 for g in g_ref.values())
    for autocast in [True] if name == "flash_attn" else [False, True]:
        dtype = torch.bfloat16 if autocast else torch.float32
        h, grads = forward_and_grads(other, autocast)
        h_base, g_base = forward_and_grads(eager, autocast)
        assert grads.keys() == g_ref.keys()
        size = h_ref.abs().max().item()
        tol = model_tolerance(spec, dtype, size, grads=False)
        err, base = _err(h, h_ref), _err(h_base, h_ref)
        print(f"{model_key} {name} {str(dtype)[6:]} hidden: {err:.2e} (eager {base:.2e}, bound {tol:.2e})")
        assert err <= tol, f"{str(dtype)[6:]} hidden states off by {err:.3g} > {tol:.3g}; eager: {base:.3g}"
        worst = 0.0
        for p in g_ref:
            size = g_ref[p].abs().max().item()
            assert size > 0, f"zero gradient for {p}"
            tol = model_tolerance(spec, dtype, size, grads=True)
            err, base = _err(grads[p], g_ref[p]), _err(g_base[p], g_ref[p])
            worst = max(worst, err / tol)
            assert err <= tol, f"{str(dtype)[6:]} grad of {p} off by {err:.3g} > {tol:.3g}; eager: {base:.3g}"
        print(f"{model_key} {name} {str(dtype)[6:]} gradients: worst error {worst:.2f} of the bound")


def test_model_bound_holds_for_eager_on_cpu_and_catches_a_wrong_window():
    """The whole-model bound, checked where it can be here: eager on CPU in fp32 and in bf16
    autocast is within ``model_tolerance`` of itself in float64, and the same weights with
    another window (33 instead of 128) are far outside it: the bound tells rounding from a bug."""
    ref = build_on_cuda("modernbert-tiny", "eager", {}, device="cpu")
    state = ref.state_dict()
    spec = ref.spec
    h_ref, g_ref = forward_and_grads(ref.double(), autocast=False)
    model = build_on_cuda("modernbert-tiny", "eager", {}, state=state, device="cpu")
    for autocast, dtype in ((False, torch.float32), (True, torch.bfloat16)):
        h, grads = forward_and_grads(model, autocast)
        assert _err(h, h_ref) <= model_tolerance(spec, dtype, h_ref.abs().max().item(), grads=False)
        for p, g in g_ref.items():
            assert _err(grads[p], g) <= model_tolerance(spec, dtype, g.abs().max().item(), grads=True), p
    wrong = build_on_cuda("modernbert-tiny-oddwindow", "eager", {}, state=state, device="cpu")
    h_wrong, _ = forward_and_grads(wrong, autocast=False)
    bound = model_tolerance(spec, torch.bfloat16, h_ref.abs().max().item(), grads=False)
    assert _err(h_wrong, h_ref) > 3 * bound


def test_every_kernel_under_test_has_its_gradients_compared_on_cuda():
    """Each kernel the GPU half runs declares a backward on CUDA (flex: ``backward:cuda``), so
    ``run`` returns its gradients and ``test_kernel_matches_reference_on_cuda`` compares them
    with float64's; the whole-model test compares every parameter's gradient for each."""
    assert {name for name, _, _ in KERNELS} == {"eager", "sdpa", "flex", "flash_attn", "xformers"}
    for name, _, _ in KERNELS:
        assert _backward(name), f"{name} declares no backward on CUDA: its gradients go unchecked"
    assert "backward:cuda" in provides("flex") and "device:cuda" in provides("flex")


@gpu
def test_validate_on_cuda_agrees_with_what_is_installed():
    """On a GPU machine ``validate`` accepts flash_attn exactly when it imports here."""
    why = FlashAttn.unavailable("cuda")
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "bertsmith.train.cli",
            "validate",
            "modernbert-tiny",
            "model/kernel=flash_attn",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if why is None:
        assert p.returncode == 0, p.stderr
    else:
        assert p.returncode == 2 and len(p.stderr.splitlines()) == 1, p.stderr

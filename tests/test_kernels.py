"""Attention kernels agree: with an independent per-sequence reference, with each other
(forward and gradients), and between packed, padded and one-sequence-at-a-time input.

Which checks a kernel gets follows from what it declares in ``provides``: a kernel is held
to ``window``, ``bias``/``alibi``, ``backward`` and ``dropout`` exactly where it claims them,
and the validator must refuse a spec that needs a capability the kernel lacks.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from bertsmith import registry
from bertsmith.blocks.positional import AlibiBias, alibi_slopes
from bertsmith.blocks.stream import stream_from_cu_seqlens
from bertsmith.registry.core import REGISTRY, Requirement

TOL = 1e-5
ALL_KERNELS = ("eager", "sdpa", "flex")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: a second intra-op thread only adds synchronisation, which
    costs whole milliseconds per op when the cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _kernel_params():
    registered = REGISTRY.entries["kernel"]
    # anything new that runs on CPU is tested too; CUDA-only kernels: tests/test_gpu_kernels.py
    out = [k for k, e in registered.items() if k not in ALL_KERNELS and "device:cpu" in e.provides]
    for name in ALL_KERNELS:
        marks = () if name in registered else pytest.mark.skip(reason=f"kernel {name!r} is not registered")
        out.append(pytest.param(name, marks=marks, id=name))
    return out


# sdpa's fast paths forced on and off: banded windows and one-sequence-at-a-time global
# layers ("auto" picks them by cost, so short test sequences would otherwise never reach them)
VARIANTS = {
    "sdpa:band+split": ("sdpa", {"band": "always", "split": "always"}),
    "sdpa:padded": ("sdpa", {"band": "never", "split": "never"}),
}
KERNELS = _kernel_params() + [pytest.param(v, id=v) for v in VARIANTS]
OTHERS = [p for p in KERNELS if getattr(p, "values", (p,))[0] != "eager"]


def base_and_params(kernel: str) -> tuple[str, dict]:
    return VARIANTS.get(kernel, (kernel, {}))


def provides(kernel: str) -> frozenset[str]:
    return REGISTRY.get("kernel", base_and_params(kernel)[0]).provides


def has_backward_on(kernel: str, device: str) -> bool:
    caps = provides(kernel)
    return "backward" in caps or f"backward:{device}" in caps


def make_kernel(name: str):
    base, params = base_and_params(name)
    entry = REGISTRY.get("kernel", base)
    return entry.obj(**{**entry.params().model_dump(exclude={"kind"}), **params})


def require(kernel: str, *any_of: str) -> None:
    if not provides(kernel) & set(any_of):
        pytest.skip(f"kernel {kernel!r} does not provide {' or '.join(any_of)}")


# --- kernel level: an independent reference ----------------------------------------------

H, D_HEAD = 3, 8
SEQS = {
    "varied": [9, 5, 1, 12, 6],  # includes a one-token sequence
    "rectangular": [8, 8, 8],  # no padding at all in the per-batch layout
    "single": [13],
}
WINDOWS = [None, 1, 3, 4, 7]  # odd and even; all shorter than the longest sequence


def cu_of(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)


class DenseBias:
    """A learnable score bias in the per-batch layout ``[B, H, Lmax, Lmax]``."""

    def __init__(self, table: torch.Tensor):
        self.table = table

    def dense(self, stream, q, k):
        return self.table


def reference_attention(q, k, v, lengths, window, bias_of, scale):
    """float64, one sequence at a time; the window mask is built pair by pair."""
    out = []
    start = 0
    for b, n in enumerate(lengths):
        qs, ks, vs = (x[start : start + n].double().transpose(0, 1) for x in (q, k, v))  # [H, n, d]
        scores = qs @ ks.transpose(-1, -2) * scale
        if bias_of is not None:
            scores = scores + bias_of(b, n)
        allowed = torch.zeros(n, n, dtype=torch.bool)
        for i in range(n):
            for j in range(n):
                allowed[i, j] = window is None or abs(i - j) <= window // 2
        scores = scores.masked_fill(~allowed, float("-inf"))
        out.append((torch.softmax(scores, dim=-1) @ vs).transpose(0, 1))
        start += n
    return torch.cat(out)


def _inputs(lengths, bias_kind, seed=0):
    g = torch.Generator().manual_seed(seed)
    T, L = sum(lengths), max(lengths)
    q, k, v = (torch.randn(T, H, D_HEAD, generator=g).requires_grad_() for _ in range(3))
    if bias_kind == "dense":
        table = torch.randn(len(lengths), H, L, L, generator=g).requires_grad_()
        return (q, k, v), DenseBias(table), (lambda b, n: table[b, :, :n, :n].double()), [table]
    if bias_kind == "alibi":
        slopes = alibi_slopes(H)
        idx = torch.arange(L, dtype=torch.float64)
        dist = (idx[:, None] - idx[None, :]).abs()

        def bias_of(b, n):
            return -slopes.double()[:, None, None] * dist[:n, :n]

        return (q, k, v), AlibiBias(slopes), bias_of, []
    return (q, k, v), None, None, []


@pytest.mark.parametrize("bias_kind", [None, "dense", "alibi"])
@pytest.mark.parametrize("window", WINDOWS, ids=lambda w: f"window{w}")
@pytest.mark.parametrize("seqs", list(SEQS))
@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_matches_per_sequence_reference(kernel, seqs, window, bias_kind):
    if window is not None:
        require(kernel, "window")
    if bias_kind == "dense":
        require(kernel, "bias")
    if bias_kind == "alibi":
        require(kernel, "bias", "alibi")
    lengths = SEQS[seqs]
    (q, k, v), bias, bias_of, extra = _inputs(lengths, bias_kind)
    scale = 0.7 / math.sqrt(D_HEAD)  # not the default, so a kernel that ignores it fails
    stream = stream_from_cu_seqlens(cu_of(lengths))
    backward = has_backward_on(kernel, "cpu")
    args = (q, k, v) if backward else (q.detach(), k.detach(), v.detach())  # inference-only kernels
    out = make_kernel(kernel)(*args, stream, window=window, bias=bias, dropout_p=0.0, scale=scale)
    ref = reference_attention(q, k, v, lengths, window, bias_of, scale)
    assert out.shape == q.shape and out.dtype == torch.float32
    diff = (out.double() - ref).abs().max().item()
    print(f"kernel forward: {diff:.2e}")
    assert diff <= TOL, f"forward differs by {diff:.3g}"

    if not backward:
        return
    leaves = [q, k, v, *extra]
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad((out * weight).sum(), leaves)
    ref_grads = torch.autograd.grad((ref * weight.double()).sum(), leaves)
    for name, g, r in zip(["q", "k", "v", "bias"][: len(leaves)], grads, ref_grads, strict=True):
        diff = (g - r).abs().max().item()
        print(f"kernel grad: {diff:.2e}")
        assert diff <= TOL, f"d/d{name} differs by {diff:.3g}"


@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_never_crosses_sequences(kernel, window):
    """Changing every token of one sequence leaves the others' outputs bit for bit."""
    if window is not None:
        require(kernel, "window")
    lengths = SEQS["varied"]
    (q, k, v), *_ = _inputs(lengths, None)
    q, k, v = (x.detach() for x in (q, k, v))
    cu = cu_of(lengths)
    kern = make_kernel(kernel)
    before = kern(q, k, v, stream_from_cu_seqlens(cu), window=window)
    s, e = int(cu[3]), int(cu[4])  # the longest sequence
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    for x in (q2, k2, v2):
        x[s:e] = torch.randn(e - s, H, D_HEAD) * 10
    after = kern(q2, k2, v2, stream_from_cu_seqlens(cu), window=window)
    others = torch.ones(q.shape[0], dtype=torch.bool)
    others[s:e] = False
    assert torch.equal(before[others], after[others])
    assert (before[~others] - after[~others]).abs().max() > 0.1


@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_dropout_is_applied_and_unbiased(kernel):
    """Many copies of one sequence in one packed stream: each copy is dropped differently,
    and their mean tends to the output without dropout (inverted dropout scaling)."""
    require(kernel, "dropout")
    n, copies, p = 6, 3000, 0.3
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(n, H, D_HEAD, generator=g) for _ in range(3))
    stream = stream_from_cu_seqlens(cu_of([n] * copies))
    rep = [x.repeat(copies, 1, 1) for x in (q, k, v)]
    kern = make_kernel(kernel)
    clean = kern(q, k, v, stream_from_cu_seqlens(cu_of([n])), window=3)
    torch.manual_seed(0)
    dropped = kern(*rep, stream, window=3, dropout_p=p).view(copies, n, H, D_HEAD)
    assert (dropped[0] - clean).abs().max() > 0.05  # dropout happened
    assert (dropped[0] - dropped[1]).abs().max() > 0.05  # independently per copy
    # per element the dropped output has std <= |v|max * sqrt(p / (1-p)); 6 sigma over the mean
    bound = 6 * v.abs().max() * math.sqrt(p / (1 - p)) / math.sqrt(copies)
    assert (dropped.mean(0) - clean).abs().max() <= bound


# --- whole models: eager is the reference ------------------------------------------------

SMALL = ["model.n_layers=3", "model.vocab_size=97", "model.max_seq_len=64"]
CONFIGS = {
    "learned-global": ("bert-tiny", [*SMALL, "model.d_model=32", "model.n_heads=4", "model.d_ff=48"]),
    "rope-alternating-oddwindow": (
        "modernbert-tiny",
        [
            *SMALL,
            "model.d_model=32",
            "model.n_heads=4",
            "model.d_ff=40",
            "model.attention.window=7",
            "model.attention.global_every=2",
            "model.positional.theta=1000.0",
            "model.positional.local_theta=50.0",
        ],
    ),
    "rope-local-evenwindow": (
        "modernbert-tiny",
        [
            *SMALL,
            "model.d_model=32",
            "model.n_heads=4",
            "model.d_ff=40",
            "model/attention=local",
            "model.attention.window=6",
        ],
    ),
    "alibi-global": ("mosaicbert-tiny", [*SMALL, "model.d_model=48", "model.n_heads=6", "model.d_ff=40"]),
    "alibi-alternating-oddwindow": (
        "mosaicbert-tiny",
        [
            *SMALL,
            "model.d_model=48",
            "model.n_heads=6",
            "model.d_ff=40",
            "model/attention=alternating",
            "model.attention.window=5",
            "model.attention.global_every=2",
        ],
    ),
}
LENGTHS = [19, 12, 5, 1]


def build(config: str, kernel: str, state: dict | None = None):
    recipe, overrides = CONFIGS[config]
    base, params = base_and_params(kernel)
    settings = [f"model.kernel.{k}={v}" for k, v in params.items()]
    spec = registry.compose(recipe, [*overrides, f"model/kernel={base}", *settings])
    refused = registry.problems(spec, device="cpu")
    if refused:  # the kernel cannot run this configuration; validation says so
        pytest.skip("; ".join(refused))
    model = registry.build(spec)
    if state is None:
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():  # spread the weights so attention is far from uniform
            for name, p in model.named_parameters():
                noise = torch.randn(p.shape, generator=g)
                norm_weight = p.dim() == 1 and name.endswith("weight") and "norm" in name
                p.copy_(1 + 0.1 * noise if norm_weight else 0.14 * noise)
    else:
        model.load_state_dict(state)
    return model.eval()  # dropout off; gradients still flow


def batch(vocab: int, lengths=LENGTHS):
    g = torch.Generator().manual_seed(0)
    L = max(lengths)
    ids = torch.randint(1, vocab, (len(lengths), L), generator=g)
    mask = (torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids * mask, mask


def forward_and_grads(model, padded: bool):
    """Outputs in stream order (real tokens only) and the gradient of a fixed scalar loss
    with respect to every parameter."""
    ids, mask = batch(model.spec.vocab_size)
    real = mask.bool()
    model.zero_grad(set_to_none=True)
    track = has_backward_on(model.spec.kernel.kind, "cpu")
    with torch.set_grad_enabled(track):
        return _forward_and_grads(model, ids, mask, real, padded, track)


def _forward_and_grads(model, ids, mask, real, padded, track):
    if padded:
        out = model(ids, mask)
        h, logits = out.last_hidden_state[real], out.logits[real]
    else:
        cu = cu_of(mask.sum(1).tolist())
        out = model(ids[real], cu_seqlens=cu)
        h, logits = out.last_hidden_state, out.logits
    g = torch.Generator().manual_seed(1)
    loss = (h * torch.randn(h.shape, generator=g)).mean() + (
        logits * torch.randn(logits.shape, generator=g)
    ).mean()
    if track:
        loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()} if track else None
    return h.detach(), logits.detach(), grads


def _compare(a, b, what, tol=TOL):
    diff = (a - b).abs().max().item()
    print(f"{what}: {diff:.2e}")  # shown with -s
    assert diff <= tol, f"{what} differs by {diff:.3g}"
    return diff


@pytest.mark.parametrize("padded", [True, False], ids=["padded", "packed"])
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("kernel", OTHERS)
def test_model_kernel_matches_eager_forward_and_gradients(kernel, config, padded):
    eager = build(config, "eager")
    other = build(config, kernel, state=eager.state_dict())
    h0, l0, g0 = forward_and_grads(eager, padded)
    h1, l1, g1 = forward_and_grads(other, padded)
    _compare(h1, h0, "hidden states")
    _compare(l1, l0, "logits")
    if g1 is None:
        return  # inference-only on this device
    assert g0.keys() == g1.keys()
    for name in g0:
        assert g0[name] is not None and g1[name] is not None, f"no gradient for {name}"
        size = g0[name].abs().max().item()
        assert size > 0, f"zero gradient for {name}: the loss does not reach it"
        _compare(g1[name] / size, g0[name] / size, "grad (relative to its largest entry)")


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("kernel", KERNELS)
def test_packed_padded_and_one_at_a_time_agree(kernel, config):
    model = build(config, kernel)
    ids, mask = batch(model.spec.vocab_size)
    real = mask.bool()
    lengths = mask.sum(1).tolist()
    with torch.no_grad():
        padded = model(ids, mask)
        packed = model(ids[real], cu_seqlens=cu_of(lengths))
        alone = [model(ids[b : b + 1, :n]) for b, n in enumerate(lengths)]
    h_alone = torch.cat([o.last_hidden_state[0] for o in alone])
    l_alone = torch.cat([o.logits[0] for o in alone])
    _compare(packed.last_hidden_state, padded.last_hidden_state[real], "packed vs padded hidden")
    _compare(packed.logits, padded.logits[real], "packed vs padded logits")
    _compare(packed.last_hidden_state, h_alone, "packed vs one-at-a-time hidden")
    _compare(packed.logits, l_alone, "packed vs one-at-a-time logits")
    # padding positions of the padded output carry nothing
    assert torch.count_nonzero(padded.last_hidden_state[~real]) == 0


# --- validation: a kernel is refused where it cannot honour a requirement ----------------


def _spec(recipe: str = "modernbert-tiny", overrides=()):
    return registry.compose(recipe, list(overrides))


def _kernel_spec(spec, kernel: str):
    return spec.model_copy(update={"kernel": REGISTRY.get("kernel", kernel).params()})


def _kernel_lines(found: list[str], kernel: str) -> list[str]:
    return [line for line in found if line.startswith("model.kernel:") and repr(kernel) in line]


def _requirement_cases():
    """(entry, requirement, a spec that chooses the entry) for every registered entry that
    needs something of the kernel."""
    base = _spec()
    cases = []
    for entry in REGISTRY:
        for req in entry.requires:
            if req.slot != "kernel" or entry.slot == "kernel":
                continue
            try:
                spec = base.model_copy(update={entry.slot: entry.params()})
            except Exception:  # an entry whose params have no defaults: not generic enough
                continue
            if req.when is None or req.when(spec):
                cases.append(pytest.param(entry, req, spec, id=f"{entry.slot}-{entry.name}"))
    return cases


def test_requirement_cases_cover_known_needs():
    ids = {c.id for c in _requirement_cases()}
    assert {"positional-alibi", "attention-local", "attention-alternating"} <= ids


@pytest.mark.parametrize("kernel", list(REGISTRY.entries["kernel"]))
@pytest.mark.parametrize("entry, req, spec", _requirement_cases())
def test_registered_kernels_against_requirements(entry, req, spec, kernel):
    """A kernel is accepted exactly when it provides one of the required capabilities."""
    found = registry.problems(_kernel_spec(spec, kernel))
    capable = bool(provides(kernel) & set(req.any_of))
    assert bool(_kernel_lines(found, kernel)) == (not capable), found


@pytest.fixture
def crippled(monkeypatch):
    """Replace the sdpa entry, for this test only, by one that lacks ``caps``."""

    def make(*caps: str) -> str:
        entry = REGISTRY.get("kernel", "sdpa")
        assert entry.provides & set(caps)
        monkeypatch.setitem(
            REGISTRY.entries["kernel"],
            "sdpa",
            dataclasses.replace(entry, provides=entry.provides - set(caps)),
        )
        assert not REGISTRY.get("kernel", "sdpa").provides & set(caps)
        return "sdpa"

    return make


LOCAL = ["model/attention=local", "model.attention.window=8"]


@pytest.mark.parametrize(
    "caps, recipe, overrides, kwargs",
    [
        (("window",), "modernbert-tiny", LOCAL, {}),
        (("window",), "modernbert-tiny", [], {}),  # alternating: has local layers
        (("bias", "alibi"), "mosaicbert-tiny", [], {}),
        (("backward",), "bert-tiny", [], {"training": True}),
        (("dropout",), "bert-tiny", [], {"training": True}),  # bert has attention dropout
        (("device:cuda",), "bert-tiny", [], {"device": "cuda"}),
        (("device:cpu",), "bert-tiny", [], {"device": "cpu"}),
    ],
    ids=["local", "alternating", "alibi", "backward", "dropout", "cuda", "cpu"],
)
def test_validation_refuses_a_kernel_without_a_needed_capability(crippled, caps, recipe, overrides, kwargs):
    spec = _spec(recipe, [*overrides, "model/kernel=sdpa"])
    assert registry.problems(spec, **kwargs) == []  # the real sdpa is fine
    kernel = crippled(*caps)
    found = registry.problems(spec, **kwargs)
    lines = _kernel_lines(found, kernel)
    assert len(lines) == 1, found
    assert "allowed:" in lines[0] and "eager" in lines[0]  # says what would work instead
    with pytest.raises(registry.SpecError):
        registry.check(spec, **kwargs)


def test_validation_ignores_capabilities_a_spec_does_not_need(crippled):
    """No false alarms: a global-attention spec with learned positions, checked for
    inference, needs no window, bias, backward or dropout."""
    spec = _spec("bert-tiny", ["model/kernel=sdpa"])
    crippled("window", "bias", "backward", "dropout")
    assert registry.problems(spec) == []
    assert registry.problems(spec, training=True) != []
    spec_no_dropout = _spec("bert-tiny", ["model/kernel=sdpa", "model.dropout.attention=0.0"])
    lines = registry.problems(spec_no_dropout, training=True)
    assert len(lines) == 1 and "backward" in lines[0]


@pytest.mark.parametrize("kernel", list(REGISTRY.entries["kernel"]))
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_training_on_a_device_needs_backward_there(kernel, device):
    spec = _kernel_spec(_spec("modernbert-tiny", ["model/attention=global"]), kernel)  # no window needed
    found = registry.problems(spec, device=device, training=True)
    able = f"device:{device}" in provides(kernel) and has_backward_on(kernel, device)
    assert (not _kernel_lines(found, kernel)) == able, found


def test_requirement_objects_are_what_the_entries_declare():
    """The machinery reads entries' declarations; check the ones the kernels are held to."""
    alibi = REGISTRY.get("positional", "alibi").requires
    assert any(r.slot == "kernel" and set(r.any_of) == {"bias", "alibi"} for r in alibi)
    for name in ("local", "alternating"):
        reqs = REGISTRY.get("attention", name).requires
        assert any(r.slot == "kernel" and r.any_of == ("window",) for r in reqs)
    assert all(isinstance(r, Requirement) for e in REGISTRY for r in e.requires)


@pytest.mark.parametrize("config", ["rope-alternating-oddwindow", "alibi-global"])
def test_bf16_autocast_keeps_norms_in_fp32_and_stays_close(config):
    """CPU bf16 autocast runs the projections in bf16, but every norm sees and returns the
    fp32 residual stream, so the result stays within bf16 rounding of the fp32 model."""
    model = build(config, "sdpa")
    ids, mask = batch(model.spec.vocab_size)
    norm_dtypes = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: norm_dtypes.append(out.dtype))
        for name, m in model.named_modules()
        if "norm" in name.split(".")[-1] and not isinstance(m, torch.nn.Identity)
    ]
    with torch.no_grad():
        ref = model(ids, mask).last_hidden_state
        norm_dtypes.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(ids, mask).last_hidden_state
    for h in hooks:
        h.remove()
    assert norm_dtypes and set(norm_dtypes) == {torch.float32}
    real = mask.bool()
    rel = ((low.float() - ref)[real].norm() / ref[real].norm()).item()
    print(f"bf16 autocast relative error: {rel:.2e}")
    assert 0 < rel < 2e-2  # bf16 did happen, and stayed close

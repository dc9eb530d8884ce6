"""``bertsmith bench``: our model against the transformers model with the same weights.

In one process, per family (ModernBERT, BERT) and dtype: a transformers masked-LM model is
made with random weights and the shape asked for (the family's ``bench_shapes`` and
``bench_config``, ``train/interop/<family>.py``), saved, and imported (``import-hf``), so
both sides hold identical weights. Then each case times both, interleaved::

    fixed     B × 512 tokens, every sequence full             forward (inference mode)
    variable  lengths uniform in 64..512: padded for          forward
              transformers, packed (cu_seqlens) for us
    long      4096-token sequences, window 128 (ModernBERT)   forward
    train     variable lengths, 30% masked: forward, loss,    training step
              backward, AdamW step (transformers with
              sparse_prediction where it has it)

``max_len`` is 512, or 128 at ``--size tiny`` (the main job's shape and sequence length; its
batch, 16 x 128 tokens, is the default there). With ``compiled=True`` both sides run under
``torch.compile(dynamic=True)`` (compile time is excluded: one extra warm-up call).

Reported per case: real tokens/s each side and their ratio, peak memory above the case's
start (CPU: resident set sampled every 2 ms; CUDA: the allocator's peak), model FLOP/s —
useful FLOPs from ``registry.cost`` over real tokens (a training step: 3 x the forward, with
the head over the masked tokens, as ``train.utilisation`` counts them) — and that as a
fraction of a square GEMM's rate measured in the same process for the dtype (MFU), and the
largest difference between the two sides' outputs (hidden states, or the loss).
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from bertsmith.train.jobs import PeakRSS
from bertsmith.train.tools.bench_cases import ALIASES, CASES
from bertsmith.train.utilisation import gemm_peak, sync

LONG, WINDOW, MASK_RATE = 4096, 128, 0.3


@dataclass
class Row:
    """One case of one family at one dtype."""

    family: str
    case: str
    dtype: str
    compiled: bool
    tokens: int
    ours_tok_s: float
    hf_tok_s: float
    ratio: float
    ours_peak_mb: float
    hf_peak_mb: float
    ours_flop_s: float
    hf_flop_s: float
    ours_flops_frac: float
    hf_flops_frac: float
    max_diff: float


def max_len_for(size: str) -> int:
    """The longest sequence of the fixed, variable and train cases at ``size``."""
    return 128 if size == "tiny" else 512


def hf_pair(family: str, size: str, layers: int | None, kernel: str, device: str, hf_attn: str = "sdpa"):
    """(transformers masked-LM model with attention ``hf_attn``, our model with the same
    weights), both in eval mode."""
    from transformers import AutoModelForMaskedLM

    from bertsmith import registry
    from bertsmith.train.interop import FAMILIES
    from bertsmith.train.interop.hf import import_hf

    shape = dict(FAMILIES[family].bench_shapes[size])
    if layers is not None:
        shape["num_hidden_layers"] = layers
    cfg = FAMILIES[family].bench_config(shape, WINDOW)
    torch.manual_seed(0)
    hf = AutoModelForMaskedLM.from_config(cfg, attn_implementation=hf_attn)
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = import_hf(tmp, None, name=f"{family}-{size}")
    if kernel != ours.spec.kernel.kind:
        spec = ours.spec.model_copy(update={"kernel": registry.REGISTRY.get("kernel", kernel).params()})
        state = ours.state_dict()
        ours = registry.build(spec, init=False)
        ours.load_state_dict(state)
    return hf.to(device).eval(), ours.to(device).eval()


def lengths_for(case: str, batch_tokens: int, max_len: int, gen: torch.Generator) -> list[int]:
    """Sequence lengths of one batch: about ``batch_tokens`` real tokens."""
    if case == "fixed":
        return [max_len] * max(1, batch_tokens // max_len)
    if case == "long":
        return [LONG] * max(1, batch_tokens // LONG)
    out: list[int] = []
    while sum(out) < batch_tokens:  # uniform in max_len/8 .. max_len (64..512)
        out.append(int(torch.randint(max_len // 8, max_len + 1, (1,), generator=gen)))
    return out


class Batch:
    """One batch in both layouts: padded ``[B, L]`` for transformers, packed for us."""

    def __init__(self, lengths: list[int], vocab: int, device: str, gen: torch.Generator):
        B, L = len(lengths), max(lengths)
        self.lengths = lengths
        self.tokens = sum(lengths)
        self.mask = (torch.arange(L)[None] < torch.tensor(lengths)[:, None]).long()
        self.ids = torch.randint(5, vocab, (B, L), generator=gen) * self.mask
        self.masked = (torch.rand(B, L, generator=gen) < MASK_RATE) & self.mask.bool()
        real = self.mask.bool()
        self.packed = self.ids[real].to(device)
        self.cu = torch.tensor(
            [0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device
        )
        self.predict = self.masked[real].to(device)
        self.labels_packed = self.packed[self.predict]
        self.ids, self.mask, self.masked = self.ids.to(device), self.mask.to(device), self.masked.to(device)
        self.labels = torch.where(self.masked, self.ids, torch.full_like(self.ids, -100))
        self.same_gemm = False  # transformers in bertsmith's CPU GEMM path too (_hf_gemm)


def _libc():
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") else None
    except OSError:  # not glibc
        return None


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def _return_freed_memory() -> None:
    """Make glibc hand large freed blocks back to the OS at once, so resident memory follows
    what tensors use (by default malloc raises its mmap threshold and keeps freed memory,
    and a later peak reusing it would not show). Only while memory is measured: see
    ``keep_freed_memory``."""
    if (libc := _libc()) is not None:  # else: not glibc, the figures may read low
        libc.mallopt(M_MMAP_THRESHOLD, 256 * 1024)  # fixed, so no longer adaptive
        libc.malloc_trim(0)


def keep_freed_memory() -> None:
    """Back to what a long-running process settles at: blocks up to glibc's largest dynamic
    mmap threshold (32 MiB on 64-bit) reused from the heap. With the 256 KiB threshold every
    activation is a fresh mmap, zero-filled page by page on first touch, which slowed the
    timed steps by up to 2x (modernbert-tiny's training step)."""
    if (libc := _libc()) is not None:
        libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20)
        libc.mallopt(M_TRIM_THRESHOLD, 64 * 2**20)


class PeakMemory:
    """Peak memory above the start of the block, in MB (CPU RSS sampled; CUDA allocator)."""

    def __init__(self, device: str):
        self.device = device

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            _return_freed_memory()
            self.rss = PeakRSS(interval=0.002).__enter__()
            self.start = self.rss.max_bytes
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            self.rss.__exit__(*exc)
            peak = self.rss.max_bytes
            keep_freed_memory()
        self.mb = max(0, peak - self.start) / 2**20


def forward_flops(spec, lengths: list[int]) -> float:
    """Useful forward FLOPs of the encoder body over the real tokens of a batch."""
    from bertsmith.registry.costs import cost

    per_len = {n: cost(spec, n)["flops_per_token"]["encoder"] for n in set(lengths)}
    return float(sum(per_len[n] * n for n in lengths))


def train_flops(spec, batch: Batch) -> float:
    """Useful FLOPs of one training step: 3 x (the encoder over the real tokens + the MLM
    head over the masked ones), as ``train.utilisation`` counts a training run's."""
    from bertsmith.registry.costs import cost

    head = cost(spec, max(batch.lengths))["flops_per_token"]["head"]
    return 3 * (forward_flops(spec, batch.lengths) + head * int(batch.predict.sum()))


def run_case(case, hf, ours, batch: Batch, device, autocast, repeats: int, compiled: bool = False):
    """(ours seconds, hf seconds, ours MB, hf MB, max |difference|) for one case."""
    if case == "train":
        steps = {"ours": ours_mlm_step(ours, batch, compiled), "hf": _hf_mlm_step(hf, batch, compiled)}
    else:
        steps = {
            "ours": _ours_forward(_compiled(ours.base, compiled), batch, case),
            "hf": _hf_forward(_compiled(hf.base, compiled), batch),
        }
    peaks, outs = {}, {}
    for name, step in steps.items():  # warm-up (compiling), memory, and the outputs to compare
        if compiled:
            with autocast():
                step()
        with autocast(), PeakMemory(device) as mem:
            outs[name] = step()
        peaks[name] = mem.mb
    times = interleaved(steps, repeats, device, autocast)
    diff = (outs["ours"].float() - outs["hf"].float()).abs().max().item()
    ours_s, hf_s = (statistics.median(times[k]) for k in ("ours", "hf"))
    return ours_s, hf_s, peaks["ours"], peaks["hf"], diff


def interleaved(steps: dict, repeats: int, device: str, autocast=nullcontext, clock=time.perf_counter):
    """Seconds of each of ``steps`` (name: callable) per round, ``repeats`` rounds, each
    calling every step once in turn (A B C A B C ...), so drift in the machine's speed hits
    all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            sync(device)
            t = clock()
            with autocast():
                step()
            sync(device)
            times[name].append(clock() - t)
    return times


def _compiled(model, compiled: bool):
    """``model`` under ``torch.compile`` as training runs it (dynamic shapes), or as it is."""
    return torch.compile(model, dynamic=True) if compiled else model


def _ours_forward(model, batch: Batch, case: str):
    def step():
        with torch.inference_mode():
            if case == "fixed":  # the same padded call transformers gets; nothing to unpad
                return model(batch.ids, batch.mask).last_hidden_state[batch.mask.bool()]
            return model(batch.packed, cu_seqlens=batch.cu, max_seqlen=max(batch.lengths)).last_hidden_state

    return step


def _hf_forward(model, batch: Batch):
    def step():
        with torch.inference_mode(), _hf_gemm(batch):
            return model(input_ids=batch.ids, attention_mask=batch.mask).last_hidden_state[batch.mask.bool()]

    return step


def _hf_gemm(batch: Batch):
    """With ``same_gemm``, transformers' linear layers run in bertsmith's GEMM path too
    (``blocks/linear.py``), so the ratio measures the models and not the GEMM library."""
    from bertsmith.blocks.linear import fast_linear

    return fast_linear(batch.ids.device) if batch.same_gemm else nullcontext()


def _train_step(model, loss_fn):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)

    def step():
        model.train()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        opt.step()
        model.eval()
        return loss.detach()

    return step


def ours_mlm_step(model, batch: Batch, compiled: bool = False):
    run = _compiled(model, compiled)

    def loss():
        out = run(batch.packed, cu_seqlens=batch.cu, max_seqlen=max(batch.lengths), predict=batch.predict)
        logits = out.logits
        if logits.shape[0] != batch.labels_packed.shape[0]:  # a dense head decoded every token
            logits = logits[batch.predict]
        return torch.nn.functional.cross_entropy(logits.float(), batch.labels_packed)

    return _train_step(model, loss)


def _hf_mlm_step(model, batch: Batch, compiled: bool = False):
    run = _compiled(model, compiled)

    def loss():
        with _hf_gemm(batch):
            return run(input_ids=batch.ids, attention_mask=batch.mask, labels=batch.labels).loss

    return _train_step(model, loss)


def bench(
    families=("modernbert", "bert"),
    cases=CASES,
    dtypes=("fp32", "bf16"),
    size: str = "base",
    layers: int | None = None,
    batch_tokens: int | None = None,
    repeats: int = 3,
    kernel: str = "sdpa",
    device: str = "cpu",
    compile_modes=(False,),
    hf_attn: str = "sdpa",
    same_gemm: bool = False,
    report=print,
) -> dict:
    """Run every (family, dtype, compiled, case); returns ``{"env", "gemm_peak", "rows"}``.
    Each row is passed to ``report`` as a table line as soon as it is measured.
    ``batch_tokens`` None: 2048 at ``size="tiny"`` (the main job's batch), else 4096."""
    from transformers.utils import logging as hf_logging

    from bertsmith.train.interop import FAMILIES

    hf_logging.disable_progress_bar()
    batch_tokens = batch_tokens or (2048 if size == "tiny" else 4096)
    max_len = max_len_for(size)
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peaks = {d: gemm_peak(dt[d], device) for d in dtypes}
    rows = []
    for family in families:
        hf, ours = hf_pair(family, size, layers, kernel, device, hf_attn)
        hf.base = getattr(hf, hf.base_model_prefix)
        ours.base = type(ours)(ours.encoder, None)
        gen = torch.Generator().manual_seed(0)
        for d in dtypes:
            for compiled in compile_modes:
                for case in cases:
                    if case == "long" and not FAMILIES[family].bench_long:
                        continue  # e.g. BERT's learned positions stop at 512
                    lengths = lengths_for(case, batch_tokens, max_len, gen)
                    batch = Batch(lengths, ours.spec.vocab_size, device, gen)
                    batch.same_gemm = same_gemm
                    row = measure(family, case, d, hf, ours, batch, device, peaks[d], repeats, compiled)
                    rows.append(row)
                    report(format_row(row))
                if compiled:
                    torch._dynamo.reset()  # each row compiles afresh; no cache grows across rows
        del hf, ours
    return {
        "env": {
            **environment(device, size, layers, batch_tokens, kernel, hf_attn, max_len),
            "same_gemm": same_gemm,
        },
        "gemm_peak": peaks,
        "rows": [asdict(r) for r in rows],
    }


def measure(
    family, case, dtype, hf, ours, batch: Batch, device, peak: float, repeats: int, compiled=False
) -> Row:
    """Time one case on both sides and make its row."""
    if dtype == "fp32":
        autocast = nullcontext
    else:
        autocast = lambda: torch.autocast(device, dtype=torch.bfloat16)  # noqa: E731
    ours_s, hf_s, ours_mb, hf_mb, diff = run_case(case, hf, ours, batch, device, autocast, repeats, compiled)
    flops = train_flops(ours.spec, batch) if case == "train" else forward_flops(ours.spec, batch.lengths)
    rate = [flops / s for s in (ours_s, hf_s)]
    n = batch.tokens
    return Row(
        family, case, dtype, compiled, n, n / ours_s, n / hf_s, hf_s / ours_s, ours_mb, hf_mb,
        *rate, *(r / peak for r in rate), diff,
    )  # fmt: skip


def environment(device, size, layers, batch_tokens, kernel, hf_attn="sdpa", max_len=512) -> dict:
    import transformers

    from bertsmith.blocks.linear import backend

    env = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": device,
        "threads": torch.get_num_threads(),
        "cpu_linear": backend() if device == "cpu" else None,  # fp32 linear layers: onednn or blas
        "cpu": platform.processor() or platform.machine(),
        "size": size,
        "layers": layers,
        "batch_tokens": batch_tokens,
        "max_len": max_len,
        "kernel": kernel,
        "hf_attn": hf_attn,
    }
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
    return env


HEADER = (
    f"{'family':<11}{'case':<9}{'dtype':<6}{'comp':<5}{'tokens':>7}{'ours tok/s':>12}{'hf tok/s':>11}"
    f"{'ratio':>7}{'ours MB':>9}{'hf MB':>8}{'ours GF/s':>10}{'ours MFU':>9}{'hf MFU':>7}{'max|Δ|':>9}"
)


def format_row(r: Row) -> str:
    return (
        f"{r.family:<11}{r.case:<9}{r.dtype:<6}{'yes' if r.compiled else 'no':<5}{r.tokens:>7}"
        f"{r.ours_tok_s:>12,.0f}{r.hf_tok_s:>11,.0f}{r.ratio:>6.2f}×{r.ours_peak_mb:>9,.0f}"
        f"{r.hf_peak_mb:>8,.0f}{r.ours_flop_s / 1e9:>10,.1f}{r.ours_flops_frac:>9.0%}"
        f"{r.hf_flops_frac:>7.0%}{r.max_diff:>9.1e}"
    )


def check_kernel(kernel: str, families, device: str, training: bool) -> None:
    """Refuse, before any work, a kernel that is unknown or cannot run a family's model here."""
    from bertsmith import registry
    from bertsmith.registry.errors import SpecError, choice

    names = registry.REGISTRY.names("kernel")
    if kernel not in names:
        raise SpecError(choice("--kernel", kernel, names))
    for family in families:
        spec = registry.compose(f"{family}-tiny", [f"model/kernel={kernel}"])
        registry.check(spec, device=device, training=training)


def main(args) -> None:
    """The CLI entry (``bertsmith bench``)."""
    from bertsmith.registry.errors import SpecError

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SpecError("bench: given --device cuda, allowed: cpu (torch sees no CUDA device here)")
    cases = list(dict.fromkeys(ALIASES.get(c, c) for c in args.case))
    check_kernel(args.kernel, args.family, args.device, training="train" in cases)
    out = sys.stderr if args.json else sys.stdout  # JSON alone on stdout

    def report(line: str) -> None:
        print(line, file=out, flush=True)

    report(HEADER)
    result = bench(
        families=args.family,
        cases=cases,
        dtypes=args.dtype,
        size=args.size,
        layers=args.layers,
        batch_tokens=args.batch_tokens,
        repeats=args.repeats,
        kernel=args.kernel,
        device=args.device,
        compile_modes={"no": (False,), "yes": (True,), "both": (False, True)}[args.compile],
        hf_attn=args.hf_attn,
        same_gemm=args.same_gemm,
        report=report,
    )
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        peaks = ", ".join(f"{k} {v / 1e12:.2f} TFLOP/s" for k, v in result["gemm_peak"].items())
        print(
            f"GEMM peak measured here: {peaks}; ratio = ours tok/s ÷ transformers tok/s; "
            "GF/s = model GFLOP/s (train: 3 x forward); MFU = that ÷ the dtype's GEMM peak"
        )
        env = result["env"]
        if env.get("cpu_linear") == "onednn" and not env["same_gemm"]:
            print(
                "bertsmith's fp32 linear layers run in oneDNN here, transformers' in torch's BLAS; "
                "--same-gemm runs both in oneDNN (the models alone)"
            )

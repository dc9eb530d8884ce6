"""Throughput and utilisation: model FLOP/s from the cost model and MFU against the device's
peak (Chowdhery et al. 2022, "PaLM", appendix B: model FLOPs utilisation).

    train FLOPs per token = 3 x forward          (backward = 2 x forward)
    forward FLOPs per token = encoder + f x head  (registry.cost at data.seq_len)
    model FLOP/s = train FLOPs per token x tokens/s
    MFU = model FLOP/s / peak FLOP/s

``encoder`` is ``registry.cost``'s count: every linear layer (2 FLOPs per multiply-add) and
attention's scores and weighted sum over the keys a query sees at ``seq_len`` (a window
counts its window; packed rows are counted as if each row were one sequence of ``seq_len``,
so packing several documents into a row overstates attention a little). Embedding lookups,
norms and activations are not counted. ``head`` is the MLM head's transform and decoder: a
sparse head (``model/head=mlm`` with ``sparse=true``, ModernBERT's) decodes only the masked
tokens, so ``f`` is ``objective.mask_ratio``; a dense head decodes every token (``f = 1``).
Activation checkpointing's recomputation is not counted (model FLOPs, not hardware FLOPs).

The peak is ``trainer.peak_flops`` when set; otherwise, on a GPU this table knows, its dense
bf16 peak, and anywhere else the rate of a square matmul measured in this process (on a CPU in
the run's matmul dtype, fp32 or bf16; bf16 on an unknown GPU): MFU is then against what this machine's GEMM reaches.
"""

from __future__ import annotations

import functools
import math
import time

import torch

# Dense (no 2:4 sparsity) bf16 tensor-core peaks, FLOP/s, from the vendors' data sheets:
#   A100 (SXM and PCIe): NVIDIA A100 datasheet, 312 TFLOPS BF16
#   H100 SXM 989, H100 PCIe 756, H100 NVL 835: NVIDIA H100 datasheet (sparse figures halved)
#   H200 (SXM) 989: NVIDIA H200 datasheet (sparse 1,979 halved)
#   L4 121: NVIDIA L4 datasheet (sparse 242 halved); A10G 125: AWS EC2 G5 / NVIDIA A10 (A10: 125)
#   L40S 362: NVIDIA L40S datasheet (sparse 733 halved); V100 125 (fp16 tensor cores, no bf16)
#   RTX 4090 165 (Ada whitepaper, fp32 accumulate dense); T4 65 (fp16, no bf16)
# Matched by substring of torch.cuda.get_device_name(), most specific first.
GPU_PEAKS: list[tuple[str, float]] = [
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
    ("A10G", 125e12),
    ("A10", 125e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("V100", 125e12),
    ("RTX 4090", 165e12),
    ("T4", 65e12),
]


def known_gpu_peak(name: str) -> float | None:
    """The dense bf16 peak of a GPU named ``name`` (``torch.cuda.get_device_name``), or None."""
    return next((peak for key, peak in GPU_PEAKS if key in name), None)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def gemm_peak(dtype: torch.dtype, device: str, n: int | None = None, repeats: int = 5) -> float:
    """FLOP/s of the best of ``repeats`` square n³ matmuls in ``dtype``: torch's matmul and, for
    fp32 on a CPU where linear layers run in oneDNN (``blocks/linear.py``), oneDNN's too —
    the faster of the two is what this machine's GEMM reaches."""
    from bertsmith.blocks import linear

    n = n or (8192 if device == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    calls = [lambda: a @ b]
    if device == "cpu" and dtype == torch.float32 and linear.backend() == "onednn":
        calls.append(lambda: linear.matmul(a, b))
    best = math.inf
    for call in calls:
        call()
        for _ in range(repeats):
            sync(device)
            t = time.perf_counter()
            call()
            sync(device)
            best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


@functools.cache
def measured_gemm_rate(device: str, dtype: torch.dtype, threads: int) -> float:
    """FLOP/s of a square matmul here (``gemm_peak``: the best of three):
    1024² on a CPU (0.2 s on two cores, the same rate as 2048², which takes 1.1 s), 8192² on
    a GPU. Cached per device, dtype and thread count for the process."""
    return gemm_peak(dtype, device, n=1024 if device == "cpu" else None, repeats=3)


def peak_flops(setting: float | None, accelerator: str, precision: str = "32-true") -> tuple[float, str]:
    """(peak FLOP/s, where it comes from) for a job on ``accelerator`` (``jobs.device``'s
    ``cuda`` or ``cpu``) at Lightning ``precision`` (on a CPU, ``bf16-mixed`` is measured
    against a bf16 GEMM: its matmuls run in bf16)."""
    if setting:
        return float(setting), "trainer.peak_flops"
    if accelerator == "cuda" and torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        if (peak := known_gpu_peak(name)) is not None:
            return peak, f"{name}, dense bf16 data sheet"
        return measured_gemm_rate("cuda", torch.bfloat16, 0), f"{name}, measured bf16 GEMM"
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float32
    rate = measured_gemm_rate("cpu", dtype, torch.get_num_threads())
    name = "bf16" if dtype == torch.bfloat16 else "fp32"
    return rate, f"CPU, measured {name} GEMM ({torch.get_num_threads()} threads)"


def train_flops_per_token(spec, seq_len: int, predicted: float) -> dict:
    """``{"forward", "train", "encoder", "head", "head_fraction"}`` FLOPs per token for a
    training step at ``seq_len``; ``predicted`` is the fraction of tokens a sparse head decodes."""
    from bertsmith import registry

    f = registry.cost(spec, seq_len)["flops_per_token"]
    sparse = spec.head is not None and getattr(spec.head, "sparse", False)
    fraction = predicted if sparse else 1.0
    forward = f["encoder"] + fraction * f["head"]
    return {
        "encoder": f["encoder"],
        "head": f["head"],
        "head_fraction": fraction,
        "forward": forward,
        "train": 3 * forward,
    }


class Utilisation:
    """Model FLOP/s and MFU of a tokens/s figure: ``flops_per_token`` (train), ``peak`` and
    where the peak comes from (``source``)."""

    def __init__(self, flops_per_token: float, peak: float, source: str):
        self.flops_per_token, self.peak, self.source = flops_per_token, peak, source

    def of(self, tokens_per_s: float | None) -> dict:
        """``{"model_flops_per_s", "mfu"}`` (empty without a tokens/s figure)."""
        if not tokens_per_s:
            return {}
        flops = self.flops_per_token * tokens_per_s
        return {"model_flops_per_s": flops, "mfu": flops / self.peak}

    def summary(self, tokens_per_s: float | None) -> dict:
        """The summary.json fields: FLOPs per token, peak and its source, FLOP/s and MFU."""
        return {
            "train_flops_per_token": round(self.flops_per_token),
            "peak_flops": self.peak,
            "peak_flops_source": self.source,
            **self.of(tokens_per_s),
        }

    def line(self, tokens_per_s: float | None) -> str | None:
        """The end-of-run line, or None without a tokens/s figure."""
        got = self.of(tokens_per_s)
        if not got:
            return None
        return (
            f"  model {si(got['model_flops_per_s'])}FLOP/s (3 x {si(self.flops_per_token / 3)}FLOP/token "
            f"forward x {tokens_per_s:,.0f} tokens/s), MFU {got['mfu']:.1%} of "
            f"{si(self.peak)}FLOP/s ({self.source})"
        )


def si(x: float) -> str:
    """``x`` with an SI prefix and a trailing space: 3.2e12 -> ``3.20 T``."""
    for div, p in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g} {p}"
    return f"{x:.3g} "

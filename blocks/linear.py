"""fp32 linear layers on x86 CPUs through oneDNN instead of the BLAS torch calls by default.

Every ``F.linear`` of an fp32 forward (and its backward) on an x86-64 CPU is one GEMM; torch
sends fp32 GEMMs to its BLAS (MKL in the x86 wheels), which on AMD processors takes a slower
code path: ``bertsmith bench`` measured oneDNN's fp32 matmul at about 2x MKL's on the shapes of
a ModernBERT layer on an AMD EPYC (Zen 5), forward and both backward products alike. oneDNN
is part of torch (``torch.ops.mkldnn._linear_pointwise``, the op inductor's CPU backend
lowers linear layers to), so nothing is installed.

``fast_linear()`` is a context in which ``F.linear`` on fp32 CPU tensors outside autocast
runs forward and backward as oneDNN matmuls (an autograd function; the values are fp32
GEMMs, differing from BLAS's only in summation order, ~1e-6 relative); anything else
(another dtype, autocast's bf16, CUDA, a traced or compiled region) is left to torch.
``EncoderModel`` enters it around its forward and the recomputed forward of a checkpointed
layer, so the same GEMMs run both times.

``BERTSMITH_CPU_LINEAR``: ``auto`` (default: oneDNN on an x86-64 CPU whose torch has it),
``onednn`` (on any CPU; an error where torch lacks it) or ``blas`` (torch's default path).
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

CHOICES = ("auto", "onednn", "blas")


@functools.cache
def backend() -> str:
    """``onednn`` or ``blas``: what fp32 CPU linear layers use in this process."""
    want = os.environ.get("BERTSMITH_CPU_LINEAR", "auto").strip().lower() or "auto"
    if want not in CHOICES:
        raise ValueError(f"BERTSMITH_CPU_LINEAR: given {want!r}, allowed: {', '.join(CHOICES)}")
    has = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    if want == "onednn" and not has:  # asked for by name: never a quiet fallback
        raise ValueError(
            "BERTSMITH_CPU_LINEAR: given 'onednn', allowed: auto, blas (this torch has no oneDNN linear)"
        )
    if want == "blas" or not has:
        return "blas"
    if want == "onednn":
        return "onednn"
    return "onednn" if platform.machine().lower() in ("x86_64", "amd64") else "blas"


def matmul(a: torch.Tensor, b_t: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b_t.T (+ bias)`` for 2-D fp32 CPU tensors, in oneDNN (strided inputs accepted)."""
    return torch.ops.mkldnn._linear_pointwise(a, b_t, bias, "none", [], "")


class _OneDnnLinear(torch.autograd.Function):
    """``y = x W^T + b`` and its gradients as three oneDNN matmuls."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        y = matmul(x.reshape(-1, x.shape[-1]), weight, bias)
        return y.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        dy2 = dy.reshape(-1, dy.shape[-1])
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = matmul(dy2, weight.t()).view(x.shape)  # dy W
        if ctx.needs_input_grad[1]:
            x2 = x.reshape(-1, x.shape[-1])
            (m, n), k = dy2.shape, x2.shape[1]
            # oneDNN wants its first operand contiguous: copy the smaller of dy^T (m x n) or
            # x^T (m x k) plus the transposed result (k x n)
            if m * n <= m * k + k * n:
                dw = matmul(dy2.t(), x2.t())  # dy^T x
            else:
                dw = matmul(x2.t(), dy2.t()).t().contiguous()  # (x^T dy)^T
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy2.sum(0)
        return dx, dw, db


def _routable(x, weight, bias) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and (bias is None or bias.dtype == torch.float32)
        and x.dim() >= 1
        and x.shape[-1] > 0
        and not torch.is_autocast_enabled("cpu")
    )


class _Mode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight = args[0], args[1] if len(args) > 1 else kwargs["weight"]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if _routable(x, weight, bias):
                return _OneDnnLinear.apply(x, weight, bias)
        return func(*args, **kwargs)


def fast_linear(device: torch.device):
    """The context for a forward on ``device``: oneDNN fp32 linear layers where ``backend()``
    says so and the device is a CPU, else nothing."""
    if torch.compiler.is_compiling() or device.type != "cpu" or backend() != "onednn":
        return contextlib.nullcontext()
    return _Mode()

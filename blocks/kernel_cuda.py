"""Attention kernels that run on CUDA only (slot ``kernel``): FlashAttention-2 and xformers.

Both take the packed stream as it is, with no per-batch padding::

    q, k, v [T, H, d]   cu_seqlens [B+1] int32   max_seqlen L
      flash_attn   flash_attn_varlen_func(q, k, v, cu, cu, L, L, ...)               -> [T, H, d]
      xformers     memory_efficient_attention(q[None], k[None], v[None],
                       attn_bias=BlockDiagonalMask.from_seqlens(lengths))           -> [1, T, H, d]

Neither package imports without CUDA (flash-attn's PyPI release is a source package built
against CUDA; xformers has no CPU operators), so importing this module imports neither: each
kernel imports its package on its first call on a CUDA tensor. A spec that names one still
composes, validates and builds anywhere; whether this machine can run it is answered by
``unavailable(device)``, which ``registry.check`` asks before a spec is run here (one user
error line), and a call on CPU tensors raises one clear ``RuntimeError``.
"""

from __future__ import annotations

import importlib
import importlib.util
import warnings

import torch
from torch import Tensor

from bertsmith.registry.core import register


class CudaKernel:
    """What the CUDA-only kernels share: the availability check and the lazy import."""

    name = ""  # registry name
    package = ""  # import name of the top-level package
    dist = ""  # pip distribution name
    extra = ""  # bertsmith's optional-dependency group that installs it
    _checked: dict[str, str | None] = {}  # per class name: why not, or None (the import worked)

    @classmethod
    def needs(cls) -> str:
        return f"needs CUDA and the {cls.dist} package (pip install 'bertsmith[{cls.extra}]')"

    @classmethod
    def unavailable(cls, device: str | None = None) -> str | None:
        """Why this kernel cannot run on ``device`` ("cuda"; None: this machine), or None.

        Without CUDA nothing is imported (find_spec reads no module). With CUDA the package is
        imported once, so a build that does not fit this torch is reported before a run starts.
        """
        if device not in (None, "cuda"):
            return f"runs on CUDA only, not {device}"
        if not torch.cuda.is_available():
            return f"{cls.needs()}; this machine has no CUDA"
        if importlib.util.find_spec(cls.package) is None:
            return f"{cls.needs()}; {cls.dist} is not installed"
        if cls.name not in CudaKernel._checked:
            try:
                cls._import()
                CudaKernel._checked[cls.name] = None
            except Exception as e:  # a build against another torch/CUDA fails with many types
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                CudaKernel._checked[cls.name] = f"{cls.needs()}; importing {cls.package} failed: {first}"
        return CudaKernel._checked[cls.name]

    @classmethod
    def _import(cls):
        raise NotImplementedError

    def __init__(self):
        self._fn = None  # the package's function, bound on the first call

    def _load(self, q: Tensor):
        if self._fn is None:
            why = self.unavailable("cuda") if q.device.type == "cuda" else None
            if q.device.type != "cuda" or why is not None:
                raise RuntimeError(
                    f"kernel {self.name!r} {why or self.needs()}; it was called on "
                    f"{q.device.type} tensors (`bertsmith validate` checks this before a run; "
                    "choose model/kernel=sdpa or eager off CUDA)"
                )
            self._fn = self._import()
        return self._fn


@register(
    "kernel",
    "flash_attn",
    provides={"varlen", "window", "alibi", "dropout", "backward", "device:cuda"},
)
class FlashAttn(CudaKernel):
    """FlashAttention-2 on the packed stream with ``cu_seqlens`` (Dao 2023); CUDA, Ampere or newer.

    Window w -> ``window_size=(w // 2, w // 2)`` (keys |i − j| ≤ w // 2, inclusive). ALiBi ->
    ``alibi_slopes`` (fp32 [H]); flash-attn adds −slope·|i − j| when queries and keys have the
    same length, the same bias as ``positional.AlibiBias``. No dense score bias (DeBERTa's
    c2p/p2c): validation refuses it. flash-attn computes in fp16/bf16 only: fp32 q/k/v are cast
    to the autocast dtype (bf16 outside autocast) and the output cast back, with a warning; train
    with bf16 mixed precision to make that explicit. The backward pass is deterministic when
    ``torch.use_deterministic_algorithms(True)`` is on.
    """

    name, package, dist, extra = "flash_attn", "flash_attn", "flash-attn", "flash"

    @classmethod
    def _import(cls):
        from flash_attn import flash_attn_varlen_func

        return flash_attn_varlen_func

    def __call__(self, q, k, v, stream, window=None, bias=None, dropout_p=0.0, scale=None):
        fn = self._load(q)
        slopes = getattr(bias, "slopes", None)
        if bias is not None and slopes is None:
            raise ValueError(
                "flash_attn takes ALiBi slopes, not a dense score bias (validation should refuse this)"
            )
        dtype = q.dtype
        if dtype not in (torch.float16, torch.bfloat16):
            warnings.warn(
                f"flash_attn computes in half precision: {dtype} q/k/v are cast to bf16 "
                "(use bf16 mixed precision, or the sdpa kernel for full fp32 attention)",
                stacklevel=2,
            )
            half = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else torch.bfloat16
            q, k, v = (x.to(half) for x in (q, k, v))
        if slopes is not None:
            slopes = stream.cached(
                ("flash_alibi", q.device), lambda: slopes.to(device=q.device, dtype=torch.float32)
            )
        cu = stream.cached(("cu_seqlens", q.device), lambda: stream.cu_seqlens.to(q.device, torch.int32))
        half_window = -1 if window is None else window // 2  # -1: unbounded on that side
        out = fn(
            q,
            k,
            v,
            cu_seqlens_q=cu,
            cu_seqlens_k=cu,
            max_seqlen_q=stream.max_seqlen,
            max_seqlen_k=stream.max_seqlen,
            dropout_p=dropout_p,
            softmax_scale=scale,
            causal=False,
            window_size=(half_window, half_window),
            alibi_slopes=slopes,
            deterministic=torch.are_deterministic_algorithms_enabled(),
        )
        return out.to(dtype)


@register("kernel", "xformers", provides={"varlen", "dropout", "backward", "device:cuda"})
class Xformers(CudaKernel):
    """xformers' memory-efficient attention with a block-diagonal mask over the stream (Rabe & Staats 2021).

    One ``[1, T, H, d]`` batch whose sequences are the diagonal blocks of
    ``BlockDiagonalMask.from_seqlens``. fp32, fp16 and bf16; dropout; backward. xformers has
    no bidirectional local window on block-diagonal masks (its local masks are causal) and
    takes ALiBi or DeBERTa's bias only as a dense ``[T, T]`` tensor, which this kernel does
    not build: it declares neither ``window`` nor ``bias``/``alibi``, and validation refuses
    local layers, ALiBi and disentangled attention with it.
    """

    name, package, dist, extra = "xformers", "xformers", "xformers", "xformers"

    @classmethod
    def _import(cls):
        from xformers.ops import memory_efficient_attention
        from xformers.ops.fmha.attn_bias import BlockDiagonalMask

        return memory_efficient_attention, BlockDiagonalMask

    def __call__(self, q, k, v, stream, window=None, bias=None, dropout_p=0.0, scale=None):
        attention, block_diagonal = self._load(q)
        if window is not None:
            raise ValueError(
                "xformers has no bidirectional window on packed sequences (validation should refuse this)"
            )
        if bias is not None:
            raise ValueError("xformers takes no score bias here (validation should refuse this)")

        def make_mask():
            lengths = stream.seqlens.tolist()  # one host sync per forward, shared by every layer
            with torch.cuda.device(q.device):  # xformers puts the mask's offsets on the current device
                return block_diagonal.from_seqlens(lengths)

        mask = stream.cached(("xformers", q.device), make_mask)
        out = attention(q[None], k[None], v[None], attn_bias=mask, p=dropout_p, scale=scale)
        return out[0]

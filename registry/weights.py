"""Weights checked before anything is allocated.

A weights file is opened only when it is a regular file, and only its header is read first:
``safetensors`` validates the header (its length, every tensor's dtype, shape and offsets
against the file's size) without reading a tensor. The names, shapes and dtypes are compared
with the model the spec describes, built on the meta device (no memory); the memory that model
needs is compared with what the machine has free; only then is a real tensor allocated. After
loading, weights that are not finite are refused, naming the tensor.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from bertsmith.registry.errors import SpecError
from bertsmith.registry.jsonfile import regular_file

FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}  # safetensors' names of the float types


def header(path: str | os.PathLike, what: str | None = None) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{name: (dtype, shape)}`` of a safetensors file, from its validated header."""
    from safetensors import SafetensorError, safe_open

    what = what or Path(path).name
    regular_file(path, what)
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}
    except MemoryError:  # the file is mapped whole: larger than this process's address space
        raise SpecError(
            f"{what}: given {str(path)!r}, allowed: a file that fits the memory this process may map"
        ) from None
    except (SafetensorError, OSError) as e:
        why = " ".join(str(e).split()).removeprefix("Error while deserializing header: ")
        raise SpecError(f"{what}: given {str(path)!r}, allowed: a safetensors file ({why[:160]})") from None


def expected(model: nn.Module) -> tuple[dict[str, tuple[int, ...]], dict[str, list[str]]]:
    """(``{state key: shape}``, ``{state key: every key sharing its tensor}``) of ``model``;
    tied weights are stored once, under any one of their names."""
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    by_tensor: dict[int, list[str]] = {}
    for named in (
        model.named_parameters(remove_duplicate=False),
        model.named_buffers(remove_duplicate=False),
    ):
        for k, v in named:
            by_tensor.setdefault(id(v), []).append(k)
    aliases = {k: names for names in by_tensor.values() for k in names}
    return shapes, {k: aliases.get(k, [k]) for k in shapes}


def check_fit(found: dict[str, tuple[str, tuple[int, ...]]], model: nn.Module, given: str) -> None:
    """Refuse, in one line that starts with ``given`` (``"model.safetensors: given '/m/...'"``),
    weights (``header``) whose names, shapes or dtypes differ from ``model``'s (a meta model is
    enough)."""
    shapes, aliases = expected(model)
    bad = [k for k in found if k in shapes and found[k][1] != shapes[k]]
    dtype = [k for k in found if k in shapes and found[k][0] not in FLOAT_DTYPES]
    unexpected = [k for k in found if k not in shapes]
    missing = [k for k in shapes if not any(a in found for a in aliases[k])]
    if bad or dtype or unexpected or missing:
        lines = [f"{k} is {found[k][1]}, spec wants {shapes[k]}" for k in bad[:2]]
        lines += [f"{k} is {found[k][0]}, allowed: a float type" for k in dtype[:2]]
        lines += [f"unexpected {k}" for k in unexpected[:2]] + [f"missing {k}" for k in missing[:2]]
        raise SpecError(f"{given}, allowed: weights that fit the spec ({'; '.join(lines)})")


DTYPE_NAMES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.float64: "F64"}


def described(tensors) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{name: (dtype, shape)}`` of ``(name, tensor)`` pairs, in ``header``'s terms."""
    return {k: (DTYPE_NAMES.get(t.dtype, str(t.dtype)), tuple(t.shape)) for k, t in tensors}


def check_checkpoint(checkpoint: dict, module: nn.Module, path: object) -> None:
    """Refuse, before Lightning loads it, a checkpoint whose weights do not fit ``module``
    (e.g. another run's ``last.ckpt``)."""
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise SpecError(
            f"checkpoint: given {str(path)!r}, allowed: a checkpoint of this run (no weights in it)"
        )
    check_fit(described(state.items()), module, f"checkpoint: given {str(path)!r}")


def nbytes(model: nn.Module) -> int:
    """Bytes of ``model``'s parameters and buffers (shared tensors once)."""
    seen: dict[int, int] = {}
    for t in (*model.parameters(), *model.buffers()):
        seen[id(t)] = t.numel() * t.element_size()
    return sum(seen.values())


def _kib_field(path: str, field: str) -> int | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_free() -> int | None:
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(0, int(limit) - used)


def free_bytes() -> int | None:
    """Memory this process can still allocate on the CPU: the smallest of the machine's
    available memory, the cgroup's room and the address-space limit's (None if unknown)."""
    room = [_kib_field("/proc/meminfo", "MemAvailable"), _cgroup_free()]
    try:
        import resource  # POSIX only
    except ImportError:
        resource = None
    soft = resource.getrlimit(resource.RLIMIT_AS)[0] if resource else -1
    if resource and soft != resource.RLIM_INFINITY:
        used = _kib_field("/proc/self/status", "VmSize") or 0
        room.append(max(0, soft - used))
    known = [r for r in room if r is not None]
    return min(known) if known else None


def check_memory(model: nn.Module, name: str, device: torch.device) -> None:
    """Refuse to build a model (``model`` on the meta device) larger than the memory free on
    ``device``, before any of it is allocated."""
    need = nbytes(model)
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    elif device.type == "cpu":
        free = free_bytes()
    else:
        return
    if free is not None and need > free:
        raise SpecError(
            f"model: building {name!r} needs {need / 2**30:.1f} GiB for its weights alone, allowed: "
            f"a model that fits the {free / 2**30:.1f} GiB free on {device.type}"
        )


def check_finite(tensors, given: str) -> None:
    """Refuse weights holding inf or nan, naming the first such tensor, in one line that starts
    with ``given``."""
    for name, t in tensors:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise SpecError(f"{given} where {name} holds inf or nan, allowed: finite weights")

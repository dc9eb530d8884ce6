"""The compatibility rules: cross-field checks and what each chosen entry needs of others.

Rules are data: every entry declares ``provides`` and ``requires`` at registration; this
module reads them. ``problems(spec)`` returns one readable line per problem; nothing here
raises on a bad spec.
"""

from __future__ import annotations

from registry.core import REGISTRY
from registry.errors import choice, problem

_SLOTS_WITH_RULES = ("positional", "attention", "kernel", "mlp", "norm", "head", "init")


def _chosen(spec, slot: str):
    params = getattr(spec, slot)
    return None if params is None else REGISTRY.get(slot, params.kind)


def _activations(spec) -> list[tuple[str, str]]:
    """(key, name) of every activation the spec names."""
    out = [("model.mlp.activation", spec.mlp.activation)]
    if spec.head is not None and hasattr(spec.head, "activation"):
        out.append(("model.head.activation", spec.head.activation))
    return out


def problems(spec, device: str | None = None, training: bool = False) -> list[str]:
    """Everything wrong with ``spec`` that types alone cannot catch.

    ``device`` ("cpu", "cuda") and ``training`` add the run-time needs: the kernel must run
    on the device, and have a backward pass (and dropout, if any is set) when training.
    """
    out: list[str] = []
    if spec.d_model % spec.n_heads:
        out.append(problem("model.n_heads", spec.n_heads, f"a divisor of d_model={spec.d_model}"))
    if spec.pad_token_id >= spec.vocab_size:
        out.append(
            problem("model.pad_token_id", spec.pad_token_id, f"an id below vocab_size={spec.vocab_size}")
        )
    for key, name in _activations(spec):
        if name not in REGISTRY.entries["activation"]:
            out.append(choice(key, name, REGISTRY.names("activation")))
    if spec.norm.skip_first and spec.norm.placement != "pre":
        out.append(
            problem(
                "model.norm.skip_first",
                True,
                "false with placement 'post' (only a pre-norm layer 0 can skip its attention norm)",
            )
        )
    dim = getattr(spec.positional, "dim", None)
    if dim is not None and spec.d_model % spec.n_heads == 0 and dim > spec.d_model // spec.n_heads:
        out.append(
            problem("model.positional.dim", dim, f"at most the head dimension {spec.d_model // spec.n_heads}")
        )
    buckets = getattr(spec.positional, "position_buckets", 0)
    if buckets == 1:
        out.append(problem("model.positional.position_buckets", 1, "0 (no buckets) or at least 2"))
    elif buckets > 1:
        # log buckets run from mid = buckets // 2 out to the farthest distance, which must lie past mid
        given = spec.positional.max_relative_positions
        key, reach = (
            ("model.positional.max_relative_positions", given)
            if given is not None
            else ("model.max_seq_len", spec.max_seq_len)
        )
        if reach - 1 <= buckets // 2:
            out.append(
                problem(
                    key, reach, f"at least position_buckets // 2 + 2 = {buckets // 2 + 2} for log buckets"
                )
            )
    out += _requirement_problems(spec)
    out += _runtime_problems(spec, device, training)
    return out


def _requirement_problems(spec) -> list[str]:
    out = []
    for slot in _SLOTS_WITH_RULES:
        entry = _chosen(spec, slot)
        if entry is None:
            continue
        for req in entry.requires:
            if req.when is not None and not req.when(spec):
                continue
            other = _chosen(spec, req.slot)
            if other is not None and other.provides & set(req.any_of):
                continue
            able = [e.name for e in REGISTRY.entries[req.slot].values() if e.provides & set(req.any_of)]
            out.append(
                f"model.{req.slot}: given {other.name if other else None!r}, but {slot} "
                f"{entry.name!r} needs a {req.slot} with {' or '.join(req.any_of)} ({req.why}); "
                f"allowed: {', '.join(able) or 'none registered'}"
            )
    return out


def _runtime_problems(spec, device: str | None, training: bool) -> list[str]:
    kernel = _chosen(spec, "kernel")
    needs = []
    if device is not None:
        needs.append(((f"device:{device}",), f"runs on {device}"))
    if training:
        where = f"backward:{device}" if device else None
        needs.append((("backward", where), f"has a backward pass{f' on {device}' if device else ''}"))
        if spec.dropout.attention > 0:
            needs.append((("dropout",), "supports attention dropout"))
    out = []
    for caps, what in needs:
        if not kernel.provides & set(caps):
            able = [  # kernels that meet every need, not only this one
                e.name
                for e in REGISTRY.entries["kernel"].values()
                if all(e.provides & set(c) for c, _ in needs)
            ]
            out.append(
                f"model.kernel: given {kernel.name!r}, which is not a kernel that {what}; "
                f"allowed: {', '.join(able)}"
            )
    return out


def availability_problems(spec, device: str | None = None) -> list[str]:
    """What stops the chosen kernel from running on this machine: on ``device``, or wherever
    it runs when None (no CUDA, a missing or broken optional package).

    A kernel that depends on the machine says why not through ``unavailable(device) -> str |
    None`` on its class; the others always can. A kernel that does not run on ``device`` at all
    is left to ``problems`` (one line per problem, not two).
    """
    kernel = _chosen(spec, "kernel")
    if device is not None and f"device:{device}" not in kernel.provides:
        return []
    why = _unavailable(kernel, device)
    if why is None:
        return []
    able = [
        e.name
        for e in REGISTRY.entries["kernel"].values()
        if (device is None or f"device:{device}" in e.provides) and _unavailable(e, device) is None
    ]
    return [f"model.kernel: given {kernel.name!r}, which {why}; allowed here: {', '.join(able)}"]


def _unavailable(entry, device: str | None) -> str | None:
    hook = getattr(entry.obj, "unavailable", None)
    return None if hook is None else hook(device)

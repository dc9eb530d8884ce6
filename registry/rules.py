"""The compatibility rules: cross-field checks and what each chosen entry needs of others.

Rules are data: every entry declares ``provides`` and ``requires`` at registration; this
module reads them. ``problems(spec)`` returns one readable line per problem; nothing here
raises on a bad spec.
"""

from __future__ import annotations

from bertsmith.registry.core import REGISTRY
from bertsmith.registry.errors import problem
from bertsmith.registry.spec import REF_FIELDS as _REF_SLOTS
from bertsmith.registry.spec import SLOT_FIELDS


def _chosen(spec, slot: str):
    params = getattr(spec, slot, None)
    return None if params is None else REGISTRY.get(slot, params.kind)


def chosen_entries(spec):
    """(spec key, entry, params) of every entry the spec chooses, nested ones included (the
    MLP's activation, a head's activation)."""

    def walk(key: str, slot: str, params):
        if params is None or not hasattr(params, "kind"):
            return
        entry = REGISTRY.get(slot, params.kind)
        yield key, entry, params
        for field in type(params).model_fields:
            inner = getattr(params, field)
            inner_slot = _REF_SLOTS.get(field)
            if inner_slot and hasattr(inner, "kind") and inner.kind in REGISTRY.entries[inner_slot]:
                yield from walk(f"{key}.{field}", inner_slot, inner)

    for slot in SLOT_FIELDS:
        yield from walk(f"model.{slot}", slot, getattr(spec, slot, None))


def problems(spec, device: str | None = None, training: bool = False) -> list[str]:
    """Everything wrong with ``spec`` that types alone cannot catch.

    ``device`` ("cpu", "cuda") and ``training`` add the run-time needs: the kernel must run
    on the device, and have a backward pass (and dropout, if any is set) when training.
    Rules that concern one entry live on that entry (``register(..., check=...)``).
    """
    out: list[str] = []
    if spec.d_model % spec.n_heads:
        out.append(problem("model.n_heads", spec.n_heads, f"a divisor of d_model={spec.d_model}"))
    if spec.pad_token_id >= spec.vocab_size:
        out.append(
            problem("model.pad_token_id", spec.pad_token_id, f"an id below vocab_size={spec.vocab_size}")
        )
    placement = _chosen(spec, "placement")
    if getattr(spec.norm, "skip_first", False) and "skip_first" not in placement.provides:
        able = [e.name for e in REGISTRY.entries["placement"].values() if "skip_first" in e.provides]
        out.append(
            problem(
                "model.norm.skip_first",
                True,
                f"false with placement {placement.name!r}, which has no first norm to skip "
                f"(placements that do: {', '.join(able)})",
            )
        )
    for _, entry, _ in chosen_entries(spec):
        if entry.check is not None:
            out += entry.check(spec)
    out += _requirement_problems(spec)
    out += _runtime_problems(spec, device, training)
    return out


def _requirement_problems(spec) -> list[str]:
    out = []
    for key, entry, _ in chosen_entries(spec):
        slot = key.removeprefix("model.")
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

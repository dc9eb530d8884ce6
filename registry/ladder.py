"""The validation ladder: compose -> pydantic -> compatibility rules -> build on meta."""

from __future__ import annotations

import torch

from bertsmith.registry.errors import SpecError
from bertsmith.registry.rules import availability_problems, problems


def check(spec, device: str | None = None, training: bool = False, build_meta: bool = True) -> None:
    """Raise ``SpecError`` listing every rule ``spec`` breaks; then build it on the meta
    device (no memory, no compute) so shape errors surface before any real work.

    A valid spec that is about to be built (``build_meta``: validate, inspect, train) must also
    have a kernel that runs on this machine, on ``device`` or, when None, wherever the kernel
    runs; a stored spec that is only read (``build_meta=False``: load, imports) need not, so a
    model trained with flash_attn on a GPU still loads on a laptop."""
    found = problems(spec, device=device, training=training)
    if not found and build_meta:
        found = availability_problems(spec, device)
    if found:
        raise SpecError(found)
    if build_meta:
        from bertsmith.registry.builder import build

        with torch.device("meta"):
            build(spec, init=False)


def validate(recipe: str, overrides: list[str] = (), device: str | None = None, training: bool = False):
    """All rungs for a recipe; returns the spec or raises ``SpecError``."""
    from bertsmith.registry.composer import compose

    spec = compose(recipe, overrides)
    check(spec, device=device, training=training)
    return spec

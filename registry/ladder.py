"""The validation ladder: compose -> pydantic -> compatibility rules -> build on meta."""

from __future__ import annotations

import torch

from registry.errors import SpecError
from registry.rules import problems


def check(spec, device: str | None = None, training: bool = False, build_meta: bool = True) -> None:
    """Raise ``SpecError`` listing every rule ``spec`` breaks; then build it on the meta
    device (no memory, no compute) so shape errors surface before any real work."""
    found = problems(spec, device=device, training=training)
    if found:
        raise SpecError(found)
    if build_meta:
        from registry.builder import build

        with torch.device("meta"):
            build(spec, init=False)


def validate(recipe: str, overrides: list[str] = (), device: str | None = None, training: bool = False):
    """All rungs for a recipe; returns the spec or raises ``SpecError``."""
    from registry.composer import compose

    spec = compose(recipe, overrides)
    check(spec, device=device, training=training)
    return spec

"""The registry of blocks, the typed spec, compose, validate, build, save/load, cost model.

Public API (DESIGN.md)::

    compose(recipe, overrides=()) -> EncoderSpec
    build(spec, head=None) -> nn.Module
    save(model, dir) / load(dir) -> nn.Module

Attributes load lazily so that ``blocks`` can import ``registry.core`` (``register``) while
the registry itself imports ``blocks`` to fill the spec's unions.
"""

from __future__ import annotations

from importlib import import_module

from registry.core import REGISTRY, Params, Requirement, register
from registry.errors import SpecError

_LAZY = {
    "EncoderSpec": "registry.spec",
    "parse_spec": "registry.spec",
    "compose": "registry.composer",
    "build": "registry.builder",
    "layer_plan": "registry.builder",
    "save": "registry.io",
    "load": "registry.io",
    "load_spec": "registry.io",
    "check": "registry.ladder",
    "validate": "registry.ladder",
    "problems": "registry.rules",
    "cost": "registry.costs",
}

__all__ = ["REGISTRY", "Params", "Requirement", "SpecError", "register", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'registry' has no attribute {name!r}")


import blocks  # noqa: E402,F401  (fills REGISTRY; blocks import registry.core, defined above)

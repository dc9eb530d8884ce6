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

from bertsmith.registry.core import REGISTRY, Params, Requirement, register
from bertsmith.registry.errors import SpecError

_LAZY = {
    "EncoderSpec": "bertsmith.registry.spec",
    "parse_spec": "bertsmith.registry.spec",
    "compose": "bertsmith.registry.composer",
    "build": "bertsmith.registry.builder",
    "layer_plan": "bertsmith.registry.builder",
    "save": "bertsmith.registry.io",
    "load": "bertsmith.registry.io",
    "load_spec": "bertsmith.registry.io",
    "check": "bertsmith.registry.ladder",
    "validate": "bertsmith.registry.ladder",
    "problems": "bertsmith.registry.rules",
    "cost": "bertsmith.registry.costs",
}

__all__ = ["REGISTRY", "Params", "Requirement", "SpecError", "register", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'registry' has no attribute {name!r}")


from bertsmith import blocks  # noqa: E402,F401  (fills REGISTRY; blocks import registry.core, defined above)
from bertsmith.registry import plugins  # noqa: E402,F401  (loads plugins for a name a pickle asks for)

"""bertsmith: a declarative architecture composer for BERT-family encoders.

The import package is ``bertsmith``; the repository's top-level folders are its subpackages::

    bertsmith.blocks     torch.nn building blocks (one file per slot or block)
    bertsmith.registry   the registry, the typed spec, compose, build, save/load
    bertsmith.train      everything that runs (the CLI, training, interop)
    bertsmith.recipes    the Hydra config tree

Public API (the same as ``bertsmith.registry``'s)::

    bertsmith.compose(recipe, overrides=()) -> EncoderSpec
    bertsmith.build(spec, head=None) -> nn.Module
    bertsmith.save(model, dir) / bertsmith.load(dir) -> nn.Module

and the block API a plugin imports: ``from bertsmith import Params, register, Requirement,
SlotRef`` (``bertsmith.blocks.roles`` for init roles).
"""

from __future__ import annotations

import os as _os

_here = _os.path.dirname(_os.path.abspath(__file__))
if not _os.path.isdir(_os.path.join(_here, "registry")):
    # a checkout (or an editable install of one): the subpackages are the folders beside this one
    __path__.append(_os.path.dirname(_here))

from bertsmith.registry import REGISTRY, Params, Requirement, SpecError, register  # noqa: E402
from bertsmith.registry.core import SlotRef  # noqa: E402

_LAZY = (
    "EncoderSpec",
    "parse_spec",
    "compose",
    "build",
    "layer_plan",
    "save",
    "load",
    "load_spec",
    "check",
    "validate",
    "problems",
    "cost",
)

__all__ = ["REGISTRY", "Params", "Requirement", "SlotRef", "SpecError", "register", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        from bertsmith import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'bertsmith' has no attribute {name!r}")

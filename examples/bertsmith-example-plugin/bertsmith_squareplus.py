"""An activation for bertsmith, shipped as a plugin: squareplus (Barron 2021).

    squareplus(x) = (x + sqrt(x² + b)) / 2

A smooth ReLU built from a square root instead of an exponential; ``b`` sets how round the
corner at 0 is (b = 0 is ReLU). Importing this module registers the block; bertsmith imports
it through the entry point in pyproject.toml (or ``BERTSMITH_PLUGINS=bertsmith_squareplus``).
It imports only torch, pydantic and bertsmith's block API.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from bertsmith import Params, register


class SquareplusParams(Params):
    """Squareplus's one parameter."""

    b: float = Field(4.0, ge=0, description="roundness of the corner at 0 (0 gives ReLU)")


@register("activation", "squareplus", params=SquareplusParams)
class Squareplus(nn.Module):
    """Squareplus, (x + sqrt(x² + b)) / 2: a smooth ReLU without exp (Barron 2021)."""

    def __init__(self, b: float = 4.0):
        super().__init__()
        self.b = b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (x + torch.sqrt(x * x + self.b))

    def extra_repr(self) -> str:
        return f"b={self.b}"

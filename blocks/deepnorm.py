"""DeepNorm placement (slot ``placement``): post-norm with an up-weighted residual and a
down-scaled initialisation, for very deep post-norm stacks (Wang et al. 2022, DeepNet).

    x <- norm(α·x + f(x))

For an encoder of N layers, α = (2N)^¼ and β = (8N)^-¼ (the paper's Table 1, encoder-only):
the init scheme's standard deviation is multiplied by β for the value rows of the fused QKV
projection, the attention output projection and both MLP projections — the init roles
``value``, ``attn_out``, ``mlp_in`` and ``mlp_out`` (``blocks/roles.py``); queries and keys
keep a gain of 1. ``alpha``/``beta`` override the formulas.
"""

from __future__ import annotations

from pydantic import Field

from bertsmith.blocks.placement import Placement
from bertsmith.registry.core import Params, register


class DeepNormParams(Params):
    """α and β; null derives them from the number of layers (encoder-only formulas)."""

    alpha: float | None = Field(None, gt=0, description="residual weight α; null: (2N)^(1/4)")
    beta: float | None = Field(None, gt=0, description="init gain β; null: (8N)^(-1/4)")


SCALED_ROLES = frozenset({"value", "attn_out", "mlp_in", "mlp_out"})


@register("placement", "deepnorm", params=DeepNormParams)
class DeepNorm(Placement):
    """DeepNorm, norm(α·x + f(x)) with β-scaled init of value/out/MLP weights (Wang et al. 2022)."""

    def __init__(self, n_layers: int, alpha: float | None = None, beta: float | None = None):
        super().__init__(n_layers)
        self.alpha = (2.0 * n_layers) ** 0.25 if alpha is None else alpha
        self.beta = (8.0 * n_layers) ** -0.25 if beta is None else beta

    def __call__(self, layer, site, x, f, context=None):
        return getattr(layer, f"{site}_norm")(self.alpha * x + f(x, x if context is None else context))

    def init_gain(self, roles: frozenset[str]) -> float:
        return self.beta if roles & SCALED_ROLES else 1.0

    def __repr__(self) -> str:
        return f"DeepNorm(alpha={self.alpha:.4g}, beta={self.beta:.4g})"

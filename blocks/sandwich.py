"""Sandwich norm placement: a norm before and after each sublayer (slot ``placement``).

    x + n2(f(n1(x)))

Ding et al. 2021 (CogView, "Sandwich-LN") and Kim et al. 2025 ("Peri-LN"): the second norm
bounds each sublayer's contribution to the residual stream, which keeps activations from
growing with depth in pre-norm models. Layers hold ``attn_norm``, ``attn_post_norm``,
``mlp_norm`` and ``mlp_post_norm``; with ``norm.skip_first`` layer 0 drops ``attn_norm``.
"""

from __future__ import annotations

from bertsmith.blocks.placement import SITES, Placement
from bertsmith.registry.core import register


@register("placement", "sandwich", provides={"skip_first"})
class Sandwich(Placement):
    """Sandwich norm, x + norm2(f(norm1(x))) (Ding et al. 2021): each sublayer's output normalised."""

    def norms(self) -> tuple[str, ...]:
        return tuple(name for site in SITES for name in (f"{site}_norm", f"{site}_post_norm"))

    def __call__(self, layer, site, x, f, context=None):
        pre, post = getattr(layer, f"{site}_norm"), getattr(layer, f"{site}_post_norm")
        h = pre(x)
        return x + post(f(h, h if context is None else pre(context)))

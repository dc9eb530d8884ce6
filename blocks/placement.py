"""Norm placements (slot ``placement``): each owns the residual wiring of every layer.

A layer has two sites, ``attn`` and ``mlp``; at each the placement gets the residual stream
``x``, the sublayer ``f`` and, optionally, a separate ``context`` stream the sublayer reads
keys and values from (a head that re-runs a layer with its own queries, DeBERTa's enhanced
mask decoder)::

    pre    x + f(n(x))             Xiong et al. 2020; ModernBERT, most modern encoders
    post   n(x + f(x))             Vaswani et al. 2017; BERT, RoBERTa, DeBERTa
    (more in their own files: sandwich.py, deepnorm.py)

``f(h, c)`` takes the (normalised) stream and the (normalised) context, ``c = h`` when there
is none. The norms a layer holds are named by ``norms()`` (``attn_norm`` and ``mlp_norm``
for these two: their weights keep the names transformers' importers map to); with
``norm.skip_first`` the first of layer 0's norms is left out, which only placements that
provide ``skip_first`` allow. A placement may scale the initialisation of some weights by
role (``init_gain``, DeepNorm's β) — the init scheme asks it.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from bertsmith.registry.core import register

Sublayer = Callable[[Tensor, Tensor], Tensor]
SITES = ("attn", "mlp")


class Placement:
    """Base of the placements: two norms per layer, ``<site>_norm``; no init scaling."""

    def __init__(self, n_layers: int):
        self.n_layers = n_layers

    def norms(self) -> tuple[str, ...]:
        """Names of the norm modules each layer holds, in the order a reader meets them."""
        return tuple(f"{site}_norm" for site in SITES)

    def __call__(self, layer: nn.Module, site: str, x: Tensor, f: Sublayer, context: Tensor | None) -> Tensor:
        raise NotImplementedError

    def init_gain(self, roles: frozenset[str]) -> float:
        """Factor on the init scheme's standard deviation for a tensor with ``roles``."""
        return 1.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@register("placement", "pre", provides={"skip_first"})
class Pre(Placement):
    """Pre-norm, x + f(norm(x)) (Xiong et al. 2020): stable without warm-up tricks."""

    def __call__(self, layer, site, x, f, context=None):
        norm = getattr(layer, f"{site}_norm")
        h = norm(x)
        return x + f(h, h if context is None else norm(context))


@register("placement", "post")
class Post(Placement):
    """Post-norm, norm(x + f(x)) (Vaswani et al. 2017; BERT, RoBERTa, DeBERTa)."""

    def __call__(self, layer, site, x, f, context=None):
        return getattr(layer, f"{site}_norm")(x + f(x, x if context is None else context))

"""The screen: every knockout's effect on the validation loss, estimated from a few
forward and backward passes on the trained model instead of one pass per knockout.

A knockout replaces an output ``a`` by ``a'`` (zero, the mean, the op's input, a
slice zeroed: :mod:`ablagen.ablate`'s operators). The loss of sample n then changes by

    dL_n ~= u_n + 1/2 |R_n c_n|^2,   u_n = (a'_n - a_n) . g_n

``g`` the loss gradient (Taylor / attribution patching: Molchanov et al. 2017,
Nanda 2023) and ``c_n`` the products of ``a'_n - a_n`` with the pulled-back
directions of :mod:`.passes` (the loss gradient and the top eigenvectors of the
sample's cross-entropy Hessian in the logits): with the maps ``R_n``, the
Gauss-Newton second-order term, with the Hessian restricted to those directions. It
catches what first order misses where the model is curved (large knockouts,
saturated outputs), still for every knockout at once. Along the gradient alone it
costs no pass; the directions beyond it are pulled back on a share of the samples
and their excess scaled up (:data:`GGN_SHARE`). A knockout's estimate is the mean
over the validation samples: an estimate of the knockout engine's exact
``val_loss`` change. There is no estimate of accuracy.

Self-contained like :mod:`ablagen.knockout_engine`, whose graph helpers, targets,
means and records it uses: generated ``screen.py`` scripts embed :mod:`ablagen.ablate`,
the engine and this package (``EMBED_ORDER``). Edit it here, never in a script.
"""

from .estimates import products
from .passes import (
    forward_pass,
    ggn_directions,
    gradient_rows,
    prepare_graph,
    pull_back,
)
from .results import CURVATURES, Estimate, ScreenReport
from .chunked import GGN_RANK, GGN_SHARE, screen_batches, screen_knockouts

#: the modules :func:`ablagen.generate.embed.embed_package` joins, dependencies first
EMBED_ORDER = ("results", "estimates", "passes", "probes", "chunked")

__all__ = [
    "CURVATURES",
    "EMBED_ORDER",
    "GGN_RANK",
    "GGN_SHARE",
    "Estimate",
    "ScreenReport",
    "forward_pass",
    "ggn_directions",
    "gradient_rows",
    "prepare_graph",
    "products",
    "pull_back",
    "screen_batches",
    "screen_knockouts",
]

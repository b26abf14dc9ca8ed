"""The screen: every knockout's effect on the validation loss, estimated from a few
forward and backward passes on the trained model instead of one pass per knockout.

A knockout replaces an output ``a`` by ``a'`` (zero, the mean, the op's input, a
slice zeroed: :mod:`ablagen.ablate`'s operators). The loss of sample n then changes by

    dL_n ~= u_n + 1/2 sum_k v_nk^2,   u_n = (a'_n - a_n) . g_n,   v_nk = (a'_n - a_n) . h_nk

``g`` the loss gradient (Taylor / attribution patching: Molchanov et al. 2017,
Nanda 2023), ``h_k`` the Gauss-Newton directions of the softmax cross-entropy
(:mod:`.passes`): a second-order term that catches what first order misses where the
model is curved (large knockouts, saturated outputs), still for every knockout at once.
A knockout's estimate is the mean over the validation samples: an estimate of the
knockout engine's exact ``val_loss`` change. There is no estimate of accuracy.

Self-contained like :mod:`ablagen.knockout_engine`, whose graph helpers, targets,
means and records it uses: generated ``screen.py`` scripts embed :mod:`ablagen.ablate`,
the engine and this package (``EMBED_ORDER``). Edit it here, never in a script.
"""

from .estimates import products
from .passes import forward_backward, ggn_rows, prepare_graph
from .records import CURVATURES, Estimate, ScreenReport
from .run import GGN_RANK, screen_knockouts

#: the modules :func:`ablagen.codegen.embed.embed_package` joins, dependencies first
EMBED_ORDER = ("records", "estimates", "passes", "run")

__all__ = [
    "CURVATURES",
    "EMBED_ORDER",
    "GGN_RANK",
    "Estimate",
    "ScreenReport",
    "forward_backward",
    "ggn_rows",
    "prepare_graph",
    "products",
    "screen_knockouts",
]

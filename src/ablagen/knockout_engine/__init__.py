"""Knockout evaluation: every ablation of one trained model, scored on held-out data.

Self-contained on purpose: it imports only the standard library, torch and
:mod:`ablagen.ablate` (itself self-contained), because
ablagen embeds this source verbatim into every generated ``knockout.py``
(``ablagen.generate.knockout_block``). Edit it here, never in a script.

Fast path (traced models): a forward pass over a chunk of validation data caches every
node's output; an ablation changes only the descendants of the node it replaces, so a
generated GraphModule recomputes only those, reading the cache for the rest. Ablations
of the same node run together, K copies stacked along the batch dimension, K bounded by
a memory budget. A probe on 2 and 3 samples finds the per-sample values (stacking them
is exact) and the nodes that write into their inputs in place (they get copies).
Naive path (the reference, and untraceable models): a fresh copy of the model per
ablation, with a forward hook or an edited graph.

What an ablation does to an output is :mod:`ablagen.ablate`'s, the operators the
retrain scripts carry too; ``knockout.py`` embeds that package ahead of this one.
"""

from .fast import CPU_MAX_ROWS, evaluate_fast
from .interpreter import GraphFacts, functionalize, inspect_graph
from .means import activation_means
from .naive import ablated_copy, evaluate_naive
from .tally import (
    KNOCKOUT_METHODS,
    CorrectFn,
    Knockout,
    KnockoutReport,
    LossFn,
    Metrics,
    Score,
    Validation,
)
from .score import run_knockouts
from .targets import Target, ablation_for, resolve

#: the modules :func:`ablagen.generate.embed.embed_package` joins, dependencies first
EMBED_ORDER = (
    "values",
    "tally",
    "interpreter",
    "targets",
    "fast",
    "naive",
    "means",
    "score",
)

__all__ = [
    "CPU_MAX_ROWS",
    "EMBED_ORDER",
    "KNOCKOUT_METHODS",
    "CorrectFn",
    "GraphFacts",
    "Knockout",
    "KnockoutReport",
    "LossFn",
    "Metrics",
    "Score",
    "Target",
    "Validation",
    "ablated_copy",
    "ablation_for",
    "activation_means",
    "evaluate_fast",
    "evaluate_naive",
    "functionalize",
    "inspect_graph",
    "resolve",
    "run_knockouts",
]

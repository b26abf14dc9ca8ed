"""The naive path (the reference, and untraceable models): a fresh copy per knockout."""

import copy

import torch
from torch import nn

from ablagen.ablate import ablate_call, ablate_head, ablate_node, ablate_output, trace

from .interpreter import functionalize
from .tally import Knockout, Metrics, Score, Validation, _Tally
from .targets import ablation_for, resolve


def ablated_copy(
    model: nn.Module,
    k: Knockout,
    mean: torch.Tensor | None,
    via: str = "auto",
    example: torch.Tensor | None = None,
) -> nn.Module:
    """A fresh copy of ``model`` with ``k`` applied: a forward hook, or (``via="graph"``)
    an edited graph, :func:`functionalize`-d on ``example`` when one is given."""
    op = ablation_for(k, mean)
    if k.head is not None or k.call_op is not None:  # always at run time
        ablated = copy.deepcopy(model)
        if k.head is not None:
            ablate_head(ablated, str(k.out_proj), op)
        else:
            ablate_call(ablated, str(k.module), k.call_op, int(k.call_index or 0), op)
        return ablated
    if via == "hooks" or (via == "auto" and k.module is not None):
        ablated = copy.deepcopy(model)
        ablate_output(ablated, str(k.module), op, k.call_site)
        return ablated
    gm = trace(copy.deepcopy(model))
    if example is not None:
        functionalize(gm, example)
    target = resolve(list(gm.graph.nodes), k)
    for node in target.nodes[:1] if op.passes_input else target.nodes:
        ablate_node(gm, node.name, op, target.source if k.block else None)
    return gm


def _evaluate(model: nn.Module, val: Validation) -> Metrics:
    tally = _Tally()
    model.eval()
    with torch.no_grad():
        for x, y in val.batches():
            tally.add(model(x), y, val.loss_fn, val.correct_fn)
    return tally.metrics()


def evaluate_naive(
    model: nn.Module,
    knockouts: list[Knockout],
    means: dict[str, torch.Tensor],
    val: Validation,
    via: str = "auto",
) -> tuple[Score, ...]:
    """Each knockout on a fresh copy of the model, the whole validation set through it."""
    scores = []
    for k in knockouts:
        try:
            ablated = ablated_copy(model, k, means.get(k.variant_id), via, val.x[:2])
            scores.append(Score(k.variant_id, "ok", _evaluate(ablated, val), "naive"))
        except Exception as exc:  # one bad ablation must not take the others down
            scores.append(
                Score(
                    k.variant_id,
                    "failed",
                    None,
                    "naive",
                    f"{type(exc).__name__}: {exc}",
                )
            )
    return tuple(scores)

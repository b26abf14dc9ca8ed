"""The naive path (the reference, and untraceable models): a fresh copy per knockout."""

import copy
from typing import Any, Callable

import torch
from torch import fx, nn

from .graph import functionalize
from .records import CorrectFn, Knockout, LossFn, Metrics, Score, _Tally
from .targets import Replacer, resolve


def _hook(
    model: nn.Module,
    module: str,
    call_site: int | None,
    apply: Callable[[Any, Any], Any],
) -> None:
    """Replace ``module``'s output by ``apply(output, input)`` (at one call site); None keeps it."""
    calls = [0]

    def reset(root: nn.Module, inputs: Any) -> None:
        calls[0] = 0

    def hook(mod: nn.Module, inputs: tuple[Any, ...], output: Any) -> Any:
        site, calls[0] = calls[0], calls[0] + 1
        if call_site is not None and site != call_site:
            return output
        replaced = apply(output, inputs[0] if inputs else None)
        return output if replaced is None else replaced

    model.register_forward_pre_hook(reset)
    model.get_submodule(module).register_forward_hook(hook)


def ablated_copy(
    model: nn.Module,
    k: Knockout,
    mean: torch.Tensor | None,
    via: str = "auto",
    example: torch.Tensor | None = None,
) -> nn.Module:
    """A fresh copy of ``model`` with ``k`` applied: hooks, or (``via="graph"``) an edited
    graph, :func:`functionalize`-d on ``example`` when one is given."""
    replacer = Replacer(k, mean)
    if via == "hooks" or (via == "auto" and k.module is not None):
        ablated = copy.deepcopy(model)
        ablated.knockout_replacer = replacer
        _hook(ablated, str(k.module), k.call_site, replacer)
        return ablated
    gm = fx.symbolic_trace(copy.deepcopy(model))
    if example is not None:
        functionalize(gm, example)
    target, graph = resolve(list(gm.graph.nodes), k), gm.graph
    if k.method == "identity":
        target.nodes[0].replace_all_uses_with(target.source)
        if not k.block:
            graph.erase_node(target.nodes[0])  # the call is skipped
    else:
        gm.add_submodule("knockout_replacer", replacer)
        for node in target.nodes:
            with graph.inserting_after(node):
                new = graph.call_module("knockout_replacer", (node,))
            node.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new)
    gm.recompile()
    return gm


def _evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    fns: tuple[LossFn, CorrectFn],
    batch_size: int,
) -> Metrics:
    tally = _Tally()
    model.eval()
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            tally.add(
                model(x[start : start + batch_size]),
                y[start : start + batch_size],
                *fns,
            )
    return tally.metrics()


def evaluate_naive(
    model: nn.Module,
    knockouts: list[Knockout],
    means: dict[str, torch.Tensor],
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    loss_fn: LossFn,
    correct_fn: CorrectFn,
    batch_size: int = 64,
    via: str = "auto",
) -> tuple[Score, ...]:
    """Each knockout on a fresh copy of the model, the whole validation set through it."""
    scores = []
    for k in knockouts:
        try:
            ablated = ablated_copy(model, k, means.get(k.variant_id), via, x_val[:2])
            metrics = _evaluate(
                ablated, x_val, y_val, (loss_fn, correct_fn), batch_size
            )
            scores.append(Score(k.variant_id, "ok", metrics, "naive"))
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

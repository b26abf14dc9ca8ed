"""One forward and backward pass over a chunk, keeping the outputs and gradients of some nodes.

The traced graph is made free of in-place writes first (:func:`prepare_graph`): a
value later overwritten in place would hand autograd the wrong tensor. The backward
pass starts from the model's output ``z``:

- row 0 of the gradients is that of the summed loss (the first-order term);
- with ``curvature="ggn"`` and class logits ``z`` (N, C) with integer labels, rows
  1..K are ``sqrt(p_c) (e_c - p)`` for the K most probable classes c of each sample.
  Since the softmax cross-entropy's Hessian in ``z`` is ``diag(p) - p p^T`` =
  ``sum_c p_c (e_c - p)(e_c - p)^T``, ``1/2 sum_k u_k^2`` over these rows is the
  Gauss-Newton second-order term ``1/2 d^T J^T H J d`` of every knockout at once
  (exact when K covers all classes, and most of it otherwise: the weights are p_c).

All rows go back through the graph in one vectorized call where torch can batch it,
else one call per row.
"""

import copy
from typing import Any

import torch
from torch import fx, nn

from ablagen.ablate import out_of_place
from ablagen.knockout_engine.graph import GraphFacts, _forward, inspect_graph
from ablagen.knockout_engine.values import _clone, _tensors


def prepare_graph(model: nn.Module, x: torch.Tensor) -> GraphFacts:
    """``model`` traced (a copy, in-place ops made out of place), probed on ``x``."""
    copied = copy.deepcopy(model).eval()
    for module in copied.modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False
    gm = fx.symbolic_trace(copied)
    for node in list(gm.graph.nodes):
        if node.op in ("call_function", "call_method"):
            out_of_place(gm.graph, node)
    gm.recompile()
    return inspect_graph(gm, x)


def ggn_rows(z: torch.Tensor, max_classes: int) -> torch.Tensor:
    """``(K, N, C)``: ``sqrt(p_c) (e_c - p)`` for each sample's K most probable classes."""
    p = torch.softmax(z.detach().float(), dim=1)
    k = min(max_classes, p.shape[1])
    top_p, top_c = p.topk(k, dim=1)  # (N, K)
    rows = -p.unsqueeze(0).repeat(k, 1, 1)  # (K, N, C)
    rows.scatter_add_(2, top_c.t().unsqueeze(2), torch.ones_like(rows[..., :1]))
    return (rows * top_p.t().sqrt().unsqueeze(2)).to(z.dtype)


def wants_ggn(z: Any, y: torch.Tensor) -> bool:
    """The GGN rows apply to class logits (N, C) scored against integer labels (N,)."""
    return (
        isinstance(z, torch.Tensor)
        and z.dim() == 2
        and z.is_floating_point()
        and y.dim() == 1
        and not y.is_floating_point()
        and len(y) == len(z)
    )


def forward_backward(
    facts: GraphFacts,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn,
    keep: set[fx.Node],
    curvature: str,
    max_classes: int,
) -> tuple[Any, dict[fx.Node, Any], dict[fx.Node, list[torch.Tensor | None]]]:
    """The model's output, the values of ``keep`` (detached) and their gradients:
    per node, one ``(G, N, ...)`` tensor (or None: no gradient reaches it) per tensor
    of its output."""
    x = x.detach().clone().requires_grad_(x.is_floating_point())
    kept: dict[fx.Node, Any] = {}

    volatile = facts.volatile

    def grab(node: fx.Node, env: dict) -> None:
        if node in keep:
            kept[node] = env[node]
            if node in volatile:  # written in place later: that write goes to a copy
                env[node] = _clone(env[node])

    with torch.enable_grad():
        env = _forward(facts.gm, x, grab)
        z = env[facts.nodes[-1]]
        loss = loss_fn(z, y) * len(y)
        taps = [(n, t) for n in kept for t in _tensors(kept[n])]
        live = [t for _, t in taps if t.requires_grad]
        grads: list[Any] = [None] * len(live)
        if live and loss.requires_grad:
            if curvature == "ggn" and wants_ggn(z, y):
                (gz,) = torch.autograd.grad(loss, z, retain_graph=True)
                rows = torch.cat([gz.unsqueeze(0), ggn_rows(z, max_classes)])
                grads = _batched_grads(z, live, rows)
            else:
                grads = [
                    g if g is None else g.unsqueeze(0)
                    for g in torch.autograd.grad(loss, live, allow_unused=True)
                ]
    found = iter(grads)
    out_grads: dict[fx.Node, list[torch.Tensor | None]] = {n: [] for n in kept}
    for node, t in taps:
        out_grads[node].append(next(found) if t.requires_grad else None)
    values = {n: _detach(v) for n, v in kept.items()}
    return _detach(z), values, out_grads


def _batched_grads(
    z: torch.Tensor, live: list[torch.Tensor], rows: torch.Tensor
) -> list[torch.Tensor | None]:
    """``rows`` (G, *z.shape) pulled back to ``live``: one vectorized call, else a loop."""
    try:
        return list(
            torch.autograd.grad(
                z,
                live,
                rows,
                retain_graph=True,
                allow_unused=True,
                is_grads_batched=True,
            )
        )
    except RuntimeError:  # an op without a batching rule: one row at a time
        per_row = [
            torch.autograd.grad(z, live, row, retain_graph=True, allow_unused=True)
            for row in rows
        ]
        return [
            None if parts[0] is None else torch.stack(parts) for parts in zip(*per_row)
        ]


def _detach(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, (tuple, list)):
        items = [_detach(v) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    if isinstance(value, dict):
        return {k: _detach(v) for k, v in value.items()}
    return value

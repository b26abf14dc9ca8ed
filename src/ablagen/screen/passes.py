"""One forward and backward pass over a chunk, keeping the outputs and gradients of some nodes.

The traced graph is made free of in-place writes first (:func:`prepare_graph`): a
value later overwritten in place would hand autograd the wrong tensor. The backward
pass starts from the model's output ``z``:

- row 0 of the gradients is that of the summed loss (the first-order term);
- with ``curvature="ggn"`` and class logits ``z`` (N, C) with integer labels, rows
  1..K are ``sqrt(l) v`` for the K largest eigenpairs of each sample's softmax
  cross-entropy Hessian in ``z``, ``H = diag(p) - p p^T``. ``1/2 sum_k u_k^2`` over
  these rows is the Gauss-Newton second-order term ``1/2 d^T J^T H J d`` of every
  knockout at once, with H replaced by its best rank-K approximation (exact from
  K = C - 1). Measured on the two CNN examples, K = 2 ranks as well as all of H,
  and better than the K most probable classes' rows ``sqrt(p_c) (e_c - p)``.

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
    """``model`` traced (a copy, in-place ops made out of place), probed on ``x``.
    With a floating-point input the copy's parameters need no gradient (the input's
    carries the backward pass), so autograd keeps nothing for them."""
    copied = copy.deepcopy(model).eval()
    if x.is_floating_point():
        copied.requires_grad_(False)
    for module in copied.modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False
    gm = fx.symbolic_trace(copied)
    for node in list(gm.graph.nodes):
        if node.op in ("call_function", "call_method"):
            out_of_place(gm.graph, node)
    gm.recompile()
    return inspect_graph(gm, x)


#: classes beyond this many: the directions come from the block of the most probable ones
EIGEN_CLASSES = 64


def ggn_rows(z: torch.Tensor, rank: int) -> torch.Tensor:
    """``(K, N, C)``: ``sqrt(l) v`` for the K largest eigenpairs ``(l, v)`` of each
    sample's cross-entropy Hessian ``diag(p) - p p^T``: its best rank-K approximation
    (exact from K = C - 1 on). With more than ``EIGEN_CLASSES`` classes, the Hessian's
    block of that many most probable classes stands for it."""
    p = torch.softmax(z.detach().double(), dim=1)
    k = min(rank, p.shape[1])
    m = min(p.shape[1], max(EIGEN_CLASSES, k))
    top_p, top_c = p.topk(m, dim=1) if m < p.shape[1] else (p, None)
    hessian = torch.diag_embed(top_p) - top_p.unsqueeze(2) * top_p.unsqueeze(1)
    values, vectors = torch.linalg.eigh(hessian)  # ascending
    rows = vectors[:, :, -k:] * values[:, -k:].clamp_min(0).sqrt().unsqueeze(1)
    rows = rows.permute(2, 0, 1)  # (K, N, m)
    if top_c is not None:
        full = rows.new_zeros((k, *p.shape))
        rows = full.scatter_(2, top_c.unsqueeze(0).expand(k, -1, -1), rows)
    return rows.to(z.dtype)


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
    rank: int,
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
                rows = torch.cat([gz.unsqueeze(0), ggn_rows(z, rank)])
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

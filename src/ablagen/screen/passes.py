"""Forward and backward passes over a chunk, handing each kept node's gradients on as they are made.

The traced graph is made free of in-place writes first (:func:`prepare_graph`): a
value later overwritten in place would hand autograd the wrong tensor. The backward
passes start from the model's output ``z`` (:func:`gradient_rows`):

- row 0 is the gradient of the summed loss, ``gz`` (the first-order term);
- with ``curvature="ggn"`` and class logits ``z`` (N, C) with integer labels, rows
  1..r-1 are the top eigenvectors ``v`` of each sample's softmax cross-entropy
  Hessian in ``z``, ``H = diag(p) - p p^T``. The Gauss-Newton second-order term
  ``1/2 d^T J^T H J d`` of every knockout is then taken with H restricted to the
  span of ``gz`` and those ``v`` (:func:`ggn_directions`): rank r, exact for a
  change of the logits inside that span, and from r = C on for every change. The
  gradient's own row gives the rank-1 term for free; measured on the two CNN
  examples, rank 2 (one row more) ranks as well as the top two eigenvectors did
  with two rows more, and as all of H.

Each row goes back through the graph in one backward call; hooks hand each kept
node's gradients to the estimates as they are made (:func:`pull_back`), so no
gradient is kept or copied.
"""

import copy
from typing import Any, Callable

import torch
from torch import fx, nn

from ablagen.ablate import out_of_place, trace
from ablagen.knockout_engine.interpreter import GraphFacts, _forward, inspect_graph
from ablagen.knockout_engine.values import _clone, _tensors


def prepare_graph(model: nn.Module, x: torch.Tensor) -> GraphFacts:
    """``model`` (in eval mode) traced, probed on ``x``. The trace shares the model's
    modules, except where it runs cheaper ones that compute the same values
    (:func:`_stand_in`): in-place modules made out of place, eval-mode batch norms as
    the per-channel affine maps they are. In-place calls are made out of place."""
    gm = trace(model)
    for node in list(gm.graph.nodes):
        if node.op == "call_module":
            module = gm.get_submodule(node.target)
            stand_in = _stand_in(module)
            if stand_in is not module:
                owner, _, leaf = node.target.rpartition(".")
                setattr(gm.get_submodule(owner) if owner else gm, leaf, stand_in)
        elif node.op in ("call_function", "call_method"):
            out_of_place(gm.graph, node)
    return inspect_graph(gm, x)  # recompiles the graph


class AffineNorm(nn.Module):
    """An eval-mode batch norm as what it computes, ``x * scale + shift`` per channel
    (dim 1): the same values, and a backward pass of one multiplication, where torch's
    batch-norm backward costs several times its forward."""

    def __init__(self, norm: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        with torch.no_grad():
            scale = torch.rsqrt(norm.running_var + norm.eps)
            if norm.weight is not None:
                scale = scale * norm.weight
            shift = -norm.running_mean * scale
            if norm.bias is not None:
                shift = shift + norm.bias
        self.register_buffer("scale", scale.detach())
        self.register_buffer("shift", shift.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (-1,) + (1,) * (x.dim() - 2)
        return torch.addcmul(self.shift.view(shape), x, self.scale.view(shape))


def _stand_in(module: nn.Module) -> nn.Module:
    """What the screen's trace runs in ``module``'s place (``module`` itself, mostly);
    the model's own modules are never changed."""
    if getattr(module, "inplace", False) is True:
        module = copy.copy(module)  # its own attributes; parameters shared
        module.inplace = False
    norm = isinstance(module, nn.modules.batchnorm._BatchNorm)
    if norm and not module.training and module.running_var is not None:
        return AffineNorm(module)
    return module


#: classes beyond this many: the eigenvectors come from the block of the most probable ones
EIGEN_CLASSES = 64


def ggn_directions(
    z: torch.Tensor, gz: torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Gauss-Newton term of a change ``d`` of the logits ``z`` (N, C), from its
    products with ``rank`` directions per sample: the loss gradient ``gz`` (the first
    order's own row, no extra pass) and the top ``rank - 1`` eigenvectors ``v`` of the
    sample's cross-entropy Hessian ``H = diag(p) - p p^T`` (from ``rank = C`` on, all
    ``C - 1``, which span H's range: the term is then exact).

    Returns those eigenvectors as rows ``(rank - 1, N, C)``, per sample an ``(r, r)``
    map ``R`` (r directions in all) and ``R``'s rank-1 counterpart ``r`` (N,): with
    ``c = B^T d`` the products of ``d`` with ``B = [gz, v...]``,
    ``1/2 |R c|^2 = 1/2 d^T P H P d``, ``P`` the projection onto the span of ``B``:
    H restricted to the subspace (rank ``r``), exact for every ``d`` in it; and
    ``1/2 (r c_0)^2`` the same along the gradient alone. With more than ``EIGEN_CLASSES`` classes, the eigenvectors
    come from the Hessian's block of that many most probable classes."""
    p = torch.softmax(z.detach().double(), dim=1)
    classes = p.shape[1]
    m = min(classes, max(EIGEN_CLASSES, rank))
    k = min(max(rank - 1, 0), classes - 1, m)
    top_p, top_c = p.topk(m, dim=1) if m < classes else (p, None)
    hessian = torch.diag_embed(top_p) - top_p.unsqueeze(2) * top_p.unsqueeze(1)
    vectors = hessian[:, :, :0]  # rank 1: the gradient alone, no eigenvectors
    if k:
        vectors = torch.linalg.eigh(hessian)[1][:, :, m - k :]  # ascending: the top k
    if top_c is not None:
        full = vectors.new_zeros((len(p), classes, k))
        vectors = full.scatter_(1, top_c.unsqueeze(2).expand(-1, -1, k), vectors)
    basis = torch.cat([gz.detach().double().unsqueeze(2), vectors], dim=2)  # (N, C, r)
    inverse = torch.linalg.pinv(basis.transpose(1, 2) @ basis, hermitian=True)
    on_p = (basis * p.unsqueeze(2)).sum(dim=1)  # B^T p: (N, r)
    restricted = basis.transpose(1, 2) @ (basis * p.unsqueeze(2))
    restricted = restricted - on_p.unsqueeze(2) * on_p.unsqueeze(1)  # B^T H B
    values, axes = torch.linalg.eigh(inverse @ restricted @ inverse)
    maps = values.clamp_min(0).sqrt().unsqueeze(2) * axes.transpose(1, 2)
    norm = basis[:, :, 0].square().sum(dim=1)  # |gz|^2; along it: sqrt(g^T H g) / |g|^2
    along = restricted[:, 0, 0].clamp_min(0).sqrt() / norm.clamp_min(
        torch.finfo(norm.dtype).tiny
    )
    along = torch.where(norm > 0, along, 0.0)
    return vectors.permute(2, 0, 1).to(z.dtype), maps, along


def wants_ggn(z: Any, y: torch.Tensor) -> bool:
    """The GGN term applies to class logits (N, C) scored against integer labels (N,)."""
    return (
        isinstance(z, torch.Tensor)
        and z.dim() == 2
        and z.is_floating_point()
        and y.dim() == 1
        and not y.is_floating_point()
        and len(y) == len(z)
    )


def forward_pass(
    facts: GraphFacts, x: torch.Tensor, keep: set[fx.Node]
) -> tuple[Any, dict[fx.Node, Any]]:
    """The model's output on ``x`` and the values of ``keep``, both still in the
    autograd graph (a floating-point input carries it; so do parameters that want
    gradients)."""
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
    return env[facts.nodes[-1]], kept


def gradient_rows(
    z: Any, y: torch.Tensor, loss_fn, curvature: str, rank: int
) -> tuple[Any, list[torch.Tensor | None], tuple[torch.Tensor, torch.Tensor] | None]:
    """What to pull back: ``(start, cotangents, maps)``. First order: the summed loss
    itself (one cotangent, None). With the Gauss-Newton term and class logits: the
    logits ``z`` with the loss gradient ``gz`` and :func:`ggn_directions`' rows, and
    its maps ``(R, r)`` (else None). Row 0 is always the loss gradient's."""
    with torch.enable_grad():
        loss = loss_fn(z, y) * len(y)
    if curvature != "ggn" or not wants_ggn(z, y) or not loss.requires_grad:
        return loss, [None], None
    (gz,) = torch.autograd.grad(loss, z, retain_graph=True)
    extra, maps, along = ggn_directions(z, gz, rank)
    return z, [gz, *extra], (maps, along)


def pull_back(
    start: Any,
    cotangents: list[torch.Tensor | None],
    kept: dict[fx.Node, Any],
    nodes: tuple[fx.Node, ...],
    consume: Callable[[fx.Node, list[torch.Tensor | None]], None],
) -> None:
    """Each cotangent pulled back from ``start`` through the graph, one backward call
    each; ``consume(node, grads)`` is handed every node of ``kept``'s gradients of that
    row (one ``(1, N, ...)`` tensor per tensor of its output, None where no gradient
    reaches it) as the backward pass makes them, which then drops them: no kept
    gradient, no copy (``nodes``: the graph's, in order).

    The call asks torch only for the gradients of the earliest kept nodes (those no
    other kept node feeds): the pass runs through every other kept node on its way,
    where hooks on their tensors see their gradients. One the pass did not reach that
    way gets a second call of its own."""
    taps = {node: _tensors(value) for node, value in kept.items()}
    live = [
        (node, i, t)
        for node, ts in taps.items()
        for i, t in enumerate(ts)
        if t.requires_grad
    ]
    if not live or not getattr(start, "requires_grad", False):
        for _ in cotangents:
            for node, ts in taps.items():
                consume(node, [None] * len(ts))
        return
    wanting = {node for node, _, _ in live}
    fed: dict[fx.Node, bool] = {}  # node -> a node whose gradient is wanted feeds it
    for node in nodes:
        fed[node] = any(a in wanting or fed[a] for a in node.all_input_nodes)
    roots = [(node, i, t) for node, i, t in live if not fed[node]]
    waiting = {node: sum(t.requires_grad for t in ts) for node, ts in taps.items()}
    got: dict[fx.Node, list[Any]] = {}
    done: set[fx.Node] = set()

    def seen(node: fx.Node, i: int, grad: torch.Tensor | None) -> None:
        if grad is None or node in done or got[node][i] is not None:
            return  # none, or seen in this row already
        got[node][i] = grad.unsqueeze(0)
        if sum(g is not None for g in got[node]) == waiting[node]:
            done.add(node)
            consume(node, got[node])

    def ask(wanted: list[tuple[fx.Node, int, torch.Tensor]], row: Any) -> None:
        grads = torch.autograd.grad(
            start, [t for _, _, t in wanted], row, retain_graph=True, allow_unused=True
        )
        for (node, i, _), grad in zip(wanted, grads):
            seen(node, i, grad)  # where the hook has not seen it

    handles = [
        t.register_hook(lambda grad, node=node, i=i: seen(node, i, grad))
        for node, i, t in live
    ]
    try:
        for row in cotangents:
            got = {node: [None] * len(ts) for node, ts in taps.items()}
            done.clear()
            if roots:
                ask(roots, row)
            missed = [
                (node, i, t)
                for node, i, t in live
                if node not in done and got[node][i] is None
            ]
            if missed:
                ask(missed, row)
            for node in taps:
                if node not in done:  # some tensors got no gradient
                    consume(node, got[node])
    finally:
        for handle in handles:
            handle.remove()


def _detach(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, (tuple, list)):
        items = [_detach(v) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    if isinstance(value, dict):
        return {k: _detach(v) for k, v in value.items()}
    return value

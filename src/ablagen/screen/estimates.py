"""The estimate of one knockout from an output ``a``, what replaces it ``a'`` and gradients.

A knockout replaces ``a`` by ``a' = op.apply(a, source)``; to first order the loss of
sample n changes by ``u_n = (a'_n - a_n) . g_n``, ``g_n`` the gradient of its loss.
Nothing here knows the methods: ``zero`` (``-a . g``), ``mean`` (``(mean - a) . g``),
``identity`` (``(input - a) . g``) and any slice of an output (a mask of units, a
head) all come from the operator's own ``apply``. Only the mask has a shortcut: the
per-unit sums of ``-a . g`` are made once per output and sliced, which is the same
number without one full-size tensor per unit.

The gradients arrive stacked, ``(G, N, ...)``: row 0 the loss gradient, rows 1.. the
Gauss-Newton directions (:mod:`.passes`); the products come back as ``(G, N)``.
"""

from typing import Any

import torch

from ablagen.ablate import Ablation, MaskAblation
from ablagen.knockout_engine.values import _tensors


class NotDifferentiable(ValueError):
    """The output holds no floating-point tensor: no gradient can weigh its change."""


def _unit_sums(value: torch.Tensor, grads: torch.Tensor, dim: int) -> torch.Tensor:
    """``-a . g`` summed over everything but the gradient row, the sample and ``dim``:
    ``(G, N, units)``."""
    prod = -(value.unsqueeze(0) * grads)
    keep = {0, 1, dim + 1}
    other = [d for d in range(prod.dim()) if d not in keep]
    return prod.sum(dim=other) if other else prod


def products(
    op: Ablation,
    value: Any,
    source: Any,
    grads: list[torch.Tensor | None],
    cache: dict[Any, torch.Tensor],
    key: Any,
) -> torch.Tensor | None:
    """``(G, N)``: ``(a' - a) . g`` per gradient row and sample, summed over every tensor
    of the output; None where no gradient reaches the output (the effect is 0 to every
    order the screen measures). ``cache`` keeps the mask's per-unit sums, by ``key``."""
    leaves = _tensors(value)
    if not any(t.is_floating_point() or t.is_complex() for t in leaves):
        kinds = ", ".join(sorted({str(t.dtype) for t in leaves})) or "no tensor"
        raise NotDifferentiable(f"its output is not differentiable ({kinds})")
    if all(g is None for g in grads):
        return None
    if isinstance(op, MaskAblation) and isinstance(value, torch.Tensor):
        dim = op.dim % value.dim()
        if (key, dim) not in cache:
            cache[(key, dim)] = _unit_sums(value, grads[0], dim)
        return cache[(key, dim)][:, :, op.start : op.stop].sum(dim=2)
    replaced = _tensors(op.apply(value, source))
    if len(replaced) != len(leaves):
        raise ValueError(
            f"the ablated output has {len(replaced)} tensors, the output {len(leaves)}"
        )
    total = None
    for a, new, g in zip(leaves, replaced, grads):
        if g is None:
            continue
        if new.shape != a.shape:
            raise ValueError(
                f"the replacement has shape {tuple(new.shape)}, the output {tuple(a.shape)}"
            )
        delta = (new.to(a.dtype) - a).unsqueeze(0)
        term = (delta * g).flatten(2).sum(dim=2)
        total = term if total is None else total + term
    return total

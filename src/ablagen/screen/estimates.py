"""The estimate of knockouts from an output ``a``, what replaces it ``a'`` and gradients.

A knockout replaces ``a`` by ``a' = op.apply(a, source)``; to first order the loss of
sample n changes by ``u_n = (a'_n - a_n) . g_n``, ``g_n`` the gradient of its loss.
Nothing here knows the methods: ``zero`` (``-a . g``), ``mean`` (``(mean - a) . g``),
``identity`` (``(input - a) . g``) come from the operator's own ``apply``
(:func:`products`, one knockout at a time).

Most knockouts are slices of one output: a mask of units, a head (masked, or set to
its mean), a whole output zeroed. :func:`slice_products` does all of a node's slices in one vectorized step:
the per-unit sums of ``-a . g`` (and, for means, of ``g``) are made once per output
dimension and multiplied by a (units, knockouts) matrix. The same numbers, without
one full-size tensor (or one Python call) per unit.

The gradients arrive stacked, ``(G, N, ...)``: row 0 the loss gradient, rows 1.. the
Gauss-Newton directions (:mod:`.passes`); the products come back as ``(G, N)``, or
``(M, G, N)`` for M slices.
"""

from typing import Any

import torch

from ablagen.ablate import (
    Ablation,
    HeadMaskAblation,
    HeadMeanAblation,
    MaskAblation,
    ZeroAblation,
)
from ablagen.knockout_engine.values import _tensors


class NotDifferentiable(ValueError):
    """The output holds no floating-point tensor: no gradient can weigh its change."""


def check_differentiable(value: Any) -> None:
    leaves = _tensors(value)
    if not any(t.is_floating_point() or t.is_complex() for t in leaves):
        kinds = ", ".join(sorted({str(t.dtype) for t in leaves})) or "no tensor"
        raise NotDifferentiable(f"its output is not differentiable ({kinds})")


def slice_of(op: Ablation, value: Any) -> tuple[int, int, int, Any] | None:
    """``(dim, start, stop, fill)`` where ``op`` replaces one slice of a tensor output
    by zeros (``fill`` None) or by a vector along ``dim`` (``fill``); else None."""
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        return None
    if isinstance(op, ZeroAblation) and value.dim() > 1:  # all units of dim 1
        return 1, 0, value.shape[1], None
    if isinstance(op, MaskAblation):
        dim = op.dim % value.dim()
        return (dim, op.start, op.stop, None) if dim else None
    if isinstance(op, (HeadMaskAblation, HeadMeanAblation)):
        start, width = op.span(value)
        if isinstance(op, HeadMaskAblation):
            return value.dim() - 1, start, start + width, None
        if op.running is not None and not op.training:
            return value.dim() - 1, start, start + width, op.running
    return None


def _unit_sums(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``t`` (G, N, ...) summed over everything but G, N and ``dim`` (of a sample's
    value, 0 the sample): ``(G, N, units)``."""
    other = [d for d in range(2, t.dim()) if d != dim + 1]
    return t.sum(dim=other) if other else t


def slice_products(
    value: torch.Tensor, grads: torch.Tensor, slices: list[tuple[int, int, int, Any]]
) -> torch.Tensor:
    """``(M, G, N)``: ``(a' - a) . g`` for M slice knockouts of one output (see
    :func:`slice_of`): per dimension, the unit sums times a (units, M) matrix."""
    out = grads.new_zeros((len(slices), grads.shape[0], grads.shape[1]))
    for dim in sorted({s[0] for s in slices}):
        mine = [i for i, s in enumerate(slices) if s[0] == dim]
        units = value.shape[dim]
        picks = grads.new_zeros((units, len(mine)))
        fills = grads.new_zeros((units, len(mine)))
        for j, i in enumerate(mine):
            _, start, stop, fill = slices[i]
            picks[start:stop, j] = 1
            if fill is not None:
                fills[start:stop, j] = fill.to(fills.dtype)
        terms = -(_unit_sums(value.unsqueeze(0) * grads, dim) @ picks)
        if bool(fills.any()):
            terms = terms + _unit_sums(grads, dim) @ fills
        out[mine] = terms.permute(2, 0, 1)
    return out


def products(
    op: Ablation,
    value: Any,
    source: Any,
    grads: list[torch.Tensor | None],
) -> torch.Tensor | None:
    """``(G, N)``: ``(a' - a) . g`` per gradient row and sample, summed over every tensor
    of the output; None where no gradient reaches the output (the effect is 0 to every
    order the screen measures)."""
    check_differentiable(value)
    if all(g is None for g in grads):
        return None
    leaves = _tensors(value)
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

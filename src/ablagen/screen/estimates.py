"""The estimate of knockouts from an output ``a``, what replaces it ``a'`` and gradients.

A knockout replaces ``a`` by ``a' = op(a, source)``; to first order the loss of
sample n changes by ``u_n = (a'_n - a_n) . g_n``, ``g_n`` the gradient of its loss.
Nothing here knows the methods: ``zero`` (``-a . g``), ``mean`` (``(mean - a) . g``),
``identity`` (``(input - a) . g``) come from the operator's own ``forward``
(:func:`products`, one knockout at a time).

Most knockouts are slices of one output: a mask of units, a head (masked, or set to
its mean), a whole output zeroed. :func:`slice_products` does all of a node's slices in one vectorized step:
the per-unit sums of ``-a . g`` (and, for means, of ``g``) are made once per output
dimension and multiplied by a (units, knockouts) matrix. The same numbers, without
one full-size tensor (or one Python call) per unit.

The gradients arrive as ``(G, N, ...)`` rows (one at a time in a screen, G = 1:
row 0 the loss gradient, rows 1.. the Gauss-Newton directions of :mod:`.passes`);
the products come back as ``(G, N)``, or ``(M, G, N)`` for M knockouts
(:class:`NodeTerms`: all of one output's).
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


def _slice_matrices(
    value: torch.Tensor, dim: int, slices: list[tuple[int, int, int, Any]]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(units, M)`` matrices of M slices along ``dim``: which units each zeroes, and
    what each puts there instead (None: zeros only)."""
    at = torch.arange(value.shape[dim], device=value.device).unsqueeze(1)
    starts, stops = torch.tensor([s[1:3] for s in slices], device=value.device).T
    picks = ((at >= starts) & (at < stops)).to(value.dtype)
    if all(s[3] is None for s in slices):
        return picks, None
    fills = torch.zeros_like(picks)
    for j, (_, start, stop, fill) in enumerate(slices):
        if fill is not None:
            fills[start:stop, j] = fill.to(fills.dtype)
    return picks, fills


class Scratch:
    """One buffer, reused, for the products' full-size temporaries: the calls make
    no large allocation of their own (memory freed and allocated again can go back
    to the system in between and be faulted in afresh)."""

    def __init__(self) -> None:
        self.buffer: torch.Tensor | None = None

    def take(self, like: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """Room for a tensor of ``shape`` with ``like``'s dtype and device."""
        numel = shape.numel()
        held = self.buffer
        if (
            held is None
            or held.numel() < numel
            or held.dtype != like.dtype
            or held.device != like.device
        ):
            held = self.buffer = like.new_empty(numel)
        return held[:numel].view(shape)


def _sliced(
    value: torch.Tensor,
    grads: torch.Tensor,
    dim: int,
    picks: torch.Tensor,
    fills: torch.Tensor | None,
    scratch: Scratch | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(M, G, N)``: the products of the slices of :func:`_slice_matrices`; and
    ``(G, N)``: ``a . g`` over the whole output, which they sum on the way."""
    room = None if scratch is None else scratch.take(grads, grads.shape)
    units = _unit_sums(torch.mul(value.unsqueeze(0), grads, out=room), dim)
    terms = -(units @ picks)
    if fills is not None:
        terms = terms + _unit_sums(grads, dim) @ fills
    return terms.permute(2, 0, 1), units.sum(dim=2)


def slice_products(
    value: torch.Tensor, grads: torch.Tensor, slices: list[tuple[int, int, int, Any]]
) -> torch.Tensor:
    """``(M, G, N)``: ``(a' - a) . g`` for M slice knockouts of one output (see
    :func:`slice_of`): per dimension, the unit sums times a (units, M) matrix."""
    out = grads.new_empty((len(slices), grads.shape[0], grads.shape[1]))
    for dim in sorted({s[0] for s in slices}):
        mine = [i for i, s in enumerate(slices) if s[0] == dim]
        picks, fills = _slice_matrices(value, dim, [slices[i] for i in mine])
        out[mine] = _sliced(value, grads, dim, picks, fills)[0]
    return out


class NodeTerms:
    """The products of every knockout acting at one output, ``(M, G, N)``.

    Made once per output, from its first value (what is a slice depends on the
    shape only): the slices' matrices are built here, once, and each call makes a
    dimension's slices in one vectorized step, the other knockouts one at a time
    (:func:`products`). ``entries``: (variant id, operator, the node whose value is
    its source, or None). ``skipped`` says why, where the output cannot be weighed."""

    def __init__(self, name: str, entries: list[tuple[str, Ablation, Any]], value: Any):
        self.ids = [vid for vid, _, _ in entries]
        self.skipped: str | None = None
        try:
            check_differentiable(value)
        except NotDifferentiable as exc:
            self.skipped = f"{name}: {exc}; the screen skips it"
        self.others: list[tuple[int, str, Ablation, Any]] = []
        by_dim: dict[int, list[tuple[int, tuple[int, int, int, Any]]]] = {}
        for j, (vid, op, source) in enumerate(entries):
            piece = slice_of(op, value)
            if piece is None:
                self.others.append((j, vid, op, source))
            else:
                by_dim.setdefault(piece[0], []).append((j, piece))
        self.slices = [
            (
                dim,
                [j for j, _ in mine],
                *_slice_matrices(value, dim, [p for _, p in mine]),
            )
            for dim, mine in sorted(by_dim.items())
        ]

    def __call__(
        self,
        value: Any,
        sources: dict[Any, Any],
        grads: list[torch.Tensor | None],
        failed: dict[str, tuple[str, str]],
        scratch: Scratch | None = None,
    ) -> torch.Tensor | None:
        """The products with ``grads`` (one ``(G, N, ...)`` tensor or None per tensor
        of the output); None where no gradient reaches the output (every estimate
        0). A knockout that fails goes to ``failed``, its row left 0."""
        if self.skipped or all(g is None for g in grads):
            return None
        g = next(g for g in grads if g is not None)
        out = g.new_zeros((len(self.ids), g.shape[0], g.shape[1]))
        # (G, N): a . g over the whole output, for the knockouts that pass input on
        whole = None
        for dim, rows, picks, fills in self.slices:
            try:
                out[rows], whole = _sliced(value, g, dim, picks, fills, scratch)
            except Exception as exc:  # one bad estimate must not stop the others
                for j in rows:
                    failed[self.ids[j]] = ("failed", f"{type(exc).__name__}: {exc}")
        for j, vid, op, source in self.others:
            if vid in failed:
                continue
            try:
                was = None if source is None else sources[source]
                if op.passes_input and _like(was, value) and grads[0] is not None:
                    whole = _dot(value, g) if whole is None else whole
                    u = _dot(was, g) - whole  # (input - a) . g, a . g made once
                else:
                    u = products(op, value, was, grads, scratch)
            except Exception as exc:
                failed[vid] = ("failed", f"{type(exc).__name__}: {exc}")
                continue
            if u is not None:
                out[j] = u
        return out


def _like(a: Any, b: Any) -> bool:
    """Both tensors of one shape and dtype."""
    return (
        isinstance(a, torch.Tensor)
        and isinstance(b, torch.Tensor)
        and a.shape == b.shape
        and a.dtype == b.dtype
    )


def _dot(delta: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """``(G, N)``: each sample's ``delta`` (N, ...) dotted with its gradient rows
    (G, N, ...)."""
    n = delta.shape[0]
    return torch.einsum(
        "nd,gnd->gn", delta.reshape(n, -1), grads.reshape(grads.shape[0], n, -1)
    )


def products(
    op: Ablation,
    value: Any,
    source: Any,
    grads: list[torch.Tensor | None],
    scratch: Scratch | None = None,
) -> torch.Tensor | None:
    """``(G, N)``: ``(a' - a) . g`` per gradient row and sample, summed over every tensor
    of the output; None where no gradient reaches the output (the effect is 0 to every
    order the screen measures)."""
    check_differentiable(value)
    if all(g is None for g in grads):
        return None
    leaves = _tensors(value)
    replaced = _tensors(op(value, source))
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
        room = None if scratch is None else scratch.take(a, a.shape)
        term = _dot(torch.sub(new.to(a.dtype), a, out=room), g)
        total = term if total is None else total + term
    return total

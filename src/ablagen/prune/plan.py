"""One pruning plan per ratio: Torch-Pruning's groups and choice, as kept indices.

:func:`make_plan` runs Torch-Pruning's ``BasePruner`` on a copy of the model with a
criterion (ablagen's measured importance or one of Torch-Pruning's), group by group
(``step(interactive=True)``), and records which channels each layer keeps. The plan
is data: :func:`ablagen.prune.surgery.apply_plan` replays it with plain torch, in
ablagen's tests and in the generated scripts alike.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from ablagen.core.errors import AblagenError

Criterion = Callable[[tp.DependencyGraph, dict], tp.importance.Importance]


class PruneError(AblagenError):
    """A study or model `ablagen prune` cannot prune (one line, exit 2)."""


@dataclass(frozen=True)
class PrunePlan:
    """The channels each pruned layer keeps, by module name (``out`` / ``in``)."""

    ratio: float
    layers: dict[str, dict[str, list[int]]]

    def to_json(self) -> dict:
        return {"ratio": self.ratio, "layers": self.layers}

    @classmethod
    def from_json(cls, data: dict) -> "PrunePlan":
        return cls(float(data["ratio"]), dict(data["layers"]))


def output_layers(model: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """The leaf layers whose output is the model's output (never pruned: their
    output units are the classes)."""
    found: list[tuple[nn.Module, torch.Tensor]] = []
    hooks = [
        m.register_forward_hook(lambda mod, _, out: found.append((mod, out)))
        for m in model.modules()
        if not list(m.children()) and list(m.parameters(recurse=False))
    ]
    try:
        with torch.no_grad():
            result = model(example)
    finally:
        for h in hooks:
            h.remove()
    same = [m for m, out in found if out is result]
    return same or ([found[-1][0]] if found else [])


def make_plan(
    model: nn.Module,
    example: torch.Tensor,
    criterion: Criterion,
    ratio: float,
    before: Callable[[nn.Module], None] | None = None,
) -> PrunePlan:
    """The kept channels per layer when ``criterion`` prunes ``ratio`` of every
    group's channels (the output layer left whole). ``model`` is not changed;
    ``before(copy)`` runs first (Taylor: a backward pass that fills the gradients)."""
    check_ratio(ratio)
    pruned = copy.deepcopy(model).eval()
    names = {m: n for n, m in pruned.named_modules()}
    sizes = {n: _sizes(m) for m, n in names.items()}
    if before is not None:
        before(pruned)
    try:
        pruner = tp.pruner.BasePruner(
            pruned,
            example,
            importance=tp.importance.RandomImportance(),  # replaced below
            pruning_ratio=ratio,
            ignored_layers=output_layers(pruned, example),
        )
    except Exception as exc:  # Torch-Pruning's tracer raises anything
        raise PruneError(
            f"Torch-Pruning cannot group the model's channels "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
            "prune a model Torch-Pruning can trace (plain Conv/Linear/Norm layers)",
        ) from exc
    pruner.importance = criterion(pruner.DG, names)
    removed: dict[str, dict[str, set[int]]] = {}
    for group in pruner.step(interactive=True):
        for dep, idxs in group:
            name = names.get(dep.target.module)
            if name is None or name not in sizes:  # a graph op: nothing to slice
                continue
            if pruner.DG.is_out_channel_pruning_fn(dep.handler):
                side = "out"
            elif pruner.DG.is_in_channel_pruning_fn(dep.handler):
                side = "in"
            else:
                continue
            removed.setdefault(name, {}).setdefault(side, set()).update(
                int(i) for i in idxs
            )
        group.prune()
    _check_runs(pruned, example, model)
    layers = {
        name: {
            side: [i for i in range(sizes[name][side]) if i not in gone]
            for side, gone in sorted(sides.items())
        }
        for name, sides in sorted(removed.items())
    }
    if not layers:
        raise PruneError(
            f"Torch-Pruning found no channel group to prune at ratio {ratio:g} "
            "(no ranked layer in a group it can trace, or too few channels)",
            "rank the model's Conv/Linear output channels (--kinds neurons) or raise the ratio",
        )
    return PrunePlan(ratio, layers)


def _check_runs(pruned: nn.Module, example: torch.Tensor, model: nn.Module) -> None:
    """Torch-Pruning's pruned copy must still run and give outputs of the same shape
    (it does not, where the model hides a dependency from its tracer: .numpy(),
    .tolist(), a tensor rebuilt from data)."""
    with torch.no_grad():
        want = model.eval()(example)
        try:
            got = pruned(example)
        except RuntimeError as exc:
            got = exc
    if not isinstance(got, torch.Tensor) or got.shape != want.shape:
        raise PruneError(
            "Torch-Pruning cannot group the model's channels: the pruned model "
            + ("fails" if isinstance(got, Exception) else "changes its output shape")
            + " (a dependency its tracer does not see)",
            "keep the tensors in torch between layers (no .numpy(), .tolist()) and prune again",
        )


def check_ratio(ratio: float) -> float:
    if not 0.0 < ratio < 1.0:
        raise PruneError(
            f"pruning ratio {ratio:g} is outside (0, 1)",
            "give the share of channels to remove, e.g. --ratios 0.3,0.5,0.7",
        )
    return ratio


def _sizes(module: nn.Module) -> dict[str, int]:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() == 0:
        return {}
    sizes = {"out": weight.shape[0]}
    if weight.dim() >= 2:
        sizes["in"] = weight.shape[1]
    return sizes

"""One pruning plan per ratio: Torch-Pruning's groups and choice, as kept indices.

:func:`make_plan` runs Torch-Pruning's ``BasePruner`` on a copy of the model with a
criterion (ablagen's measured importance or one of Torch-Pruning's), group by group
(``step(interactive=True)``), and records which channels each layer keeps. The plan
is data: :func:`ablagen.prune.surgery.apply_plan` replays it with plain torch, in
ablagen's tests and in the generated scripts alike.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
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
    """The channels each pruned layer keeps, by module name (``out`` / ``in``), and
    the attributes an attention module sets to its new head count (``set``)."""

    ratio: float
    layers: dict[str, dict[str, list[int]]]

    def to_json(self) -> dict:
        return {"ratio": self.ratio, "layers": self.layers}

    @classmethod
    def from_json(cls, data: dict) -> "PrunePlan":
        return cls(float(data["ratio"]), dict(data["layers"]))


def _prediction(output):
    """The prediction tensor of a model's return value (a tensor, a tuple's first
    element, ``.logits``): what the scripts train on."""
    from ablagen.data.outputs import output_access

    try:
        return output_access(output, "the model file").prediction
    except Exception:
        return output


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
            result = _prediction(model(example))
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
    heads: Mapping[str, int] | None = None,
) -> PrunePlan:
    """The kept channels per layer when ``criterion`` prunes ``ratio`` of every
    group's channels (the output layer left whole). ``heads`` (query/key/value layer
    name -> its heads): their groups lose whole heads instead, ``ratio`` of them
    rounded up (Torch-Pruning's ``prune_num_heads``), and the plan sets the attention
    modules' head counts. ``model`` is not changed; ``before(copy)`` runs first
    (Taylor, Hessian: backward passes that fill the gradients)."""
    check_ratio(ratio)
    pruned = copy.deepcopy(model).eval()
    names = {m: n for n, m in pruned.named_modules()}
    sizes = {n: _sizes(m) for m, n in names.items()}
    by_name = dict(pruned.named_modules())
    num_heads = {by_name[n]: h for n, h in (heads or {}).items() if n in by_name}
    head_attrs = _head_attributes(pruned, heads or {})
    if before is not None:
        before(pruned)
    try:
        pruner = tp.pruner.BasePruner(
            pruned,
            example,
            importance=tp.importance.RandomImportance(),  # replaced below
            pruning_ratio=ratio,
            ignored_layers=output_layers(pruned, example),
            num_heads=num_heads,
            prune_num_heads=bool(num_heads),
            prune_head_dims=not num_heads,  # whole heads, each as wide as before
            head_pruning_ratio=ratio if num_heads else 0.0,
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
    layers = {
        name: {
            side: [i for i in range(sizes[name][side]) if i not in gone]
            for side, gone in sorted(sides.items())
        }
        for name, sides in removed.items()
    }
    for attention, attrs in head_attrs.items():
        left = {by_name[n].weight.shape[0] for n in attrs["layers"]}
        if left == {attrs["width"]}:
            continue  # no head removed here
        fused = len(attrs["layers"]) == 1  # one qkv layer: a third is each of q, k, v
        width = left.pop() // (3 if fused else 1)
        count = width // attrs["head_dim"]
        values = {a: count for a in attrs["count"]} | {a: width for a in attrs["total"]}
        for attr, value in values.items():
            setattr(by_name[attention], attr, value)
        layers.setdefault(attention, {})["set"] = dict(sorted(values.items()))
    layers = dict(sorted(layers.items()))
    _check_runs(pruned, example, model)
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
        want = _prediction(model.eval()(example))
        try:
            got = _prediction(pruned(example))
        except Exception as exc:  # any error of the model's own forward
            got = exc
    if not isinstance(got, torch.Tensor) or got.shape != want.shape:
        raise PruneError(
            "Torch-Pruning cannot group the model's channels: the pruned model "
            + ("fails" if isinstance(got, Exception) else "changes its output shape")
            + " (a dependency its tracer does not see)",
            "keep the tensors in torch between layers (no .numpy(), .tolist()) and prune again",
        )


def _head_attributes(model: nn.Module, heads: Mapping[str, int]) -> dict[str, dict]:
    """Per attention module (the parent of its query/key/value layers): its layers,
    their width and head size, and the names of its integer attributes that hold the
    head count (``count``) or the heads' total width (``total``), to set after the
    surgery (``n_head``, ``dim``; BERT's ``num_attention_heads``, ``all_head_size``)."""
    parents: dict[str, list[str]] = {}
    for name in heads:
        parents.setdefault(name.rpartition(".")[0], []).append(name)
    modules = dict(model.named_modules())
    found = {}
    for parent, layers in parents.items():
        count = heads[layers[0]]
        width = modules[layers[0]].weight.shape[0]
        total = width // 3 if len(layers) == 1 else width
        attrs = {
            k: v
            for k, v in vars(modules[parent]).items()
            if type(v) is int and not k.startswith("_")
        }
        found[parent] = {
            "layers": layers,
            "width": width,
            "head_dim": total // count,
            "count": sorted(k for k, v in attrs.items() if v == count),
            "total": sorted(k for k, v in attrs.items() if v == total and v != count),
        }
    return found


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

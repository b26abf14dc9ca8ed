"""Importance criteria for Torch-Pruning's groups: ablagen's measured one and a registry.

:class:`MeasuredImportance` is a ``tp.importance.Importance``: for one dependency group
(every layer whose channels are removed together, e.g. the convolutions tied through
a residual addition) it sums the measured importance of each coupled channel over the
group's layers that the study ranked (``mask`` knockouts or screen estimates of their
output units; an attention head's score on each of its query, key and value units).
A group with no ranked layer gets ``None``: Torch-Pruning leaves it whole. So does a
group that holds an embedding: a transformer's residual stream, the width of every
block, is kept (its heads and MLP neurons are what is pruned). :class:`SameGroups`
gives any other criterion the same rule, so every criterion prunes the same groups
at the same ratio.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch_pruning as tp
from torch import nn

from ablagen.rank.ranking import Ranking
from ablagen.core.studydir import Manifest


def _channel_units(comp: dict) -> bool:
    """A neuron group along its layer's channels: dim 1 of a conv's output, the
    last dim of a Linear's (batch, features) or (batch, time, features) output."""
    if comp["kind"] != "neuron" or comp.get("unit_dim") is None:
        return False
    ndim = len(comp["output_shape"])
    dim = comp["unit_dim"] % ndim
    return dim == 1 or (comp.get("op") == "Linear" and dim == ndim - 1)


def _head_units(comp: dict) -> dict[str, list[tuple[int, int]]]:
    """The output units of a head in each of its projections (query, key, value):
    module name -> [(start, stop)], from the head's weight slices along dim 0."""
    spans: dict[str, list[tuple[int, int]]] = {}
    for param, dim, start, stop in comp.get("slices", ()):
        module, _, kind = param.rpartition(".")
        if kind == "weight" and dim == 0:
            spans.setdefault(module, []).append((start, stop))
    return spans


def attention_heads(manifest: Manifest) -> dict[str, int]:
    """The heads of each attention projection the study ranked heads of: the name
    of every query/key/value layer (or fused qkv layer) -> its number of heads."""
    heads: dict[str, int] = {}
    for comp in manifest.components:
        if comp["kind"] == "head" and comp.get("num_heads"):
            for module in _head_units(comp):
                heads[module] = int(comp["num_heads"])
    return dict(sorted(heads.items()))


def unit_scores(
    ranking: Ranking, manifest: Manifest, seed: int | None = None
) -> dict[str, torch.Tensor]:
    """Per output unit of each ranked layer: the importance of the neuron group that
    holds it, or of the attention head it belongs to (mean over seeds; ``seed``:
    measured on that seed's model alone). Where the study ranked heads, a projection's
    units score by their head (its neuron groups are not used). Units of an unranked
    group score 0."""
    scores: dict[str, torch.Tensor] = {}
    head_scores: dict[str, torch.Tensor] = {}
    for row in ranking.rows:
        comp = manifest.component(row.component)
        if comp is None:
            continue
        if seed is None:
            value = row.mean
        elif seed in row.seeds:
            value = row.diffs[row.seeds.index(seed)]
        else:
            continue
        if comp["kind"] == "head":
            for module, spans in _head_units(comp).items():
                layer = manifest.component(module)  # its width: heads x their units
                width = comp["num_heads"] * sum(stop - start for start, stop in spans)
                width = layer["output_shape"][-1] if layer else width
                layer = head_scores.setdefault(module, torch.zeros(width))
                for start, stop in spans:
                    layer[start:stop] = value
        elif _channel_units(comp):
            width = comp["output_shape"][comp["unit_dim"]]
            layer = scores.setdefault(comp["module"], torch.zeros(width))
            start, stop = comp["units"]
            layer[start:stop] = value
    return dict(sorted({**scores, **head_scores}.items()))


class MeasuredImportance(tp.importance.Importance):
    """ablagen's measured importance of every channel of a group, summed over the
    group's ranked layers (the drop of the metric when that channel is masked)."""

    def __init__(
        self,
        scores: Mapping[str, torch.Tensor],
        names: Mapping,
        is_out: Callable[[Callable], bool],
    ) -> None:
        self.scores = scores  # module name -> importance per output unit
        self.names = names  # module -> its name in the model
        self.is_out = is_out  # the graph's is_out_channel_pruning_fn

    def __call__(self, group) -> torch.Tensor | None:
        if any(isinstance(dep.target.module, nn.Embedding) for dep, _ in group):
            return None  # a transformer's residual stream: kept whole
        total = torch.zeros(len(group[0].idxs))
        found = False
        for i, (dep, idxs) in enumerate(group):
            name = self.names.get(dep.target.module)
            if name not in self.scores or not self.is_out(dep.handler):
                continue
            root = torch.as_tensor(group[i].root_idxs, dtype=torch.long)
            total.index_add_(0, root, self.scores[name][idxs])
            found = True
        return total if found else None


class SameGroups(tp.importance.Importance):
    """Another criterion restricted to the groups ablagen measured (None elsewhere)."""

    def __init__(
        self, criterion: tp.importance.Importance, measured: MeasuredImportance
    ):
        self.criterion = criterion
        self.measured = measured

    def __call__(self, group) -> torch.Tensor | None:
        if self.measured(group) is None:
            return None
        return self.criterion(group)


CRITERIA: dict[str, Callable[[], tp.importance.Importance]] = {
    "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "taylor": tp.importance.GroupTaylorImportance,
    "hessian": tp.importance.GroupHessianImportance,
    "random": tp.importance.RandomImportance,
}
"""Torch-Pruning's own criteria, by name (``measured`` is ablagen's: not listed here).
``taylor`` needs the gradients of a loss, ``hessian`` (OBD) squared per-sample
gradients accumulated (``accumulate_grad``) before the plan is made."""

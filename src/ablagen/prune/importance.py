"""Importance criteria for Torch-Pruning's groups: ablagen's measured one and a registry.

:class:`MeasuredImportance` is a ``tp.importance.Importance``: for one dependency group
(every layer whose channels are removed together, e.g. the convolutions tied through
a residual addition) it sums the measured importance of each coupled channel over the
group's layers that the study ranked (``mask`` knockouts or screen estimates of their
output units). A group with no ranked layer gets ``None``: Torch-Pruning leaves it
whole. :class:`SameGroups` gives any other criterion the same rule, so every criterion
prunes the same groups at the same ratio.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch_pruning as tp

from ablagen.rank.ranking import Ranking
from ablagen.core.studydir import Manifest


def unit_scores(
    ranking: Ranking, manifest: Manifest, seed: int | None = None
) -> dict[str, torch.Tensor]:
    """Per output unit of each ranked layer: the importance of the neuron group that
    holds it (mean over seeds; ``seed``: measured on that seed's model alone).
    Units of an unranked group score 0."""
    scores: dict[str, torch.Tensor] = {}
    for row in ranking.rows:
        comp = manifest.component(row.component)
        if comp is None or comp["kind"] != "neuron" or comp.get("unit_dim") != 1:
            continue
        width = comp["output_shape"][1]
        layer = scores.setdefault(comp["module"], torch.zeros(width))
        start, stop = comp["units"]
        if seed is None:
            layer[start:stop] = row.mean
        elif seed in row.seeds:
            layer[start:stop] = row.diffs[row.seeds.index(seed)]
    return scores


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
        total = torch.zeros(len(group[0].idxs))
        found = False
        for i, (dep, idxs) in enumerate(group):
            name = self.names.get(dep.target.module)
            if name not in self.scores or not self.is_out(dep.handler):
                continue
            total[group[i].root_idxs] += self.scores[name][idxs]
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
    "random": tp.importance.RandomImportance,
}
"""Torch-Pruning's own criteria, by name (``measured`` is ablagen's: not listed here)."""

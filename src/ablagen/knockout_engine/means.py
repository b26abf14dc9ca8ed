"""Mean activations on the training data, for the "mean" knockouts."""

import copy
from typing import Any, Callable

import torch
from torch import fx, nn

from ablagen.ablate import Ablation, ablate_output

from .graph import _forward, functionalize
from .records import Knockout
from .targets import resolve


class _Observe(Ablation):
    """Ablates nothing: hands each output to ``seen`` and lets it go on unchanged."""

    name = "observe"

    def __init__(self, seen: Callable[[torch.Tensor], None]) -> None:
        super().__init__()
        self.seen = seen

    def apply(self, output: Any, source: Any = None) -> Any:
        self.seen(output)
        return output


def activation_means(
    model: nn.Module,
    knockouts: list[Knockout],
    x_train: torch.Tensor,
    batch_size: int = 256,
    traced: bool = True,
) -> dict[str, torch.Tensor]:
    """Per-position mean over the samples of ``x_train`` of each "mean" knockout's output,
    measured on the traced graph where it has a node, else with a forward hook."""
    gm = fx.symbolic_trace(model) if traced else None
    if gm is not None:
        functionalize(gm, x_train[:2])
    keys: dict[str, Any] = {}
    for k in [k for k in knockouts if k.method == "mean"]:
        try:  # a node name on the graph, else (module, call site) for a hook
            keys[k.variant_id] = (
                resolve(list(gm.graph.nodes), k).nodes[0].name
                if gm
                else (k.module, k.call_site)
            )
        except LookupError:
            continue  # that knockout fails for want of a mean, not the others
    sums: dict[Any, list[Any]] = {
        key: [0.0, 0, None] for key in keys.values()
    }  # sum, count, dtype

    def add(key: Any, value: torch.Tensor) -> None:
        sums[key] = [
            sums[key][0] + value.sum(dim=0, dtype=torch.float64),
            sums[key][1] + len(value),
            value.dtype,
        ]

    hooked = copy.deepcopy(model) if sums and gm is None else None
    for key in sums if hooked is not None else ():
        observe = _Observe(lambda output, key=key: add(key, output))
        ablate_output(hooked, str(key[0]), observe, key[1])
    model.eval()
    with torch.no_grad():
        for start in range(0, len(x_train) if sums else 0, batch_size):
            if hooked is not None:
                hooked(x_train[start : start + batch_size])
            else:
                seen = lambda n, env: (
                    add(n.name, env[n]) if n.name in sums else None
                )  # noqa: E731
                _forward(gm, x_train[start : start + batch_size], seen)
    return {
        vid: (sums[key][0] / sums[key][1]).to(sums[key][2])
        for vid, key in keys.items()
        if sums[key][1]
    }

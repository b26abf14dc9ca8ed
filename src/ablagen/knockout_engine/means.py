"""Mean activations on the training data, for the "mean" knockouts."""

import copy
from typing import Any, Callable

import torch
from torch import nn

from ablagen.ablate import Ablation, ablate_call, ablate_head, ablate_output, trace

from .interpreter import _forward, functionalize
from .tally import Knockout
from .targets import resolve


class _Observe(Ablation):
    """Ablates nothing: hands each output to ``seen`` and lets it go on unchanged."""

    name = "observe"

    def __init__(self, seen: Callable[[torch.Tensor], None]) -> None:
        super().__init__()
        self.seen = seen

    def forward(self, output: Any, source: Any = None) -> Any:
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
    gm = trace(model) if traced else None
    if gm is not None:
        functionalize(gm, x_train[:2])
    keys: dict[str, Any] = {}
    for k in [k for k in knockouts if k.method == "mean"]:
        try:  # a node name on the graph, else what a hook watches
            keys[k.variant_id] = (
                resolve(list(gm.graph.nodes), k).nodes[0].name
                if gm and k.call_op is None
                else _hook_key(k)
            )
        except LookupError:
            if k.head is None:
                continue  # that knockout fails for want of a mean, not the others
            keys[k.variant_id] = _hook_key(k)  # a head: watched by a hook
    sums: dict[Any, list[Any]] = {
        key: [0.0, 0, None] for key in keys.values()
    }  # sum, count, dtype

    def add(key: Any, value: torch.Tensor) -> None:
        sums[key] = [
            sums[key][0] + value.sum(dim=0, dtype=torch.float64),
            sums[key][1] + len(value),
            value.dtype,
        ]

    hooked_keys = [key for key in sums if isinstance(key, tuple)]
    hooked = copy.deepcopy(model) if hooked_keys else None
    for key in hooked_keys:
        observe = _Observe(lambda output, key=key: add(key, output))
        if key[0] == "head":
            observe.head = 0  # names the observer's slot on the model
            ablate_head(hooked, str(key[1]), observe)
        elif key[0] == "call":
            ablate_call(hooked, str(key[1]), key[2], key[3], observe)
        else:
            ablate_output(hooked, str(key[1]), observe, key[2])
    model.eval()
    with torch.no_grad():
        for start in range(0, len(x_train) if sums else 0, batch_size):
            batch = x_train[start : start + batch_size]
            if hooked is not None:
                hooked(batch)
            if gm is not None and len(hooked_keys) < len(sums):
                seen = lambda n, env: (
                    add(n.name, env[n]) if n.name in sums else None
                )  # noqa: E731
                _forward(gm, batch, seen)
    return {
        vid: (sums[key][0] / sums[key][1]).to(sums[key][2])
        for vid, key in keys.items()
        if sums[key][1]
    }


def _hook_key(k: Knockout) -> tuple[Any, ...]:
    """What a hook on the model watches for a mean: a head's projection input, a
    functional call, or a module's output (at a call site)."""
    if k.head is not None:
        return ("head", k.out_proj)
    if k.call_op is not None:
        return ("call", k.module, k.call_op, int(k.call_index or 0))
    return ("module", k.module, k.call_site)

"""Knockout targets (the graph nodes an ablation replaces) and their replacements."""

from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from .records import KNOCKOUT_METHODS, Knockout
from .values import _zip


@dataclass(frozen=True)
class Target:
    nodes: tuple[fx.Node, ...]  # the outputs replaced, in graph order
    source: fx.Node | None  # identity: the value that goes on instead


def _in_block(node: fx.Node, block: str) -> bool:
    stack = node.meta.get("nn_module_stack") or {}
    owner = (
        str(node.target)
        if node.op == "call_module"
        else list(stack.values())[-1][0] if stack else None
    )
    return (
        node.op != "get_attr"
        and owner is not None
        and (owner == block or owner.startswith(block + "."))
    )


def _first_arg(node: fx.Node) -> fx.Node | None:
    return next((a for a in node.args if isinstance(a, fx.Node)), None)


def resolve(nodes: tuple[fx.Node, ...] | list[fx.Node], k: Knockout) -> Target:
    """The graph nodes a knockout replaces; a LookupError says why there are none."""
    if k.block:
        inside = [n for n in nodes if _in_block(n, str(k.module))]
        members = set(inside)
        outputs = [n for n in inside if any(u not in members for u in n.users)]
        inputs = {
            a
            for n in inside
            for a in n.all_input_nodes
            if a not in members and a.op != "get_attr"
        }
        if len(outputs) != 1 or (k.method == "identity" and len(inputs) != 1):
            raise LookupError(
                f"block {k.module!r} has {len(outputs)} outputs and {len(inputs)} inputs, not 1 and 1"
            )
        return Target((outputs[0],), next(iter(inputs)) if inputs else None)
    if k.node is not None:
        found = [n for n in nodes if n.name == k.node]
        if not found:
            raise LookupError(
                f"the traced graph has no node {k.node!r}; regenerate the script"
            )
        return Target((found[0],), _first_arg(found[0]))
    calls = [n for n in nodes if n.op == "call_module" and n.target == k.module]
    calls = calls if k.call_site is None else calls[k.call_site : k.call_site + 1]
    if not calls:
        raise LookupError(f"module {k.module!r} is not called in the traced graph")
    return Target(tuple(calls), _first_arg(calls[0]))


def replacement(
    method: str,
    output: Any,
    source: Any,
    mean: torch.Tensor | None,
    units: tuple[int, int] | None,
    unit_dim: int | None,
) -> Any:
    """What an ablated output becomes: the one definition both paths use."""
    if method == "identity":
        return source
    if method == "zero":
        return _zip(torch.zeros_like, [output])
    if method == "mean":
        return mean.to(output.dtype).unsqueeze(0).expand_as(output).contiguous()
    if method == "mask":
        masked = output.clone()
        masked.narrow(unit_dim, units[0], units[1] - units[0]).zero_()
        return masked
    raise ValueError(
        f"unknown ablation method {method!r}; use one of {KNOCKOUT_METHODS}"
    )


class Replacer(nn.Module):
    """:func:`replacement` as a module, so the mean follows ``.to(device)``."""

    def __init__(self, k: Knockout, mean: torch.Tensor | None) -> None:
        super().__init__()
        self.method, self.units, self.unit_dim = k.method, k.units, k.unit_dim
        self.register_buffer("mean", mean, persistent=False)

    def forward(self, output: Any, source: Any = None) -> Any:
        return replacement(
            self.method, output, source, self.mean, self.units, self.unit_dim
        )

"""Knockout targets (the graph nodes an ablation replaces) and the operator it applies."""

from dataclasses import dataclass

import torch
from torch import fx

from ablagen.ablate import (
    ABLATIONS,
    HEAD_ABLATIONS,
    Ablation,
    HeadMeanAblation,
    MaskAblation,
    MeanAblation,
    first_input,
)

from .tally import KNOCKOUT_METHODS, Knockout


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
    if k.head is not None:  # the projection's input, when nothing else reads it
        proj = [n for n in nodes if n.op == "call_module" and n.target == k.out_proj]
        source = first_input(proj[0]) if len(proj) == 1 else None
        if source is None or len(source.users) != 1:
            raise LookupError(
                f"{k.out_proj!r} is not called once on a value only it reads"
            )
        return Target((source,), None)
    if k.call_op is not None:
        raise LookupError(f"{k.variant_id} is a run-time call-site edit")
    if k.node is not None:
        found = [n for n in nodes if n.name == k.node]
        if not found:
            raise LookupError(
                f"the traced graph has no node {k.node!r}; regenerate the script"
            )
        return Target((found[0],), first_input(found[0]))
    calls = [n for n in nodes if n.op == "call_module" and n.target == k.module]
    calls = calls if k.call_site is None else calls[k.call_site : k.call_site + 1]
    if not calls:
        raise LookupError(f"module {k.module!r} is not called in the traced graph")
    return Target(tuple(calls), first_input(calls[0]))


def ablation_for(k: Knockout, mean: torch.Tensor | None) -> Ablation:
    """The operator a knockout applies (``mean``: measured on the training data; for a
    head, the mean of the projection's whole input, per position)."""
    if k.head is not None:
        return _head_ablation(k, mean)
    kind = ABLATIONS.get(k.method)
    if kind is None:
        raise ValueError(
            f"unknown ablation method {k.method!r}; use one of {KNOCKOUT_METHODS}"
        )
    if kind is MeanAblation:
        if mean is None:
            raise ValueError(f"no mean activation was measured for {k.variant_id}")
        return MeanAblation(mean).eval()  # the measured mean, never a batch's
    if kind is MaskAblation:
        if k.units is None or k.unit_dim is None:
            raise ValueError(f"mask knockout {k.variant_id} names no units")
        return MaskAblation(k.unit_dim, *k.units)
    return kind()


def _head_ablation(k: Knockout, mean: torch.Tensor | None) -> Ablation:
    kind = HEAD_ABLATIONS.get(k.method)
    if kind is None or k.num_heads is None:
        raise ValueError(f"heads take mask or mean, not {k.method!r} ({k.variant_id})")
    if kind is not HeadMeanAblation:
        return kind(k.num_heads, k.head)
    if mean is None:
        raise ValueError(f"no mean activation was measured for {k.variant_id}")
    rows = mean.reshape(-1, mean.shape[-1]).mean(dim=0)  # over the positions too
    width = rows.shape[0] // k.num_heads
    own = rows[k.head * width : (k.head + 1) * width].clone()
    return HeadMeanAblation(k.num_heads, k.head, own).eval()

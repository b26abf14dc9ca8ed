"""Which parameters a zeroed component cuts off from the model's output.

Zeroing a component's output makes it a constant: its own parameters, and every
parameter upstream whose only way to the output ran through it, no longer affect
the output (zeroing ``conv2`` in a chain also cuts off ``conv1`` and ``bn1``).
:func:`cut_off` walks the torch.fx graph backwards from the output, stopping at the
zeroed node, and returns the trainable parameters live without it that were live
with it. A module called at several sites keeps its parameters while any live site
uses them.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch.fx as fx
from torch import nn


def parameter_users(
    model: nn.Module, graph: fx.GraphModule
) -> dict[str, frozenset[str]]:
    """Node name -> the trainable parameters (by their first name) the node reads."""
    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    users: dict[str, frozenset[str]] = {}
    for node in graph.graph.nodes:
        if node.op == "call_module":
            module = model.get_submodule(str(node.target))
            params = module.parameters()
        elif node.op == "get_attr":
            try:
                value = graph.get_parameter(str(node.target))
            except AttributeError:  # a buffer or a plain attribute
                continue
            params = iter((value,))
        else:
            continue
        owned = frozenset(names[id(p)] for p in params if id(p) in names)
        if owned:
            users[node.name] = owned
    return users


def live_parameters(
    graph: fx.GraphModule,
    users: dict[str, frozenset[str]],
    constants: Iterable[str] = (),
) -> set[str]:
    """The parameters that reach the output, with the ``constants`` nodes' outputs
    held fixed (their inputs, and what feeds only them, no longer count)."""
    stop = set(constants)
    outputs = [n for n in graph.graph.nodes if n.op == "output"]
    seen: set[str] = set()
    live: set[str] = set()
    todo = list(outputs)
    while todo:
        node = todo.pop()
        if node.name in seen:
            continue
        seen.add(node.name)
        if node.name in stop:
            continue  # a constant: neither it nor its inputs reach the output
        live |= users.get(node.name, frozenset())
        todo.extend(node.all_input_nodes)
    return live


def cut_off(
    graph: fx.GraphModule,
    users: dict[str, frozenset[str]],
    nodes: Iterable[str],
    baseline: set[str] | None = None,
) -> frozenset[str]:
    """The parameters that no longer affect the output once ``nodes`` output zeros."""
    base = live_parameters(graph, users) if baseline is None else baseline
    return frozenset(base - live_parameters(graph, users, nodes))

"""Which parameters a zeroed component cuts off from the model's output.

Zeroing a component's output makes it a constant: its own parameters, and every
parameter upstream whose only way to the output ran through it, no longer affect
the output (zeroing ``conv2`` in a chain also cuts off ``conv1`` and ``bn1``).

In graph terms: node ``X`` cuts parameter ``p`` off when ``X`` post-dominates (is
on every path to the output from) every node that reads ``p`` and reaches the
output. :func:`cut_sets` builds the post-dominator tree of the torch.fx graph once
(Cooper, Harvey and Kennedy's iterative algorithm on the reversed graph), takes for
each parameter the nearest common post-dominator of its readers, and answers every
node from that: one pass over the graph, not one walk per component. A module
called at several sites keeps its parameters while any live site reads them.
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
            params = model.get_submodule(str(node.target)).parameters()
        elif node.op == "get_attr":
            try:
                params = iter((graph.get_parameter(str(node.target)),))
            except AttributeError:  # a buffer or a plain attribute
                continue
        else:
            continue
        owned = frozenset(names[id(p)] for p in params if id(p) in names)
        if owned:
            users[node.name] = owned
    return users


def cut_sets(
    graph: fx.GraphModule,
    users: dict[str, frozenset[str]],
    nodes: Iterable[str],
) -> dict[str, frozenset[str]]:
    """For each of ``nodes`` (names): the parameters that no longer affect the output
    once that node outputs a constant."""
    ipdom, order = _post_dominators(graph)
    readers: dict[str, list[fx.Node]] = {}
    for node in order:  # only nodes that reach the output
        for param in users.get(node.name, ()):
            readers.setdefault(param, []).append(node)
    index = {node: i for i, node in enumerate(order)}
    nearest = {param: _common(found, ipdom, index) for param, found in readers.items()}
    children: dict[fx.Node, list[fx.Node]] = {}
    for node, parent in ipdom.items():
        if node is not parent:
            children.setdefault(parent, []).append(node)
    enter, leave = _intervals(order[0], children)
    by_name = {node.name: node for node in order}
    out = {}
    for name in nodes:
        node = by_name.get(name)
        if node is None:  # does not reach the output: cuts nothing off
            out[name] = frozenset()
            continue
        out[name] = frozenset(
            param
            for param, common in nearest.items()
            if enter[node] <= enter[common] and leave[common] <= leave[node]
        )
    return out


def _post_dominators(
    graph: fx.GraphModule,
) -> tuple[dict[fx.Node, fx.Node], list[fx.Node]]:
    """Immediate post-dominators, and the nodes that reach the output in reverse
    post-order of the reversed graph (the output first)."""
    output = next(n for n in graph.graph.nodes if n.op == "output")
    post: list[fx.Node] = []
    seen = {output}
    stack = [(output, iter(_value_inputs(output)))]
    while stack:
        node, inputs = stack[-1]
        for nxt in inputs:
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, iter(_value_inputs(nxt))))
                break
        else:
            stack.pop()
            post.append(node)
    order = post[::-1]
    index = {node: i for i, node in enumerate(order)}
    ipdom = {output: output}
    changed = True
    while changed:
        changed = False
        for node in order[1:]:
            done = [u for u in node.users if u in ipdom and not _shape_only(u)]
            new = _common(done, ipdom, index)
            if ipdom.get(node) is not new:
                ipdom[node] = new
                changed = True
    return ipdom, order


#: reads of a tensor's metadata: their result carries none of its values
_METADATA_METHODS = ("size", "dim", "numel")
_METADATA_ATTRS = ("shape", "dtype", "device", "ndim")


def _shape_only(node: fx.Node) -> bool:
    """Whether ``node`` reads only its input's shape (``x.size()``, ``x.shape``)."""
    if node.op == "call_method":
        return node.target in _METADATA_METHODS
    return (
        node.op == "call_function"
        and node.target is getattr
        and len(node.args) > 1
        and node.args[1] in _METADATA_ATTRS
    )


def _value_inputs(node: fx.Node) -> list[fx.Node]:
    """The inputs whose values reach ``node``'s output (none for a shape read)."""
    return [] if _shape_only(node) else node.all_input_nodes


def _common(
    found: list[fx.Node], ipdom: dict[fx.Node, fx.Node], index: dict[fx.Node, int]
) -> fx.Node:
    """The nearest common post-dominator of ``found`` (itself, for one node)."""
    common = found[0]
    for other in found[1:]:
        a, b = common, other
        while a is not b:
            while index[a] > index[b]:
                a = ipdom[a]
            while index[b] > index[a]:
                b = ipdom[b]
        common = a
    return common


def _intervals(
    root: fx.Node, children: dict[fx.Node, list[fx.Node]]
) -> tuple[dict[fx.Node, int], dict[fx.Node, int]]:
    """Entry and exit times of a depth-first walk of the tree: ``a`` is an ancestor
    of (or is) ``b`` when ``enter[a] <= enter[b]`` and ``leave[b] <= leave[a]``."""
    enter: dict[fx.Node, int] = {}
    leave: dict[fx.Node, int] = {}
    clock = 0
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        clock += 1
        if done:
            leave[node] = clock
            continue
        enter[node] = clock
        stack.append((node, True))
        stack.extend((child, False) for child in children.get(node, ()))
    return enter, leave

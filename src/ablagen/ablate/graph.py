"""Ablating a node of a traced graph: a functional call (``F.relu``, ``x.relu_()``) has no
module to hook, so its torch.fx node is edited instead."""

import inspect

import torch


from .operators import Ablation


def forward_defaults(model: torch.nn.Module, num_inputs: int = 1) -> dict:
    """The defaults of ``model.forward``'s parameters after its first ``num_inputs``."""
    later = list(inspect.signature(model.forward).parameters.values())[num_inputs:]
    return {
        p.name: p.default
        for p in later
        if p.default is not p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


def trace(model: torch.nn.Module, num_inputs: int = 1) -> torch.fx.GraphModule:
    """torch.fx's trace of ``model`` called with ``num_inputs`` tensors. The forward's
    later parameters keep their defaults: an optional ``mask=None`` or ``hidden=None``
    is traced as None (``if mask is not None`` takes the branch it takes when called
    with one tensor), not as an input."""
    defaults = forward_defaults(model, num_inputs)
    return torch.fx.symbolic_trace(model, concrete_args=defaults or None)


def out_of_place(graph: torch.fx.Graph, node: torch.fx.Node) -> torch.fx.Node:
    """An in-place call (``F.relu(h, inplace=True)``, ``h.tanh_()``) made out of place,
    and later readers of ``h`` made to read its result: an edit of it reaches them."""
    name = getattr(node.target, "__name__", node.target)
    trailing = isinstance(name, str) and name.endswith("_") and not name.endswith("__")
    if node.kwargs.get("inplace"):
        node.kwargs = {**node.kwargs, "inplace": False}
    elif trailing and node.op == "call_method":
        node.target = name[:-1]
    elif trailing and node.op == "call_function" and hasattr(torch, name[:-1]):
        node.target = getattr(torch, name[:-1])
    else:
        return node
    source, after = node.args[0], False
    for other in graph.nodes:
        if after and source in other.all_input_nodes:
            other.replace_input_with(source, node)
        after = after or other is node
    return node


def first_input(node: torch.fx.Node):
    """The first value a node reads: what goes on when the node is skipped (the knockout
    engine's targets, :func:`skip_node`; :func:`ablate_node` finds it the same way)."""
    return next((a for a in node.args if isinstance(a, torch.fx.Node)), None)


def skip_node(traced: torch.fx.GraphModule, name: str) -> None:
    """Skip node ``name`` of ``traced``: its users read its first input instead. Identity
    needs no operator, nor an in-place call made out of place: skipped, it changes
    nothing (:func:`ablate_node` with identity and no ``source`` does the same)."""
    node = next((node for node in traced.graph.nodes if node.name == name), None)
    if node is None:
        raise RuntimeError(f"no node {name!r} in the graph; regenerate the script")
    node.replace_all_uses_with(first_input(node))
    traced.graph.erase_node(node)
    traced.recompile()


def ablate_node(traced: torch.fx.GraphModule, name: str, op: Ablation, source=None):
    """Ablate node ``name`` of ``traced`` with ``op``: identity drops the call, its users
    read ``source`` (default: its first input); another op is called on its output."""
    graph = traced.graph
    found = [node for node in graph.nodes if node.name == name]
    if not found:
        raise RuntimeError(f"no node {name!r} in the graph; regenerate the script")
    node = out_of_place(graph, found[0])
    if op.passes_input:
        inputs = [arg for arg in node.args if isinstance(arg, torch.fx.Node)]
        node.replace_all_uses_with(inputs[0] if source is None else source)
        graph.erase_node(node)
    else:
        traced.add_submodule(f"ablation_{op.name}_{node.name}", op)
        with graph.inserting_after(node):
            new = graph.call_module(f"ablation_{op.name}_{node.name}", (node,))
        node.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new)
    traced.recompile()

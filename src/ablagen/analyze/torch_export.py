"""The second tracer: ``torch.export.export(..., strict=False)``, for models torch.fx
cannot trace (Hugging Face's GPT-2, BERT, ViT: ``'Proxy' object does not support item
assignment`` and the like).

torch.export runs the model's Python for real and records the ATen ops it calls,
each with the stack of modules it ran in (``nn_module_stack``), so the graph maps
back to module paths. From it the inventory takes what hooks cannot see: functional
activations (an ATen activation op called directly by a module that is not itself
an activation) and which module outputs feed a residual add. Its components are
ablated without the graph: modules by forward hooks, functional calls by a
call-site edit at run time (:func:`ablagen.ablate.ablate_call`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import fx, nn

from ablagen.ablate import CALL_NAMES
from ablagen.analyze.components import Component, Shape
from ablagen.analyze.ops import is_activation_module

_WRAPPED = "wrapped"
#: the ATen activation ops, named as :data:`ablagen.ablate.CALL_NAMES` names them
ATEN_ACTIVATIONS = frozenset(CALL_NAMES.values())
_ADDS = frozenset({"add", "add_"})


def _leaves(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):  # Hugging Face's ModelOutput is an OrderedDict
        return [leaf for item in value.values() for leaf in _leaves(item)]
    if isinstance(value, (tuple, list)):
        return [leaf for item in value for leaf in _leaves(item)]
    return []  # caches and other objects carry no output the inventory needs


class _TensorOutputs(nn.Module):
    """The model, returning only the tensors of its output (torch.export refuses
    outputs such as a ``DynamicCache``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.wrapped = model

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(_leaves(self.wrapped(*inputs)))


@dataclass(frozen=True)
class ExportGraph:
    nodes: tuple[fx.Node, ...]

    def owner(self, node: fx.Node) -> str | None:
        """The innermost module ``node`` ran in ("" for the model itself)."""
        stack = node.meta.get("nn_module_stack") or {}
        if not stack:
            return None
        path = list(stack.values())[-1][0]
        if path == _WRAPPED:
            return ""
        return path[len(_WRAPPED) + 1 :] if path.startswith(_WRAPPED + ".") else None


def export_graph(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> ExportGraph:
    """The model's ATen graph (raises whatever torch.export raises)."""
    quiet = logging.getLogger("torch")  # a failed export logs; the inventory warns
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        with torch.no_grad():
            program = torch.export.export(_TensorOutputs(model), inputs, strict=False)
    finally:
        quiet.setLevel(level)
    return ExportGraph(tuple(program.graph.nodes))


def _op_name(node: fx.Node) -> str | None:
    if node.op != "call_function":
        return None
    name = getattr(node.target, "_opname", None)
    return name if isinstance(name, str) else None


def _within(path: str | None, module: str) -> bool:
    return path is not None and (
        module == "" or path == module or path.startswith(module + ".")
    )


def _val_shape(node: Any) -> Shape | None:
    value = node.meta.get("val") if isinstance(node, fx.Node) else None
    return (
        tuple(int(d) for d in value.shape) if isinstance(value, torch.Tensor) else None
    )


def _in_activation(model: nn.Module, path: str) -> bool:
    """Whether ``path`` or a module above it is an activation (GELU's own tanh)."""
    parts = path.split(".") if path else []
    for cut in range(len(parts), -1, -1):
        if is_activation_module(model.get_submodule(".".join(parts[:cut]))):
            return True
    return False


def _upstream_layer(
    graph: ExportGraph, node: fx.Node | None, layers: set[str]
) -> str | None:
    """The nearest layer that produced ``node`` (its parameters carry a call's
    importance), following first inputs back."""
    for _ in range(32):
        if node is None or node.op != "call_function":
            return None
        owner = graph.owner(node)
        if owner in layers:
            return owner
        node = next((a for a in node.args if isinstance(a, fx.Node)), None)
    return None


def functional_activations(
    model: nn.Module, graph: ExportGraph, layers: set[str]
) -> Iterator[tuple[int, Component]]:
    """``(node index, component)`` for each ATen activation op a module calls itself."""
    seen: Counter[tuple[str, str]] = Counter()
    for position, node in enumerate(graph.nodes):
        name = _op_name(node)
        base = name[:-1] if name and name.endswith("_") else name
        owner = graph.owner(node)
        if base not in ATEN_ACTIVATIONS or owner is None:
            continue
        if _in_activation(model, owner):
            continue
        index = seen[(owner, base)]
        seen[(owner, base)] += 1
        first = next((a for a in node.args if isinstance(a, fx.Node)), None)
        in_shape, out_shape = _val_shape(first), _val_shape(node)
        same = in_shape is not None and in_shape == out_shape
        prefix = f"fn.{owner}." if owner else "fn."
        yield position, Component(
            id=f"{prefix}{base}@{index}",
            kind="activation",
            op=base,
            module=owner,
            call_site=None,
            node=None,
            input_shape=in_shape,
            output_shape=out_shape,
            params=0,
            methods=("identity", "zero", "mean") if same else ("zero", "mean"),
            feeds_residual=any(
                _op_name(u) in _ADDS and not _in_activation(model, graph.owner(u) or "")
                for u in node.users
            ),
            param_owner=_upstream_layer(graph, first, layers),
            call_op=base,
            call_index=index,
        )


#: ops that pass a value on unchanged in evaluation (a residual add reads through them)
_PASS_THROUGH = frozenset({"dropout", "native_dropout", "clone", "alias", "contiguous"})


def _readers(node: fx.Node) -> list[fx.Node]:
    """The nodes that read ``node``'s value, looking through dropout and copies."""
    found, todo = [], list(node.users)
    while todo:
        user = todo.pop()
        if _op_name(user) in _PASS_THROUGH:
            todo.extend(user.users)
        else:
            found.append(user)
    return found


def residual_feeders(
    model: nn.Module, graph: ExportGraph, modules: list[str]
) -> set[str]:
    """The modules whose output (their last op) is read by an add outside them (not
    the adds inside an activation's formula, such as GELU's ``x + 0.044715 x^3``)."""
    last: dict[str, fx.Node] = {}
    for node in graph.nodes:
        owner = graph.owner(node)
        if owner is None or node.op != "call_function":
            continue
        for module in modules:
            if _within(owner, module):
                last[module] = node
    feeders = set()
    for module, node in last.items():
        for user in _readers(node):
            owner = graph.owner(user)
            if _op_name(user) in _ADDS and owner is not None:
                if not _within(owner, module) and not _in_activation(model, owner):
                    feeders.add(module)
    return feeders


def with_export_facts(
    model: nn.Module, comps: list[Component], graph: ExportGraph
) -> list[Component]:
    """The hook inventory ``comps`` with residual flags set and functional
    activations inserted in graph order (before the first module that starts later)."""
    modules = sorted({c.module for c in comps if c.module is not None})
    feeders = residual_feeders(model, graph, modules)
    comps = [
        replace(c, feeds_residual=True) if c.module in feeders else c for c in comps
    ]
    layers = {c.module for c in comps if c.kind == "layer" and c.module}
    first: dict[str, int] = {}  # module -> index of the first node it runs
    for position, node in enumerate(graph.nodes):
        owner = graph.owner(node)
        if owner is None:
            continue
        parts = owner.split(".") if owner else []
        for cut in range(len(parts) + 1):
            first.setdefault(".".join(parts[:cut]), position)
    out = list(comps)
    for position, call in functional_activations(model, graph, layers):
        later = (
            i
            for i, c in enumerate(out)
            if c.module and c.call_op is None and first.get(c.module, -1) > position
        )
        out.insert(next(later, len(out)), call)  # before what runs after it
    return out

"""The component inventory as a tree of modules (``ablagen analyze``'s default view).

One line per module that is or holds a component, nested as the model nests them,
in graph order; a layer's neuron groups and an attention module's heads fold into
its line ("16 channels in 16 groups · mask"), a functional call site sits under the
module whose forward makes it, a module called at several sites has one line per
site. Columns line up across depths (as torchinfo's do); the text is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from io import StringIO

from rich.console import Console
from rich.text import Text
from rich.tree import Tree

from ablagen.analyze.components import Component, Inventory

#: how wide rich draws one level of the tree ("├── ", "│   ")
_GUIDE = 4
_TRACERS = {"fx": "torch.fx", "export": "torch.export", "hooks": "forward hooks"}
_COLUMNS = ("op", "kind", "input → output", "params", "methods")


@dataclass
class _Node:
    """A module of the tree: its own components, its folds, its children in order."""

    path: str
    op: str = ""
    own: list[Component] = field(default_factory=list)
    neurons: list[Component] = field(default_factory=list)
    heads: list[Component] = field(default_factory=list)
    children: list[_Node | Component] = field(default_factory=list)


def render_tree(
    inventory: Inventory, module_types: dict[str, str] | None = None
) -> str:
    """The tree as plain text. ``module_types`` names the class of each module
    (qualified name -> class name) where no component does: containers such as a
    ``Sequential`` whose shapes change are shown by name alone without it."""
    types = module_types or {}
    root = _build(inventory, types)
    rows = [(depth + 1, row) for depth, row in _rows(root, 0)]
    header = ("component", *_COLUMNS, "")
    # each column as wide as its widest cell; names end in one column at any depth
    name_width = max(_GUIDE * d + len(r[0]) for d, r in [(0, header), *rows])
    widths = [max(len(r[i]) for _, r in [(0, header), *rows]) for i in range(1, 6)]

    def line(depth: int, row: tuple[str, ...]) -> Text:
        name, *cells, extra = row
        padded = [name.ljust(name_width - _GUIDE * depth)]
        for i, (cell, width) in enumerate(zip(cells, widths)):
            padded.append(cell.rjust(width) if i == 3 else cell.ljust(width))
        if extra:
            padded.append(extra)
        return Text("  ".join(padded).rstrip(), no_wrap=True)

    tree = Tree(line(0, header), guide_style="none")
    by_depth: dict[int, Tree] = {0: tree}
    for depth, row in rows:
        by_depth[depth] = by_depth[depth - 1].add(line(depth, row))
    width = name_width + sum(widths) + 200
    console = Console(
        file=StringIO(), width=width, color_system=None, legacy_windows=False
    )
    title = (
        f"{inventory.model}: {len(inventory.components)} components, "
        f"{sum(_numel(s) for _, s in inventory.parameters):,} parameters "
        f"(read by {_TRACERS.get(inventory.tracer, inventory.tracer)})"
    )
    console.print(title, no_wrap=True, crop=False, markup=False, highlight=False)
    console.print(tree, crop=False)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    return "\n".join(ln.rstrip() for ln in text.splitlines()) + "\n"


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


# --------------------------------------------------------------------------- build


def _build(inventory: Inventory, types: dict[str, str]) -> _Node:
    root = _Node("")
    nodes: dict[str, _Node] = {"": root}

    def node(path: str) -> _Node:
        if path not in nodes:
            parent = node(path.rpartition(".")[0] if "." in path else "")
            nodes[path] = _Node(path, types.get(path, ""))
            parent.children.append(nodes[path])
        return nodes[path]

    for comp in inventory.components:
        if comp.kind == "neuron" and comp.module is not None:
            node(comp.module).neurons.append(comp)
        elif comp.kind == "head" and comp.module is not None:
            node(comp.module).heads.append(comp)
        elif comp.module is None or comp.call_op is not None:
            # a functional call: under the module whose forward makes it
            owner = comp.module if comp.module is not None else None
            if owner is None:
                owner = inventory.callers.get(comp.id, "")
            node(owner).children.append(comp)
        else:
            target = node(comp.module)
            target.own.append(comp)
            target.op = target.op or comp.op
    return root


# --------------------------------------------------------------------------- rows

_Row = tuple[str, str, str, str, str, str, str]


def _rows(parent: _Node, depth: int):
    """(depth, row) in tree order: a module's first line carries its children."""
    for child in parent.children:
        if isinstance(child, Component):
            yield depth, _component_row(child, "")
            continue
        folds = _folds(child)
        if child.own:
            first, *more = child.own
            yield depth, _component_row(first, folds)
        else:
            yield depth, (child.path, child.op, "", "", "", "", folds)
        yield from _rows(child, depth + 1)
        for comp in more if child.own else []:
            yield depth, _component_row(comp, "")


def _component_row(comp: Component, folds: str) -> _Row:
    extra = " · ".join(
        x for x in ("residual" if comp.feeds_residual else "", folds) if x
    )
    return (
        comp.id,
        comp.op,
        comp.kind,
        _shapes(comp),
        f"{comp.params:,}",
        ",".join(comp.methods),
        extra,
    )


def _folds(node: _Node) -> str:
    parts = []
    if node.neurons:
        units = sum(c.units[1] - c.units[0] for c in node.neurons if c.units)
        word = "channels" if node.neurons[0].op.startswith("Conv") else "units"
        methods = ",".join(node.neurons[0].methods)
        parts.append(f"{units} {word} in {len(node.neurons)} groups · {methods}")
    if node.heads:
        methods = ",".join(node.heads[0].methods)
        parts.append(f"{len(node.heads)} heads · {methods}")
    return " · ".join(parts)


def _shapes(comp: Component) -> str:
    if comp.input_shape is None and comp.output_shape is None:
        return ""
    return f"{_shape(comp.input_shape)} → {_shape(comp.output_shape)}"


def _shape(shape) -> str:
    return "?" if shape is None else "x".join(str(d) for d in shape)

"""Build the component inventory of a model.

Three tracers, in order. torch.fx: ``symbolic_trace`` and ``ShapeProp``; layers,
activations (module and functional call sites) and residual adds are read off the
graph; blocks (non-leaf submodules whose input and output shapes match) come from one
hooked forward pass (:mod:`ablagen.analyze.observe`). torch.export (non-strict), for
models fx cannot trace (Hugging Face's): the hooked pass lists the modules, the ATen
graph adds functional activations and residual adds (:mod:`ablagen.analyze.torch_export`).
Models neither can capture fall back to the hooked pass alone, with one warning
saying what is not visible. Attention heads (:mod:`ablagen.analyze.attention`) come
from the module structure, whatever the tracer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import replace

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from ablagen.analyze.components import Component, Inventory, Shape
from ablagen.analyze.cuts import cut_sets, parameter_users
from ablagen.analyze.torch_export import export_graph, with_export_facts
from ablagen.analyze.attention import AttentionSite, find_attention, head_ranges
from ablagen.analyze.observe import Call, observe_calls
from ablagen.ablate import trace
from ablagen.analyze.ops import (
    ACTIVATION_FUNCTIONS,
    ACTIVATION_METHODS,
    ADD_FUNCTIONS,
    ADD_METHODS,
    is_activation_module,
    is_conv1d,
    own_params,
    unit_count,
)
from ablagen.analyze.loading import LoadedModel

#: a layer with at most this many output units gets one neuron component per unit;
#: a wider one is split into this many contiguous groups (``--neuron-groups`` overrides)
DEFAULT_MAX_UNITS = 32


def analyze(loaded: LoadedModel, neuron_groups: int | None = None) -> Inventory:
    """The inventory of a loaded model (see :func:`build_inventory`)."""
    return build_inventory(
        loaded.model, loaded.example_inputs, loaded.ref.label, neuron_groups
    )


def build_inventory(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    label: str = "model",
    neuron_groups: int | None = None,
) -> Inventory:
    model.eval()
    calls = observe_calls(model, inputs)
    parameters = tuple(
        (n, tuple(p.shape)) for n, p in model.named_parameters() if p.requires_grad
    )
    shapes = tuple(tuple(t.shape) for t in inputs)
    sites, problems = find_attention(model)
    try:
        graph = trace(model, len(inputs))
        ShapeProp(graph).propagate(*inputs)
    except Exception as exc:  # any tracing failure means: try the next tracer
        fx_error = exc
    else:
        comps = _with_heads(
            model, _from_graph(model, graph, calls, neuron_groups), sites
        )
        comps, cuts = _with_cuts(model, graph, comps)
        return Inventory(
            label,
            True,
            shapes,
            tuple(comps),
            parameters,
            tuple(problems),
            "fx",
            cuts,
            _callers(graph, comps),
        )
    hooked = list(_from_calls(model, calls, neuron_groups))
    try:
        exported = export_graph(model, inputs)
    except Exception as exc:  # neither tracer: the hook inventory, with one warning
        warning = (
            f"neither torch.fx nor torch.export could trace {label} "
            f"({_reason(fx_error)}; {_reason(exc)}); listed modules only: functional "
            "activations (F.relu, x.relu(), ...) and residual adds are not visible"
        )
        comps = _with_heads(model, hooked, sites)
        warnings = (warning, *problems)
        return Inventory(
            label, False, shapes, tuple(comps), parameters, warnings, "hooks"
        )
    comps = _with_heads(model, with_export_facts(model, hooked, exported), sites)
    return Inventory(
        label, False, shapes, tuple(comps), parameters, tuple(problems), "export"
    )


def _with_cuts(
    model: nn.Module, graph: fx.GraphModule, comps: list[Component]
) -> tuple[list[Component], dict[str, frozenset[str]]]:
    """Each zeroable layer, activation and block with the parameters zeroing it cuts
    off from the output (:mod:`ablagen.analyze.cuts`)."""
    users = parameter_users(model, graph)
    if not users:
        return comps, {}
    nodes = list(graph.graph.nodes)
    at: dict[str, str] = {}  # component id -> the node whose output it is
    for comp in comps:
        if comp.kind == "block":
            inside = [n.name for n in nodes if _within(_owner_module(n), comp.id)]
            if inside:
                at[comp.id] = inside[-1]
        elif comp.kind in ("layer", "activation") and comp.node is not None:
            at[comp.id] = comp.node
    sets = cut_sets(graph, users, set(at.values()))
    numel = {n: p.numel() for n, p in model.named_parameters()}
    out, cuts = [], {}
    for comp in comps:
        if comp.id not in at:
            out.append(comp)
            continue
        cut = cuts[comp.id] = sets[at[comp.id]]
        count = sum(numel[n] for n in cut)
        own = 0 if comp.call_site is not None else comp.params
        out.append(replace(comp, cut_params=count) if count > own else comp)
    return out, cuts


def _callers(graph: fx.GraphModule, comps: list[Component]) -> dict[str, str]:
    """Each functional call site with the module whose forward makes the call."""
    nodes = {n.name: n for n in graph.graph.nodes}
    return {
        c.id: _owner_module(nodes[c.node]) or ""
        for c in comps
        if c.module is None and c.node in nodes
    }


def _reason(exc: BaseException) -> str:
    line = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {line[:100]}" if line else type(exc).__name__


# --------------------------------------------------------------------------- heads


def _head_components(model: nn.Module, site: AttentionSite) -> list[Component]:
    shapes = dict(model.named_parameters())
    comps = []
    for head, start, stop in head_ranges(site):
        slices = site.head_slices(head)
        params = 0
        for name, dim, a, b in slices:
            tensor = shapes.get(name)
            if tensor is not None:
                params += tensor.numel() // tensor.shape[dim] * (b - a)
        comps.append(
            Component(
                id=site.head_id(head),
                kind="head",
                op=site.op,
                module=site.name,
                call_site=None,
                node=None,
                input_shape=None,
                output_shape=None,
                params=params,
                methods=("mask", "mean"),
                param_owner=site.name,
                units=(start, stop),
                unit_dim=-1,
                head=head,
                num_heads=site.num_heads,
                out_proj=site.out_proj,
                slices=slices,
            )
        )
    return comps


def _with_heads(
    model: nn.Module, comps: list[Component], sites: list[AttentionSite]
) -> list[Component]:
    """``comps`` with each attention module's heads just before its output projection
    (they are its input), or after the attention module where the projection is not
    listed on its own (``nn.MultiheadAttention``), else at the end."""
    out = list(comps)
    for site in sites:
        heads = _head_components(model, site)
        spot = next((i for i, c in enumerate(out) if c.id == site.out_proj), None)
        if spot is None:
            after = [i for i, c in enumerate(out) if c.module == site.name]
            spot = after[-1] + 1 if after else len(out)
        out[spot:spot] = heads
    return out


# --------------------------------------------------------------------------- traced


def _meta_shape(node: fx.Node | object) -> Shape | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if isinstance(meta, TensorMetadata) else None


def _first_node_arg(node: fx.Node) -> fx.Node | None:
    return next((a for a in node.args if isinstance(a, fx.Node)), None)


def _is_add(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in ADD_FUNCTIONS) or (
        node.op == "call_method" and node.target in ADD_METHODS
    )


def _feeds_add(node: fx.Node) -> bool:
    return any(_is_add(user) for user in node.users)


def _owner_module(node: fx.Node) -> str | None:
    """The innermost module a node was traced in, if any."""
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else None


def _upstream_param_owner(node: fx.Node, root: nn.Module) -> str | None:
    """The nearest module with parameters that produced ``node``'s input."""
    current = _first_node_arg(node)
    for _ in range(32):
        if current is None or current.op == "placeholder":
            return None
        if current.op == "call_module":
            mod = root.get_submodule(str(current.target))
            if own_params(mod) and not is_activation_module(mod):
                return str(current.target)
        current = _first_node_arg(current)
    return None


def _module_methods(
    in_shape: Shape | None, out_shape: Shape | None, tensor_out: bool
) -> tuple[str, ...]:
    if not tensor_out:
        return ("zero",)
    if in_shape is not None and in_shape == out_shape:
        return ("identity", "zero", "mean")
    return ("zero", "mean")


#: where a component sits relative to the graph node it is keyed on: blocks open
#: before their first node, then the node's own layer or activation, then its groups
_BEFORE_NODE, _AT_NODE, _AFTER_NODE = 0, 1, 2

#: graph order as integers: (node index, slot, group index); ties broken by id
_Place = tuple[int, int, int]


def looped_layers(model: nn.Module, calls: list[Call]) -> frozenset[str]:
    """Layers with parameters called more than once from one line of code: a cell
    stepped over time in a loop, a layer reused across iterations. Their weights act
    at every step, so they are one component (ablated at every call), not one per
    step (a 200-step loop would give 200 of them)."""
    from_line = Counter((c.module, c.line) for c in calls if c.line is not None)
    return frozenset(
        name
        for (name, _), n in from_line.items()
        if n > 1 and own_params(model.get_submodule(name))
    )


def _from_graph(
    model: nn.Module,
    graph: fx.GraphModule,
    calls: list[Call],
    neuron_groups: int | None,
) -> list[Component]:
    nodes = list(graph.graph.nodes)
    site_total = Counter(str(n.target) for n in nodes if n.op == "call_module")
    site_seen: Counter[str] = Counter()
    looped = looped_layers(model, calls)
    placed: list[tuple[_Place, Component]] = []
    for index, node in enumerate(nodes):
        if node.op == "call_module":
            target = str(node.target)
            site = site_seen[target]
            site_seen[target] += 1
            if target in looped and site:
                continue  # one component for every call (see looped_layers)
            module = model.get_submodule(target)
            many = site_total[target] > 1 and target not in looped
            comp_id = f"{target}@{site}" if many else target
            in_shape, out_shape = _meta_shape(_first_node_arg(node)), _meta_shape(node)
            tensor_out = out_shape is not None
            common = dict(
                id=comp_id,
                op=type(module).__name__,
                module=target,
                call_site=site if many else None,
                node=node.name,
                input_shape=in_shape,
                output_shape=out_shape,
                params=own_params(module),
                feeds_residual=_feeds_add(node),
            )
            if is_activation_module(module):
                owner = _upstream_param_owner(node, model)
                methods = _module_methods(in_shape, out_shape, tensor_out)
                placed.append(
                    (
                        (index, _AT_NODE, 0),
                        Component(
                            kind="activation",
                            methods=methods,
                            param_owner=owner,
                            **common,
                        ),
                    )
                )
            elif own_params(module):
                methods = _module_methods(in_shape, out_shape, tensor_out)
                placed.append(
                    (
                        (index, _AT_NODE, 0),
                        Component(
                            kind="layer", methods=methods, param_owner=target, **common
                        ),
                    )
                )
                if site == 0:
                    for k, comp in enumerate(
                        _neurons(target, module, out_shape, neuron_groups)
                    ):
                        placed.append(((index, _AFTER_NODE, k), comp))
        elif _is_functional_activation(node):
            op = ACTIVATION_FUNCTIONS.get(node.target, str(node.target))
            in_shape, out_shape = _meta_shape(_first_node_arg(node)), _meta_shape(node)
            comp = Component(
                id=f"fn.{node.name}",
                kind="activation",
                op=op,
                module=None,
                call_site=None,
                node=node.name,
                input_shape=in_shape,
                output_shape=out_shape,
                params=0,
                methods=_module_methods(in_shape, out_shape, out_shape is not None),
                feeds_residual=_feeds_add(node),
                param_owner=_upstream_param_owner(node, model),
            )
            placed.append(((index, _AT_NODE, 0), comp))
    for comp, first_index in _blocks(model, nodes, calls):
        placed.append(((first_index, _BEFORE_NODE, 0), comp))
    placed.sort(key=lambda item: (item[0], item[1].id))
    return [comp for _, comp in placed]


def _is_functional_activation(node: fx.Node) -> bool:
    if node.op == "call_function":
        try:
            return node.target in ACTIVATION_FUNCTIONS
        except TypeError:  # unhashable target
            return False
    return node.op == "call_method" and node.target in ACTIVATION_METHODS


def _blocks(
    model: nn.Module, nodes: list[fx.Node], calls: list[Call]
) -> Iterator[tuple[Component, int]]:
    by_module: dict[str, list[Call]] = {}
    for call in calls:
        by_module.setdefault(call.module, []).append(call)
    for name, module in model.named_modules():
        if not name or not any(True for _ in module.children()):
            continue
        module_calls = by_module.get(name, [])
        if len(module_calls) != 1:
            continue  # never run, or shared between call sites: not ablatable as a whole
        call = module_calls[0]
        if not call.tensor_out or call.input_shape != call.output_shape:
            continue
        inside = [i for i, n in enumerate(nodes) if _within(_owner_module(n), name)]
        if not inside:
            continue
        last = nodes[inside[-1]]
        yield (
            Component(
                id=name,
                kind="block",
                op=type(module).__name__,
                module=name,
                call_site=None,
                node=None,
                input_shape=call.input_shape,
                output_shape=call.output_shape,
                params=own_params(module),
                methods=("identity", "zero", "mean"),
                feeds_residual=_feeds_add(last)
                and not all(_within(_owner_module(u), name) for u in last.users),
                param_owner=name,
            ),
            inside[0],
        )


def _within(qualname: str | None, block: str) -> bool:
    return qualname is not None and (
        qualname == block or qualname.startswith(block + ".")
    )


# --------------------------------------------------------------------------- neurons


def neuron_ranges(units: int, groups: int | None) -> list[tuple[int, int]]:
    """Contiguous ``[start, stop)`` unit ranges: ``groups`` of them, sizes differing by <= 1."""
    count = min(units, groups if groups is not None else DEFAULT_MAX_UNITS)
    base, extra = divmod(units, count)
    ranges, start = [], 0
    for k in range(count):
        stop = start + base + (1 if k < extra else 0)
        ranges.append((start, stop))
        start = stop
    return ranges


def _neurons(
    name: str, module: nn.Module, out_shape: Shape | None, groups: int | None
) -> Iterator[Component]:
    info = unit_count(module)
    if info is None:
        return
    units, dim = info
    weight = getattr(module, "weight", None)
    per_unit = own_params(module) // units if weight is not None else 0
    transposed = is_conv1d(module)  # weight (in, out): its units are columns
    for start, stop in neuron_ranges(units, groups):
        label = f"{name}[{start}]" if stop - start == 1 else f"{name}[{start}:{stop}]"
        slices = None
        if transposed:
            slices = ((f"{name}.weight", 1, start, stop),)
            if getattr(module, "bias", None) is not None:
                slices += ((f"{name}.bias", 0, start, stop),)
        yield Component(
            id=label,
            kind="neuron",
            op=type(module).__name__,
            module=name,
            call_site=None,
            node=None,
            input_shape=None,
            output_shape=out_shape,
            params=per_unit * (stop - start),
            methods=("mask",),
            param_owner=name,
            units=(start, stop),
            unit_dim=dim,
            slices=slices,
        )


# --------------------------------------------------------------------------- fallback


def _from_calls(
    model: nn.Module, calls: list[Call], neuron_groups: int | None
) -> Iterator[Component]:
    """Hook-based inventory for models torch.fx cannot trace."""
    totals = Counter(c.module for c in calls)
    looped = looped_layers(model, calls)
    last_param_layer: str | None = None
    for call in calls:
        if call.module in looped and call.site:
            continue  # one component for every call (see looped_layers)
        module = model.get_submodule(call.module)
        many = totals[call.module] > 1 and call.module not in looped
        leaf = not any(True for _ in module.children())
        common = dict(
            id=f"{call.module}@{call.site}" if many else call.module,
            op=type(module).__name__,
            module=call.module,
            call_site=call.site if many else None,
            node=None,
            input_shape=call.input_shape,
            output_shape=call.output_shape,
            params=own_params(module),
        )
        methods = _module_methods(call.input_shape, call.output_shape, call.tensor_out)
        if leaf and is_activation_module(module):
            yield Component(
                kind="activation",
                methods=methods,
                param_owner=last_param_layer,
                **common,
            )
        elif leaf and own_params(module):
            last_param_layer = call.module
            yield Component(
                kind="layer", methods=methods, param_owner=call.module, **common
            )
            if call.site == 0:
                yield from _neurons(
                    call.module, module, call.output_shape, neuron_groups
                )
        elif (
            not leaf
            and not many
            and call.tensor_out
            and call.input_shape == call.output_shape
        ):
            yield Component(
                kind="block",
                methods=("identity", "zero", "mean"),
                param_owner=call.module,
                **common,
            )

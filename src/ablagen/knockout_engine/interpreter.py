"""Running a traced graph node by node, and the probe: per-sample values, in-place writes."""

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import fx

from .values import _leaves, _nbytes, _tensors

# ---------------------------------------------- running a traced graph


def _run(gm: fx.GraphModule, node: fx.Node, env: dict[fx.Node, Any]) -> Any:
    args, kwargs = fx.node.map_arg(node.args, env.__getitem__), fx.node.map_arg(
        node.kwargs, env.__getitem__
    )
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    if node.op == "call_module":
        return gm.get_submodule(node.target)(*args, **kwargs)
    if node.op == "get_attr":
        value: Any = gm
        for name in node.target.split("."):
            value = getattr(value, name)
        return value
    return args[0]  # the output node


def _forward(
    gm: fx.GraphModule,
    x: torch.Tensor,
    after: Callable[[fx.Node, dict], None] | None = None,
) -> dict:
    """Every node's output on ``x``; ``after(node, env)`` sees each one as it is made."""
    env: dict[fx.Node, Any] = {}
    for node in gm.graph.nodes:
        if node.op != "placeholder":
            env[node] = _run(gm, node, env)
        elif env and not node.args:
            raise RuntimeError(
                f"the model takes a second input ({node.name}); knockout feeds one tensor"
            )
        else:
            env[node] = node.args[0] if env else x  # later placeholders: their defaults
        if after is not None:
            after(node, env)
    return env


# ---------------------------------------------- the probe: per-sample values, in-place writes


@dataclass(frozen=True)
class GraphFacts:
    """What the probe learned about a traced model (see :func:`inspect_graph`)."""

    gm: fx.GraphModule
    nodes: tuple[fx.Node, ...]
    index: dict[fx.Node, int]
    batched: frozenset[fx.Node]  # per-sample values, samples along dim 0: stackable
    fixed: frozenset[fx.Node]  # the same shape at every batch size
    mutates: dict[
        fx.Node, frozenset[fx.Node]
    ]  # node -> the earlier values it writes into
    sample_bytes: dict[fx.Node, int]  # bytes per sample of each batched value
    static_bytes: int  # bytes of the fixed values that are not parameters
    unsafe: str | None  # why cached values cannot be trusted, if they cannot
    # numbers read off shapes -- the batch size (``x.size(0)``), or one the same at
    # every batch size (``x.size(1)``): right for stacked copies too where they are
    # recomputed from the stacked value (a subgraph node), not read from the cache
    shape_numbers: frozenset[fx.Node] = frozenset()

    @property
    def volatile(self) -> frozenset[fx.Node]:
        return frozenset(node for written in self.mutates.values() for node in written)


def _watch_writes(
    mutates: dict[fx.Node, frozenset[fx.Node]],
) -> Callable[[fx.Node, dict], None]:
    """An ``after`` hook: tensor version counters tell which node wrote into which value."""
    born: dict[fx.Node, tuple[int, ...]] = {}
    sharing: dict[int, list[fx.Node]] = defaultdict(list)
    versions = lambda value: tuple(t._version for t in _tensors(value))  # noqa: E731

    def after(node: fx.Node, env: dict) -> None:
        storages = {
            t.untyped_storage().data_ptr()
            for a in node.all_input_nodes
            for t in _tensors(env[a])
        }
        written = {
            other
            for s in storages
            for other in sharing[s]
            if versions(env[other]) != born[other]
        }
        born.update({other: versions(env[other]) for other in written})
        if written:
            mutates[node] = frozenset(written)
        born[node] = versions(env[node])
        for t in _tensors(env[node]):
            sharing[t.untyped_storage().data_ptr()].append(node)

    return after


def _classify(two: Any, three: Any) -> str:
    """ "batched" (per-sample rows along dim 0), "fixed" (no batch size in it), "size"
    (the batch size itself) or "other"."""
    if type(two) is int and type(three) is int and (two, three) == (2, 3):
        return "size"
    a, b = _leaves(two), _leaves(three)
    kinds = set() if len(a) == len(b) else {"other"}
    for x, y in zip(a, b):
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            rows = (
                x.dim() > 0
                and (x.shape[0], y.shape[0]) == (2, 3)
                and x.shape[1:] == y.shape[1:]
            )
            same = rows and (
                torch.allclose(x, y[:2], rtol=1e-4, atol=1e-5, equal_nan=True)
                if x.is_floating_point() or x.is_complex()
                else torch.equal(x, y[:2])
            )
            kinds.add("batched" if same else "fixed" if x.shape == y.shape else "other")
        else:
            kinds.add(
                "fixed"
                if type(x) is type(y) and not isinstance(x, torch.Tensor) and x == y
                else "other"
            )
    return kinds.pop() if len(kinds) == 1 else "other" if kinds else "fixed"


def functionalize(
    gm: fx.GraphModule, x: torch.Tensor
) -> tuple[dict, dict[fx.Node, frozenset[fx.Node]]]:
    """Run ``gm`` on ``x`` watching in-place writes; where an op returns the tensor it wrote
    into (``out.add_(y)``, ``ReLU(inplace=True)``), later readers of that tensor are
    rewired to read the op's result, so the graph's edges carry the data flow.
    Returns the node outputs and which node wrote into which values."""
    mutates: dict[fx.Node, frozenset[fx.Node]] = {}
    with torch.no_grad():
        env = _forward(gm, x, _watch_writes(mutates))
    index = {node: i for i, node in enumerate(gm.graph.nodes)}
    for node, written in mutates.items():
        for value in [v for v in written if _is_same_tensor(env[node], env[v])]:
            for user in [u for u in value.users if index[u] > index[node]]:
                user.replace_input_with(value, node)
    gm.recompile()
    return env, mutates


def _is_same_tensor(a: Any, b: Any) -> bool:
    same = (
        isinstance(a, torch.Tensor)
        and isinstance(b, torch.Tensor)
        and a.data_ptr() == b.data_ptr()
    )
    return same and a.shape == b.shape and a.stride() == b.stride()


def inspect_graph(gm: fx.GraphModule, x: torch.Tensor) -> GraphFacts:
    """Probe ``gm`` (functionalized in place) on the first samples of ``x``, batched 2 and 3."""
    rows = torch.arange(3, device=x.device) % len(x)
    state = dict(gm.state_dict(keep_vars=True))
    versions = {name: t._version for name, t in state.items()}
    buffers = {name: b.detach().clone() for name, b in gm.named_buffers()}
    two, mutates = functionalize(gm, x[rows[:2]])
    with torch.no_grad():
        three = _forward(gm, x[rows])
    unsafe = None
    for name in [name for name, t in state.items() if t._version != versions[name]]:
        if name in buffers:
            state[name].data.copy_(buffers[name])  # the probe leaves no trace
        unsafe = f"the model changes {name} during a forward pass"
    nodes = tuple(gm.graph.nodes)
    index = {node: i for i, node in enumerate(nodes)}
    for node, written in mutates.items():
        for value in written:
            late = [u.name for u in value.users if index[u] > index[node]]
            if late or value.op == "get_attr":
                unsafe = f"{node.name} writes into {value.name} in place and {late or 'the model'} reads it later"
    kinds = {node: _classify(two[node], three[node]) for node in nodes}
    batched = frozenset(n for n in nodes if kinds[n] == "batched")
    fixed = frozenset(n for n in nodes if kinds[n] == "fixed")
    sizes = frozenset(
        n
        for n in nodes
        if kinds[n] == "size" or (kinds[n] == "fixed" and not _tensors(two[n]))
    )
    sample_bytes = {n: max(0, _nbytes(three[n]) - _nbytes(two[n])) for n in batched}
    static = sum(_nbytes(two[n]) for n in fixed if n.op != "get_attr")
    return GraphFacts(
        gm, nodes, index, batched, fixed, mutates, sample_bytes, static, unsafe, sizes
    )

"""Knockout evaluation: every ablation of one trained model, scored on held-out data.

Self-contained on purpose: it imports only the standard library and torch, because
ablagen embeds this source verbatim into every generated ``knockout.py``
(``ablagen.codegen.knockout_block``). Edit it here, never in a script.

Fast path (traced models): a forward pass over a chunk of validation data caches every
node's output; an ablation changes only the descendants of the node it replaces, so a
generated GraphModule recomputes only those, reading the cache for the rest. Ablations
of the same node run together, K copies stacked along the batch dimension, K bounded by
a memory budget. A probe on 2 and 3 samples finds the per-sample values (stacking them
is exact) and the nodes that write into their inputs in place (they get copies).
Naive path (the reference, and untraceable models): a fresh copy of the model per
ablation, with a forward hook or an edited graph.
"""

import copy
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import fx, nn

KNOCKOUT_METHODS = ("identity", "zero", "mean", "mask")
CPU_MAX_ROWS = 256  # on CPU, bigger stacks fall out of cache and get slower per sample


@dataclass(frozen=True)
class Knockout:
    """One ablation. ``node``: one torch.fx node (a call site or functional call);
    ``module`` + ``block``: a block, replaced at its output; ``module`` alone: every
    call of that module, or only call number ``call_site``."""

    variant_id: str
    method: str  # identity | zero | mean | mask
    module: str | None = None
    node: str | None = None
    call_site: int | None = None
    block: bool = False
    units: tuple[int, int] | None = None  # mask: output units [start, stop)
    unit_dim: int | None = None  # mask: the dimension that holds the units
    ablated_params: int = 0  # parameters that no longer affect the output


@dataclass(frozen=True)
class Metrics:
    loss: float  # mean loss per sample
    accuracy: float  # share of correct predictions (0 for regression)
    samples: int


@dataclass(frozen=True)
class Score:
    variant_id: str
    status: str  # "ok" | "failed" | "skipped" (the fast path cannot take it; see error)
    metrics: Metrics | None
    path: str  # "fast" | "naive"
    error: str | None = None


@dataclass(frozen=True)
class KnockoutReport:
    baseline: Metrics  # the unablated model
    scores: tuple[Score, ...]  # one per knockout, in the order given
    path: str  # "fast" | "naive" | "mixed"
    notes: tuple[str, ...]  # why some knockouts took the naive path
    stats: dict[str, Any]  # memory and time of the fast path


LossFn = Callable[[Any, torch.Tensor], torch.Tensor]  # the mean loss of a batch
CorrectFn = Callable[
    [Any, torch.Tensor], tuple[float, int]
]  # (right, counted) in a batch

# ---------------------------------------------- values: tensors, or tuples / lists / dicts of them


def _zip(fn: Callable[..., Any], values: list[Any]) -> Any:
    """``fn`` over the matching tensors of values that share one structure."""
    first = values[0]
    if isinstance(first, torch.Tensor):
        return fn(*values)
    if isinstance(first, (tuple, list)):
        items = [_zip(fn, [v[i] for v in values]) for i in range(len(first))]
        return type(first)(*items) if hasattr(first, "_fields") else type(first)(items)
    if isinstance(first, dict):
        return {key: _zip(fn, [v[key] for v in values]) for key in first}
    return first


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, (tuple, list, dict)):
        return [
            leaf
            for item in (value.values() if isinstance(value, dict) else value)
            for leaf in _leaves(item)
        ]
    return [value]


def _tensors(value: Any) -> list[torch.Tensor]:
    return [leaf for leaf in _leaves(value) if isinstance(leaf, torch.Tensor)]


def _nbytes(value: Any) -> int:
    return sum(t.numel() * t.element_size() for t in _tensors(value))


def _clone(value: Any) -> Any:
    return _zip(torch.clone, [value])


def _copy_k(value: Any, k: int, n: int) -> Any:
    """Copy ``k`` (``n`` samples) of a stacked value."""
    return _zip(lambda t: t[k * n : (k + 1) * n], [value])


def _apply(replace: Callable[[Any], Any], raw: Any) -> Any:
    """A subgraph node: the replaced output, made from the unablated one."""
    return replace(raw)


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
    """ "batched" (per-sample rows along dim 0), "fixed" (no batch size in it) or "other"."""
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
    sample_bytes = {n: max(0, _nbytes(three[n]) - _nbytes(two[n])) for n in batched}
    static = sum(_nbytes(two[n]) for n in fixed if n.op != "get_attr")
    return GraphFacts(
        gm, nodes, index, batched, fixed, mutates, sample_bytes, static, unsafe
    )


# ---------------------------------------------- targets and replacements


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


def activation_means(
    model: nn.Module,
    knockouts: list[Knockout],
    x_train: torch.Tensor,
    batch_size: int = 256,
    traced: bool = True,
) -> dict[str, torch.Tensor]:
    """Per-position mean over the samples of ``x_train`` of each "mean" knockout's output,
    measured on the traced graph where it has a node, else with a forward hook."""
    gm = fx.symbolic_trace(model) if traced else None
    if gm is not None:
        functionalize(gm, x_train[:2])
    keys: dict[str, Any] = {}
    for k in [k for k in knockouts if k.method == "mean"]:
        try:  # a node name on the graph, else (module, call site) for a hook
            keys[k.variant_id] = (
                resolve(list(gm.graph.nodes), k).nodes[0].name
                if gm
                else (k.module, k.call_site)
            )
        except LookupError:
            continue  # that knockout fails for want of a mean, not the others
    sums: dict[Any, list[Any]] = {
        key: [0.0, 0, None] for key in keys.values()
    }  # sum, count, dtype

    def add(key: Any, value: torch.Tensor) -> None:
        sums[key] = [
            sums[key][0] + value.sum(dim=0, dtype=torch.float64),
            sums[key][1] + len(value),
            value.dtype,
        ]

    hooked = copy.deepcopy(model) if sums and gm is None else None
    for key in sums if hooked is not None else ():
        _hook(
            hooked,
            str(key[0]),
            key[1],
            lambda output, source, key=key: add(key, output),
        )
    model.eval()
    with torch.no_grad():
        for start in range(0, len(x_train) if sums else 0, batch_size):
            if hooked is not None:
                hooked(x_train[start : start + batch_size])
            else:
                seen = lambda n, env: (
                    add(n.name, env[n]) if n.name in sums else None
                )  # noqa: E731
                _forward(gm, x_train[start : start + batch_size], seen)
    return {
        vid: (sums[key][0] / sums[key][1]).to(sums[key][2])
        for vid, key in keys.items()
        if sums[key][1]
    }


# ---------------------------------------------- fast path


@dataclass(frozen=True)
class _Plan:
    """The knockouts that replace the same nodes, and the subgraph downstream of those."""

    members: tuple[tuple[Knockout, Target], ...]
    reads: tuple[fx.Node, ...]  # cached values the subgraph reads
    raws: tuple[fx.Node, ...]  # targets whose unablated output comes from the cache
    rerun: frozenset[fx.Node]  # targets downstream of an earlier target: recomputed
    sub: fx.GraphModule  # (*reads, *raws, *replacers) -> the model's output
    stackable: bool  # every value involved is per-sample: copies can be stacked
    sample_bytes: int  # peak bytes held per sample and copy (inputs and intermediates)


def _plan(facts: GraphFacts, members: list[tuple[Knockout, Target]]) -> _Plan:
    targets = members[0][1].nodes
    affected = set(targets) | {facts.nodes[-1]}
    for node in facts.nodes[facts.index[targets[0]] :]:
        if any(a in affected for a in node.all_input_nodes):
            affected.add(node)
    order = [n for n in facts.nodes if n in affected]
    rerun = frozenset(
        t for t in targets if any(a in affected for a in t.all_input_nodes)
    )
    raws = tuple(t for t in targets if t not in rerun)
    needed = {a for o in order if o not in raws for a in o.all_input_nodes}
    reads = tuple(n for n in facts.nodes if n in needed and n not in affected)
    graph = fx.Graph()
    env = {n: graph.placeholder(f"read_{n.name}") for n in reads}
    raw = {t: graph.placeholder(f"raw_{t.name}") for t in raws}
    replacers = {t: graph.placeholder(f"replace_{t.name}") for t in targets}
    for node in order:
        if node.op == "output":
            graph.output(fx.node.map_arg(node.args[0], env.__getitem__))
            continue
        if node in raw:
            made = raw[node]
        elif node in facts.mutates:  # it writes into its inputs: give it copies
            copies = {
                a: graph.call_function(_clone, (env[a],)) for a in node.all_input_nodes
            }
            made = graph.node_copy(node, copies.__getitem__)
        else:
            made = graph.node_copy(node, env.__getitem__)
        env[node] = (
            graph.call_function(_apply, (replacers[node], made))
            if node in targets
            else made
        )
    stackable = all(n in facts.batched for n in order) and all(
        n in facts.batched or n in facts.fixed for n in reads
    )
    size = facts.sample_bytes.get
    held = peak = sum(size(n, 0) for n in reads)
    last = {a: n for n in order for a in n.all_input_nodes}
    for node in order:
        peak = max(peak, held + size(node, 0) * (2 if node in targets else 1))
        held += size(node, 0) - sum(
            size(a, 0)
            for a in node.all_input_nodes
            if last[a] is node and a in affected
        )
    sub = fx.GraphModule(facts.gm, graph)
    return _Plan(tuple(members), reads, raws, rerun, sub, stackable, max(1, peak))


def _outputs(
    facts: GraphFacts,
    plan: _Plan,
    members: list[tuple[Knockout, Target]],
    cache: dict[fx.Node, Any],
    means: dict[str, torch.Tensor],
) -> list[Any]:
    """The model's output for each member, recomputing only what its ablation changes."""
    copies, n = len(members), len(cache[facts.nodes[0]])

    def replacer(target: fx.Node) -> Callable[[Any], Any]:
        def replace(raw: Any) -> Any:
            pieces = [
                replacement(
                    k.method,
                    _copy_k(raw, i, n) if target in plan.rerun and copies > 1 else raw,
                    cache.get(t.source),
                    means.get(k.variant_id),
                    k.units,
                    k.unit_dim,
                )
                for i, (k, t) in enumerate(members)
            ]
            return _zip(lambda *ts: torch.cat(ts), pieces) if copies > 1 else pieces[0]

        return replace

    tile = lambda t: t.repeat(copies, *([1] * (t.dim() - 1)))  # noqa: E731
    reads = [
        _zip(tile, [cache[a]]) if copies > 1 and a in facts.batched else cache[a]
        for a in plan.reads
    ]
    out = plan.sub(
        *reads,
        *[cache[t] for t in plan.raws],
        *[replacer(t) for t in plan.members[0][1].nodes],
    )
    return [_copy_k(out, i, n) for i in range(copies)] if copies > 1 else [out]


class _Tally:
    """Loss and accuracy summed over batches, as the scripts' ``evaluate()`` sums them."""

    def __init__(self) -> None:
        self.loss, self.right, self.counted, self.samples = 0.0, 0.0, 0, 0

    def add(
        self, output: Any, y: torch.Tensor, loss_fn: LossFn, correct_fn: CorrectFn
    ) -> None:
        right, counted = correct_fn(output, y)
        self.loss += float(loss_fn(output, y)) * len(y)
        self.right, self.counted, self.samples = (
            self.right + right,
            self.counted + counted,
            self.samples + len(y),
        )

    def metrics(self) -> Metrics:
        return Metrics(
            self.loss / self.samples,
            self.right / self.counted if self.counted else 0.0,
            self.samples,
        )


def _cache_forward(facts: GraphFacts, x: torch.Tensor) -> dict[fx.Node, Any]:
    """Every node's output on ``x``; values written in place later are kept as copies."""
    cache: dict[fx.Node, Any] = {}
    volatile = facts.volatile

    def keep(node: fx.Node, env: dict) -> None:
        cache[node] = _clone(env[node]) if node in volatile else env[node]

    _forward(facts.gm, x, keep)
    return cache


def evaluate_fast(
    model: nn.Module,
    knockouts: list[Knockout],
    means: dict[str, torch.Tensor],
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    loss_fn: LossFn,
    correct_fn: CorrectFn,
    batch_size: int = 64,
    max_batch_mb: float = 256.0,
    max_rows: int | None = None,
) -> KnockoutReport:
    """Score every knockout on the traced graph (see the module docstring); those it
    cannot take come back as "skipped", with the reason as their error."""
    started, fns = time.perf_counter(), (loss_fn, correct_fn)
    model.eval()
    facts = inspect_graph(fx.symbolic_trace(model), x_val)
    groups: dict[tuple[fx.Node, ...], list[tuple[Knockout, Target]]] = defaultdict(list)
    skipped: dict[str, str] = {}
    for k in knockouts:
        try:
            if facts.unsafe:
                raise LookupError(facts.unsafe)
            target = resolve(facts.nodes, k)
            groups[target.nodes].append((k, target))
        except LookupError as exc:
            skipped[k.variant_id] = str(exc)
    budget, per_sample = int(max_batch_mb * 2**20), sum(facts.sample_bytes.values())
    chunk = max(
        1,
        min(
            batch_size,
            len(x_val),
            (budget // 2 - facts.static_bytes) // max(1, per_sample),
        ),
    )
    free = budget - chunk * per_sample - facts.static_bytes
    rows = max_rows or (CPU_MAX_ROWS if x_val.device.type == "cpu" else 2**62)
    plans = [_plan(facts, members) for members in groups.values()]
    copies = [
        int(
            max(
                1,
                (
                    min(len(p.members), free // (chunk * p.sample_bytes), rows // chunk)
                    if p.stackable
                    else 1
                ),
            )
        )
        for p in plans
    ]
    tallies = {k.variant_id: _Tally() for k in knockouts}
    errors: dict[str, str] = {}
    base, cache_peak = _Tally(), 0
    with torch.no_grad():
        for start in range(0, len(x_val), chunk):
            x, y = x_val[start : start + chunk], y_val[start : start + chunk]
            cache = _cache_forward(facts, x)
            cache_peak = max(
                cache_peak,
                sum(_nbytes(v) for n, v in cache.items() if n.op != "get_attr"),
            )
            base.add(cache[facts.nodes[-1]], y, *fns)
            for plan, size in zip(plans, copies):
                live = [m for m in plan.members if m[0].variant_id not in errors]
                for i in range(0, len(live), size):
                    _score(
                        facts,
                        plan,
                        live[i : i + size],
                        cache,
                        means,
                        y,
                        fns,
                        tallies,
                        errors,
                    )
            del cache
    scores = tuple(
        (
            Score(k.variant_id, "skipped", None, "fast", skipped[k.variant_id])
            if k.variant_id in skipped
            else (
                Score(k.variant_id, "failed", None, "fast", errors[k.variant_id])
                if k.variant_id in errors
                else Score(k.variant_id, "ok", tallies[k.variant_id].metrics(), "fast")
            )
        )
        for k in knockouts
    )
    stats = {
        "budget_bytes": budget,
        "chunk_samples": chunk,
        "cache_peak_bytes": cache_peak,
        "stack_peak_bytes": max(
            (c * chunk * p.sample_bytes for p, c in zip(plans, copies)), default=0
        ),
        "groups": len(plans),
        "max_copies": max(copies, default=0),
        "eval_time_s": time.perf_counter() - started,
    }
    notes = tuple(
        sorted({f"naive path for some knockouts: {why}" for why in skipped.values()})
    )
    return KnockoutReport(base.metrics(), scores, "fast", notes, stats)


def _score(
    facts: GraphFacts,
    plan: _Plan,
    members: list[tuple[Knockout, Target]],
    cache: dict[fx.Node, Any],
    means: dict[str, torch.Tensor],
    y: torch.Tensor,
    fns: tuple[LossFn, CorrectFn],
    tallies: dict[str, _Tally],
    errors: dict[str, str],
) -> None:
    """Score one stack of copies; a failing stack is retried one member at a time."""
    try:
        outputs = _outputs(facts, plan, members, cache, means)
    except Exception as exc:  # one bad ablation must not take the others down
        for member in members if len(members) > 1 else []:
            _score(facts, plan, [member], cache, means, y, fns, tallies, errors)
        if len(members) == 1:
            errors[members[0][0].variant_id] = f"{type(exc).__name__}: {exc}"
        return
    for (k, _), output in zip(members, outputs):
        tallies[k.variant_id].add(output, y, *fns)


# ---------------------------------------------- naive path: a fresh copy per knockout


def _hook(
    model: nn.Module,
    module: str,
    call_site: int | None,
    apply: Callable[[Any, Any], Any],
) -> None:
    """Replace ``module``'s output by ``apply(output, input)`` (at one call site); None keeps it."""
    calls = [0]

    def reset(root: nn.Module, inputs: Any) -> None:
        calls[0] = 0

    def hook(mod: nn.Module, inputs: tuple[Any, ...], output: Any) -> Any:
        site, calls[0] = calls[0], calls[0] + 1
        if call_site is not None and site != call_site:
            return output
        replaced = apply(output, inputs[0] if inputs else None)
        return output if replaced is None else replaced

    model.register_forward_pre_hook(reset)
    model.get_submodule(module).register_forward_hook(hook)


def ablated_copy(
    model: nn.Module,
    k: Knockout,
    mean: torch.Tensor | None,
    via: str = "auto",
    example: torch.Tensor | None = None,
) -> nn.Module:
    """A fresh copy of ``model`` with ``k`` applied: hooks, or (``via="graph"``) an edited
    graph, :func:`functionalize`-d on ``example`` when one is given."""
    replacer = Replacer(k, mean)
    if via == "hooks" or (via == "auto" and k.module is not None):
        ablated = copy.deepcopy(model)
        ablated.knockout_replacer = replacer
        _hook(ablated, str(k.module), k.call_site, replacer)
        return ablated
    gm = fx.symbolic_trace(copy.deepcopy(model))
    if example is not None:
        functionalize(gm, example)
    target, graph = resolve(list(gm.graph.nodes), k), gm.graph
    if k.method == "identity":
        target.nodes[0].replace_all_uses_with(target.source)
        if not k.block:
            graph.erase_node(target.nodes[0])  # the call is skipped
    else:
        gm.add_submodule("knockout_replacer", replacer)
        for node in target.nodes:
            with graph.inserting_after(node):
                new = graph.call_module("knockout_replacer", (node,))
            node.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new)
    gm.recompile()
    return gm


def _evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    fns: tuple[LossFn, CorrectFn],
    batch_size: int,
) -> Metrics:
    tally = _Tally()
    model.eval()
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            tally.add(
                model(x[start : start + batch_size]),
                y[start : start + batch_size],
                *fns,
            )
    return tally.metrics()


def evaluate_naive(
    model: nn.Module,
    knockouts: list[Knockout],
    means: dict[str, torch.Tensor],
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    loss_fn: LossFn,
    correct_fn: CorrectFn,
    batch_size: int = 64,
    via: str = "auto",
) -> tuple[Score, ...]:
    """Each knockout on a fresh copy of the model, the whole validation set through it."""
    scores = []
    for k in knockouts:
        try:
            ablated = ablated_copy(model, k, means.get(k.variant_id), via, x_val[:2])
            metrics = _evaluate(
                ablated, x_val, y_val, (loss_fn, correct_fn), batch_size
            )
            scores.append(Score(k.variant_id, "ok", metrics, "naive"))
        except Exception as exc:  # one bad ablation must not take the others down
            scores.append(
                Score(
                    k.variant_id,
                    "failed",
                    None,
                    "naive",
                    f"{type(exc).__name__}: {exc}",
                )
            )
    return tuple(scores)


def run_knockouts(
    model: nn.Module,
    knockouts: list[Knockout],
    x_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    loss_fn: LossFn,
    correct_fn: CorrectFn,
    batch_size: int = 64,
    max_batch_mb: float = 256.0,
    max_rows: int | None = None,
    traced: bool = True,
) -> KnockoutReport:
    """Score every knockout: on the fast path where it applies, on the naive one elsewhere."""
    model.eval()
    means = activation_means(model, knockouts, x_train, batch_size, traced)
    if traced:
        report = evaluate_fast(
            model,
            knockouts,
            means,
            x_val,
            y_val,
            loss_fn,
            correct_fn,
            batch_size,
            max_batch_mb,
            max_rows,
        )
        baseline, notes, stats = report.baseline, report.notes, report.stats
        scores = {s.variant_id: s for s in report.scores}
    else:
        baseline = _evaluate(model, x_val, y_val, (loss_fn, correct_fn), batch_size)
        notes, stats = ("naive path: torch.fx could not trace the model",), {}
        scores = {
            k.variant_id: Score(k.variant_id, "skipped", None, "fast")
            for k in knockouts
        }
    rest = [k for k in knockouts if scores[k.variant_id].status == "skipped"]
    naive = evaluate_naive(
        model, rest, means, x_val, y_val, loss_fn, correct_fn, batch_size
    )
    scores.update({s.variant_id: s for s in naive})
    paths = {s.path for s in scores.values()}
    path = (
        "mixed"
        if len(paths) > 1
        else paths.pop() if paths else "fast" if traced else "naive"
    )
    return KnockoutReport(
        baseline, tuple(scores[k.variant_id] for k in knockouts), path, notes, stats
    )

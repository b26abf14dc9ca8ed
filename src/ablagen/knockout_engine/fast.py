"""The fast path: cached activations, only what an ablation changes recomputed, copies stacked."""

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import fx, nn

from ablagen.ablate import Ablation, trace

from .interpreter import GraphFacts, _forward, inspect_graph
from .tally import Knockout, KnockoutReport, Score, Validation, _Tally
from .targets import Target, ablation_for, resolve
from .values import _clone, _copy_k, _nbytes, _zip

CPU_MAX_ROWS = 256  # on CPU, bigger stacks fall out of cache and get slower per sample


def _apply(replace: Callable[[Any], Any], raw: Any) -> Any:
    """A subgraph node: the replaced output, made from the unablated one."""
    return replace(raw)


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
    stackable = all(
        n in facts.batched or n in facts.shape_numbers for n in order
    ) and all(n in facts.batched or n in facts.fixed for n in reads)
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
    ops: dict[str, Ablation],
) -> list[Any]:
    """The model's output for each member, recomputing only what its ablation changes."""
    copies, n = len(members), len(cache[facts.nodes[0]])

    def replacer(target: fx.Node) -> Callable[[Any], Any]:
        def replace(raw: Any) -> Any:
            pieces = [
                ops[k.variant_id](
                    _copy_k(raw, i, n) if target in plan.rerun and copies > 1 else raw,
                    cache.get(t.source),
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
    val: Validation,
    max_batch_mb: float = 256.0,
    max_rows: int | None = None,
) -> KnockoutReport:
    """Score every knockout on the traced graph (see the module docstring); those it
    cannot take come back as "skipped", with the reason as their error."""
    started = time.perf_counter()
    model.eval()
    facts = inspect_graph(trace(model), val.x)
    groups: dict[tuple[fx.Node, ...], list[tuple[Knockout, Target]]] = defaultdict(list)
    skipped: dict[str, str] = {}
    ops: dict[str, Ablation] = {}
    errors: dict[str, str] = {}
    for k in knockouts:
        try:
            ops[k.variant_id] = ablation_for(k, means.get(k.variant_id))
        except ValueError as exc:  # that knockout fails, not the others
            errors[k.variant_id] = f"{type(exc).__name__}: {exc}"
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
            val.batch_size,
            len(val.x),
            (budget // 2 - facts.static_bytes) // max(1, per_sample),
        ),
    )
    free = budget - chunk * per_sample - facts.static_bytes
    rows = max_rows or (CPU_MAX_ROWS if val.x.device.type == "cpu" else 2**62)
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
    base, cache_peak = _Tally(), 0
    with torch.no_grad():
        for x, y in val.batches(chunk):
            cache = _cache_forward(facts, x)
            cache_peak = max(
                cache_peak,
                sum(_nbytes(v) for n, v in cache.items() if n.op != "get_attr"),
            )
            base.add(cache[facts.nodes[-1]], y, val.loss_fn, val.correct_fn)
            for plan, size in zip(plans, copies):
                live = [m for m in plan.members if m[0].variant_id not in errors]
                for i in range(0, len(live), size):
                    _score(
                        facts,
                        plan,
                        live[i : i + size],
                        cache,
                        ops,
                        y,
                        val,
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
    ops: dict[str, Ablation],
    y: torch.Tensor,
    val: Validation,
    tallies: dict[str, _Tally],
    errors: dict[str, str],
) -> None:
    """Score one stack of copies; a failing stack is retried one member at a time."""
    try:
        outputs = _outputs(facts, plan, members, cache, ops)
    except Exception as exc:  # one bad ablation must not take the others down
        for member in members if len(members) > 1 else []:
            _score(facts, plan, [member], cache, ops, y, val, tallies, errors)
        if len(members) == 1:
            errors[members[0][0].variant_id] = f"{type(exc).__name__}: {exc}"
        return
    for (k, _), output in zip(members, outputs):
        tallies[k.variant_id].add(output, y, val.loss_fn, val.correct_fn)

"""The entry point: every knockout's estimated loss change, in chunks within a memory budget."""

import time
from collections import Counter
from typing import Any

import torch
from torch import fx, nn

from ablagen.ablate import Ablation, first_input
from ablagen.knockout_engine.means import activation_means
from ablagen.knockout_engine.records import CorrectFn, Knockout, LossFn, _Tally
from ablagen.knockout_engine.targets import ablation_for, resolve

from .estimates import (
    NotDifferentiable,
    check_differentiable,
    products,
    slice_of,
    slice_products,
)
from .passes import forward_backward, prepare_graph
from .records import CURVATURES, Estimate, ScreenReport

#: Gauss-Newton rows per sample: the top eigen-directions of its loss Hessian in the
#: logits (exact from classes - 1 on). On digits_cnn and resnet_small, 2 rank as well
#: as all 10 classes, at a quarter of the backward passes (benchmarks/bench_screen.py)
GGN_RANK = 2

#: one place a knockout acts: (variant id, the node replaced, the value that goes on
#: instead for identity, else None)
Site = tuple[str, fx.Node, fx.Node | None]


def _sites(k: Knockout, facts) -> list[Site]:
    target = resolve(facts.nodes, k)
    if k.block:
        return [(k.variant_id, target.nodes[0], target.source)]
    identity = k.method == "identity"
    return [
        (k.variant_id, node, first_input(node) if identity else None)
        for node in target.nodes
    ]


def _groups(
    sites: list[Site], order: dict[fx.Node, int], sizes: dict[fx.Node, int], room: int
) -> list[set[fx.Node]]:
    """The nodes to keep, cut into groups in graph order, each within ``room`` bytes
    (``sizes``: per chunk, a value with its gradients); a site's node and its source
    stay in one group, since one pass must see both."""
    parent: dict[fx.Node, fx.Node] = {}

    def root(n: fx.Node) -> fx.Node:
        while parent.setdefault(n, n) is not n:
            n = parent[n]
        return n

    for _, node, source in sites:
        root(node)
        if source is not None:
            parent[root(source)] = root(node)
    clusters: dict[fx.Node, set[fx.Node]] = {}
    for n in parent:
        clusters.setdefault(root(n), set()).add(n)
    groups: list[set[fx.Node]] = []
    used = room + 1
    for cluster in sorted(clusters.values(), key=lambda c: min(map(order.get, c))):
        size = sum(sizes.get(n, 0) for n in cluster)
        if used + size > room:
            groups.append(set())
            used = 0
        groups[-1] |= cluster
        used += size
    return groups


def screen_knockouts(
    model: nn.Module,
    knockouts: list[Knockout],
    x_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    loss_fn: LossFn,
    correct_fn: CorrectFn,
    batch_size: int = 64,
    max_batch_mb: float = 256.0,
    curvature: str = "ggn",
    ggn_rank: int = GGN_RANK,
) -> ScreenReport:
    """Estimate every knockout's change of the mean validation loss (see the package doc).

    The validation data go through in chunks small enough that one pass's values fit
    half of ``max_batch_mb`` (``batch_size``: the batches of the mean activations'
    pass). The outputs the knockouts replace are kept, with their gradients, for one
    group of them at a time, each group within the other half: many components take
    several passes per chunk, never more memory. Each node's knockouts are estimated
    together (:func:`_node_terms`), and the sums stay tensors until the end."""
    if curvature not in CURVATURES:
        raise ValueError(f"unknown curvature {curvature!r}; use one of {CURVATURES}")
    started = time.perf_counter()
    model.eval()
    wanted = [k for k in knockouts if k.method == "mean"]
    means = activation_means(model, wanted, x_train, batch_size) if wanted else {}
    facts = prepare_graph(model, x_val)
    notes = [facts.unsafe] if facts.unsafe else []
    ops: dict[str, Ablation] = {}
    sites: list[Site] = []
    done: dict[str, Estimate] = {}
    for k in knockouts:
        try:
            ops[k.variant_id] = ablation_for(k, means.get(k.variant_id))
            mine = _sites(k, facts)
        except (ValueError, LookupError) as exc:
            done[k.variant_id] = Estimate(k.variant_id, "skipped", None, error=str(exc))
            continue
        odd = [
            n for _, *ns in mine for n in ns if n is not None and n not in facts.batched
        ]
        if odd:
            why = f"{odd[0].name} does not hold one value per sample; the screen cannot weigh it"
            done[k.variant_id] = Estimate(k.variant_id, "skipped", None, error=why)
            continue
        sites += mine
    live = [k.variant_id for k in knockouts if k.variant_id not in done]
    rows = 1 + (ggn_rank if curvature == "ggn" else 0)
    budget = int(max_batch_mb * 2**20)
    chunk, sizes = _chunking(facts, sites, rows, len(x_val), budget)
    groups = _groups(sites, facts.index, sizes, budget // 2)
    slot = {vid: i for i, vid in enumerate(live)}
    on_node: dict[fx.Node, list[int]] = {}
    for i, (_, node, _) in enumerate(sites):
        on_node.setdefault(node, []).append(i)
    seen = Counter(vid for vid, _, _ in sites)
    shared = {vid for vid, count in seen.items() if count > 1}
    first = torch.zeros(len(live), dtype=torch.float64)
    second = torch.zeros(len(live), dtype=torch.float64)
    failed: dict[str, tuple[str, str]] = {}  # vid -> (status, why)
    base, kept_peak, ggn = _Tally(), 0, False
    for start in range(0, len(x_val), chunk):
        x, y = x_val[start : start + chunk], y_val[start : start + chunk]
        joint: dict[str, torch.Tensor] = {}  # knockouts with several sites: (G, N)
        for i, group in enumerate(groups):
            z, values, grads = forward_backward(
                facts, x, y, loss_fn, group, curvature, ggn_rank
            )
            if i == 0:
                base.add(z, y, loss_fn, correct_fn)
            peak = _bytes(values) + _bytes(grads)
            for node in sorted(group, key=facts.index.get):
                ids, terms = _node_terms(
                    node, on_node.get(node, []), sites, ops, values, grads, failed
                )
                if terms is None:
                    continue
                peak = max(peak, _bytes(values) + _bytes(grads) + _bytes(terms))
                ggn = ggn or terms.shape[1] > 1
                alone = [j for j, vid in enumerate(ids) if vid not in shared]
                if alone:
                    own = terms[alone].double()
                    where = torch.tensor([slot[ids[j]] for j in alone])
                    first.index_add_(0, where, own[:, 0].sum(dim=1))
                    second.index_add_(0, where, 0.5 * own[:, 1:].square().sum((1, 2)))
                for j, vid in enumerate(ids):
                    if vid in shared:
                        u = terms[j].double()
                        joint[vid] = u if vid not in joint else joint[vid] + u
            kept_peak = max(kept_peak, peak)
            del values, grads
        for vid, u in joint.items():
            first[slot[vid]] += u[0].sum()
            second[slot[vid]] += 0.5 * u[1:].square().sum()
    n = max(1, len(x_val))
    firsts, seconds = (first / n).tolist(), (second / n).tolist()
    for vid in live:
        if vid in failed:
            status, why = failed[vid]
            done[vid] = Estimate(vid, status, None, error=why)
        else:
            f, c = firsts[slot[vid]], seconds[slot[vid]]
            done[vid] = Estimate(vid, "ok", f + c, f, c)
    if curvature == "ggn" and not ggn and live:
        notes.append(
            "first order only: the Gauss-Newton term needs class logits (N, C) "
            "scored against integer labels"
        )
    stats = {
        "budget_bytes": budget,
        "chunk_samples": chunk,
        "groups": len(groups),
        "gradient_rows": rows if ggn else 1,
        "kept_peak_bytes": kept_peak,
        "screen_time_s": time.perf_counter() - started,
    }
    return ScreenReport(
        base.metrics(),
        tuple(done[k.variant_id] for k in knockouts),
        curvature if ggn else "none",
        tuple(notes),
        stats,
    )


def _chunking(
    facts, sites: list[Site], rows: int, samples: int, budget: int
) -> tuple[int, dict[fx.Node, int]]:
    """Samples per pass, and the bytes per pass of each node to keep (its value, its
    ``rows`` gradients, and its knockouts' ``(rows, N)`` products).

    A pass holds every node's value (and autograd what it saved): half the budget.
    The kept nodes' gradients and products get the other half (their values are the
    pass's own); the chunk is shrunk (down to 64 samples) until they fit in one
    group, since every further group is one more forward and backward pass. The passes are not training batches: the chunk
    depends on the memory budget alone, and no result depends on it."""
    count: dict[fx.Node, int] = {}
    for _, node, source in sites:
        count[node] = count.get(node, 0) + 1
        if source is not None:
            count.setdefault(source, 0)
    sample = facts.sample_bytes
    per_sample = {  # gradients and products; a value the pass overwrites: a copy
        n: sample.get(n, 0) * (rows + (n in facts.volatile)) + 8 * rows * c
        for n, c in count.items()
    }
    room = budget // 2
    passes = room // max(1, sum(sample.values()))
    scratch = rows * max((sample.get(n, 0) for n in count), default=0)  # one product
    together = room // max(1, sum(per_sample.values()) + scratch)
    chunk = max(1, min(samples, passes, max(together, min(samples, 64))))
    return chunk, {n: b * chunk for n, b in per_sample.items()}


def _node_terms(
    node: fx.Node,
    mine: list[int],
    sites: list[Site],
    ops: dict[str, Ablation],
    values: dict[fx.Node, Any],
    grads: dict[fx.Node, list[torch.Tensor | None]],
    failed: dict[str, tuple[str, str]],
) -> tuple[list[str], torch.Tensor | None]:
    """The knockouts acting at ``node`` and their ``(M, G, N)`` products: the slices
    of the output in one vectorized step, the rest one at a time. A knockout that
    cannot be estimated goes to ``failed`` (skipped: with the node's name)."""
    value, grad = values[node], grads[node]
    ids: list[str] = []
    parts: list[torch.Tensor] = []
    slices, sliced = [], []
    for i in mine:
        vid, _, source = sites[i]
        if vid in failed:
            continue
        try:
            check_differentiable(value)
        except NotDifferentiable as exc:
            failed[vid] = ("skipped", f"{node.name}: {exc}; the screen skips it")
            continue
        if all(g is None for g in grad):
            continue  # no gradient reaches it: its estimate is 0
        piece = slice_of(ops[vid], value)
        if piece is not None and len(grad) == 1:
            slices.append(piece)
            sliced.append(vid)
            continue
        try:
            u = products(
                ops[vid], value, None if source is None else values[source], grad
            )
        except Exception as exc:  # one bad estimate must not stop the others
            failed[vid] = ("failed", f"{type(exc).__name__}: {exc}")
            continue
        if u is not None:
            ids.append(vid)
            parts.append(u.unsqueeze(0))
    if slices:
        try:
            parts.append(slice_products(value, grad[0], slices))
            ids += sliced
        except Exception as exc:
            for vid in sliced:
                failed[vid] = ("failed", f"{type(exc).__name__}: {exc}")
    if not parts:
        return ids, None
    return ids, torch.cat(parts) if len(parts) > 1 else parts[0]


def _bytes(tree: Any) -> int:
    if isinstance(tree, torch.Tensor):
        return tree.numel() * tree.element_size()
    if isinstance(tree, dict):
        return sum(_bytes(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(_bytes(v) for v in tree)
    return 0

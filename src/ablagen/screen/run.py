"""The entry point: every knockout's estimated loss change, in chunks within a memory budget."""

import time
from typing import Any

import torch
from torch import fx, nn

from ablagen.ablate import Ablation, first_input
from ablagen.knockout_engine.means import activation_means
from ablagen.knockout_engine.records import CorrectFn, Knockout, LossFn, _Tally
from ablagen.knockout_engine.targets import ablation_for, resolve

from .estimates import NotDifferentiable, products
from .passes import forward_backward, prepare_graph
from .records import CURVATURES, Estimate, ScreenReport

#: GGN rows per sample: its most probable classes (exact up to this many classes;
#: on resnet_small 3 give the Spearman rho of all 10, at 40 % of the time)
MAX_CLASSES = 3

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
    max_classes: int = MAX_CLASSES,
) -> ScreenReport:
    """Estimate every knockout's change of the mean validation loss (see the package doc).

    The validation data go through in chunks of at most ``batch_size`` samples, small
    enough that one pass's values fit half of ``max_batch_mb``. The outputs the
    knockouts replace are kept, with their gradients, for one group of them at a time,
    each group within the other half: many components take several passes per chunk,
    never more memory."""
    if curvature not in CURVATURES:
        raise ValueError(f"unknown curvature {curvature!r}; use one of {CURVATURES}")
    started = time.perf_counter()
    model.eval()
    means = activation_means(model, knockouts, x_train, batch_size)
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
    rows = 1 + (max_classes if curvature == "ggn" else 0)
    budget = int(max_batch_mb * 2**20)
    chunk = max(
        1,
        min(
            batch_size,
            len(x_val),
            (budget // 2) // max(1, sum(facts.sample_bytes.values())),
        ),
    )
    sizes = {n: b * chunk * (1 + rows) for n, b in facts.sample_bytes.items()}
    groups = _groups(sites, facts.index, sizes, budget // 2)
    sums = {vid: [0.0, 0.0] for vid in live}
    errors: dict[str, str] = {}
    skipped: dict[str, str] = {}
    base, kept_peak, ggn = _Tally(), 0, False
    for start in range(0, len(x_val), chunk):
        x, y = x_val[start : start + chunk], y_val[start : start + chunk]
        terms: dict[str, torch.Tensor] = {}  # per knockout: (G, N) over its sites
        for i, group in enumerate(groups):
            z, values, grads = forward_backward(
                facts, x, y, loss_fn, group, curvature, max_classes
            )
            if i == 0:
                base.add(z, y, loss_fn, correct_fn)
            kept_peak = max(kept_peak, _bytes(values) + _bytes(grads))
            cache: dict[Any, torch.Tensor] = {}
            for vid, node, source in sites:
                if node not in group or vid in errors or vid in skipped:
                    continue
                try:
                    source_value = None if source is None else values[source]
                    u = products(
                        ops[vid], values[node], source_value, grads[node], cache, node
                    )
                except NotDifferentiable as exc:  # skipped, with the reason
                    skipped[vid] = f"{node.name}: {exc}; the screen skips it"
                    continue
                except Exception as exc:  # one bad estimate must not stop the others
                    errors[vid] = f"{type(exc).__name__}: {exc}"
                    continue
                if u is not None:
                    terms[vid] = u if vid not in terms else terms[vid] + u
            del values, grads, cache
        for vid, u in terms.items():
            ggn = ggn or u.shape[0] > 1
            sums[vid][0] += float(u[0].double().sum())
            sums[vid][1] += 0.5 * float(u[1:].double().square().sum())
    n = max(1, len(x_val))
    for vid in live:
        if vid in skipped:
            done[vid] = Estimate(vid, "skipped", None, error=skipped[vid])
        elif vid in errors:
            done[vid] = Estimate(vid, "failed", None, error=errors[vid])
        else:
            first, second = sums[vid][0] / n, sums[vid][1] / n
            done[vid] = Estimate(vid, "ok", first + second, first, second)
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


def _bytes(tree: Any) -> int:
    if isinstance(tree, torch.Tensor):
        return tree.numel() * tree.element_size()
    if isinstance(tree, dict):
        return sum(_bytes(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(_bytes(v) for v in tree)
    return 0

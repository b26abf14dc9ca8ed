"""The entry point: every knockout's estimated loss change, in chunks within a memory budget."""

import itertools
import math
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import fx, nn

from ablagen.ablate import Ablation, first_input
from ablagen.knockout_engine.means import activation_means
from ablagen.knockout_engine.tally import CorrectFn, Knockout, LossFn, _Tally
from ablagen.knockout_engine.targets import ablation_for, resolve

from .estimates import NodeTerms, Scratch
from .probes import screen_by_hooks
from .passes import _detach, forward_pass, gradient_rows, prepare_graph, pull_back
from .results import CURVATURES, Estimate, ScreenReport

#: directions per sample of the Gauss-Newton term: the loss gradient and the top
#: GGN_RANK - 1 eigenvectors of its loss Hessian in the logits (exact from the number
#: of classes on); gradient rows pulled back: GGN_RANK. On digits_cnn and resnet_small,
#: 2 rank as well as all 10 classes (benchmarks/bench_screen.py)
GGN_RANK = 2

#: the share of the validation samples (the first ones) on which the Gauss-Newton
#: directions beyond the gradient are pulled back; elsewhere the term is the one along
#: the gradient (no pass of its own), plus the excess measured on the share. On the
#: two CNN examples and the tiny GPT, a half ranks as well as all samples
GGN_SHARE = 0.5

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
    ggn_share: float = GGN_SHARE,
    traced: bool = True,
) -> ScreenReport:
    """:func:`screen_batches` on validation data held in memory (one batch)."""
    return screen_batches(
        model,
        knockouts,
        x_train,
        [(x_val, y_val)],
        len(x_val),
        loss_fn,
        correct_fn,
        batch_size,
        max_batch_mb,
        curvature,
        ggn_rank,
        ggn_share,
        traced,
    )


def screen_batches(
    model: nn.Module,
    knockouts: list[Knockout],
    x_train: torch.Tensor,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    samples: int | None,
    loss_fn: LossFn,
    correct_fn: CorrectFn,
    batch_size: int = 64,
    max_batch_mb: float = 256.0,
    curvature: str = "ggn",
    ggn_rank: int = GGN_RANK,
    ggn_share: float = GGN_SHARE,
    traced: bool = True,
) -> ScreenReport:
    """Estimate every knockout's change of the mean validation loss (see the package doc).

    The validation data come as ``batches`` of ``(x, y)`` (a DataLoader's, or one
    batch of tensors held in memory), ``samples`` of them in all (None: not known
    before the end; then every sample gets the ``ggn_rank`` directions, as with
    ``ggn_share=1``). The estimates are sums over the samples, so they do not depend
    on how the data are batched; a batch larger than a pass may hold is cut into
    passes as the data held in memory are. ``traced=False`` (a model torch.fx cannot
    trace): probes on hooks instead of the graph (:mod:`.hooks`), first order and the
    Gauss-Newton term along the gradient, in passes of ``batch_size`` samples.

    The validation data go through in chunks small enough that one pass's values fit
    half of ``max_batch_mb`` (``batch_size``: the batches of the mean activations'
    pass). The outputs the knockouts replace are kept, for one group of them at a
    time, each group within the other half: many components take several passes per
    chunk, never more memory. Their gradients are used as the backward pass makes
    them (:func:`~.passes.pull_back`); each node's knockouts are estimated together
    (:class:`~.estimates.NodeTerms`), and the sums stay tensors until the end.

    The Gauss-Newton term (``curvature="ggn"``) is the one along the loss gradient on
    every sample (it needs no pass of its own); its rank-``ggn_rank`` excess over that
    is measured on the first ``ggn_share`` of the samples, where the other directions
    are pulled back, and scaled up to all of them."""
    if curvature not in CURVATURES:
        raise ValueError(f"unknown curvature {curvature!r}; use one of {CURVATURES}")
    if curvature == "ggn" and ggn_rank < 1:
        raise ValueError(f"ggn_rank must be at least 1, not {ggn_rank}")
    if not 0 < ggn_share <= 1:
        raise ValueError(f"ggn_share must be in (0, 1], not {ggn_share}")
    started = time.perf_counter()
    batches = iter(batches)
    first = next(batches, None)
    if first is None or samples == 0:
        raise ValueError("the screen needs validation samples; got none")
    x_val, y_val = first  # the first batch: the graph is probed on it
    known = samples is not None
    samples = samples if known else len(x_val)  # a bound of the pass size till the end
    model.eval()
    wanted = [k for k in knockouts if k.method == "mean"]
    means = (
        activation_means(model, wanted, x_train, batch_size, traced=traced)
        if wanted
        else {}
    )
    if not traced:
        stream = itertools.chain([first], batches)
        return _hook_report(
            model, knockouts, means, stream, samples if known else None,
            loss_fn, correct_fn, batch_size, curvature, started,
        )  # fmt: skip
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
    rows = ggn_rank if curvature == "ggn" else 1
    budget = int(max_batch_mb * 2**20)
    chunk, sizes = _chunking(facts, sites, rows, samples, budget)
    groups = _groups(sites, facts.index, sizes, budget // 2) or [set()]  # the baseline
    split = samples if known else sys.maxsize  # those before it get every GGN row
    classes = y_val.dim() == 1 and not y_val.is_floating_point()  # else no GGN term
    if curvature == "ggn" and ggn_rank > 1 and classes and known:
        split = max(1, math.ceil(ggn_share * samples))
    screen = _Screen(live, sites, ops)
    base, kept_peak, directions = _Tally(), 0, 0
    pieces: list[tuple[int, int]] = []
    for start, stop, x, y in _passes(itertools.chain([first], batches), split, chunk):
        pieces.append((start, stop))
        rank = ggn_rank if start < split else 1
        weight = samples / split if start < split and known else 1.0
        maps = None
        for i, group in enumerate(groups):
            z, kept = forward_pass(facts, x, group)
            values = {n: _detach(v) for n, v in kept.items()}
            if i == 0:
                base.add(_detach(z), y, loss_fn, correct_fn)
            start_at, cotangents, maps = gradient_rows(z, y, loss_fn, curvature, rank)
            sited = {n: v for n, v in kept.items() if n in screen.on_node}
            del z, kept
            peak = screen.pass_terms(start_at, cotangents, sited, values, facts.nodes)
            del start_at, cotangents, sited
            if maps is not None:
                directions = max(directions, len(maps[0][0]))
            kept_peak = max(kept_peak, _bytes(values) + peak)
            screen.add(maps, weight)
            del values
        screen.settle(maps, weight)
    seen = pieces[-1][1] if pieces else 0
    if known and seen != samples:
        raise ValueError(f"the batches held {seen} validation samples, not {samples}")
    samples, split = seen, min(split, seen)
    firsts, seconds = screen.means(samples)
    for vid in live:
        if vid in screen.failed:
            status, why = screen.failed[vid]
            done[vid] = Estimate(vid, status, None, error=why)
        else:
            f, c = firsts[screen.slot[vid]], seconds[screen.slot[vid]]
            done[vid] = Estimate(vid, "ok", f + c, f, c)
    ggn = directions > 0
    if curvature == "ggn" and not ggn and live:
        notes.append(
            "first order only: the Gauss-Newton term needs class logits (N, C) "
            "scored against integer labels"
        )
    stats = {
        "budget_bytes": budget,
        "chunk_samples": max((stop - start for start, stop in pieces), default=0),
        "groups": len(groups),
        "gradient_rows": max(1, directions),
        "ggn_samples": split if ggn else 0,
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


def _hook_report(
    model: nn.Module,
    knockouts: list[Knockout],
    means: dict[str, torch.Tensor],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    samples: int | None,
    loss_fn: LossFn,
    correct_fn: CorrectFn,
    batch_size: int,
    curvature: str,
    started: float,
) -> ScreenReport:
    """:func:`screen_batches` of a model without a graph: :func:`~.hooks.screen_by_hooks`."""
    ops: dict[str, Ablation] = {}
    done: dict[str, Estimate] = {}
    for k in knockouts:
        try:
            ops[k.variant_id] = ablation_for(k, means.get(k.variant_id))
        except (ValueError, LookupError) as exc:
            done[k.variant_id] = Estimate(k.variant_id, "skipped", None, error=str(exc))
    base, terms, skipped, seen, ggn = screen_by_hooks(
        model, knockouts, ops, batches, loss_fn, correct_fn, batch_size, curvature
    )
    if samples is not None and seen != samples:
        raise ValueError(f"the batches held {seen} validation samples, not {samples}")
    n = max(1, seen)
    for vid in ops:
        if vid in skipped:
            done[vid] = Estimate(vid, "skipped", None, error=skipped[vid])
        else:
            first, second = terms[vid][0] / n, terms[vid][1] / n
            done[vid] = Estimate(vid, "ok", first + second, first, second)
    notes = [
        "no torch.fx graph: probes on hooks, the Gauss-Newton term along the gradient only"
    ]
    if curvature == "ggn" and not ggn and ops:
        notes.append(
            "first order only: the Gauss-Newton term needs class logits (N, C) "
            "scored against integer labels"
        )
    stats = {
        "path": "hooks",
        "chunk_samples": batch_size,
        "gradient_rows": 1,
        "ggn_samples": seen if ggn else 0,
        "screen_time_s": time.perf_counter() - started,
    }
    return ScreenReport(
        base.metrics(),
        tuple(done[k.variant_id] for k in knockouts),
        curvature if ggn else "none",
        tuple(notes),
        stats,
    )


class _Screen:
    """The running sums of a screen: per knockout, its first-order and Gauss-Newton
    terms over the samples so far, from the products of each pass."""

    def __init__(self, live: list[str], sites: list[Site], ops: dict[str, Ablation]):
        self.slot = {vid: i for i, vid in enumerate(live)}
        self.on_node: dict[fx.Node, list[Site]] = {}
        for site in sites:
            self.on_node.setdefault(site[1], []).append(site)
        seen = Counter(vid for vid, _, _ in sites)
        self.shared = {vid for vid, count in seen.items() if count > 1}
        self.ops = ops
        self.first = torch.zeros(len(live), dtype=torch.float64)
        self.second = torch.zeros(len(live), dtype=torch.float64)
        self.failed: dict[str, tuple[str, str]] = {}  # vid -> (status, why)
        self.estimators: dict[fx.Node, NodeTerms] = {}
        self.scratch = Scratch()
        self.rows_of: dict[fx.Node, list[torch.Tensor]] = {}
        self.joint: dict[str, torch.Tensor] = {}  # several sites: (G, N) per chunk

    def pass_terms(
        self,
        start: Any,
        cotangents: list[torch.Tensor | None],
        sited: dict[fx.Node, Any],
        values: dict[fx.Node, Any],
        nodes: tuple[fx.Node, ...],
    ) -> int:
        """One backward call per cotangent; each node's products of them, kept for
        :meth:`add`. Returns the bytes held on top of the values: the largest
        gradient handed over, and the products (twice: they are stacked)."""
        for node in sited.keys() - self.estimators.keys():
            entries = [(vid, self.ops[vid], src) for vid, _, src in self.on_node[node]]
            made = self.estimators[node] = NodeTerms(node.name, entries, values[node])
            if made.skipped:
                for vid, _, _ in entries:
                    self.failed[vid] = ("skipped", made.skipped)
        largest = 0

        def consume(node: fx.Node, grads: list[torch.Tensor | None]) -> None:
            nonlocal largest
            largest = max(largest, _bytes(grads))
            estimate = self.estimators[node]
            terms = estimate(values[node], values, grads, self.failed, self.scratch)
            if terms is not None:
                self.rows_of.setdefault(node, []).append(terms)

        pull_back(start, cotangents, sited, nodes, consume)
        return largest + 2 * sum(_bytes(t) for t in self.rows_of.values())

    def add(self, maps: Any, weight: float) -> None:
        """Fold the products of a pass into the sums (those of knockouts with several
        sites wait for :meth:`settle`)."""
        ids, parts = [], []
        for node, rows in self.rows_of.items():
            terms = torch.cat(rows, dim=1)  # (M, G, N)
            for j, vid in enumerate(self.estimators[node].ids):
                if vid in self.shared:
                    u = terms[j].double()
                    self.joint[vid] = (
                        u if vid not in self.joint else self.joint[vid] + u
                    )
                else:
                    ids.append(self.slot[vid])
                    parts.append(terms[j])
        self.rows_of = {}
        if parts:
            own = torch.stack(parts).double()
            where = torch.tensor(ids)
            self.first.index_add_(0, where, own[:, 0].sum(dim=1))
            self.second.index_add_(0, where, _curvature(own, maps, weight))

    def settle(self, maps: Any, weight: float) -> None:
        """The end of a chunk: the knockouts with several sites, their sites summed
        per sample."""
        for vid, u in self.joint.items():
            self.first[self.slot[vid]] += u[0].sum()
            self.second[self.slot[vid]] += _curvature(u.unsqueeze(0), maps, weight)[0]
        self.joint = {}

    def means(self, samples: int) -> tuple[list[float], list[float]]:
        n = max(1, samples)
        return (self.first / n).tolist(), (self.second / n).tolist()


def _passes(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]], split: int, chunk: int
) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
    """``(start, stop, x, y)`` of each pass over the ``batches``: samples start to
    stop (counted over all batches) of :func:`_pieces`, cut from their batch."""
    at = 0
    for x_batch, y_batch in batches:
        end = at + len(x_batch)
        for start, stop in _pieces(end, split, chunk, at):
            yield start, stop, x_batch[start - at : stop - at], y_batch[
                start - at : stop - at
            ]
        at = end


def _pieces(
    samples: int, split: int, chunk: int, first: int = 0
) -> list[tuple[int, int]]:
    """``(start, stop)`` of each pass over samples ``first`` to ``samples``: those
    before ``split`` and those after it, each in balanced pieces of at most
    ``chunk``; none straddles ``split``."""
    pieces = []
    for begin, end in (
        (first, max(first, min(split, samples))),
        (max(first, split), samples),
    ):
        count = -(-(end - begin) // chunk)
        for k in range(count):
            pieces.append(
                (
                    begin + (end - begin) * k // count,
                    begin + (end - begin) * (k + 1) // count,
                )
            )
    return pieces


def _chunking(
    facts, sites: list[Site], rows: int, samples: int, budget: int
) -> tuple[int, dict[fx.Node, int]]:
    """Samples per pass, and the bytes per pass each node to keep adds to it (a copy
    where the pass overwrites its value; its knockouts' ``(rows, N)`` products).

    A pass holds every node's value (and autograd what it saved): half the budget.
    The gradients are used as the backward pass makes them and then dropped
    (:func:`~.passes.pull_back`), so the other half holds the products, a gradient in
    flight and one product's scratch; the chunk is shrunk (down to 64 samples) until
    they fit in one group, since every further group is one more forward and
    backward pass. The passes are not training batches: no result depends on the
    chunk."""
    count: dict[fx.Node, int] = {}
    for _, node, source in sites:
        count[node] = count.get(node, 0) + 1
        if source is not None:
            count.setdefault(source, 0)
    sample = facts.sample_bytes
    per_sample = {  # products; a value the pass overwrites: a copy
        n: sample.get(n, 0) * (n in facts.volatile) + 8 * rows * c
        for n, c in count.items()
    }
    room = budget // 2
    passes = room // max(1, sum(sample.values()))
    largest = max((sample.get(n, 0) for n in count), default=0)
    together = room // max(1, sum(per_sample.values()) + 2 * largest)
    chunk = max(1, min(samples, passes, max(together, min(samples, 64))))
    return chunk, {n: b * chunk for n, b in per_sample.items()}


def _curvature(terms: torch.Tensor, maps: Any, weight: float) -> torch.Tensor:
    """``(M,)``: the Gauss-Newton terms of M knockouts from their products ``terms``
    (M, G, N) and ``maps = (R, r)`` of :func:`~.passes.ggn_directions` (None: zeros):
    ``1/2 sum_n (r_n c_n0)^2`` along the gradient, plus ``weight`` times the excess of
    ``1/2 sum_n |R_n c_n|^2`` over it (G > 1: the other directions were pulled back)."""
    if maps is None:
        return terms.new_zeros(len(terms))
    full, along = maps
    gradient = 0.5 * (terms[:, 0] * along).square().sum(dim=1)
    if terms.shape[1] == 1:
        return gradient
    by = full.permute(1, 2, 0)  # (G, G, N): a few (M, G, N) products, no einsum
    mixed = terms[:, None, 0] * by[None, :, 0]
    for j in range(1, terms.shape[1]):
        mixed = mixed + terms[:, None, j] * by[None, :, j]
    total = 0.5 * mixed.square().sum(dim=(1, 2))
    return total if weight == 1 else gradient + weight * (total - gradient)


def _bytes(tree: Any) -> int:
    if isinstance(tree, torch.Tensor):
        return tree.numel() * tree.element_size()
    if isinstance(tree, dict):
        return sum(_bytes(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(_bytes(v) for v in tree)
    return 0

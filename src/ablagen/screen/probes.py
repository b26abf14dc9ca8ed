"""The screen of a model torch.fx cannot trace (a Hugging Face model): probes on hooks.

Each knockout gets a probe at the place its ablation acts (the ablation's own hook:
a module's output, an attention head's slice at the projection's input, a functional
call), on one copy of the model. In a forward pass the probe computes what the
ablation would put there, keeps the difference ``d = a' - a`` and lets ``a + z`` go
on, ``z`` zeros that want a gradient: one backward pass then gives every knockout's
``g = dL/da`` at once (several probes at one place each get it). The first-order
estimate is ``d . g`` per sample, as on the graph; the Gauss-Newton term is the one
along the loss gradient (rank 1: it needs no pass of its own). Passes hold
``batch_size`` samples (the baseline trained with its gradients at that size) plus a
difference per probe: the memory of the naive knockout path, not the graph's budget.
"""

import copy
from typing import Any

import torch
from torch import nn

from ablagen.ablate import Ablation, ablate_call, ablate_head, ablate_output
from ablagen.knockout_engine.tally import CorrectFn, Knockout, LossFn, _Tally

from .passes import gradient_rows


class Probe(Ablation):
    """Lets the output go on unchanged (plus zeros ``z`` that take its gradient) and
    keeps what ``op`` would change in it, ``d = op(a) - a``, per tensor."""

    def __init__(self, op: Ablation, index: int) -> None:
        super().__init__()
        self.op, self.name = op, f"probe{index}"
        self.head = getattr(op, "head", None)  # ablate_head names its slot by it
        self.changes: list[torch.Tensor] = []
        self.zeros: list[torch.Tensor] = []

    def forward(self, output: Any, source: Any = None) -> Any:
        with torch.no_grad():
            ablated = self.op(_probe_map(_detach_all, output), source)
        outs, news = _probe_leaves(output), _probe_leaves(ablated)
        if len(outs) != len(news):
            raise ValueError("the ablation changes the output's structure")
        zeros = iter([self._watch(a, b) for a, b in zip(outs, news) if _probed(a)])
        return _probe_map(lambda t: t + next(zeros) if _probed(t) else t, output)

    def _watch(self, a: torch.Tensor, b: Any) -> torch.Tensor:
        zero = torch.zeros_like(a, requires_grad=True)
        self.changes.append((torch.as_tensor(b) - a).detach())
        self.zeros.append(zero)
        return zero


def _probed(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point()


def _detach_all(t: Any) -> Any:
    return t.detach() if isinstance(t, torch.Tensor) else t


def _probe_leaves(value: Any) -> list[Any]:
    if isinstance(value, (tuple, list)):
        return [leaf for v in value for leaf in _probe_leaves(v)]
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _probe_leaves(v)]
    return [value]


def _probe_map(fn: Any, value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        items = [_probe_map(fn, v) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    if isinstance(value, dict):
        return type(value)((k, _probe_map(fn, v)) for k, v in value.items())
    return fn(value)


def attach_probe(model: nn.Module, k: Knockout, probe: Probe) -> None:
    """``probe`` where ``k``'s ablation would act (as :mod:`ablagen.ablate` applies it)."""
    if k.head is not None:
        ablate_head(model, str(k.out_proj), probe)
    elif k.call_op is not None:
        ablate_call(model, str(k.module), k.call_op, int(k.call_index or 0), probe)
    elif k.module is not None:
        ablate_output(model, str(k.module), probe, k.call_site)
    else:
        raise LookupError(
            f"{k.variant_id} acts on a graph node, and the model has no graph"
        )


def screen_by_hooks(
    model: nn.Module,
    knockouts: list[Knockout],
    ops: dict[str, Ablation],
    batches: Any,
    loss_fn: LossFn,
    correct_fn: CorrectFn,
    batch_size: int,
    curvature: str,
) -> tuple[_Tally, dict[str, tuple[float, float]], dict[str, str], int, bool]:
    """Per knockout in ``ops`` the summed first-order and Gauss-Newton (rank 1) terms
    over the samples of ``batches``: ``(baseline tally, {vid: (first, second)},
    {vid: why skipped}, samples, whether a Gauss-Newton term was taken)``."""
    probed = copy.deepcopy(model).eval()
    probes: dict[str, Probe] = {}
    skipped: dict[str, str] = {}
    for i, k in enumerate(knockouts):
        if k.variant_id not in ops:
            continue
        try:
            probe = Probe(ops[k.variant_id], i)
            attach_probe(probed, k, probe)
            probes[k.variant_id] = probe
        except (LookupError, ValueError, AttributeError) as exc:
            skipped[k.variant_id] = str(exc)
    sums = {vid: [0.0, 0.0] for vid in probes}
    base, samples, ggn = _Tally(), 0, False
    for x_batch, y_batch in batches:
        for start in range(0, len(x_batch), max(1, batch_size)):
            x, y = (
                x_batch[start : start + batch_size],
                y_batch[start : start + batch_size],
            )
            for probe in probes.values():
                probe.changes, probe.zeros = [], []
            with torch.enable_grad():
                out = probed(x)
                with torch.no_grad():
                    base.add(out, y, loss_fn, correct_fn)
                begin, rows, maps = gradient_rows(out, y, loss_fn, curvature, 1)
                zeros = [z for p in probes.values() for z in p.zeros]
                grads = [None] * len(zeros)
                if zeros and getattr(begin, "requires_grad", False):
                    grads = torch.autograd.grad(
                        begin, zeros, rows[0], allow_unused=True
                    )
            along = None if maps is None else maps[1]
            ggn = ggn or along is not None
            at = 0
            for vid, probe in probes.items():
                mine = grads[at : at + len(probe.zeros)]
                at += len(probe.zeros)
                if vid in skipped:
                    continue
                per_sample = torch.zeros(len(x), dtype=torch.float64, device=x.device)
                for d, g in zip(probe.changes, mine):
                    if g is None:
                        continue
                    if d.dim() == 0 or d.shape[0] != len(x):
                        skipped[vid] = (
                            "its output does not hold one value per sample; the screen cannot weigh it"
                        )
                        break
                    per_sample += (d.double() * g.double()).flatten(1).sum(dim=1)
                sums[vid][0] += float(per_sample.sum())
                if along is not None:
                    sums[vid][1] += float(0.5 * (per_sample * along).square().sum())
            samples += len(x)
    for vid in skipped:
        sums.pop(vid, None)
    terms = {vid: (first, second) for vid, (first, second) in sums.items()}
    return base, terms, skipped, samples, ggn

"""The entry point: every knockout scored, on the fast path where it applies."""

import torch
from torch import nn

from .fast import evaluate_fast
from .means import activation_means
from .naive import _evaluate, evaluate_naive
from .tally import CorrectFn, Knockout, KnockoutReport, LossFn, Score, Validation


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
    val = Validation(x_val, y_val, loss_fn, correct_fn, batch_size)
    means = activation_means(model, knockouts, x_train, batch_size, traced)
    if traced:
        report = evaluate_fast(model, knockouts, means, val, max_batch_mb, max_rows)
        baseline, notes, stats = report.baseline, report.notes, report.stats
        scores = {s.variant_id: s for s in report.scores}
    else:
        baseline = _evaluate(model, val)
        notes, stats = ("naive path: torch.fx could not trace the model",), {}
        scores = {
            k.variant_id: Score(k.variant_id, "skipped", None, "fast")
            for k in knockouts
        }
    rest = [k for k in knockouts if scores[k.variant_id].status == "skipped"]
    naive = evaluate_naive(model, rest, means, val)
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

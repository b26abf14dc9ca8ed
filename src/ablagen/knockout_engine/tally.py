"""The engine's records (knockouts, metrics, scores, reports), the validation data with
how a batch of it is scored, and the loss/accuracy tally."""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ablagen.ablate import ABLATIONS

KNOCKOUT_METHODS = tuple(ABLATIONS)  # identity, zero, mean, mask


@dataclass(frozen=True)
class Knockout:
    """One ablation. ``node``: one torch.fx node (a call site or functional call);
    ``module`` + ``block``: a block, replaced at its output; ``module`` alone: every
    call of that module, or only call number ``call_site``; ``head`` (with
    ``out_proj``, ``num_heads``): one attention head, at the projection's input;
    ``call_op``: a functional call inside ``module``, edited at run time."""

    variant_id: str
    method: str  # identity | zero | mean | mask
    module: str | None = None
    node: str | None = None
    call_site: int | None = None
    block: bool = False
    units: tuple[int, int] | None = None  # mask: output units [start, stop)
    unit_dim: int | None = None  # mask: the dimension that holds the units
    ablated_params: int = 0  # parameters that no longer affect the output
    out_proj: str | None = None  # head: the output projection whose input is split
    head: int | None = None  # head: which one (mask / mean its slice)
    num_heads: int | None = None  # head: of how many
    call_op: str | None = None  # a functional call in ``module`` (untraced models)
    call_index: int | None = None  # ... the call_index-th call of call_op there


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


@dataclass(frozen=True, eq=False)  # eq=False: tensors do not compare to one bool
class Validation:
    """The held-out data every knockout is scored on, and how a batch of it is scored:
    ``loss_fn`` and ``correct_fn`` on ``batch_size`` samples at a time, as the
    scripts' ``evaluate()`` scores them."""

    x: torch.Tensor
    y: torch.Tensor
    loss_fn: LossFn
    correct_fn: CorrectFn
    batch_size: int = 64

    def batches(self, size: int | None = None) -> Iterator[tuple[Any, torch.Tensor]]:
        """``(x, y)`` in order, ``size`` samples at a time (default ``batch_size``)."""
        step = size or self.batch_size
        for start in range(0, len(self.x), step):
            yield self.x[start : start + step], self.y[start : start + step]


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

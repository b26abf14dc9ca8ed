"""The screen's records: one estimate per knockout, and the report of a screen run."""

from dataclasses import dataclass
from typing import Any

from ablagen.knockout_engine.tally import Metrics

#: how the loss change is estimated: "taylor" (first order, one backward pass per
#: chunk) or "ggn" (plus the Gauss-Newton second-order term, a few passes more)
CURVATURES = ("none", "ggn")


@dataclass(frozen=True)
class Estimate:
    """The estimated effect of one knockout on the mean validation loss.

    ``delta_loss`` = ``first_order`` + ``curvature`` (each a mean over the samples);
    ``status`` "ok", "skipped" (the screen cannot estimate it; ``error`` says why)
    or "failed"."""

    variant_id: str
    status: str
    delta_loss: float | None
    first_order: float | None = None
    curvature: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class ScreenReport:
    baseline: Metrics  # the unablated model, measured on the same passes
    estimates: tuple[Estimate, ...]  # one per knockout, in the order given
    curvature: str  # "none" | "ggn"
    notes: tuple[str, ...]
    stats: dict[str, Any]  # memory and time

"""The one Student-t interval: the importance ranking, the sweep's robustness figures
and the pruning curve all take their mean and interval over seeds from here."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class TInterval:
    """Mean, sample standard deviation (ddof 1) and the two-sided Student-t interval
    of the mean; ``std``, ``low`` and ``high`` are None below two values."""

    mean: float
    std: float | None
    low: float | None
    high: float | None


def t_interval(values: Sequence[float], confidence: float = 0.95) -> TInterval:
    """The mean of ``values`` with its ``confidence`` Student-t interval (NaN mean
    for no values)."""
    n = len(values)
    if n == 0:
        return TInterval(math.nan, None, None, None)
    mean = math.fsum(values) / n
    if n < 2:
        return TInterval(mean, None, None, None)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    # Student's t quantile (scipy.stats.t.ppf, same values) without importing
    # scipy.stats (~2 s); lazy: the CLI starts without scipy
    from scipy.special import stdtrit

    half = float(stdtrit(n - 1, 0.5 + confidence / 2.0)) * std / math.sqrt(n)
    return TInterval(mean, std, mean - half, mean + half)

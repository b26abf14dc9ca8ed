"""The three robustness figures of one arm, with intervals and paired tests.

Every function takes ``good``: an array (seeds x learning rates) of the metric
oriented so that higher is better (a loss enters negated), already in report units
(points for accuracies), and the grid's ``log10(lr)`` values.

- **LR window** (decades): per seed, the widest contiguous run of the grid around
  that seed's best learning rate whose metric stays within ``tol`` of the best,
  extended to where the curve crosses ``best - tol`` (linear in log10 lr between
  the neighbouring grid points; clipped at the grid's ends). Mean over seeds,
  Student-t interval, paired t-test against plain (``scipy.stats.ttest_rel``).
- **worst-case drop**: per seed, best minus worst over the grid. Same statistics.
- **seed variance**: the variance over seeds (ddof 1) at each learning rate,
  averaged over learning rates. Percentile bootstrap over seeds for the interval;
  against plain, a Wilcoxon signed-rank test over learning rates of the per-lr
  variances (``scipy.stats.wilcoxon``) and a paired bootstrap interval of the
  difference (the same resampled seeds for both arms).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ablagen.rank.intervals import t_interval as student_t

CONFIDENCE = 0.95
BOOTSTRAP = 2000  # resamples; the generator is seeded: figures are deterministic


@dataclass(frozen=True)
class Interval:
    value: float
    low: float | None
    high: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "value": _clean(self.value),
            "ci_low": _clean(self.low),
            "ci_high": _clean(self.high),
        }


@dataclass(frozen=True)
class Comparison:
    """An arm's figure minus plain's: the difference, its interval, a paired test."""

    diff: Interval
    p_value: float | None
    test: str
    n: int  # pairs: seeds (window, drop) or learning rates (variance)

    def to_json(self) -> dict[str, Any]:
        return {
            **self.diff.to_json(),
            "p_value": _clean(self.p_value),
            "test": self.test,
            "n": self.n,
        }


def _clean(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def t_interval(values: np.ndarray) -> Interval:
    """Mean and two-sided Student-t interval (None bounds below two values)."""
    t = student_t(np.asarray(values, dtype=float).tolist(), CONFIDENCE)
    return Interval(t.mean, t.low, t.high)


def window_decades(log_lrs: np.ndarray, good: np.ndarray, tol: float) -> float:
    """Width in decades of the run around the best point within ``tol`` of it."""
    best_i = int(np.argmax(good))
    threshold = good[best_i] - tol
    lo = hi = best_i
    while lo > 0 and good[lo - 1] >= threshold:
        lo -= 1
    while hi < len(good) - 1 and good[hi + 1] >= threshold:
        hi += 1
    left, right = float(log_lrs[lo]), float(log_lrs[hi])
    if lo > 0:  # the curve crosses the threshold between lo - 1 and lo
        left = _cross(log_lrs[lo - 1], log_lrs[lo], good[lo - 1], good[lo], threshold)
    if hi < len(good) - 1:
        right = _cross(log_lrs[hi + 1], log_lrs[hi], good[hi + 1], good[hi], threshold)
    return right - left


def _cross(x_out: float, x_in: float, y_out: float, y_in: float, level: float) -> float:
    """Where the segment from (x_out, y_out < level) to (x_in, y_in >= level) meets level."""
    return float(x_out + (level - y_out) / (y_in - y_out) * (x_in - x_out))


def per_seed_windows(log_lrs: np.ndarray, good: np.ndarray, tol: float) -> np.ndarray:
    return np.array([window_decades(log_lrs, row, tol) for row in good])


def per_seed_drops(good: np.ndarray) -> np.ndarray:
    return good.max(axis=1) - good.min(axis=1)


def seed_variance(good: np.ndarray) -> float:
    return float(np.mean(np.var(good, axis=0, ddof=1))) if len(good) > 1 else math.nan


def _bootstrap_rows(n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, n, size=(BOOTSTRAP, n))


def variance_interval(good: np.ndarray) -> Interval:
    value = seed_variance(good)
    if len(good) < 2:
        return Interval(value, None, None)
    draws = [seed_variance(good[rows]) for rows in _bootstrap_rows(len(good))]
    low, high = np.percentile(draws, [50 * (1 - CONFIDENCE), 50 * (1 + CONFIDENCE)])
    return Interval(value, float(low), float(high))


def paired_t(arm: np.ndarray, plain: np.ndarray) -> Comparison:
    """``arm - plain`` paired by seed: t interval of the difference, ``ttest_rel``."""
    from scipy import stats

    diff = t_interval(arm - plain)
    p = None
    if len(arm) > 1 and not np.allclose(arm - plain, (arm - plain)[0]):
        p = float(stats.ttest_rel(arm, plain).pvalue)
    elif len(arm) > 1 and np.allclose(arm, plain):
        p = 1.0  # identical on every seed
    return Comparison(
        diff, _clean(p), "paired t-test over seeds (scipy.stats.ttest_rel)", len(arm)
    )


def variance_comparison(arm: np.ndarray, plain: np.ndarray) -> Comparison:
    """Seed variance of ``arm`` minus plain's, both seeds x lrs over the same seeds."""
    from scipy import stats

    value = seed_variance(arm) - seed_variance(plain)
    low = high = None
    if len(arm) > 1:
        draws = [
            seed_variance(arm[r]) - seed_variance(plain[r])
            for r in _bootstrap_rows(len(arm))
        ]
        low, high = (
            float(v)
            for v in np.percentile(
                draws, [50 * (1 - CONFIDENCE), 50 * (1 + CONFIDENCE)]
            )
        )
    per_lr = (
        np.var(arm, axis=0, ddof=1) - np.var(plain, axis=0, ddof=1)
        if len(arm) > 1
        else np.zeros(0)
    )
    p = None
    if len(per_lr) and np.any(per_lr != 0):
        p = float(stats.wilcoxon(per_lr).pvalue)
    return Comparison(
        Interval(value, low, high), _clean(p),
        "Wilcoxon signed-rank over learning rates of the per-lr seed variances (scipy.stats.wilcoxon)",
        len(per_lr),
    )  # fmt: skip

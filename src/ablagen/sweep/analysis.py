"""The sweep's records -> per-arm curves and the three robustness figures.

A run's value is ``result["final"][metric]``. A *diverged* run is a result, not a
gap: it scores the metric's worst value (0 for an accuracy; for a loss, the largest
finite loss any run of the sweep reached). A failed, crashed or timed-out run is a
gap: its point is averaged over the seeds that have it, and its seed leaves that
arm's figures (which need every learning rate) and the pairs with plain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ablagen.orchestrate.run_record import RunRecord
from ablagen.rank.ranking import higher_is_better, metric_value
from ablagen.core.studydir import Manifest
from ablagen.sweep.grid import SWEEP_KIND, Point, series_label
from ablagen.sweep.stats import (
    CONFIDENCE,
    Comparison,
    Interval,
    paired_t,
    per_seed_drops,
    per_seed_windows,
    t_interval,
    variance_comparison,
    variance_interval,
    window_decades,
)

FIGURES = ("lr_window_decades", "worst_case_drop", "seed_variance")


@dataclass(frozen=True)
class PointStat:
    lr: float
    values: dict[int, float]  # seed -> value (metric units; diverged: worst)
    statuses: dict[int, str]
    mean: Interval  # over the seeds that have a value

    def to_json(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            **self.mean.to_json(),
            "values": {str(s): v for s, v in sorted(self.values.items())},
            "statuses": {str(s): v for s, v in sorted(self.statuses.items())},
        }


@dataclass(frozen=True)
class Figure:
    estimate: Interval
    vs_plain: Comparison | None
    per_seed: dict[int, float] | None = None

    def to_json(self) -> dict[str, Any]:
        data = self.estimate.to_json()
        if self.per_seed is not None:
            data["per_seed"] = {str(s): v for s, v in sorted(self.per_seed.items())}
        data["vs_plain"] = self.vs_plain.to_json() if self.vs_plain else None
        return data


@dataclass(frozen=True)
class SeriesResult:
    arm: str
    sigma: float
    points: tuple[PointStat, ...]
    seeds_used: tuple[int, ...]  # seeds with a value at every lr: the figures' seeds
    best_lr: float | None  # of the mean curve
    best: Interval | None
    mean_curve_window: float | None
    figures: dict[str, Figure]
    diverged: int
    missing: int  # failed, crashed, timed out or not run

    @property
    def label(self) -> str:
        return series_label(self.arm, self.sigma)

    def to_json(self) -> dict[str, Any]:
        return {
            "arm": self.arm,
            "sigma": self.sigma,
            "label": self.label,
            "seeds_used": list(self.seeds_used),
            "best_lr": self.best_lr,
            "best": self.best.to_json() if self.best else None,
            "mean_curve_window_decades": self.mean_curve_window,
            "figures": {k: f.to_json() for k, f in self.figures.items()},
            "diverged_runs": self.diverged,
            "missing_runs": self.missing,
            "points": [p.to_json() for p in self.points],
        }


@dataclass(frozen=True)
class SweepResult:
    metric: str
    higher_is_better: bool
    scale: float  # report units per metric unit: 100 (points) for accuracies
    tolerance: float  # metric units
    lrs: tuple[float, ...]
    seeds: tuple[int, ...]
    series: tuple[SeriesResult, ...]
    command: str

    @property
    def unit(self) -> str:
        return "points" if self.scale == 100 else self.metric

    def get(self, label: str) -> SeriesResult | None:
        return next((s for s in self.series if s.label == label), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": 1,
            "metric": self.metric,
            "higher_is_better": self.higher_is_better,
            "unit": self.unit,
            "scale": self.scale,
            "tolerance": self.tolerance,
            "confidence": CONFIDENCE,
            "lrs": list(self.lrs),
            "seeds": list(self.seeds),
            "command": self.command,
            "definitions": DEFINITIONS,
            "series": [s.to_json() for s in self.series],
        }


DEFINITIONS = {
    "value": "final validation metric of a run; a diverged run scores the worst value (0 accuracy; for a loss the largest finite loss of the sweep); failed runs are gaps",
    "band": "95% Student-t interval of the mean over seeds, per learning rate",
    "lr_window_decades": "per seed: width in decades (log10 lr) of the contiguous lr range around the seed's best lr within the tolerance of that best, interpolated linearly in log10 lr to the threshold crossing, clipped at the grid ends; mean over seeds, Student-t interval; vs plain: paired t-test over seeds",
    "worst_case_drop": "per seed: best minus worst value over the grid (report units); mean over seeds, Student-t interval; vs plain: paired t-test over seeds",
    "seed_variance": "variance over seeds (ddof 1) at each lr, averaged over lrs (report units squared); percentile bootstrap over seeds; vs plain: Wilcoxon signed-rank over lrs, paired bootstrap interval of the difference",
    "mean_curve_window_decades": "the LR window of the mean-over-seeds curve (no interval)",
}


def _sweep_points(manifest: Manifest) -> dict[str, Point]:
    return {
        v.id: Point(str(v.extra["arm"]), float(v.extra["sigma"]), float(v.extra["lr"]))
        for v in manifest.variants
        if v.kind == SWEEP_KIND
    }


def latest_records(
    manifest: Manifest, records: list[RunRecord]
) -> dict[tuple[str, int], RunRecord]:
    """The newest finished record per (variant, seed) of the manifest's current scripts."""
    current = {v.id: v.sha256 for v in manifest.variants}
    latest: dict[tuple[str, int], RunRecord] = {}
    for rec in records:
        if rec.status == "running" or current.get(rec.variant_id) != rec.script_sha256:
            continue
        key = (rec.variant_id, rec.seed)
        if key not in latest or (rec.finished_at or 0) >= (
            latest[key].finished_at or 0
        ):
            latest[key] = rec
    return latest


def analyze_sweep(
    manifest: Manifest,
    records: list[RunRecord],
    seeds: tuple[int, ...],
    command: str = "",
) -> SweepResult:
    sweep = manifest.config["sweep"]
    metric, tol = str(sweep["metric"]), float(sweep["tolerance"])
    better = higher_is_better(metric)
    scale = 100.0 if better and metric.endswith("acc") else 1.0
    points = _sweep_points(manifest)
    latest = latest_records(manifest, records)
    ok_values = [
        v for (vid, s), r in latest.items()
        if r.ok and s in seeds and (v := metric_value(r, metric)) is not None
    ]  # fmt: skip
    worst = 0.0 if better else (max(ok_values) if ok_values else math.nan)
    lrs = tuple(sorted(float(x) for x in sweep["lrs"]))
    labels: dict[str, list[Point]] = {}
    for point in points.values():
        labels.setdefault(point.series, []).append(point)
    built = [
        _series(sorted(pts, key=lambda p: p.lr), latest, seeds, worst, metric)
        for pts in labels.values()
    ]
    order = {arm: i for i, arm in enumerate(sweep["arms"])}
    built.sort(key=lambda s: (order.get(s[0].arm, 99), s[0].sigma))
    plain = next((b for b in built if b[0].arm == "plain"), None)
    log_lrs = np.log10(np.array(lrs))
    results = tuple(
        _figures(b, plain, log_lrs, better, scale, tol * scale) for b in built
    )
    return SweepResult(metric, better, scale, tol, lrs, seeds, results, command)


_Built = tuple[Point, list[PointStat], int, int]


def _series(pts: list[Point], latest, seeds, worst: float, metric: str) -> _Built:
    stats, diverged, missing = [], 0, 0
    for point in pts:
        values, statuses = {}, {}
        for seed in seeds:
            rec = latest.get((point.variant_id, seed))
            statuses[seed] = rec.status if rec else "not run"
            value = metric_value(rec, metric) if rec is not None and rec.ok else None
            if rec is not None and rec.status == "diverged":
                value, diverged = worst, diverged + 1
            if value is None or not math.isfinite(value):
                missing += 1
                continue
            values[seed] = value
        mean = t_interval(np.array(list(values.values())))
        stats.append(PointStat(point.lr, values, statuses, mean))
    return pts[0], stats, diverged, missing


def _matrix(
    stats: list[PointStat], seeds: list[int], better: bool, scale: float
) -> np.ndarray:
    sign = 1.0 if better else -1.0
    return np.array([[sign * scale * p.values[s] for p in stats] for s in seeds])


def _complete(stats: list[PointStat]) -> list[int]:
    seeds = set.intersection(*(set(p.values) for p in stats)) if stats else set()
    return sorted(seeds)


def _figures(
    built: _Built, plain: _Built | None, log_lrs, better, scale, tol
) -> SeriesResult:
    head, stats, diverged, missing = built
    seeds = _complete(stats)
    curve = np.array([p.mean.value for p in stats])
    finite = np.isfinite(curve)
    best_lr = best = window = None
    if finite.any():
        oriented = np.where(finite, curve if better else -curve, -np.inf) * scale
        i = int(np.argmax(oriented))
        best_lr, best = stats[i].lr, stats[i].mean
        if finite.all():
            window = window_decades(log_lrs, oriented, tol)
    figures: dict[str, Figure] = {}
    if seeds:
        good = _matrix(stats, seeds, better, scale)
        windows, drops = per_seed_windows(log_lrs, good, tol), per_seed_drops(good)
        vs = [None, None, None]
        if plain is not None and plain[0].arm != head.arm:
            common = sorted(set(seeds) & set(_complete(plain[1])))
            if common:
                mine = _matrix(stats, common, better, scale)
                base = _matrix(plain[1], common, better, scale)
                vs = [
                    paired_t(
                        per_seed_windows(log_lrs, mine, tol),
                        per_seed_windows(log_lrs, base, tol),
                    ),
                    paired_t(per_seed_drops(mine), per_seed_drops(base)),
                    variance_comparison(mine, base),
                ]
        figures = {
            "lr_window_decades": Figure(
                t_interval(windows), vs[0], dict(zip(seeds, windows.tolist()))
            ),
            "worst_case_drop": Figure(
                t_interval(drops), vs[1], dict(zip(seeds, drops.tolist()))
            ),
            "seed_variance": Figure(variance_interval(good), vs[2]),
        }
    return SeriesResult(
        head.arm, head.sigma, tuple(stats), tuple(seeds), best_lr, best, window,
        figures, diverged, missing,
    )  # fmt: skip


def load_sweep_json(path: Path) -> dict[str, Any]:
    import json

    return json.loads(path.read_text(encoding="utf-8"))

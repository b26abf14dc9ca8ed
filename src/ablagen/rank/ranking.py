"""Importance of each ablated variant, with its uncertainty over seeds.

Definition (one row per *variant*, e.g. ``conv1:zero`` and ``conv1:mean`` are
two rows; :mod:`ablagen.arms.noise_scales` folds them per component by ``max``)::

    d_s = baseline_s - variant_s     metrics where higher is better (val_acc, ...)
    d_s = variant_s  - baseline_s    lower-is-better metrics (any name containing
                                     "loss" or "error", epochs_to_target, ...)

for every seed ``s`` with an ``ok`` result of both, so a positive importance
always means "ablating it hurts". ``mean`` and ``std`` (ddof=1) of the d_s, and a
two-sided Student-t interval ``mean ± t_{(1+c)/2, n-1} · std / sqrt(n)``. With
``n == 1`` there is no spread: ``std``, the interval and ``ci_includes_zero`` are
``None`` (one seed says nothing about significance either way: the tables show "–"
and :func:`single_seed_note` suggests more seeds, never "≈0"). Rows are sorted by mean
importance, descending, ties by variant id; rank 1 is the most important.

A variant with any non-``ok`` run, or no ``ok`` run for a seed the baseline has,
is not ranked: it goes to :attr:`Ranking.failed` with its per-seed statuses, so
a crash is never mistaken for "unimportant".

Which records count: those of the manifest's variants whose ``script_sha256``
matches the manifest (older results are stale), from the run-argument group
(e.g. ``{"epochs": 5}``) with the most ``ok`` baseline seeds (ties: more records,
then the newest ``finished_at``); for a repeated (variant, seed) the last record in
the given order wins.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from ablagen.core.errors import StudyError
from ablagen.core.atomic import atomic_write_text
from ablagen.orchestrate.run_record import RunRecord
from ablagen.core.studydir import ABLATION_KINDS, BASELINE_ID, Manifest, VariantEntry
from ablagen.rank.intervals import t_interval

T = TypeVar("T")
IMPORTANCE_JSON = "importance.json"
IMPORTANCE_CSV = "importance.csv"
#: top-level result keys that are lower-is-better metrics
LOWER_IS_BETTER = (
    "epochs_to_target",
    "wall_time_s",
    "peak_memory_bytes",
    "model_bytes",
)
_NOT_METRICS = ("schema", "seed", "epochs")


# --------------------------------------------------------------------------- records
def higher_is_better(metric: str) -> bool:
    name = metric.lower()
    lower = ("loss", "error", "ppl", "perplexity")
    return not (any(word in name for word in lower) or name in LOWER_IS_BETTER)


def metric_value(record: RunRecord, metric: str) -> float | None:
    """``result["final"][metric]``, else a numeric top-level ``result[metric]``. A
    script reports ``peak_memory_bytes`` on a GPU only; on CPU it is what the
    orchestrator measured of the run's process."""
    result = record.result or {}
    final = result.get("final") or {}
    value = final.get(metric) if metric in final else result.get(metric)
    if metric == "peak_memory_bytes" and value is None:
        value = record.peak_memory_bytes
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def available_metrics(records: Sequence[RunRecord]) -> list[str]:
    names: set[str] = set()
    for rec in records:
        result = rec.result or {}
        names.update((result.get("final") or {}).keys())
        for key, value in result.items():
            numeric = value is None or (
                isinstance(value, (int, float)) and not isinstance(value, bool)
            )
            if numeric and key not in _NOT_METRICS:
                names.add(key)
    return sorted(names)


@dataclass(frozen=True)
class Selection:
    """The records that count, by variant id then seed."""

    args: dict[str, Any]
    runs: dict[str, dict[int, RunRecord]]


def select_records(
    manifest: Manifest, records: Sequence[RunRecord], study: str = "STUDY"
) -> Selection:
    """Drop stale and unknown records, pick one run-argument group, last record wins."""
    if not records:
        raise StudyError(
            f"no results in {study}", f"run it first with `ablagen run {study}`"
        )
    sha = {v.id: v.sha256 for v in manifest.variants}
    fresh = [
        r
        for r in records
        if sha.get(r.variant_id) == r.script_sha256 and r.status != "running"
    ]
    if not fresh:
        raise StudyError(
            f"all {len(records)} results in {study} are stale (from scripts that have since changed)",
            f"rerun the study with `ablagen run {study}`",
        )
    groups: dict[str, list[RunRecord]] = {}
    for rec in fresh:
        groups.setdefault(json.dumps(rec.args, sort_keys=True), []).append(rec)

    def score(key: str) -> tuple[int, int, float, str]:
        recs = groups[key]
        ok_base = len({r.seed for r in recs if r.variant_id == BASELINE_ID and r.ok})
        newest = max((r.finished_at or 0.0) for r in recs)
        return ok_base, len(recs), newest, key

    chosen = max(groups, key=score)
    runs: dict[str, dict[int, RunRecord]] = {}
    for rec in groups[chosen]:
        runs.setdefault(rec.variant_id, {})[rec.seed] = rec
    return Selection(args=dict(json.loads(chosen)), runs=runs)


# --------------------------------------------------------------------------- ranking
@dataclass(frozen=True)
class ImportanceRow:
    rank: int
    variant: str
    component: str
    kind: str
    method: str
    mean: float
    std: float | None  # None when n == 1
    n: int
    ci_low: float | None  # None when n == 1
    ci_high: float | None
    ci_includes_zero: bool | None  # None when n == 1: no interval
    seeds: tuple[int, ...]
    diffs: tuple[float, ...]  # the paired d_s, in seed order
    baseline_mean: float  # over the paired seeds
    variant_mean: float

    @property
    def mark(self) -> str:
        """The tables' significance column: "–" without an interval (one seed), "≈0"
        where the interval includes zero, else ""."""
        if self.ci_includes_zero is None:
            return NO_INTERVAL
        return "≈0" if self.ci_includes_zero else ""

    def to_json(self) -> dict[str, Any]:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        data["seeds"], data["diffs"] = list(self.seeds), list(self.diffs)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImportanceRow:
        return cls(
            **{**data, "seeds": tuple(data["seeds"]), "diffs": tuple(data["diffs"])}
        )


@dataclass(frozen=True)
class FailedVariant:
    variant: str
    component: str | None
    kind: str
    method: str | None
    statuses: tuple[tuple[int, str], ...]  # (seed, status); "missing", "no-metric" too

    def to_json(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "component": self.component,
            "kind": self.kind,
            "method": self.method,
            "statuses": {str(seed): status for seed, status in self.statuses},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FailedVariant:
        return cls(
            data["variant"],
            data["component"],
            data["kind"],
            data["method"],
            _statuses(data["statuses"]),
        )


def _statuses(raw: dict[str, str]) -> tuple[tuple[int, str], ...]:
    """``{"0": "ok", ...}`` (as written, keys sorted as text) -> in seed order."""
    return tuple(sorted((int(seed), status) for seed, status in raw.items()))


@dataclass(frozen=True)
class Ranking:
    metric: str
    higher_is_better: bool
    confidence: float
    args: dict[str, Any]  # the run arguments of the records used
    baseline_seeds: tuple[int, ...]  # seeds with an ok baseline value
    baseline_mean: float
    baseline_statuses: tuple[tuple[int, str], ...]
    rows: tuple[ImportanceRow, ...]
    failed: tuple[FailedVariant, ...]

    def row(self, variant: str) -> ImportanceRow | None:
        return next((r for r in self.rows if r.variant == variant), None)

    def to_json(self) -> dict[str, Any]:
        sign = "baseline - variant" if self.higher_is_better else "variant - baseline"
        return {
            "metric": self.metric,
            "higher_is_better": self.higher_is_better,
            "definition": f"importance = {sign} on {self.metric}, paired by seed; "
            f"{self.confidence:.0%} Student-t interval",
            "confidence": self.confidence,
            "args": self.args,
            "baseline": {
                "mean": self.baseline_mean,
                "seeds": list(self.baseline_seeds),
                "statuses": {str(s): st for s, st in self.baseline_statuses},
            },
            "rows": [r.to_json() for r in self.rows],
            "failed": [f.to_json() for f in self.failed],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Ranking:
        """Read back what :meth:`to_json` wrote (KeyError/TypeError if it is not that)."""
        base = data["baseline"]
        return cls(
            metric=data["metric"],
            higher_is_better=data["higher_is_better"],
            confidence=data["confidence"],
            args=dict(data["args"]),
            baseline_seeds=tuple(base["seeds"]),
            baseline_mean=base["mean"],
            baseline_statuses=_statuses(base["statuses"]),
            rows=tuple(ImportanceRow.from_json(r) for r in data["rows"]),
            failed=tuple(FailedVariant.from_json(f) for f in data["failed"]),
        )

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n"

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for r in self.rows:
            writer.writerow(
                [
                    r.rank,
                    r.variant,
                    r.component,
                    r.kind,
                    r.method,
                    _num(r.mean),
                    _num(r.std),
                    r.n,
                    _num(r.ci_low),
                    _num(r.ci_high),
                    (
                        ""
                        if r.ci_includes_zero is None
                        else str(r.ci_includes_zero).lower()
                    ),
                    _num(r.baseline_mean),
                    _num(r.variant_mean),
                    "ranked",
                ]
            )
        for f in self.failed:
            statuses = " ".join(f"{s}:{st}" for s, st in f.statuses)
            writer.writerow(
                [
                    "",
                    f.variant,
                    f.component or "",
                    f.kind,
                    f.method or "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    f"failed ({statuses})",
                ]
            )
        return buf.getvalue()


CSV_COLUMNS = (
    "rank",
    "variant",
    "component",
    "kind",
    "method",
    "importance_mean",
    "importance_std",
    "n",
    "ci_low",
    "ci_high",
    "ci_includes_zero",
    "baseline_mean",
    "variant_mean",
    "status",
)


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.12g}"


#: the significance column of a variant ranked on one seed: no interval, no verdict
NO_INTERVAL = "–"


def readable(value: float | None, signed: bool = True) -> str:
    """An importance (or a half-width) as text: four decimals, or three significant
    digits in scientific notation below 1e-3, where four decimals read ``+0.0000``
    (a val_loss importance is often 1e-5): ``+0.0123``, ``+3.21e-05``, ``+0.0000``
    only for zero itself; ``n/a`` for none."""
    if value is None:
        return "n/a"
    sign = "+" if signed else ""
    if value == 0 or abs(value) >= 1e-3 or value != value:
        return f"{value:{sign}.4f}"
    return f"{value:{sign}.2e}"


def single_seed_note(ranking: Ranking, study: str = "STUDY") -> str | None:
    """One line when some variant was ranked on a single seed (None otherwise)."""
    single = sum(r.n == 1 for r in ranking.rows)
    if not single:
        return None
    which = "every variant" if single == len(ranking.rows) else f"{single} variants"
    return (
        f"{which} ranked on one seed: no interval, so no verdict on significance "
        f"({NO_INTERVAL}); rerun with `--seeds 0,1,2` (`ablagen run {study}` or "
        "`ablagen study`) for intervals"
    )


def _check_metric(metric: str, sel: Selection) -> None:
    recs = [r for runs in sel.runs.values() for r in runs.values() if r.ok]
    if not any(metric_value(r, metric) is not None for r in recs):
        known = ", ".join(
            m
            for m in available_metrics(recs)
            if any(metric_value(r, m) is not None for r in recs)
        )
        known = known or "none"
        raise StudyError(
            f"no result has metric {metric!r}",
            f"pass --metric with one of the available metrics: {known}",
        )


def _stats(
    diffs: list[float], confidence: float
) -> tuple[float, float | None, float | None, float | None]:
    interval = t_interval(diffs, confidence)
    return interval.mean, interval.std, interval.low, interval.high


def rank(
    manifest: Manifest,
    records: Sequence[RunRecord],
    metric: str = "val_acc",
    *,
    confidence: float = 0.95,
    study: str = "STUDY",
) -> Ranking:
    """Rank the manifest's variants by paired importance on ``metric`` (see module doc)."""
    sel = select_records(manifest, records, study)
    _check_metric(metric, sel)
    base_runs = sel.runs.get(BASELINE_ID, {})
    # the seeds the ablations were run at: extra baseline seeds (the arms of
    # `ablagen hybrid` run more) do not make a variant "missing"
    ablation_ids = {e.id for e in manifest.variants if e.kind in ABLATION_KINDS}
    ranked_seeds = {
        s for vid, runs in sel.runs.items() if vid in ablation_ids for s in runs
    }
    base = {
        s: v
        for s, r in sorted(base_runs.items())
        if r.ok
        and (v := metric_value(r, metric)) is not None
        and (s in ranked_seeds or not ranked_seeds)
    }
    if not base:
        raise StudyError(
            f"the baseline of {study} has no successful run with {metric!r}",
            f"run it with `ablagen run {study}` and check its log under logs/",
        )
    sign = 1.0 if higher_is_better(metric) else -1.0
    rows: list[ImportanceRow] = []
    failed: list[FailedVariant] = []
    for entry in manifest.variants:
        if entry.kind in ABLATION_KINDS:
            outcome = _score_variant(
                entry, sel.runs.get(entry.id, {}), base, sign, metric, confidence
            )
            (rows if isinstance(outcome, ImportanceRow) else failed).append(outcome)
    rows.sort(key=lambda row: (-row.mean, row.variant))
    return Ranking(
        metric=metric,
        higher_is_better=sign > 0,
        confidence=confidence,
        args=sel.args,
        baseline_seeds=tuple(base),
        baseline_mean=math.fsum(base.values()) / len(base),
        baseline_statuses=tuple((s, r.status) for s, r in sorted(base_runs.items())),
        rows=tuple(replace(row, rank=i + 1) for i, row in enumerate(rows)),
        failed=tuple(failed),
    )


def _status(rec: RunRecord | None, value: float | None) -> str:
    if rec is None:
        return "missing"
    if not rec.ok:
        return rec.status
    return "ok" if value is not None else "no-metric"


def _score_variant(
    entry: VariantEntry,
    runs: dict[int, RunRecord],
    base: dict[int, float],
    sign: float,
    metric: str,
    confidence: float,
) -> ImportanceRow | FailedVariant:
    """One unranked row (rank 0) from the paired seeds, or the failure it is."""
    statuses: list[tuple[int, str]] = []
    paired: list[tuple[int, float]] = []  # (seed, variant value)
    for seed in sorted(set(base) | set(runs)):
        rec = runs.get(seed)
        value = metric_value(rec, metric) if rec is not None and rec.ok else None
        statuses.append((seed, _status(rec, value)))
        if value is not None and seed in base:
            paired.append((seed, value))
    if not paired or any(status != "ok" for _, status in statuses):
        return FailedVariant(
            entry.id, entry.component, entry.kind, entry.method, tuple(statuses)
        )
    diffs = [sign * (base[seed] - value) for seed, value in paired]
    mean, std, low, high = _stats(diffs, confidence)
    return ImportanceRow(
        rank=0,
        variant=entry.id,
        component=entry.component or entry.id,
        kind=entry.kind,
        method=entry.method or "",
        mean=mean,
        std=std,
        n=len(diffs),
        ci_low=low,
        ci_high=high,
        ci_includes_zero=None if low is None or high is None else low <= 0.0 <= high,
        seeds=tuple(seed for seed, _ in paired),
        diffs=tuple(diffs),
        baseline_mean=math.fsum(base[seed] for seed, _ in paired) / len(paired),
        variant_mean=math.fsum(value for _, value in paired) / len(paired),
    )


# --------------------------------------------------------------------------- I/O
def write_importance(study_dir: str | Path, ranking: Ranking) -> tuple[Path, Path]:
    """Write ``importance.json`` and ``importance.csv`` atomically; return their paths."""
    study = Path(study_dir)
    json_path, csv_path = study / IMPORTANCE_JSON, study / IMPORTANCE_CSV
    atomic_write_text(json_path, ranking.dumps())
    atomic_write_text(csv_path, ranking.to_csv())
    return json_path, csv_path


def load_ranking(study_dir: str | Path) -> Ranking:
    """The ranking ``ablagen rank`` wrote into the study (``importance.json``)."""
    path = Path(study_dir) / IMPORTANCE_JSON
    return read_json(path, f"ablagen rank {study_dir}", Ranking.from_json)


def read_json(path: Path, remedy: str, parse: Callable[[Any], T]) -> T:
    """``parse`` of a JSON file a command wrote; missing or corrupt: a StudyError
    that names the command (``remedy``) writing it."""
    if not path.is_file():
        raise StudyError(
            f"{path.parent} has no ranking ({path.name} is missing)",
            f"run `{remedy}` first",
        )
    try:
        return parse(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError) as exc:
        raise StudyError(
            f"{path} is corrupt ({type(exc).__name__}: {exc})", f"run `{remedy}` again"
        ) from exc


def load_records(study_dir: str | Path) -> list[RunRecord]:
    """Every run record in the study's result store, oldest first ([] before any run)."""
    from ablagen.orchestrate.store import ResultStore  # lazy: sqlite only when needed

    with ResultStore(study_dir, readonly=True) as store:
        return store.records()

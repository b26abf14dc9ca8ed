"""What a tracker receives: a study's runs as plain, tracker-neutral records.

One :class:`TrackedRun` per stored run (variant x seed x run arguments) and one per
variant (the parent, carrying the importance). MLflow and TensorBoard write the same
objects, so both trackers show the same numbers, and a re-export compares a run's
:attr:`TrackedRun.digest` with the one stored in the tracker instead of writing it
again.

Metric names, the same in both trackers:

- per epoch, step = epoch: every number of ``result["history"][i]`` but ``epoch``
  (``train_loss``, ``val_acc``, ``lr``, ...);
- final, step = the last epoch: ``final/<name>`` for each number of ``result["final"]``;
- the run's own numbers, step 0: every numeric top-level result key
  (``epochs_to_target``, ``params_total``, ``params_effective``, ``peak_memory_bytes``,
  ``samples_per_s``, ``wall_time_s``, ...) under its own name;
- parents, step 0: ``importance/mean``, ``importance/std``, ``importance/ci_low``,
  ``importance/ci_high``, ``importance/n``, ``importance/rank``,
  ``importance/variant_mean``, ``importance/baseline_mean``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ablagen.orchestrate.run_record import RunRecord
from ablagen.rank.ranking import Ranking
from ablagen.core.studydir import Manifest, VariantEntry

RUN_KEY_TAG = "ablagen.run_key"
DIGEST_TAG = "ablagen.digest"
#: top-level result keys that describe the run rather than measure it
NOT_METRICS = ("schema", "seed", "epochs", "status", "variant", "error", "device")
#: MLflow's limit on a parameter value (longer values are cut, with a marker)
MAX_PARAM = 6000


@dataclass(frozen=True)
class Point:
    key: str
    value: float
    step: int


@dataclass(frozen=True)
class TrackedRun:
    """One tracker run; ``parent_key`` nests it under its variant's run."""

    key: str  # stable identity across exports (stored as the RUN_KEY_TAG tag)
    name: str  # what the tracker UI shows
    parent_key: str | None
    params: dict[str, str]
    metrics: tuple[Point, ...]
    tags: dict[str, str]
    status: str  # ablagen status: ok, failed, ... (parents: ranked, failed, ...)
    artifacts: tuple[tuple[str, bytes], ...] = ()  # (file name, content)
    start_ms: int | None = None
    end_ms: int | None = None
    slug: str = ""  # a file-system-safe directory name (TensorBoard)
    hparams: dict[str, Any] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        """sha256 of everything a tracker stores for this run (not its parent's id)."""
        payload = {
            "key": self.key,
            "name": self.name,
            "parent": self.parent_key,
            "params": self.params,
            "metrics": [(p.key, _jsonable(p.value), p.step) for p in self.metrics],
            "tags": self.tags,
            "status": self.status,
            "artifacts": [
                (n, hashlib.sha256(b).hexdigest()) for n, b in self.artifacts
            ],
            "times": [self.start_ms, self.end_ms],
        }
        text = json.dumps(payload, sort_keys=True, allow_nan=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def series(self) -> dict[str, list[tuple[int, float]]]:
        """Metric key -> [(step, value)], in logging order."""
        out: dict[str, list[tuple[int, float]]] = {}
        for p in self.metrics:
            out.setdefault(p.key, []).append((p.step, p.value))
        return out


def _jsonable(value: float) -> float | str:
    return value if math.isfinite(value) else repr(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def slug(text: str) -> str:
    """A directory name for a variant id (``fc1[0:8]:mask`` -> ``fc1_0_8_mask``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "run"


def _param(value: Any) -> str:
    text = (
        value
        if isinstance(value, str)
        else json.dumps(value, sort_keys=True, default=str)
    )
    return text if len(text) <= MAX_PARAM else text[: MAX_PARAM - 5] + "[...]"


def flatten(prefix: str, value: Any) -> dict[str, str]:
    """``{"train": {"lr": 0.003}}`` -> ``{"train.lr": "0.003"}`` (lists as JSON)."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key in sorted(value):
            out.update(flatten(f"{prefix}.{key}" if prefix else str(key), value[key]))
        return out
    return {prefix: _param(value)} if prefix else {}


def run_key(record: RunRecord) -> str:
    """The result store's own key: variant, seed, run arguments, script hash."""
    args = json.dumps(record.args, sort_keys=True, separators=(",", ":"))
    return f"{record.variant_id}|seed={record.seed}|{args}|{record.script_sha256[:12]}"


def parent_key(entry: VariantEntry) -> str:
    return f"{entry.id}|{entry.sha256[:12]}"


def record_metrics(result: dict[str, Any] | None) -> tuple[Point, ...]:
    """Per-epoch history, ``final/*`` and the run's top-level numbers (module doc)."""
    result = result or {}
    points: list[Point] = []
    last = 0
    for i, entry in enumerate(result.get("history") or []):
        if not isinstance(entry, dict):
            continue
        step = int(entry.get("epoch", i + 1))
        last = max(last, step)
        for key in sorted(entry):
            value = _number(entry[key])
            if key != "epoch" and value is not None:
                points.append(Point(key, value, step))
    final = result.get("final")
    for key in sorted(final) if isinstance(final, dict) else ():
        value = _number(final[key])
        if value is not None:
            points.append(Point(f"final/{key}", value, last))
    for key in sorted(result):
        value = _number(result[key])
        if key not in NOT_METRICS and value is not None:
            points.append(Point(key, value, 0))
    return tuple(points)


def error_text(record: RunRecord) -> str:
    """The run's error: the result's ``error``, else the log's last line; '' if ok."""
    if record.ok:
        return ""
    error = (record.result or {}).get("error")
    if isinstance(error, str) and error:
        return error
    lines = (record.error_tail or "").strip().splitlines()
    return lines[-1].removeprefix("[ablagen] ") if lines else record.status


def child_run(
    study: Path, manifest: Manifest, entry: VariantEntry, record: RunRecord
) -> TrackedRun:
    """The tracker run of one stored run (ok or not: failures are exported too)."""
    params = {
        "variant": entry.id,
        "component": entry.component or "",
        "kind": entry.kind,
        "method": entry.method or "",
        "seed": str(record.seed),
        "script": entry.script,
        "script_sha256": record.script_sha256,
        "mode": manifest.mode,
        "model": str(manifest.model.get("path", "")),
        "model_sha256": str(manifest.model.get("sha256", "")),
    }
    params.update(flatten("args", record.args))
    params.update(flatten("config", manifest.config))
    params.update(flatten("extra", entry.extra))  # e.g. an arm's sigma and noise
    tags = {
        "status": record.status,
        "error": error_text(record),
        "variant": entry.id,
        "seed": str(record.seed),
        "exit_code": "" if record.exit_code is None else str(record.exit_code),
        "log": record.log_path or "",
    }
    artifacts: list[tuple[str, bytes]] = []
    script = study / entry.script
    if script.is_file():
        artifacts.append((entry.script, script.read_bytes()))
    if record.result is not None:
        text = json.dumps(record.result, indent=2, sort_keys=True) + "\n"
        artifacts.append(("result.json", text.encode()))
    if record.log_path and (study / record.log_path).is_file():
        artifacts.append(("run.log", (study / record.log_path).read_bytes()))
    end = record.finished_at
    times = (
        (int((end - record.wall_time_s) * 1000), int(end * 1000))
        if end is not None
        else (None, None)
    )
    return TrackedRun(
        key=run_key(record),
        name=f"{entry.id} seed={record.seed}",
        parent_key=parent_key(entry),
        params=params,
        metrics=record_metrics(record.result),
        tags=tags,
        status=record.status,
        artifacts=tuple(artifacts),
        start_ms=times[0],
        end_ms=times[1],
        slug=f"{slug(entry.id)}/seed{record.seed}",
        hparams={
            "variant": entry.id,
            "kind": entry.kind,
            "method": entry.method or "",
            "seed": record.seed,
            "status": record.status,
        },
    )


def parent_run(entry: VariantEntry, ranking: Ranking | None) -> TrackedRun:
    """A variant's run: its importance mean and interval where it was ranked."""
    row = ranking.row(entry.id) if ranking is not None else None
    failed = next(
        (f for f in (ranking.failed if ranking else ()) if f.variant == entry.id), None
    )
    metrics: list[Point] = []
    if row is not None:
        values = {
            "importance/mean": row.mean,
            "importance/std": row.std,
            "importance/ci_low": row.ci_low,
            "importance/ci_high": row.ci_high,
            "importance/n": row.n,
            "importance/rank": row.rank,
            "importance/variant_mean": row.variant_mean,
            "importance/baseline_mean": row.baseline_mean,
        }
        metrics = [Point(k, float(v), 0) for k, v in values.items() if v is not None]
        status = "ranked"
    elif failed is not None:
        status = "failed"
    else:
        status = entry.kind if entry.kind in ("baseline", "arm") else "unranked"
    error = ", ".join(f"seed {s}: {st}" for s, st in failed.statuses) if failed else ""
    tags = {"status": status, "error": error, "variant": entry.id}
    if ranking is not None and row is not None:
        tags["importance.metric"] = ranking.metric
        tags["importance.confidence"] = f"{ranking.confidence:g}"
        if row.ci_includes_zero is not None:  # None: one seed, no interval
            tags["importance.ci_includes_zero"] = str(row.ci_includes_zero).lower()
    return TrackedRun(
        key=parent_key(entry),
        name=entry.id,
        parent_key=None,
        params={
            "variant": entry.id,
            "component": entry.component or "",
            "kind": entry.kind,
            "method": entry.method or "",
            "script": entry.script,
            "script_sha256": entry.sha256,
        },
        metrics=tuple(metrics),
        tags=tags,
        status=status,
        slug=slug(entry.id),
    )


@dataclass(frozen=True)
class StudyRuns:
    """Everything an export writes, and the records it left out (and why)."""

    parents: tuple[TrackedRun, ...]
    children: tuple[TrackedRun, ...]
    stale: int  # records of scripts regenerated since (not the manifest's hash)
    running: int  # records still running elsewhere


def study_runs(
    study: Path,
    manifest: Manifest,
    records: Sequence[RunRecord],
    ranking: Ranking | None,
) -> StudyRuns:
    """Parents for every variant with a stored run, children for every finished record
    of a current script, in manifest order then seed."""
    entries = {e.id: e for e in manifest.variants}
    current = [
        r
        for r in records
        if r.variant_id in entries and entries[r.variant_id].sha256 == r.script_sha256
    ]
    finished = [r for r in current if r.status != "running"]
    order = {e.id: i for i, e in enumerate(manifest.variants)}
    finished.sort(key=lambda r: (order[r.variant_id], r.seed, run_key(r)))
    children = tuple(
        child_run(study, manifest, entries[r.variant_id], r) for r in finished
    )
    used = dict.fromkeys(r.variant_id for r in finished)
    parents = tuple(parent_run(entries[v], ranking) for v in used)
    return StudyRuns(
        parents,
        _unique_slugs(children),
        stale=len(records) - len(current),
        running=len(current) - len(finished),
    )


def _unique_slugs(children: Iterable[TrackedRun]) -> tuple[TrackedRun, ...]:
    """A second record of one variant and seed (other run arguments) gets the
    arguments appended to ``<variant>/seed<k>``: no two runs share a directory."""
    from dataclasses import replace

    out, seen = [], set()
    for run in children:
        name = run.slug
        if name in seen:
            args = "-".join(
                f"{k.removeprefix('args.')}{v}"
                for k, v in sorted(run.params.items())
                if k.startswith("args.")
            )
            name = f"{name}-{slug(args) or run.key[-12:]}"
        seen.add(name)
        out.append(replace(run, slug=name))
    return tuple(out)

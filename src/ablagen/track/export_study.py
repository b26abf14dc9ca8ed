"""``ablagen export`` and ``--track``: a study's runs into MLflow and TensorBoard.

:func:`export_study` reads the result store (every finished run of the current
scripts, failures included, with their status and error), ranks the study when it
can (parents then carry the importance), and syncs every target. Targets are all
opened before anything is written, so a bad URI or directory fails with one line
and nothing exported.

:class:`LiveTracker` is a ``run_study(progress=...)`` callback: each run is
exported as the orchestrator stores it (never from inside the scripts, which stay
plain torch), and when a ``run_study`` call ends the whole study is synced once
more (members of a shared knockout run, the importance of the parents).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ablagen.core.errors import ConfigError, StudyError
from ablagen.orchestrate.run_record import RunRecord
from ablagen.rank.ranking import Ranking, load_records, rank
from ablagen.core.studydir import Manifest, load_manifest
from ablagen.track.runs import TrackedRun, child_run, parent_run, study_runs

TRACKERS = ("mlflow", "tensorboard")
TENSORBOARD_DIR = "tensorboard"


@dataclass(frozen=True)
class Target:
    """Where to export: ``kind`` is mlflow or tensorboard; ``location`` an MLflow
    tracking URI or a TensorBoard log directory (None: the default under the study)."""

    kind: str
    location: str | None = None
    experiment: str | None = None  # MLflow experiment (default: the study's path)

    def resolve(self, study: Path) -> str:
        if self.kind == "mlflow":
            from ablagen.track.mlflow_sink import sqlite_uri, store_uri

            return store_uri(self.location) if self.location else sqlite_uri(study)
        return self.location or str((study / TENSORBOARD_DIR).resolve())


def parse_track(values: Sequence[str]) -> tuple[Target, ...]:
    """``--track mlflow``, ``--track mlflow=URI``, ``--track tensorboard=DIR`` (also
    comma-separated kinds: ``--track mlflow,tensorboard``)."""
    targets = []
    for value in values:
        parts = [value] if "=" in value else value.split(",")
        for part in parts:
            kind, _, location = part.strip().partition("=")
            if kind not in TRACKERS:
                raise ConfigError(
                    f"unknown tracker {kind!r} in --track {value!r}",
                    "use mlflow, tensorboard, mlflow=URI or tensorboard=DIR",
                )
            targets.append(Target(kind, location or None))
    return tuple(targets)


def open_sink(target: Target, study: Path):
    """The writer for one target (checks the extra is installed and the place usable)."""
    location = target.resolve(study)
    if target.kind == "mlflow":
        from ablagen.track.mlflow_sink import MLflowSink

        return MLflowSink(location, target.experiment or str(study.resolve()), study)
    from ablagen.track.tensorboard_sink import TensorBoardSink

    return TensorBoardSink(Path(location))


@dataclass(frozen=True)
class ExportEvent:
    """``start`` (per target, ``total`` set), ``run`` (``run`` and ``action`` set), ``end``."""

    event: str
    tracker: str
    location: str
    total: int = 0
    done: int = 0
    run: TrackedRun | None = None
    action: str = ""
    variants: int = 0  # start: of the ``total`` entries, the variants' own runs


@dataclass
class TargetSummary:
    kind: str
    location: str
    counts: dict[str, int] = field(default_factory=dict)  # action -> runs


@dataclass(frozen=True)
class ExportSummary:
    study: Path
    targets: tuple[TargetSummary, ...]
    runs: int  # per-seed runs exported (to each target)
    variants: int  # parent runs
    not_ok: tuple[TrackedRun, ...]  # exported with their failed status and error
    stale: int  # stored runs of scripts regenerated since (not exported)
    running: int  # runs still in flight (exported by a later export)
    ranked: bool  # whether the parents carry importance
    rank_note: str  # why not, when not


ExportCallback = Callable[[ExportEvent], None]


def _ranking(
    manifest: Manifest, records: Sequence[RunRecord], metric: str, study: Path
) -> tuple[Ranking | None, str]:
    try:
        return rank(manifest, records, metric, study=str(study)), ""
    except StudyError as exc:
        return None, str(exc)


def export_study(
    study_dir: str | Path,
    targets: Sequence[Target],
    *,
    metric: str = "val_acc",
    progress: ExportCallback | None = None,
) -> ExportSummary:
    """Sync every finished run of the study into each target (idempotent)."""
    study = Path(study_dir)
    manifest = load_manifest(study)
    records = load_records(study)
    if not records:
        raise StudyError(
            f"no results in {study}", f"run it first with `ablagen run {study}`"
        )
    if not targets:
        raise ConfigError("nothing to export to", "pass --mlflow and/or --tensorboard")
    sinks = [(t, open_sink(t, study)) for t in targets]  # all checked before writing
    ranking, note = _ranking(manifest, records, metric, study)
    runs = study_runs(study, manifest, records, ranking)
    return ExportSummary(
        study=study,
        targets=tuple(
            _sync(
                t.kind, t.resolve(study), sink, runs.parents + runs.children, progress
            )
            for t, sink in sinks
        ),
        runs=len(runs.children),
        variants=len(runs.parents),
        not_ok=tuple(r for r in runs.children if r.status != "ok"),
        stale=runs.stale,
        running=runs.running,
        ranked=ranking is not None,
        rank_note=note,
    )


def _sync(
    kind: str,
    location: str,
    sink: Any,
    runs: Sequence[TrackedRun],
    progress: ExportCallback | None,
) -> TargetSummary:
    notify = progress or (lambda event: None)
    summary = TargetSummary(kind, location)
    parents = sum(1 for r in runs if r.parent_key is None)
    notify(ExportEvent("start", kind, location, total=len(runs), variants=parents))
    for done, (run, action) in enumerate(sink.sync(runs), start=1):
        summary.counts[action] = summary.counts.get(action, 0) + 1
        notify(ExportEvent("run", kind, location, len(runs), done, run, action))
    notify(ExportEvent("end", kind, location, len(runs), len(runs)))
    return summary


class LiveTracker:
    """``run_study(progress=...)``: export each run as it is stored.

    ``studies``: the study directories the runs may belong to (``ablagen study
    --mode two-stage`` runs two); a run is routed to the one whose manifest lists
    its script. A tracker that fails mid-study warns once (``warn``) and stops;
    the runs go on, and ``ablagen export`` catches up later.
    """

    def __init__(
        self,
        targets: Sequence[Target],
        studies: Sequence[str | Path],
        *,
        metric: str = "val_acc",
        warn: Callable[[str], None] = lambda line: None,
    ) -> None:
        if not targets:
            raise ConfigError("--track needs a tracker", "use mlflow or tensorboard")
        self.targets = tuple(targets)
        self.studies = tuple(Path(s) for s in studies)
        self.metric = metric
        self.warn = warn
        self.sinks: dict[Path, list[tuple[Target, Any]]] = {}
        self.manifests: dict[Path, Manifest] = {}
        self.broken: set[str] = set()

    def check(self) -> None:
        """Fail before any run: open every target of the studies that exist now;
        for one not generated yet, check the extra and any place given explicitly."""
        from ablagen.track.deps import (
            require_mlflow,
            require_sqlite_store,
            require_tensorboard,
        )
        from ablagen.track.mlflow_sink import store_uri

        for study in self.studies:
            if (study / "manifest.json").is_file():
                self._sinks(study)
                continue
            for target in self.targets:
                if target.kind == "mlflow":
                    require_mlflow()
                    if store_uri(target.location or "mlflow").startswith("sqlite:"):
                        require_sqlite_store()
                else:
                    require_tensorboard()
                if target.location:
                    open_sink(target, study)

    def _sinks(self, study: Path) -> list[tuple[Target, Any]]:
        if study not in self.sinks:
            self.sinks[study] = [(t, open_sink(t, study)) for t in self.targets]
        return self.sinks[study]

    def _route(self, record: RunRecord) -> tuple[Path, Manifest] | None:
        for reload in (False, True):  # a manifest grows (the arms): read it again
            for study in self.studies:
                if reload or study not in self.manifests:
                    if not (study / "manifest.json").is_file():
                        continue
                    self.manifests[study] = load_manifest(study)
                manifest = self.manifests[study]
                entry = next(
                    (v for v in manifest.variants if v.id == record.variant_id), None
                )
                if entry is not None and entry.sha256 == record.script_sha256:
                    return study, manifest
        return None

    def __call__(self, event: Any) -> None:
        try:
            if event.event in ("finished", "elsewhere") and event.record is not None:
                self._one(event.record)
            elif event.event == "end" and event.summary is not None:
                study = Path(event.summary.study_dir)
                if study in self.studies or len(self.studies) == 1:
                    self._all(study if study in self.studies else self.studies[0])
        except Exception as exc:  # tracking must never stop the study
            self._fail(exc)

    def _one(self, record: RunRecord) -> None:
        routed = self._route(record)
        if routed is None or record.status == "running":
            return
        study, manifest = routed
        entry = manifest.variant(record.variant_id)
        parent = parent_run(entry, None)
        child = child_run(study, manifest, entry, record)
        for target, sink in self._sinks(study):
            if target.kind in self.broken:
                continue
            if target.kind == "mlflow" and parent.key not in sink.ids:
                list(sink.sync([parent]))
            list(sink.sync([child]))

    def _all(self, study: Path) -> None:
        manifest = load_manifest(study)
        records = load_records(study)
        ranking, _ = _ranking(manifest, records, self.metric, study)
        runs = study_runs(study, manifest, records, ranking)
        for target, sink in self._sinks(study):
            if target.kind not in self.broken:
                list(sink.sync(runs.parents + runs.children))

    def _fail(self, exc: Exception) -> None:
        kinds = ", ".join(t.kind for t in self.targets if t.kind not in self.broken)
        self.broken.update(t.kind for t in self.targets)
        if kinds:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            self.warn(
                f"warning: live tracking ({kinds}) stopped: {first[:200]}; "
                "the runs go on; export them later with `ablagen export STUDY`"
            )

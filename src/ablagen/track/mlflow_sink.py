"""MLflow: one experiment per study, a parent run per variant, a nested run per seed.

Idempotent: every run carries the tags ``ablagen.run_key`` (the result store's key,
or the variant's for a parent) and ``ablagen.digest`` (a hash of all it holds). A
sync looks the experiment's active runs up once; a run whose key is there with the
same digest is left alone, one whose content changed (a retried run, a new ranking)
is deleted and written again, and its children are pointed at the new parent. So
exporting twice, or exporting after ``run --track mlflow`` logged the same runs
live, never duplicates a run.

The default store is MLflow's SQLite store, ``STUDY/mlflow.db`` with the artifacts
in ``STUDY/mlartifacts`` (no server needed): the store MLflow 3 recommends, which
``mlflow ui --backend-store-uri sqlite:///...`` and ``mlflow.search_runs`` open as
they are. A plain directory given as the store gets the same layout; a ``file:``
URI, asked for by name, is MLflow's old file store (MLflow 3 opens it only with
``MLFLOW_ALLOW_FILE_STORE=true``: ablagen sets it for its own process).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import unquote, urlparse

from ablagen.core.errors import OutputError
from ablagen.track.deps import require_mlflow, require_sqlite_store, writable_dir
from ablagen.track.runs import DIGEST_TAG, RUN_KEY_TAG, TrackedRun

PARENT_TAG = "mlflow.parentRunId"
STUDY_TAG = "ablagen.study"
#: ablagen status -> MLflow run status
RUN_STATUS = {"ok": "FINISHED", "timeout": "KILLED", "failed": "FAILED"}
RUN_STATUS.update(dict.fromkeys(("ranked", "baseline", "arm", "unranked"), "FINISHED"))
_BATCH = 100  # MLflow takes at most 100 params or tags, 1000 metrics, per batch


#: the SQLite store's file and its artifacts' directory, in a store directory
STORE_DB = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"


def sqlite_uri(directory: Path) -> str:
    """The SQLite store ablagen writes in ``directory``."""
    return f"sqlite:///{(directory / STORE_DB).resolve()}"


def local_path(uri: str) -> Path | None:
    """The directory a local store lives in (a ``file:`` URI's own, a ``sqlite:``
    file's parent, a plain path); None for a server URI."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "sqlite":
        return Path(unquote(uri[len("sqlite:///") :])).parent
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        return Path(uri)
    return None


def store_uri(uri: str) -> str:
    """The tracking URI ablagen writes to: a plain directory becomes the SQLite store
    in it; URIs are kept as they are."""
    path = local_path(uri)
    if path is not None and urlparse(uri).scheme not in ("file", "sqlite"):
        return sqlite_uri(path)
    return uri


def _quiet_migrations() -> None:
    """MLflow and alembic log each schema step when a SQLite store is created."""
    import logging

    for name in ("mlflow.store.db.utils", "mlflow.store.db", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


class MLflowSink:
    """Writes :class:`TrackedRun` objects into one MLflow experiment."""

    def __init__(self, uri: str, experiment: str, study: Path) -> None:
        require_mlflow()
        from mlflow.tracking import MlflowClient

        self.uri = uri = store_uri(uri)
        path = local_path(uri)
        artifacts = None
        if path is not None:
            writable_dir(path, "MLflow store")
            if uri.startswith("sqlite:"):
                require_sqlite_store()
                _quiet_migrations()
                artifacts = (path.resolve() / ARTIFACTS_DIR).as_uri()
            else:
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
                uri = path.resolve().as_uri()
        try:
            self.client = MlflowClient(tracking_uri=uri)
            found = self.client.get_experiment_by_name(experiment)
            self.experiment_id = (
                found.experiment_id
                if found is not None
                else self.client.create_experiment(
                    experiment,
                    artifact_location=artifacts,
                    tags={STUDY_TAG: str(study.resolve())},
                )
            )
            self.existing = {
                run.data.tags[RUN_KEY_TAG]: run
                for run in self._all_runs()
                if RUN_KEY_TAG in run.data.tags
            }
        except Exception as exc:  # mlflow raises many kinds; all mean "unusable URI"
            raise OutputError(
                f"cannot use the MLflow tracking URI {self.uri!r} ({_one_line(exc)})",
                "pass a reachable server or a writable directory to --mlflow",
            ) from None
        self.ids: dict[str, str] = {
            key: run.info.run_id for key, run in self.existing.items()
        }

    def _all_runs(self) -> Iterator:
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id], max_results=1000, page_token=token
            )
            yield from page
            token = page.token
            if not token:
                return

    def sync(self, runs: Sequence[TrackedRun]) -> Iterator[tuple[TrackedRun, str]]:
        """Write each run (parents before their children); yield (run, action) with
        action ``created``, ``replaced`` or ``unchanged``."""
        for run in runs:
            old = self.existing.get(run.key)
            parent = self.ids.get(run.parent_key) if run.parent_key else None
            if old is not None and old.data.tags.get(DIGEST_TAG) == run.digest:
                if parent and old.data.tags.get(PARENT_TAG) != parent:
                    self.client.set_tag(old.info.run_id, PARENT_TAG, parent)
                yield run, "unchanged"
                continue
            if old is not None:
                self.client.delete_run(old.info.run_id)
            new = self._write(run, parent)
            self.existing[run.key] = new
            self.ids[run.key] = new.info.run_id
            yield run, "created" if old is None else "replaced"

    def _write(self, run: TrackedRun, parent: str | None):
        from mlflow.entities import Metric, Param, RunTag

        tags = {**run.tags, RUN_KEY_TAG: run.key, DIGEST_TAG: run.digest}
        if parent:
            tags[PARENT_TAG] = parent
        created = self.client.create_run(
            self.experiment_id, start_time=run.start_ms, tags=tags, run_name=run.name
        )
        run_id = created.info.run_id
        stamp = run.end_ms or 0
        params = [Param(k, v) for k, v in sorted(run.params.items())]
        metrics = [Metric(p.key, p.value, stamp, p.step) for p in run.metrics]
        for i in range(0, max(len(params), len(metrics), 1), _BATCH):
            self.client.log_batch(
                run_id, metrics=metrics[i : i + _BATCH], params=params[i : i + _BATCH]
            )
        if run.artifacts:
            with tempfile.TemporaryDirectory(prefix="ablagen-mlflow-") as tmp:
                for name, data in run.artifacts:
                    (Path(tmp) / name).write_bytes(data)
                self.client.log_artifacts(run_id, tmp)
        self.client.set_terminated(
            run_id, RUN_STATUS.get(run.status, "FAILED"), end_time=run.end_ms
        )
        return self.client.get_run(run_id)

"""``run_study``: plan the runs, skip what is done, run the rest, store every outcome.

Resume is the default: a run whose key (variant, seed, arguments, script sha256)
is already ``ok`` in the store is skipped; a failed one (failed, diverged, timeout,
crashed) is skipped and reported unless ``retry_failed``; a regenerated script has
a new hash, so it runs again. Runs left ``running`` by an orchestrator that is gone
are reset first. Ctrl-C / SIGTERM stop the runs in flight and give their rows back;
an outcome is never half-stored (a signal waits until the write is committed).
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType

from ablagen.errors import StudyError
from ablagen.fsutil import sha256_file
from ablagen.orchestrate.backends import Backend, get_backend
from ablagen.orchestrate.options import (
    FAILED_STATUSES,
    RunOptions,
    RunSpec,
    RunSummary,
    check_seeds,
)
from ablagen.orchestrate.outcome import classify, read_tail
from ablagen.orchestrate.owner import Owner, pid_alive
from ablagen.orchestrate.records import RunRecord
from ablagen.orchestrate.store import ResultStore
from ablagen.studydir import (
    BASELINE_ID,
    LOGS_DIR,
    Manifest,
    load_manifest,
    split_result,
)


@dataclass(frozen=True)
class Progress:
    """One progress event for ``run_study(progress=...)``.

    ``event``: "start" (once, before any run), "started" (a run was handed to the
    backend; ``spec`` set), "finished" (``record`` set), "end" (once, ``summary`` set).
    Counts refer to the runs this call executes (``total``), not the skipped ones.
    """

    event: str
    total: int
    done: int = 0
    failed: int = 0
    running: int = 0
    skipped_ok: int = 0
    skipped_failed: int = 0
    backend: str = ""
    spec: RunSpec | None = None
    record: RunRecord | None = None
    summary: RunSummary | None = None


ProgressCallback = Callable[[Progress], None]
TMP_PREFIX = "ablagen-run-"  # + pid: per-run scratch (result JSON) in the system temp


def resolve_seeds(manifest: Manifest, options: RunOptions) -> tuple[int, ...]:
    """``options.seeds``, else the manifest's ``config["seeds"]``, else (0,)."""
    if options.seeds is not None:
        return options.seeds
    seeds = manifest.config.get("seeds")
    if isinstance(seeds, list) and seeds and all(isinstance(s, int) for s in seeds):
        return check_seeds(tuple(seeds))
    return (0,)


def plan_runs(study: Path, manifest: Manifest, options: RunOptions) -> list[RunSpec]:
    """Every run in scope, variant-major in manifest order; checks ``--only`` and hashes."""
    if options.only:
        ids = dict.fromkeys(options.only)
        variants = [manifest.variant(v) for v in ids]
    else:
        variants = list(manifest.variants)
    seeds = resolve_seeds(manifest, options)
    args = options.script_args()
    specs = []
    grouped: set[str] = set()
    for entry in variants:
        actual = sha256_file(study / entry.script)
        if actual != entry.sha256:
            raise StudyError(
                f"{entry.script} in {study} changed since it was generated (its sha256 is not the manifest's)",
                "regenerate the study with `ablagen generate ... --force`, or restore the script",
            )
        members: tuple[str, ...] = ()
        if entry.extra.get(
            "knockout"
        ):  # one run of the shared script scores every entry
            if entry.script in grouped:
                continue
            grouped.add(entry.script)
            members = tuple(v.id for v in manifest.variants if v.script == entry.script)
            entry = manifest.variant(
                BASELINE_ID if BASELINE_ID in members else members[0]
            )
        specs += [
            RunSpec(entry.id, entry.script, entry.sha256, seed, dict(args), members)
            for seed in seeds
        ]
    return specs


class _Signals:
    """SIGINT/SIGTERM raise KeyboardInterrupt, but never inside a critical section."""

    def __init__(self) -> None:
        self.critical = False
        self.pending = False

    def handler(self, signum: int, frame: FrameType | None) -> None:
        if self.critical:
            self.pending = True
        else:
            raise KeyboardInterrupt

    @contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        saved = {
            sig: signal.signal(sig, self.handler)
            for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            yield
        finally:
            for sig, old in saved.items():
                signal.signal(sig, old)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        self.critical = True
        try:
            yield
        finally:
            self.critical = False
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt


@dataclass
class _Tally:
    """Counts for progress events; ``total`` is what this call runs."""

    total: int
    skipped_ok: int
    skipped_failed: int
    backend: str = ""
    ran: list[RunRecord] = field(default_factory=list)
    running: int = 0

    def event(
        self,
        kind: str,
        spec: RunSpec | None = None,
        record: RunRecord | None = None,
        summary: RunSummary | None = None,
    ) -> Progress:
        return Progress(
            event=kind,
            total=self.total,
            done=len(self.ran),
            failed=sum(1 for r in self.ran if not r.ok),
            running=self.running,
            skipped_ok=self.skipped_ok,
            skipped_failed=self.skipped_failed,
            backend=self.backend,
            spec=spec,
            record=record,
            summary=summary,
        )


def run_study(
    study_dir: str | Path,
    options: RunOptions | None = None,
    progress: ProgressCallback | None = None,
) -> RunSummary:
    """Run a study's scripts into its result store and return what happened.

    Bad input (not a study, corrupt manifest, unknown ``--only`` id, changed script,
    backend unavailable) raises an :class:`~ablagen.errors.AblagenError` before any
    run starts. Failing runs are data: they end up in the store and the summary.
    """
    options = options or RunOptions()
    started = time.monotonic()
    study = Path(study_dir)
    manifest = load_manifest(study)
    specs = plan_runs(study, manifest, options)
    factory = get_backend(options.backend)
    notify = progress or (lambda event: None)
    _sweep_temp_dirs()
    with tempfile.TemporaryDirectory(prefix=f"{TMP_PREFIX}{os.getpid()}-") as tmp:
        scripts = sorted({study / s.script for s in specs})
        backend = factory(study, options, Path(tmp), scripts)
        with ResultStore(study) as store:
            owner = Owner.current()
            store.reset_stale(owner)
            todo, skipped_failed, skipped_ok = _partition(
                store, specs, options.retry_failed
            )
            session = _Session(
                study,
                store,
                backend,
                owner,
                notify,
                _Tally(len(todo), skipped_ok, len(skipped_failed), backend.name),
            )
            if todo:
                (study / LOGS_DIR).mkdir(exist_ok=True)
                with backend:
                    session.execute(todo)
    summary = RunSummary(
        study_dir=str(study),
        backend=options.backend,
        jobs=session.jobs,
        planned=len(specs),
        ran=tuple(session.tally.ran),
        skipped_ok=skipped_ok,
        skipped_failed=tuple(skipped_failed),
        running_elsewhere=tuple(session.elsewhere),
        wall_time_s=time.monotonic() - started,
    )
    notify(session.tally.event("end", summary=summary))
    return summary


def _sweep_temp_dirs() -> None:
    """Remove the temp dirs of orchestrators killed with ``kill -9`` (pid is gone)."""
    for path in Path(tempfile.gettempdir()).glob(f"{TMP_PREFIX}*-*"):
        pid = path.name[len(TMP_PREFIX) :].partition("-")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _partition(
    store: ResultStore, specs: list[RunSpec], retry_failed: bool
) -> tuple[list[RunSpec], list[RunRecord], int]:
    """Split the runs in scope: to run, failed before (not retried), count already ok.

    A run another live orchestrator holds stays in the first list: ``claim`` then
    refuses it and it is reported as running elsewhere.
    """
    todo, skipped_failed, skipped_ok = [], [], 0
    for spec in specs:
        record = store.get(spec)
        if record is None or record.status == "running":
            todo.append(spec)
        elif record.ok:
            skipped_ok += 1
        elif record.status in FAILED_STATUSES and not retry_failed:
            skipped_failed.append(record)
        else:
            todo.append(spec)
    return todo, skipped_failed, skipped_ok


@dataclass
class _Session:
    """One call's running state: claims runs, feeds the backend, stores outcomes."""

    study: Path
    store: ResultStore
    backend: Backend
    owner: Owner
    notify: ProgressCallback
    tally: _Tally
    elsewhere: list[RunSpec] = field(default_factory=list)
    jobs: int = 0

    def execute(self, todo: list[RunSpec]) -> None:
        """Run ``todo`` on the started backend, at most ``capacity`` at a time."""
        self.jobs = self.backend.capacity
        self.tally.backend = self.backend.describe()
        self.notify(self.tally.event("start"))
        signals = _Signals()
        pending = deque(todo)
        inflight: dict[tuple[str, int, str, str], RunSpec] = {}
        with signals.installed():
            try:
                while pending or inflight:
                    while pending and len(inflight) < self.jobs:
                        spec = pending.popleft()
                        with signals.deferred():
                            if self._start(spec):
                                inflight[spec.key] = spec
                    if not inflight:
                        break
                    raw = self.backend.next_done()
                    with signals.deferred():
                        record = classify(
                            raw, read_tail(self.study / raw.spec.log_path)
                        )
                        record = self._finish(raw.spec, record)
                        inflight.pop(raw.spec.key, None)
                    self.tally.ran.append(record)
                    self.tally.running = len(inflight)
                    self.notify(self.tally.event("finished", record=record))
            finally:
                signals.critical = True  # a second Ctrl-C must not cut this short
                self.backend.close()
                if inflight:
                    self.store.release(inflight.values(), self.owner)
                signals.critical = False

    def _finish(self, spec: RunSpec, record: RunRecord) -> RunRecord:
        """Store the outcome; a shared run stores one record per member, its own last."""
        if not spec.members:
            return self.store.finish(record)
        split = split_result(record.result, list(spec.members)) if record.result else {}
        for member in spec.members:
            if member == spec.variant_id:
                continue
            result = split.get(member)
            status = result["status"] if result and record.ok else record.status
            self.store.finish(
                replace(record, variant_id=member, status=status, result=result)
            )
        own = split.get(spec.variant_id)
        status = own["status"] if own and record.ok else record.status
        return self.store.finish(
            replace(record, status=status, result=own or record.result)
        )

    def _start(self, spec: RunSpec) -> bool:
        if not self.store.claim(spec, self.owner, self.backend.name):
            self.elsewhere.append(spec)
            self.tally.total -= 1
            return False
        self.backend.submit(spec)
        self.tally.running += 1
        self.notify(self.tally.event("started", spec=spec))
        return True

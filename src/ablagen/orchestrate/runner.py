"""``run_study``: plan the runs, skip what is done, run the rest, store every outcome.

Resume is the default: a run whose key (variant, seed, arguments, script sha256)
is already ``ok`` in the store is skipped; a failed one (failed, diverged, timeout,
crashed) is skipped and reported unless ``retry_failed``; a regenerated script has
a new hash, so it runs again. Runs left ``running`` by an orchestrator that is gone
are reset first. A script that takes ``--resume-from`` is given a checkpoint under
``runs/`` (see :mod:`.checkpoints`), so a run cut short resumes mid-run.
Ctrl-C / SIGTERM stop the runs in flight and give their rows back;
an outcome is never half-stored (a signal waits until the write is committed).
A run executes to its end at most once: on the local backend its ``--out`` is
``spec.result_path`` in the study (the script writes it atomically, last), kept
until the outcome is stored; a run that ended while its orchestrator died is
stored from that file by the next call instead of running again.

A run another live orchestrator holds is waited for (``wait``, the default): its
outcome is reported when that orchestrator stores it, and the run is taken over if
that orchestrator dies or gives it back. With ``wait=False`` it is listed with its
holder and left alone.

I/O faults stop the call as data, not a traceback: when an outcome cannot be stored
(full disk, read-only or unwritable store), or a run died of a full disk (its log
says ``[Errno 28]``), the runs in flight are stopped and put back to pending, and a
:class:`~ablagen.core.atomic.WriteError` names the path and the fix. What was stored
before stays; the same command resumes once there is room.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
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

from ablagen.core.errors import StudyError
from ablagen.core.atomic import WriteError, io_fix, sha256_file, writing
from ablagen.orchestrate import checkpoints
from ablagen.orchestrate.backends import Backend, get_backend
from ablagen.orchestrate.options import (
    FAILED_STATUSES,
    HeldRun,
    RunOptions,
    RunSpec,
    RunSummary,
    check_seeds,
)
from ablagen.orchestrate.outcome import (
    RawOutcome,
    classify,
    finished_result,
    read_tail,
)
from ablagen.orchestrate.owner import Owner, pid_alive
from ablagen.orchestrate.placement import check_amp, recorded_amp
from ablagen.orchestrate.run_record import RunRecord
from ablagen.orchestrate.store import LOW_SPACE_BYTES, ResultStore, free_bytes
from ablagen.core.studydir import (
    BASELINE_ID,
    LOGS_DIR,
    RESULTS_DB,
    Manifest,
    load_manifest,
    split_result,
)


@dataclass(frozen=True)
class Progress:
    """One progress event for ``run_study(progress=...)``.

    ``event``: "start" (once, before any run), "started" (a run was handed to the
    backend; ``spec`` set), "finished" (``record`` set), "waiting" (a run another
    live orchestrator holds is waited for; ``spec`` set), "elsewhere" (such a run's
    outcome, stored by that orchestrator; ``record`` set), "end" (once, ``summary`` set).
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
Key = tuple[str, int, str, str]  # RunSpec.key
WAIT_POLL_S = 0.5  # how often runs held by another orchestrator are looked at
_NO_SPACE = re.compile(
    r"\[Errno (?:28|122)\][^\n]*|No space left on device[^\n]*|disk is full"
)
_NO_SPACE_PATH = re.compile(
    r"(?:No space left on device|Disk quota exceeded): '([^']+)'"
)


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
        resumable = checkpoints.takes_checkpoints(study / entry.script)
        for seed in seeds:
            spec = RunSpec(
                entry.id, entry.script, entry.sha256, seed, dict(args), members
            )
            if resumable:
                path = checkpoints.checkpoint_path(spec)
                extra = checkpoints.checkpoint_argv(path, options)
                spec = replace(spec, checkpoint=path, extra_argv=extra)
            specs.append(spec)
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
    done: int = 0  # finished by this call
    running: int = 0
    #: of ``done``, the ones not ok: counted as they come (an event costs O(1), not
    #: O(runs)); an ok run's record is not kept (memory flat in the runs)
    not_ok: list[RunRecord] = field(default_factory=list)
    jobs: int = 0  # the backend's capacity

    @property
    def failed(self) -> int:
        return len(self.not_ok)

    def add(self, record: RunRecord) -> None:
        self.done += 1
        if not record.ok:
            self.not_ok.append(record)

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
            done=self.done,
            failed=self.failed,
            running=min(self.running, self.jobs) if self.jobs else self.running,
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
    warm: object | None = None,
) -> RunSummary:
    """Run a study's scripts into its result store and return what happened.

    Bad input (not a study, corrupt manifest, unknown ``--only`` id, changed script,
    fp16 scripts on CPU, backend unavailable) raises an
    :class:`~ablagen.core.errors.AblagenError` before any run starts. Failing runs are
    data: they end up in the store and the summary.
    ``warm``: a pool the caller started early (``local.warm_pool``), adopted by a
    backend that can use it; the caller stops it if not. Without one, the local
    pool starts here, first thing, so its workers import torch while the manifest
    is read, the scripts hashed and the store opened.
    """
    options = options or RunOptions()
    if warm is not None:
        return _run_study(study_dir, options, progress, warm)
    from ablagen.orchestrate.local import warm_pool

    with warm_pool(study_dir, options) as own:
        return _run_study(study_dir, options, progress, own)


def _run_study(
    study_dir: str | Path,
    options: RunOptions,
    progress: ProgressCallback | None,
    warm: object | None,
) -> RunSummary:
    started = time.monotonic()
    study = Path(study_dir)
    manifest = load_manifest(study)
    check_amp(recorded_amp(manifest.config), options.device, study)
    specs = plan_runs(study, manifest, options)
    factory = get_backend(options.backend)
    notify = progress or (lambda event: None)
    _sweep_temp_dirs()
    with tempfile.TemporaryDirectory(prefix=f"{TMP_PREFIX}{os.getpid()}-") as tmp:
        scripts = sorted({study / s.script for s in specs})
        backend = factory(study, options, Path(tmp), scripts)
        adopt = getattr(backend, "adopt", None)
        if warm is not None and adopt is not None:
            adopt(warm)
        with ResultStore(study) as store:
            owner = Owner.current()
            store.reset_stale(owner)
            todo, skipped_failed, skipped_ok, seen = _partition(
                store, specs, options.retry_failed
            )
            for spec in specs:  # stored, but its orchestrator died before it tidied
                if seen.get(spec.key) is not None:
                    with contextlib.suppress(OSError):
                        (study / spec.result_path).unlink(missing_ok=True)
            session = _Session(
                study,
                store,
                backend,
                owner,
                notify,
                _Tally(len(todo), skipped_ok, len(skipped_failed), backend.name),
                seen=seen,
                keep_checkpoints=options.keep_checkpoints,
            )
            if todo:
                with writing(study / LOGS_DIR, "the log folder"):
                    (study / LOGS_DIR).mkdir(exist_ok=True)
                with backend:
                    session.execute(todo, wait=options.wait)
            held = [
                HeldRun(spec, *(store.holder(spec) or ("?", 0)))
                for spec in session.elsewhere
            ]
    summary = RunSummary(
        study_dir=str(study),
        backend=options.backend,
        jobs=session.jobs,
        planned=len(specs),
        ran=session.tally.done,
        ran_ok=session.tally.done - session.tally.failed,
        skipped_ok=skipped_ok,
        skipped_failed=tuple(skipped_failed),
        ran_failed=tuple(session.tally.not_ok),
        running_elsewhere=tuple(held),
        wall_time_s=time.monotonic() - started,
        finished_elsewhere=session.elsewhere_done,
        elsewhere_ok=session.elsewhere_done - len(session.elsewhere_failed),
        elsewhere_failed=tuple(session.elsewhere_failed),
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
) -> tuple[list[RunSpec], list[RunRecord], int, dict[Key, float | None]]:
    """Split the runs in scope: to run, failed before (not retried), count already
    ok; and for each run to do, the ``finished_at`` it was planned with.

    A run another live orchestrator holds stays in the first list: ``claim`` then
    refuses it and it is waited for (or reported as running elsewhere).
    """
    todo, skipped_failed, skipped_ok = [], [], 0
    seen: dict[Key, float | None] = {}
    for spec in specs:
        record = store.get(spec)
        if record is not None and record.status != "running":
            seen[spec.key] = record.finished_at
        else:
            seen[spec.key] = None
        if record is None or record.status == "running":
            todo.append(spec)
        elif record.ok:
            skipped_ok += 1
        elif record.status in FAILED_STATUSES and not retry_failed:
            skipped_failed.append(record)
        else:
            todo.append(spec)
    return todo, skipped_failed, skipped_ok, seen


#: result statuses stored as they are when found after a crash; a failed run (say,
#: on a full disk) runs again instead
FINAL_STATUSES = ("ok", "diverged")


def finished_before(study: Path, spec: RunSpec, backend: str) -> RawOutcome | None:
    """The outcome of a run that wrote its result file (``spec.result_path``, written
    atomically at the script's end) but whose orchestrator died before storing it:
    stored as it is, the run is not executed a second time. Only called once the run
    is claimed, so no live orchestrator (and, its runs dying with it, no run) has it."""
    try:
        text = (study / spec.result_path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    done = finished_result(text)
    if done is None or done[0].get("status", "ok") not in FINAL_STATUSES:
        return None  # not a finished script's result, or a failure: run it again
    result, code = done
    wall = result.get("wall_time_s")
    return RawOutcome(
        spec=spec,
        exit_code=code,
        wall_time_s=float(wall) if isinstance(wall, (int, float)) else 0.0,
        result_text=text,
        timed_out=False,
        error=None,
        backend=backend,
    )


def disk_fault(record: RunRecord, study: Path) -> WriteError | None:
    """A run that died of a full disk (its log says so, or, when its log could not
    say it, the study's disk has no room left), as the fault to report."""
    if record.ok:
        return None
    found = _NO_SPACE.findall(
        record.error_tail or ""
    )  # the last: the error, not its source line
    if not found and free_bytes(study / RESULTS_DB) < LOW_SPACE_BYTES:
        found = ["No space left on device"]
    if not found:
        return None
    paths = _NO_SPACE_PATH.findall(record.error_tail or "")
    where = Path(paths[-1]) if paths else study
    return WriteError(
        f"{record.variant_id} seed={record.seed} stopped on a full disk"
        f" ({found[-1].strip()[:160]})",
        io_fix(errno.ENOSPC, where),
        errno.ENOSPC,
    )


@dataclass
class _Session:
    """One call's running state: claims runs, feeds the backend, stores outcomes."""

    study: Path
    store: ResultStore
    backend: Backend
    owner: Owner
    notify: ProgressCallback
    tally: _Tally
    #: the outcome time each run was planned with (see ResultStore.claim)
    seen: dict[Key, float | None] = field(default_factory=dict)
    elsewhere: list[RunSpec] = field(default_factory=list)
    #: runs another orchestrator finished while this one waited; their failures
    elsewhere_done: int = 0
    elsewhere_failed: list[RunRecord] = field(default_factory=list)
    jobs: int = 0
    keep_checkpoints: bool = False

    def execute(self, todo: list[RunSpec], wait: bool = True) -> None:
        """Run ``todo`` on the started backend, at most ``capacity`` at a time; with
        ``wait``, then wait for the runs another orchestrator held. A run is claimed
        (``running`` in the store) only when a slot is free for it, so another
        orchestrator can take what this one has not started."""
        self.jobs = self.backend.capacity
        limit = self.jobs  # claimed runs in flight at most
        self.tally.jobs = self.jobs
        self.tally.backend = self.backend.describe()
        self.notify(self.tally.event("start"))
        signals = _Signals()
        pending = deque(todo)
        inflight: dict[tuple[str, int, str, str], RunSpec] = {}
        waiting: dict[tuple[str, int, str, str], RunSpec] = {}

        def fill(free: int = 0) -> None:
            """Start pending runs while a slot is free (``free``: slots whose run
            ended but is not stored yet)."""
            while pending and len(inflight) - free < limit:
                spec = pending.popleft()
                with signals.deferred():
                    started = self._start(spec)
                    if isinstance(started, RawOutcome):  # ran to its end before
                        self._store(started, inflight)
                    elif started:
                        inflight[spec.key] = spec
                    elif self._finished_elsewhere(spec):
                        pass
                    elif wait:
                        waiting[spec.key] = spec
                        self.notify(self.tally.event("waiting", spec=spec))
                    else:
                        self.elsewhere.append(spec)

        with signals.installed():
            try:
                while pending or inflight or waiting:
                    fill()
                    if waiting and len(inflight) < limit:
                        pending.extend(self._look_at(waiting))
                        if pending:
                            continue
                    if not inflight:
                        if waiting:
                            time.sleep(WAIT_POLL_S)
                            continue
                        break
                    raw = self.backend.next_done(WAIT_POLL_S if waiting else None)
                    if raw is None:
                        continue
                    with signals.deferred():
                        # its worker gets the next run first; storing this one
                        # (two commits, the log's tail, its files) overlaps that run
                        fill(free=1)
                        self._store(raw, inflight)
            except WriteError as exc:
                raise self._put_back(exc, inflight) from exc
            finally:
                signals.critical = True  # a second Ctrl-C must not cut this short
                self.backend.close()
                if inflight:
                    with contextlib.suppress(WriteError):  # else: stale, reset later
                        self.store.release(inflight.values(), self.owner)
                signals.critical = False

    def _store(
        self, raw: RawOutcome, inflight: dict[tuple[str, int, str, str], RunSpec]
    ) -> None:
        """Store one outcome (called with signals deferred); then its result file
        and, for an ok run, its checkpoint go."""
        record = classify(raw, read_tail(self.study / raw.spec.log_path))
        fault = disk_fault(record, self.study)
        if fault is not None:  # back to pending: it runs again, its result goes
            with contextlib.suppress(OSError):
                (self.study / raw.spec.result_path).unlink(missing_ok=True)
            raise fault
        record = self._finish(raw.spec, record)
        inflight.pop(raw.spec.key, None)
        with contextlib.suppress(OSError):
            (self.study / raw.spec.result_path).unlink(missing_ok=True)
        if record.ok and not self.keep_checkpoints:
            checkpoints.finished(self.study, raw.spec)
        self.tally.add(record)
        self.tally.running = len(inflight)
        self.notify(self.tally.event("finished", record=record))

    def _put_back(
        self, exc: WriteError, inflight: dict[tuple[str, int, str, str], RunSpec]
    ) -> WriteError:
        """The fault, saying which runs go back to pending (the caller releases them)."""
        if not inflight:
            return exc
        labels = ", ".join(s.label for s in list(inflight.values())[:3])
        more = f" and {len(inflight) - 3} more" if len(inflight) > 3 else ""
        return WriteError(
            f"{exc.problem}; stopped, and put {labels}{more} back to pending",
            exc.fix,
            exc.errno,
        )

    def _finished_elsewhere(self, spec: RunSpec) -> bool:
        """Report a run another orchestrator stored an outcome for since planning."""
        record = self.store.get(spec)
        if record is None or record.status == "running":
            return False
        self.elsewhere_done += 1
        if not record.ok:
            self.elsewhere_failed.append(record)
        self.notify(self.tally.event("elsewhere", record=record))
        return True

    def _look_at(
        self, waiting: dict[tuple[str, int, str, str], RunSpec]
    ) -> list[RunSpec]:
        """Runs another orchestrator held: report the finished ones, return the ones
        to take over (given back, or their orchestrator died)."""
        take = []
        for key, spec in list(waiting.items()):
            if self._finished_elsewhere(spec):
                del waiting[key]
            elif not self.store.held_alive(spec, self.owner):
                del waiting[key]
                self.tally.total += 1
                take.append(spec)
        return take

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

    def _start(self, spec: RunSpec) -> bool | RawOutcome:
        """Claim and submit a run: False if another orchestrator has it; its outcome
        if it already ran to its end (see :func:`finished_before`)."""
        if not self.store.claim(
            spec, self.owner, self.backend.name, self.seen.get(spec.key)
        ):
            self.tally.total -= 1
            return False
        done = finished_before(self.study, spec, self.backend.name)
        if done is not None:
            self.tally.running += 1
            self.notify(self.tally.event("started", spec=spec))
            return done
        log = self.study / spec.log_path
        try:
            with writing(log, "the run log"):
                log.open("ab").close()  # fails here, not inside the run, if it cannot
            if spec.checkpoint is not None:
                folder = (self.study / spec.checkpoint).parent
                with writing(folder, "the checkpoint folder"):
                    folder.mkdir(parents=True, exist_ok=True)
        except WriteError:
            with contextlib.suppress(WriteError):
                self.store.release([spec], self.owner)
            raise
        self.backend.submit(spec)
        self.tally.running += 1
        self.notify(self.tally.event("started", spec=spec))
        return True

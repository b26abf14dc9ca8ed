"""The Ray backend: warm Ray actors, one per worker slot, run the scripts.

Each slot is an actor (``--cpus-per-run``/``--gpus-per-run``/``--max-memory`` are its
Ray resources) that starts :mod:`.worker` -- the local pool's warm worker, shipped as
text, so a node needs no ablagen -- with one worker: it imports torch (and the
scripts' other top-level imports) once, and every run is a fresh fork of it
executing the script with ``runpy``, exactly as in the local backend. So a run
costs a fork, not a Python start plus imports, and its metrics, timeouts, kills,
memory limit (``oom``, peak memory) and learned lazy imports are the local pool's.
The worker is a child process of the actor, not the actor itself: forking a
process that runs Ray's gRPC threads is unsafe. An actor that dies (node lost,
killed) fails its run as a Ray error and is replaced by a fresh one. A cluster
that cannot start warm actors falls back, with one warning line saying why, to
Ray tasks that each run ``python script.py`` in a subprocess:

The task gets the script's bytes (so a worker node needs no copy of the study),
runs it in the study directory when that exists on the node with the same script,
else in a temporary directory, and returns (exit code, result JSON text, log text,
wall time). The driver writes the log file and the record into the study's store.
``--ray-address`` joins an existing cluster (``auto`` finds a local one); without
it a private local Ray instance is started and shut down at the end.

GPUs: ``--gpus-per-run`` is each task's ``num_gpus``, and Ray sets the task's
``CUDA_VISIBLE_DEVICES`` (the script inherits it). A fraction shares a GPU:
``--gpus-per-run 0.5`` runs two at once per GPU, ``0.25`` four; Ray only counts the
shares, so the runs sharing a GPU must fit in its memory together. Values above 1
must be whole numbers (Ray's rule).

A node that cannot see the study gets its data from the object store (the study's
data files and those its model file's data function opens, put there once:
:mod:`.ray_data`, unpacked once per node by :func:`.ray_warm.node_data`). Mid-run checkpoints resume when the node runs the
script in the study directory; elsewhere they live in ``--storage`` (any fsspec
URI every node reaches: :class:`.ray_warm.CheckpointSync`), or, without it, only
for that try. A run whose node is lost (not one whose actor died on a live node)
is submitted again, ``NODE_RETRIES`` times at most, and resumes from its last
checkpoint in storage; a result it left in storage before its node went is
recorded instead of running it again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ablagen.core.errors import BackendError
from ablagen.core.atomic import writing
from ablagen.orchestrate import ray_warm
from ablagen.orchestrate.ray_data import (
    WALK_S,
    data_bundle,
    probe_result,
    start_probe,
)
from ablagen.orchestrate.options import RunOptions, RunSpec, usable_cpus
from ablagen.orchestrate.outcome import RawOutcome, finished_result, from_reply

NODE_DEATH_WAIT_S = 60.0  # an actor that stopped answering: is its node dead?
NODE_RETRIES = 3  # tries of a run whose node was lost, before it is recorded crashed
CONNECT_TIMEOUT_S = 5.0
CONNECT_RETRIES = 5  # one a second
LOG_LIMIT = 1 << 20  # bytes of a run's log sent back to the driver (its end)
ACTOR_START_S = 60.0  # a warm actor not up by then: fall back to fresh processes
STORAGE_NOTE = "storage.json"  # in the study: the --storage its runs used


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise BackendError(
            "ray is not installed", "install it with `pip install 'ablagen[ray]'`"
        ) from None
    return ray


def _check_reachable(address: str) -> None:
    """Fail fast (ray.init would retry for minutes) when ``host:port`` does not answer."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise BackendError(
            f"bad --ray-address {address!r}", "pass HOST:PORT, ray://HOST:PORT or auto"
        )
    try:
        socket.create_connection(
            (host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S
        ).close()
    except OSError as exc:
        raise BackendError(
            f"cannot reach the Ray cluster at {address} ({exc})",
            "start it with `ray start --head`, fix --ray-address, or leave it out for a local instance",
        ) from None


@contextmanager
def _stderr_captured() -> Iterator[list[str]]:
    """Catch what native code writes to fd 2 (Ray's C++ retry warnings)."""
    sys.stderr.flush()
    saved = os.dup(2)
    captured: list[str] = []
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            captured.append(tmp.read().decode("utf-8", errors="replace"))


def _init_ray(ray: Any, options: RunOptions) -> None:
    """Join ``--ray-address`` (fail in seconds, in one line) or start a local Ray."""
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": logging.ERROR,
        "log_to_driver": False,
    }
    where = options.ray_address or "a local instance"
    try:
        if not options.ray_address:
            # "local": always a fresh private instance, never a cluster found lying around
            ray.init(address="local", num_cpus=usable_cpus(), **kwargs)
            return
        _check_reachable(options.ray_address)
        # ray retries a silent GCS for ~20 s by default, logging each try
        os.environ.setdefault("RAY_gcs_server_port_wait_time_s", str(CONNECT_RETRIES))
        with _stderr_captured() as captured:
            ray.init(address=options.ray_address, **kwargs)
        sys.stderr.write(captured[0])  # joined: let its warnings through
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
        reason = str(exc)
        root: BaseException = exc
        while root.__cause__ is not None:
            root = root.__cause__
        if root is not exc:  # the underlying error says why (auth, version, ...)
            said = str(root).partition("Traceback (most recent")[0].strip()
            reason += f": {type(root).__name__}: {said}"
        raise BackendError(
            f"cannot connect to Ray at {where} ({' '.join(reason.split())[:240]})",
            "start a cluster with `ray start --head`, fix --ray-address, or leave it out",
        ) from None


def _run_task(
    script_name: str,
    script: bytes,
    study_dir: str,
    argv: list[str],
    timeout: float | None,
    threads: int,
    data: dict[str, Any] | None = None,
    storage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Body of the Ray task, executed on a worker node."""
    import subprocess
    import tempfile
    import time

    with tempfile.TemporaryDirectory(prefix="ablagen-ray-") as tmp:
        try:
            cwd, path = ray_warm.prepare(tmp, script_name, script, study_dir, data)
        except ray_warm.Unshipped as exc:
            return ray_warm.unshipped_reply(exc)
        if "--resume-from" in argv:  # in the study: resumable; in tmp: for this try
            ckpt = Path(cwd, argv[argv.index("--resume-from") + 1])
            ckpt.parent.mkdir(parents=True, exist_ok=True)
        store, synced = ray_warm.storage_for(storage, cwd, argv)
        out = os.path.join(tmp, "result.json")
        log_path = os.path.join(tmp, "run.log")
        env = dict(
            os.environ,
            OMP_NUM_THREADS=str(threads),
            MKL_NUM_THREADS=str(threads),
            PYTHONUNBUFFERED="1",
        )
        start = time.monotonic()
        with synced, open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, path, *argv, "--out", out],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            timed_out = False
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 9)  # the run and anything it started
                code = proc.wait()
        wall = time.monotonic() - start
        ray_warm.keep_result(store, storage, out)
        with open(log_path, "rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - LOG_LIMIT))
            log_text = fh.read().decode("utf-8", errors="replace")
        result = (
            Path(out).read_text(encoding="utf-8", errors="replace")
            if os.path.exists(out)
            else None
        )
    return {
        "exit_code": code,
        "result": result,
        "log": log_text,
        "wall_time_s": wall,
        "timed_out": timed_out,
        "host": socket.gethostname(),
    }


class RayBackend:
    """Runs each script on a warm actor (see :mod:`.ray_warm`), or as a fresh-process
    Ray task where warm actors cannot start; ``--cpus-per-run``/``--gpus-per-run``."""

    name = "ray"

    def __init__(
        self, study_dir: Path, options: RunOptions, tmp: Path, scripts: list[Path]
    ) -> None:
        from ablagen.orchestrate.local import BASE_PRELOAD, preload_modules

        self.ray = _import_ray()
        self.study_dir = study_dir
        self.options = options
        self.preload = preload_modules(
            scripts, BASE_PRELOAD if options.preload is None else options.preload
        )
        self._started_ray = False
        self._pending: dict[Any, tuple[RunSpec, int | None]] = {}
        self._task: Any = None
        self._actor_class: Any = None
        self._slots: list[Any] = []  # warm actors; empty: fresh-process tasks
        self._free: list[int] = []
        self._retired: dict[int, Any] = {}  # busy actors of a fallback, by slot
        self.warm_failure: str | None = None  # why the runs are not warm
        self._starting: dict[Any, int] = {}  # ping of a replacement actor -> slot
        self._nodes: dict[int, Any] = {}  # slot -> its ping (the actor's node id)
        self._waiting: list[RunSpec] = []  # submitted while no slot was free
        self._tries: dict[tuple[str, int, str, str], int] = {}  # runs of lost nodes
        self._data: dict[str, Any] | None = None  # the study's data bundle
        self._storage: dict[str, Any] | None = None  # --storage, for the nodes
        self._store: ray_warm.Storage | None = None  # --storage, for the driver
        self.jobs = options.jobs or 0
        self.threads = max(1, int(options.cpus_per_run))
        # only an explicit --max-memory: the cluster's nodes are not this machine
        self.memory_limit = (
            None if options.max_memory_gb is None else options.memory_limit_bytes(1)
        )

    @property
    def capacity(self) -> int:
        return self.jobs

    def describe(self) -> str:
        where = self.options.ray_address or "a local instance"
        how = "warm actors" if self._slots else "fresh processes"
        line = f"ray ({where}), up to {self.jobs} run{'s' * (self.jobs > 1)} at once, {how}"
        if self.memory_limit is not None:
            line += f", {self.memory_limit / 1e9:.2f} GB memory reserved per run"
        return line

    def __enter__(self) -> RayBackend:
        ray, options = self.ray, self.options
        if not ray.is_initialized():
            _init_ray(ray, options)
            self._started_ray = True
        pickler = getattr(ray, "cloudpickle", None)
        if pickler is not None and hasattr(pickler, "register_pickle_by_value"):
            # nodes need no ablagen
            pickler.register_pickle_by_value(sys.modules[__name__])
            pickler.register_pickle_by_value(ray_warm)
        resources: dict[str, Any] = {
            "num_cpus": options.cpus_per_run,
            "num_gpus": options.gpus_per_run,
        }
        if self.memory_limit is not None:
            resources["memory"] = self.memory_limit  # Ray schedules by it
        # on a cluster: what the model file's data function opens, found while the
        # actors start (a local instance sees the study and needs nothing shipped)
        probe = start_probe(self.study_dir) if options.ray_address else None
        try:
            self._open_storage(options)
            self._task = ray.remote(max_retries=0, **resources)(_run_task)
            self._actor_class = ray.remote(max_restarts=0, **resources)(
                ray_warm.WarmSlot
            )
            if not self.jobs:
                cpus = float(ray.cluster_resources().get("CPU", 1))
                self.jobs = max(1, int(cpus // options.cpus_per_run))
            self._start_slots()
            if options.ray_address:
                self._ship(ray, probe)
        except BaseException:
            if probe is not None and probe.poll() is None:
                probe.kill()
                probe.wait()
            self.close()
            raise
        return self

    def _open_storage(self, options: RunOptions) -> None:
        """Open ``--storage`` (and record it in the study, for ``ablagen status``)."""
        if options.storage:
            uri = check_storage(options.storage)
            self._store = ray_warm.Storage(uri)
            self._storage = {"uri": uri}
            record_storage(self.study_dir, uri)

    def _ship(self, ray: Any, probe: Any) -> None:
        """Put the study's data in the object store once: its data source and the
        files its model file's data function opened (:mod:`.ray_data`)."""
        opened = probe_result(probe)
        if opened is not None and opened.error:
            sys.stderr.write(
                "warning: the model file's data function failed while ablagen looked"
                f" for the files it reads ({opened.error}); none of them is shipped\n"
            )
        elif opened is not None and opened.unread:
            sys.stderr.write(
                f"warning: reading every item of the model file's datasets took past"
                f" {WALK_S:.0f} s; the files of the items not read are not shipped (a"
                " node without them fails the run, naming the file in its log)\n"
            )
        bundle = data_bundle(self.study_dir, opened)
        if bundle is not None:
            import hashlib

            sha = hashlib.sha256(bundle.blob).hexdigest()[:16]
            self._data = {
                "sha": sha,
                "up": bundle.up,
                "absolute": list(bundle.absolute),
                "ref": [ray.put(bundle.blob)],
            }

    def _run_storage(self, spec: RunSpec) -> dict[str, Any] | None:
        """What the node keeps in storage for this run: its result at its study path."""
        if self._storage is None:
            return None
        return {**self._storage, "result": spec.result_path}

    def _new_actor(self) -> Any:
        return self._actor_class.remote(
            ray_warm.WORKER.read_text(encoding="utf-8"),
            self.preload,
            self.threads,
            (socket.gethostname(), os.getpid()),  # the slot ends with this driver
        )

    def _start_slots(self) -> None:
        """One warm actor per slot; on failure, one warning line and fresh processes."""
        ray = self.ray
        self._slots = [self._new_actor() for _ in range(self.jobs)]
        pings = [slot.ping.remote() for slot in self._slots]
        try:
            ray.get(pings, timeout=ACTOR_START_S)
        except Exception as exc:  # noqa: BLE001 - any reason: the tasks still work
            if isinstance(exc, getattr(ray.exceptions, "GetTimeoutError", ())):
                why = f"they did not start within {ACTOR_START_S:.0f} s"
            else:
                why = f"{type(exc).__name__}: {_one_line(exc)}"
            self._fall_back(why)
            return
        self._nodes = dict(enumerate(pings))
        self._free = list(range(self.jobs))

    def _fall_back(self, why: str) -> None:
        self.warm_failure = why
        sys.stderr.write(
            f"warning: Ray cannot start warm workers ({why[:300]}); "
            "each run starts a fresh python process\n"
        )
        sys.stderr.flush()
        # their resources go to the tasks: idle actors now, busy ones once back
        busy = {slot for _, slot in self._pending.values()}
        for index, actor in enumerate(self._slots):
            if index in busy:
                self._retired[index] = actor
            else:
                with contextlib.suppress(Exception):
                    self.ray.kill(actor)
        self._slots, self._free = [], []
        self._starting.clear()  # (replacement actors: idle, killed above)
        waiting, self._waiting = self._waiting, []
        for spec in waiting:
            self.submit(spec)

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, spec: RunSpec) -> None:
        if self._slots and not self._free:  # a lost node's slot, not yet replaced
            self._waiting.append(spec)
            return
        script = (self.study_dir / spec.script).read_bytes()
        argv = spec.argv("")[:-2]  # the task adds its own --out
        study = str(self.study_dir.resolve())
        storage = self._run_storage(spec)
        if storage is not None:
            self._store.remove(storage["result"])  # type: ignore[union-attr]
        if self._slots:
            index = self._free.pop()
            ref = self._slots[index].run.remote(
                spec.script,
                script,
                study,
                argv,
                self.options.timeout_s,
                self.memory_limit,
                self._data,
                storage,
            )
            self._pending[ref] = (spec, index)
            return
        ref = self._task.remote(
            spec.script,
            script,
            study,
            argv,
            self.options.timeout_s,
            self.threads,
            self._data,
            storage,
        )
        self._pending[ref] = (spec, None)

    def next_done(self, timeout: float | None = None) -> RawOutcome | None:
        ray = self.ray
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = (
                0.5
                if deadline is None
                else max(0.0, min(0.5, deadline - time.monotonic()))
            )
            refs = [*self._pending, *self._starting]
            done, _ = ray.wait(refs, num_returns=1, timeout=wait) if refs else ([], [])
            if not refs:
                time.sleep(wait)
            if done and done[0] in self._starting:  # a replacement actor is up
                slot = self._starting.pop(done[0])
                self._nodes[slot] = done[0]
                self._slot_free(slot)
                continue
            if done:
                ref = done[0]
                spec, slot = self._pending.pop(ref)
                outcome = self._outcome(ref, spec, slot)
                if outcome is not None:
                    return outcome
                continue  # submitted again (a fallback, a lost node)
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def _slot_free(self, slot: int) -> None:
        self._free.append(slot)
        if self._waiting:
            self.submit(self._waiting.pop(0))

    def _node_lost(self, exc: Exception, slot: int | None) -> bool:
        """Whether the run failed because its node is gone (not its own doing). An
        actor that stopped answering (its node's raylet gone, say) is waited for
        until Ray declares its node dead or ``NODE_DEATH_WAIT_S`` pass."""
        ray = self.ray
        if isinstance(exc, getattr(ray.exceptions, "NodeDiedError", ())):
            return True
        if "its node has died" in str(exc):  # an ActorDiedError's own words
            return True
        unavailable = getattr(ray.exceptions, "ActorUnavailableError", ())
        deadline = time.monotonic() + (
            NODE_DEATH_WAIT_S if isinstance(exc, unavailable) else 0.0
        )
        node = None
        if slot is not None and self._nodes.get(slot) is not None:
            with contextlib.suppress(Exception):
                node = ray.get(self._nodes[slot], timeout=0)
        while True:
            dead = {n["NodeID"] for n in ray.nodes() if not n.get("Alive")}
            if node is not None and node in dead:
                return True
            if slot is None and dead:  # a task: its node is not known, but one died
                return isinstance(
                    exc,
                    (ray.exceptions.WorkerCrashedError, ray.exceptions.ObjectLostError),
                )
            if time.monotonic() >= deadline:
                return isinstance(exc, unavailable) and node is None and bool(dead)
            time.sleep(0.5)

    def _outcome(self, ref: Any, spec: RunSpec, slot: int | None) -> RawOutcome | None:
        ray = self.ray
        try:
            reply = ray.get(ref)
            if slot in self._retired:  # fallen back meanwhile: free its resources
                with contextlib.suppress(Exception):
                    ray.kill(self._retired.pop(slot))
        except ray.exceptions.RayError as exc:
            lost = self._node_lost(exc, slot)
            if slot is not None and self._slots:
                self._restart(slot)  # the actor died with its run: a fresh one
            tries = self._tries.get(spec.key, 0) + 1
            if lost and tries <= NODE_RETRIES:
                self._tries[spec.key] = tries
                kept = self._kept_result(spec)  # it finished before its node went
                if kept is not None:
                    return kept
                self.submit(spec)  # from its last checkpoint in --storage
                return None
            oom = isinstance(
                exc, getattr(ray.exceptions, "OutOfMemoryError", ())
            ) or "OutOfMemory" in str(exc)
            return RawOutcome(
                spec,
                None,
                0.0,
                error=(
                    None
                    if oom
                    else f"the Ray task failed: {type(exc).__name__}: {_one_line(exc)}"
                ),
                backend=self.name,
                oom=oom,
                memory_limit_bytes=self.memory_limit,
            )
        if slot is not None and self._slots:
            self._slot_free(slot)
        if slot is not None and "warm_failed" in reply:  # its worker could not start
            if self.warm_failure is None:
                self._fall_back(reply["warm_failed"])
            self.submit(spec)
            return None
        log_file = self.study_dir / spec.log_path
        with writing(log_file, "the run log"):
            log_file.write_text(reply["log"], encoding="utf-8")
        if reply.get("exit_code") == 0:
            self._drop_stored_checkpoint(spec, reply.get("result"))
        return from_reply(
            spec, reply, reply.get("result"), self.name, self.memory_limit
        )

    def _drop_stored_checkpoint(self, spec: RunSpec, result: str | None) -> None:
        """An ok run's checkpoint (and note) leave ``--storage`` unless
        ``--keep-checkpoints``: as the orchestrator removes the study's copy (a
        finished script keeps its file; a node without the study uploaded it)."""
        if self._store is None or spec.checkpoint is None:
            return
        if self.options.keep_checkpoints:
            return
        done = finished_result(result)
        if done is not None and done[1] == 0:
            self._store.remove(spec.checkpoint)
            self._store.remove(spec.checkpoint + ".json")

    def _kept_result(self, spec: RunSpec) -> RawOutcome | None:
        """The run's complete result in ``--storage``, written by this try's node."""
        if self._store is None:
            return None
        text = self._store.read_text(spec.result_path)
        done = finished_result(text)
        if done is None:
            return None
        reply = {"exit_code": done[1], "wall_time_s": done[0].get("wall_time_s")}
        self._drop_stored_checkpoint(spec, text)
        return from_reply(spec, reply, text, self.name, self.memory_limit)

    def _restart(self, slot: int) -> None:
        """A fresh actor for the slot, free once it is up (on a lost node's slot that
        may be never: its runs wait for another slot)."""
        with contextlib.suppress(Exception):
            self.ray.kill(self._slots[slot])
        self._slots[slot] = self._new_actor()
        self._nodes.pop(slot, None)
        self._starting[self._slots[slot].ping.remote()] = slot

    def close(self) -> None:
        ray = self.ray
        for ref, (_, slot) in list(self._pending.items()):
            if slot is None:
                with contextlib.suppress(
                    ray.exceptions.RayError, ValueError, TypeError
                ):
                    ray.cancel(ref, force=True)
        busy = {slot for _, slot in self._pending.values()}
        self._pending.clear()
        idle = [a for i, a in enumerate(self._slots) if i not in busy]
        if idle:  # (never ray.get([]) after a shutdown: it starts a new Ray)
            with contextlib.suppress(Exception):  # tidy: worker ends, folder goes
                ray.get([a.shutdown.remote() for a in idle], timeout=5)
        for actor in [*self._slots, *self._retired.values()]:  # runs die with them
            with contextlib.suppress(Exception):
                ray.kill(actor)
        self._slots, self._free, self._retired = [], [], {}
        self._starting, self._waiting = {}, []
        if self._started_ray:
            self._started_ray = False
            _stop_helpers(ray)
            ray.shutdown()
            # the folders of the slots killed busy (their actors are gone now)
            with contextlib.suppress(OSError):
                ray_warm.clear_stale_slots(tempfile.gettempdir())


#: helper processes of a local Ray instance that hold nothing of ours: the autoscaler
#: monitor alone takes 1 s to answer ray.shutdown()'s SIGTERM (Ray waits for each
#: process in turn), the other two a few ms
HELPERS = ("monitor", "dashboard", "log_monitor")


def _stop_helpers(ray: Any) -> None:
    """SIGKILL the helper processes of the local instance this driver started, so
    ``ray.shutdown()`` (raylet and GCS, gracefully) takes 0.4 s, not 1.2 s."""
    node = getattr(getattr(ray, "_private", None), "worker", None)
    node = getattr(node, "_global_node", None)
    processes = getattr(node, "all_processes", None)
    if not isinstance(processes, dict):  # another Ray: its own shutdown
        return
    stopped = []
    for kind in HELPERS:
        for info in processes.get(kind, ()):
            proc = getattr(info, "process", None)
            with contextlib.suppress(Exception):
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    stopped.append(proc)
    for proc in stopped:
        with contextlib.suppress(Exception):
            proc.wait(timeout=1)


def check_storage(uri: str) -> str:
    """``--storage URI`` as every node reads it (a local path made absolute: a node
    runs elsewhere), or a one-line error when fsspec cannot open it."""
    if "://" not in uri and not uri.startswith(("memory:", "file:")):
        uri = os.path.abspath(os.path.expanduser(uri))
    try:
        ray_warm.Storage(uri)
    except (ImportError, ValueError) as exc:
        raise BackendError(
            f"cannot use --storage {uri} ({type(exc).__name__}: {_one_line(exc)})",
            "install fsspec (and s3fs or gcsfs for s3:// or gs://), or fix the URI",
        ) from None
    return uri


def record_storage(study_dir: Path, uri: str) -> None:
    """Say in the study which ``--storage`` its runs keep checkpoints in (what
    ``ablagen status`` reads a running run's epoch from)."""
    import json

    from ablagen.core.atomic import atomic_write_text

    text = json.dumps({"storage": uri}, indent=2) + "\n"
    note = study_dir / STORAGE_NOTE
    with contextlib.suppress(OSError):
        if note.read_text(encoding="utf-8") == text:
            return
    atomic_write_text(note, text, "the study's storage note")


def recorded_storage(study_dir: Path) -> str | None:
    """The ``--storage`` URI of the study's last Ray run with one (None: none)."""
    import json

    try:
        uri = json.loads((study_dir / STORAGE_NOTE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    uri = uri.get("storage") if isinstance(uri, dict) else None
    return uri if isinstance(uri, str) and uri else None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]

"""A warm slot of the Ray backend: the actor that keeps one :mod:`.worker` warm.

Standalone (stdlib only, no ablagen): Ray ships this module's code to the nodes by
value. The actor starts ``worker.py`` (sent as text) as its child with one worker;
the worker imports torch once and runs each script in a fresh fork (``runpy``), as
in the local pool, with the same request and reply (see :mod:`.worker`). The worker
is a child, not the actor itself: forking a process that runs Ray's gRPC threads is
unsafe.

No process outlives the driver: on the driver's own host a slot looks every
``DRIVER_POLL_S`` whether the driver's pid still runs and ends itself (and its
worker's group) when it does not, without waiting for Ray to notice; its zygote
dies with the actor (``PR_SET_PDEATHSIG``: a sync actor runs on its main thread),
and the worker's runs die with the worker, as in the local pool. Nor does a slot's
folder (``ablagen-ray-slot-*`` in the node's temp dir): a slot removes it when its
driver goes, and one killed outright (its node's Ray stopped, SIGKILL) leaves it to
the next slot started on that node, which removes every folder whose slot's lock
is free (:func:`clear_stale_slots`).

A node that cannot see the study (another machine) runs each script in a
temporary directory of its own (:func:`prepare`): the script's bytes come with the
call, the study's data (``folder:``, ``csv:``, ``text:``) from Ray's object store,
fetched once per node and unpacked into a cache that the runs link to
(:func:`node_data`), and with ``--storage`` its checkpoint comes from and goes to
that URI while it runs (:class:`CheckpointSync`, through ``fsspec``), as does its
result, so a run lost with its node resumes on another one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

LOG_LIMIT = 1 << 20  # bytes of a run's log sent back to the driver (its end)
DRIVER_POLL_S = 0.2  # how often a slot checks that its driver still runs
PARENT_ENV = "ABLAGEN_PARENT_PID"  # worker.py's zygote dies with this process
WORKER = Path(__file__).with_name("worker.py")
DATA_CACHE = "ablagen-ray-data"  # under the node's temp dir: one folder per bundle
UP = "up"  # the run folder's levels standing in for a data path's leading ".."
ABSOLUTE = ".ablagen-absolute"  # in a bundle: files opened by absolute paths
SYNC_S = 0.5  # how often a run's checkpoint is looked at for a new save
SLOT_PREFIX = "ablagen-ray-slot-"  # a slot's folder, under the node's temp dir
SLOT_LOCK = "slot.lock"  # held (lockf) by the slot's actor while it lives
UNLOCKED_STALE_S = 3600.0  # a slot folder without a lock file (older versions)


def node_data(data: dict[str, Any] | None) -> str | None:
    """The folder on this node holding the study's data bundle (``data["ref"]``, a
    tar in the object store), unpacked once per node; None without data."""
    if not data:
        return None
    root = os.path.join(tempfile.gettempdir(), DATA_CACHE, data["sha"])
    if os.path.isdir(root):
        return root
    import io
    import tarfile

    import ray

    (ref,) = data["ref"]  # in a list: Ray hands it over unresolved
    os.makedirs(os.path.dirname(root), exist_ok=True)
    part = tempfile.mkdtemp(prefix=data["sha"] + ".", dir=os.path.dirname(root))
    with tarfile.open(fileobj=io.BytesIO(ray.get(ref))) as tar:
        tar.extractall(part, filter="data")
    try:
        os.rename(part, root)  # atomic: a run sees all of it or none
    except OSError:  # another slot of this node was first
        shutil.rmtree(part, ignore_errors=True)
    return root


def clear_stale_slots(root: str) -> int:
    """Remove the folders of slots that are gone (their actor killed, with no chance
    to tidy up) from ``root``; how many went. A slot holds a POSIX lock on its
    folder's ``SLOT_LOCK`` while it lives (the kernel drops it when the process
    dies, in whatever way), so a folder whose lock can be taken is nobody's."""
    import fcntl

    removed = 0
    for entry in os.scandir(root):
        if not entry.name.startswith(SLOT_PREFIX) or not entry.is_dir(
            follow_symlinks=False
        ):
            continue
        try:
            fd = os.open(os.path.join(entry.path, SLOT_LOCK), os.O_RDWR)
        except FileNotFoundError:  # made by an older version: by its age
            with contextlib.suppress(OSError):
                if time.time() - entry.stat().st_mtime > UNLOCKED_STALE_S:
                    shutil.rmtree(entry.path, ignore_errors=True)
                    removed += 1
            continue
        except OSError:
            continue
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: a live slot
            os.close(fd)
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        os.close(fd)
        removed += 1
    return removed


def new_slot_dir() -> tuple[str, int]:
    """A fresh slot folder and the fd holding its lock (see :func:`clear_stale_slots`).
    The lock file is locked before it gets its name: no cleaner ever finds it free."""
    import fcntl

    root = tempfile.gettempdir()
    with contextlib.suppress(OSError):
        clear_stale_slots(root)
    path = tempfile.mkdtemp(prefix=SLOT_PREFIX, dir=root)
    part = os.path.join(path, SLOT_LOCK + ".part")
    fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.lockf(fd, fcntl.LOCK_EX)
    os.rename(part, os.path.join(path, SLOT_LOCK))
    return path, fd


def prepare(
    tmp: str,
    script_name: str,
    script: bytes,
    study_dir: str,
    data: dict[str, Any] | None,
) -> tuple[str, str]:
    """(cwd, script path) of a run: the study itself when this node sees it with the
    same script, else a folder under ``tmp`` where the script finds its data at its
    relative path (``DATA_PATH`` is relative to the script's folder)."""
    in_place = Path(study_dir, script_name)
    if in_place.is_file() and in_place.read_bytes() == script:
        return study_dir, str(in_place)
    cwd = tmp
    root = node_data(data)
    if data and root is not None:
        cwd = os.path.join(tmp, *[UP] * data["up"])
        _link_tree(root, tmp, data["up"])
        os.makedirs(cwd, exist_ok=True)
        place_absolute(root, data.get("absolute") or ())
    path = os.path.join(cwd, script_name)
    Path(path).write_bytes(script)
    return cwd, path


def _link_tree(src: str, dst: str, depth: int) -> None:
    """Link ``src``'s entries into ``dst``; its ``up`` folders (``depth`` of them,
    one in the other) become real folders of the run, the deepest its cwd."""
    os.makedirs(dst, exist_ok=True)
    for name in os.listdir(src):
        if name == ABSOLUTE:
            continue
        if name == UP and depth > 0:
            _link_tree(os.path.join(src, UP), os.path.join(dst, UP), depth - 1)
        else:
            os.symlink(os.path.join(src, name), os.path.join(dst, name))


class Unshipped(Exception):
    """A file the model file's data function opens cannot be put where it looks."""


def place_absolute(root: str, paths: Any) -> None:
    """Make each file the data function opened by an absolute path appear there:
    one already at that path is used as it is (a shared filesystem); else a link
    to the node's copy (under ``root``) is put there. :class:`Unshipped` (one line)
    when that path cannot be made."""
    for path in paths:
        if os.path.lexists(path):
            continue
        copy = os.path.join(root, ABSOLUTE, path.lstrip("/"))
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.symlink(copy, path)
        except OSError as exc:
            if os.path.lexists(path):  # another run of this node was first
                continue
            raise Unshipped(
                f"build_data() reads {path}, which node {socket.gethostname()}"
                f" lacks and cannot make ({exc.strerror}): put it there on every"
                " node, or open it relative to the script's folder"
            ) from None


def unshipped_reply(exc: Unshipped) -> dict[str, Any]:
    """A run that could not start: failed (exit 2, bad input), its log the reason."""
    return {
        "exit_code": 2,
        "wall_time_s": 0.0,
        "timed_out": False,
        "log": str(exc) + "\n",
        "result": None,
        "host": socket.gethostname(),
    }


class Storage:
    """``--storage``: a folder every node reaches (any ``fsspec`` URI), with what the
    runs keep there (checkpoints, results) at their paths in the study."""

    def __init__(self, uri: str) -> None:
        import fsspec

        self.fs, self.root = fsspec.core.url_to_fs(uri)

    def _at(self, rel: str) -> str:
        return f"{self.root.rstrip('/')}/{rel}"

    def exists(self, rel: str) -> bool:
        return bool(self.fs.exists(self._at(rel)))

    def get(self, rel: str, local: str) -> bool:
        """Copy ``rel`` to ``local``; False if storage has none."""
        try:
            self.fs.get_file(self._at(rel), local)
        except FileNotFoundError:
            return False
        return True

    def read_text(self, rel: str) -> str | None:
        try:
            with self.fs.open(self._at(rel), "rb") as fh:
                return fh.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return None

    def glob(self, pattern: str) -> dict[str, int]:
        """Files matching ``pattern`` (relative, ``*`` wildcards): relative path -> size."""
        root = self.root.rstrip("/") + "/"
        found = self.fs.glob(self._at(pattern), detail=True)
        return {
            path[len(root) :]: int(info.get("size") or 0)
            for path, info in sorted(found.items())
            if path.startswith(root) and info.get("type") != "directory"
        }

    def put(self, local: str, rel: str) -> None:
        """Upload ``local`` as ``rel``, whole or not at all (a part, then a move)."""
        target = self._at(rel)
        self.fs.makedirs(target.rpartition("/")[0], exist_ok=True)
        part = f"{target}.part-{socket.gethostname()}-{os.getpid()}"
        self.fs.put_file(local, part)
        self.fs.mv(part, target)

    def remove(self, rel: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._at(rel))


class CheckpointSync:
    """Keeps a run's checkpoint (and its ``.json`` note) in storage while it runs.

    Before the run: storage's copy is fetched when the run has none. While it runs: a
    thread uploads each new save (checked every ``SYNC_S``). After it: the last save
    is uploaded, or storage's copy removed when the script removed its own. (A
    script that keeps its file after an ok run leaves it to the driver, which
    removes storage's copy as the orchestrator removes the study's.)
    """

    def __init__(self, storage: Storage, local: str, rel: str) -> None:
        self.storage, self.local, self.rel = storage, local, rel
        self.note = local + ".json"
        self._seen: tuple[int, int] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> CheckpointSync:
        if not os.path.exists(self.local) and self.storage.get(self.rel, self.local):
            self.storage.get(self.rel + ".json", self.note)
        self._seen = self._stamp()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.local)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def _upload(self) -> None:
        stamp = self._stamp()
        if stamp is None or stamp == self._seen:
            return
        self.storage.put(self.local, self.rel)  # the checkpoint, then its note
        if os.path.exists(self.note):
            self.storage.put(self.note, self.rel + ".json")
        self._seen = stamp

    def _watch(self) -> None:
        while not self._stop.wait(SYNC_S):
            with contextlib.suppress(OSError):
                self._upload()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if os.path.exists(self.local):
            self._upload()
        else:  # the script removed it: a finished run
            self.storage.remove(self.rel)
            self.storage.remove(self.rel + ".json")


def storage_for(
    storage: dict[str, Any] | None, cwd: str, argv: list[str]
) -> tuple[Storage | None, contextlib.AbstractContextManager[Any]]:
    """The run's storage (None without ``--storage``) and what keeps its checkpoint
    there while it runs (a no-op for a run without one)."""
    if not storage:
        return None, contextlib.nullcontext()
    store = Storage(storage["uri"])
    if "--resume-from" not in argv:
        return store, contextlib.nullcontext()
    rel = argv[argv.index("--resume-from") + 1]
    return store, CheckpointSync(store, os.path.join(cwd, rel), rel)


def keep_result(
    store: Storage | None, storage: dict[str, Any] | None, out: str
) -> None:
    """Put the run's result where every node (and the driver) finds it."""
    if store is not None and storage and os.path.exists(out):
        store.put(out, storage["result"])


def _tail(path: str, limit: int = LOG_LIMIT) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - limit))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


class WarmSlot:
    """Body of a warm actor: one :mod:`.worker` zygote with one worker, on its node.

    Runs one script at a time (a Ray actor's calls are serial). A worker that dies
    fails the run it had (as in the local pool) and is started again for the next.
    """

    def __init__(
        self,
        worker_source: str,
        modules: list[str],
        threads: int,
        driver: tuple[str, int] | None = None,
    ) -> None:
        if not hasattr(os, "fork"):
            raise RuntimeError(f"no os.fork on {socket.gethostname()}")
        if driver is not None and driver[0] == socket.gethostname():
            threading.Thread(
                target=self._watch_driver, args=(driver[1],), daemon=True
            ).start()
        self.dir, self._lock = new_slot_dir()  # stale ones of this node go first
        self.worker_path = os.path.join(self.dir, "worker.py")
        Path(self.worker_path).write_text(worker_source, encoding="utf-8")
        self.modules, self.threads = modules, threads
        self.errlog = os.path.join(self.dir, "worker.log")
        self.sock: socket.socket | None = None
        self.rfile: Any = None
        self.proc: Any = None
        self.ready = False
        self.runs = 0
        self._spawn()  # imports start now, while the driver claims the first runs

    def _watch_driver(self, pid: int) -> None:
        """End this actor, its worker and that worker's run once the driver is gone."""
        while True:
            time.sleep(DRIVER_POLL_S)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            except PermissionError:
                pass
        proc = self.proc
        if proc is not None:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, 9)  # the zygote's session: zygote and worker
        shutil.rmtree(self.dir, ignore_errors=True)
        os._exit(1)

    def _spawn(self) -> None:
        ours, theirs = socket.socketpair()
        n = str(self.threads)
        env = dict(
            os.environ, OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, PYTHONUNBUFFERED="1"
        )
        env[PARENT_ENV] = str(os.getpid())  # spawned on the actor's main thread
        with open(self.errlog, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, self.worker_path, str(theirs.fileno()), *self.modules],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                env=env,
                cwd=self.dir,
                start_new_session=True,  # the zygote and its worker: one group
            )
        theirs.close()
        self.sock, self.rfile, self.ready = ours, ours.makefile("rb"), False

    def _stop_worker(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)  # the worker kills its run, ends
            self.rfile.close()
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            with contextlib.suppress(Exception):
                self.proc.wait(timeout=5)
            self.proc = None

    def _last_words(self) -> str:
        lines = _tail(self.errlog, 4096).strip().splitlines()
        return lines[-1] if lines else ""

    def ping(self) -> str:
        """This actor's Ray node id (the driver tells a lost node from a dead actor)."""
        import ray

        return str(ray.get_runtime_context().get_node_id())

    def _await_ready(self) -> None:
        if self.sock is None:
            self._spawn()
        if not self.ready:
            line = self.rfile.readline()
            if not line:
                self._stop_worker()
                raise OSError("the warm worker ended before it was ready")
            self.ready = True

    def run(
        self,
        script_name: str,
        script: bytes,
        study_dir: str,
        argv: list[str],
        timeout: float | None,
        max_memory: int | None,
        data: dict[str, Any] | None = None,
        storage: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        self.runs += 1
        tmp = os.path.join(self.dir, f"run-{self.runs}")
        os.mkdir(tmp)
        try:
            try:
                cwd, path = prepare(tmp, script_name, script, study_dir, data)
            except Unshipped as exc:
                return unshipped_reply(exc)
            lock = None
            if "--resume-from" in argv:  # in the study: resumable; in tmp: this try
                ckpt = Path(cwd, argv[argv.index("--resume-from") + 1])
                ckpt.parent.mkdir(parents=True, exist_ok=True)
                lock = f"{ckpt}.lock"  # held by the run (see worker.py)
            out = os.path.join(tmp, "result.json")
            log_path = os.path.join(tmp, "run.log")
            request = {
                "script": path,
                "argv": [*argv, "--out", out],
                "cwd": cwd,
                "log": log_path,
                "timeout": timeout,
                "threads": self.threads,
                "learn": os.path.join(self.dir, "learn.json"),
                "max_memory": max_memory,
                "env": {"PYTHONUNBUFFERED": "1"},
                "lock": lock,
            }
            try:
                self._await_ready()
            except OSError as exc:  # never warm: the driver falls back to tasks
                return {"warm_failed": f"{exc} {self._last_words()}".strip()}
            reply: dict[str, Any] | None
            store, synced = storage_for(storage, cwd, argv)
            with synced:
                try:
                    assert self.sock is not None
                    self.sock.sendall(json.dumps(request).encode() + b"\n")
                    line = self.rfile.readline()
                    reply = json.loads(line) if line else None
                    why = "its socket closed"
                except (OSError, ValueError) as exc:
                    reply, why = None, f"{type(exc).__name__}: {exc}"
            keep_result(store, storage, out)
            if reply is None:
                words = self._last_words()
                self._stop_worker()  # the next run starts a fresh one
                reply = {
                    "exit_code": None,
                    "wall_time_s": 0.0,
                    "timed_out": False,
                    "error": f"the warm worker process died ({why}) {words}".strip(),
                }
            reply["log"] = _tail(log_path)
            reply["result"] = (
                Path(out).read_text(encoding="utf-8", errors="replace")
                if os.path.exists(out)
                else None
            )
            reply["host"] = socket.gethostname()
            return reply
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def shutdown(self) -> None:
        """End the worker now: it may be importing what its last run imported lazily
        (seconds) before it reads the closed socket; the zygote need not wait."""
        if self.proc is not None:
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, 9)  # an idle worker: no run of it is lost
        self._stop_worker()
        shutil.rmtree(self.dir, ignore_errors=True)

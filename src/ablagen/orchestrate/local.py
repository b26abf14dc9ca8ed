"""The local backend: warm worker processes (see :mod:`.worker`), one fork per run.

One zygote process imports torch (and torch._dynamo, numpy, sklearn, the scripts'
other top-level imports and the submodules of those packages they import inside
functions, such as sklearn.datasets) once and forks ``jobs`` workers; every run is a
fresh fork of a worker, so a run costs a fork, not a Python start plus imports.
Workers also learn what a run imported lazily and import it for their next runs.
Cores are split between workers: with ``jobs`` > 1 each gets ``max(1, cores //
jobs)`` threads (``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``, ``torch.set_num_threads``)
so the runs do not oversubscribe the machine; with one job torch keeps its default.
Each run's memory is watched by its worker and capped at ``--max-memory`` (default:
80% of the machine's memory divided by the jobs); a run past it is killed and
stored as ``oom`` (see :mod:`.worker`).
With ``--device cuda`` each worker is pinned to one GPU (``CUDA_VISIBLE_DEVICES`` in
its runs' environment; see :mod:`.placement`): at most ``--runs-per-gpu`` runs share
a GPU, and ``--jobs`` defaults to GPUs x runs per GPU.
Commands start the zygote early (:class:`WarmStart`: ``ablagen run`` before the
manifest is hashed, ``ablagen study`` and ``ablagen sweep`` before generation), so
torch and the model file's own imports load while they plan; it forks its workers
only once a backend adopts it.
One such pool serves every ``run_study`` call made with it, one after another (the
study's ablation runs, then its arms; both stages of a two-stage study): the
workers outlive each backend, so the fixed start is paid once per command.
Results equal ``python script.py`` run with the same thread count (with fewer
threads, float reductions may differ in the last bits). One thread per worker in
the orchestrator feeds it runs and collects outcomes.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import json
import os
import queue
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from ablagen.core.errors import BackendError
from ablagen.core.spec import split_model_spec
from ablagen.orchestrate import checkpoints
from ablagen.orchestrate.options import RunOptions, RunSpec, usable_cpus
from ablagen.orchestrate.outcome import (
    RawOutcome,
    from_reply,
    gigabytes,
    read_tail,
)
from ablagen.orchestrate.placement import place

WORKER = Path(__file__).with_name("worker.py")
PARENT_ENV = "ABLAGEN_PARENT_PID"  # read (and dropped) by worker.py's zygote
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
#: always imported by the workers when installed. torch._dynamo (with sympy): every
#: torch optimizer imports it on first use (torch._compile's lazy import), ~1 s a run
BASE_PRELOAD = ("torch", "torch._dynamo", "numpy", "sklearn")


def _statements(body: list[ast.stmt]) -> Iterator[ast.AST]:
    """Every statement in ``body`` and the blocks nested in it (no expressions:
    an import is a statement)."""
    for node in body:
        yield node
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            inner = getattr(node, field, None)
            if isinstance(inner, list):
                yield from _statements(inner)


def _imported(node: ast.AST) -> list[str]:
    """The modules an import statement names (none for a relative import)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and not node.level:
        return [node.module]
    return []


def preload_modules(
    scripts: Sequence[Path], base: tuple[str, ...] = BASE_PRELOAD
) -> list[str]:
    """``base`` plus the installed modules the scripts import at top level, plus the
    submodules of ``base``'s packages they import inside functions.

    Those submodules (``from sklearn.datasets import load_digits`` in a data
    function) are the reason their package is preloaded, and every run would
    import them; anything else imported inside a function is left to the script
    (the workers learn it from the first run), and so is a module that lives in the
    study directory or is not installed.
    """
    names: dict[str, None] = dict.fromkeys(base)
    packages = {name.partition(".")[0] for name in base}
    roots = {p.resolve().parent for p in scripts}
    for script in scripts:
        try:
            tree = ast.parse(script.read_bytes())
        except (OSError, SyntaxError, ValueError):
            continue
        for node in tree.body:
            names.update(dict.fromkeys(_imported(node)))
        outer = {id(node) for node in tree.body}
        for node in _statements(tree.body):
            if id(node) not in outer:
                names.update(
                    (name, None)
                    for name in _imported(node)
                    if "." in name and name.partition(".")[0] in packages
                )
    keep = []
    for name in names:
        top = name.partition(".")[0]
        if top == "__future__":
            continue
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            continue
        origin = spec.origin if spec is not None else None
        if spec is None or (origin and Path(origin).resolve().parent in roots):
            continue
        keep.append(name)
    return keep


def _sizing(options: RunOptions, placement: Any) -> tuple[int, int | None]:
    """(workers, threads per worker: None keeps torch's default) for ``options``."""
    cores = usable_cpus()
    if placement is None:
        jobs = options.jobs or cores
    else:  # one worker per GPU slot at most: no GPU above --runs-per-gpu
        jobs = min(options.jobs or placement.slots, placement.slots)
    # one job: torch's own default, exactly as `python script.py` would run
    return jobs, (max(1, cores // jobs) if jobs > 1 else None)


def _worker_env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    if threads is not None:
        env.update(dict.fromkeys(THREAD_ENV, str(threads)))
    return env


#: variables this process's own imports set (scikit-learn sets both on import; they
#: tune Intel's OpenMP runtime): a pool started before the data's first import of
#: sklearn is still the pool the backend would start
LIBRARY_SET_ENV = frozenset({"KMP_DUPLICATE_LIB_OK", "KMP_INIT_AT_FORK"})


def _without(env: dict[str, str], names: frozenset[str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in names}


def _dies_with_us(env: dict[str, str]) -> dict[str, str]:
    """A zygote's environment: it dies with this process (see :mod:`.worker`). Its
    Popen runs in the main thread or a pool thread, which live as long as the pool
    (the kernel's parent-death signal follows the thread that started it)."""
    return {**env, PARENT_ENV: str(os.getpid())}


#: ``ABLAGEN_PRESTART=0`` starts the pool only once the runs are planned, as before
#: (kept for ``benchmarks/bench_orchestrate.py --overhead``, which times both)
PRESTART_ENV = "ABLAGEN_PRESTART"


class WarmStart:
    """The local pool, started when a command starts, before the manifest is
    hashed and the store opened (``ablagen study``, ``ablagen sweep``: before
    generation), and kept for every ``run_study`` call made with it.

    Its zygote imports the base modules (torch: most of a pool's start) at once,
    then waits on its stdin for the scripts' own top-level imports, known once the
    first runs are planned (:meth:`release`); only then does it fork its workers. A
    backend adopts it only if it was started exactly as the backend would start one
    (same environment, workers, base modules). The first backend releases it; each
    backend borrows its workers (:meth:`lend`) and hands back those not in the
    middle of a run when it closes, so the next ``run_study`` finds them ready. A
    worker lost meanwhile is replaced by a fresh one when next used. Unreleased, if
    no backend adopts it or the command ends first (bad input, nothing to run), it
    is killed: a single process that has forked nothing, so nothing is left behind.
    :meth:`close` ends it all.
    """

    def __init__(
        self,
        study_dir: Path,
        options: RunOptions,
        base: list[str],
        jobs: int,
        threads: int | None,
        early: Sequence[str] = (),
    ) -> None:
        self.base, self.jobs = base, jobs
        self.early = [name for name in early if name not in base]
        self.env = _worker_env(threads)
        # once released: the pool's workers and the zygotes that replace lost ones
        self.workers: list[_Worker] | None = None
        self.zygotes: _Zygotes | None = None
        self.cwd = study_dir if study_dir.is_dir() else Path.cwd()
        self.dir = Path(tempfile.mkdtemp(prefix=f"ablagen-run-{os.getpid()}-"))
        self.log_path = self.dir / "workers.log"
        pairs = [socket.socketpair() for _ in range(jobs)]
        theirs = [b.fileno() for _, b in pairs]
        self.socks: list[socket.socket] | None = [a for a, _ in pairs]
        try:
            with open(self.log_path, "ab") as stderr:
                self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                    [
                        sys.executable,
                        str(WORKER),
                        ",".join(map(str, theirs)),
                        *base,
                        *self.early,
                        "-",
                    ],
                    pass_fds=theirs,
                    stdin=subprocess.PIPE,
                    stdout=stderr,
                    stderr=stderr,
                    env=_dies_with_us(self.env),
                    cwd=self.cwd,
                )
        except OSError:
            self.proc = None
            self.close()
            raise
        finally:
            for _, b in pairs:
                b.close()

    @classmethod
    def begin(
        cls, study_dir: str | Path, options: RunOptions, sources: Sequence[Path] = ()
    ) -> WarmStart | None:
        """Start one for a local CPU study, where it can be (None: the pool starts
        as before, when the runs are planned; errors are left to that path).

        ``sources``: files whose imports the scripts will share (the model file a
        study embeds, a study's existing script): the zygote imports them right
        after the base modules, so once released it has nothing left to import
        and forks at once."""
        if (
            options.backend != "local"
            or options.device != "cpu"
            or options.gpus is not None
            or not hasattr(os, "fork")
            or os.environ.get(PRESTART_ENV) == "0"
        ):
            return None
        base = preload_modules(
            [], BASE_PRELOAD if options.preload is None else options.preload
        )
        early = preload_modules(sources, tuple(base))[len(base) :]
        try:
            jobs, threads = _sizing(options, None)
            return cls(Path(study_dir), options, base, jobs, threads, early)
        except (OSError, ValueError):
            return None

    def matches(
        self, env: dict[str, str], preload: list[str], jobs: int, cwd: Path
    ) -> bool:
        """Started as the backend would start its pool? (The zygote's cwd matters
        only to relative PYTHONPATH entries; runs get their own cwd.) Once released,
        the later runs' own top-level imports need not be preloaded: the workers
        learn them from their first run."""
        relative = any(
            p and not os.path.isabs(p)
            for p in env.get("PYTHONPATH", "").split(os.pathsep)
        )
        alive = (
            self.workers is not None
            if self.released
            else (
                self.proc is not None
                and self.proc.poll() is None
                and self.socks is not None
            )
        )
        return (
            alive
            and _without(env, LIBRARY_SET_ENV) == _without(self.env, LIBRARY_SET_ENV)
            and jobs == self.jobs
            and preload[: len(self.base)] == self.base
            and (not relative or Path(cwd).resolve() == Path(self.cwd).resolve())
        )

    @property
    def released(self) -> bool:
        return self.zygotes is not None

    def release(self, zygotes: _Zygotes) -> list[socket.socket]:
        """Hand the zygote the rest of ``zygotes.preload``; it imports them and forks
        its workers. ``zygotes`` owns the process from here on."""
        assert self.proc is not None and self.proc.stdin is not None
        assert self.socks is not None
        rest = [m for m in zygotes.preload[len(self.base) :] if m not in self.early]
        proc, socks, self.proc, self.socks = self.proc, self.socks, None, None
        try:
            proc.stdin.write(json.dumps(rest).encode() + b"\n")
            proc.stdin.close()
        except OSError:  # it died: its workers' sockets read EOF, and are replaced
            pass
        zygotes.stderr_path = self.log_path
        zygotes.procs.append(proc)
        return socks

    def lend(self, preload: list[str], cwd: Path) -> list[_Worker]:
        """The pool's workers, for one backend; the first call releases the zygote
        (``preload``: the first runs' modules, the base ones first)."""
        if self.workers is None:
            self.zygotes = _Zygotes(self.env, preload, self.dir, cwd)
            self.workers = [
                _Worker(self.zygotes, s) for s in self.release(self.zygotes)
            ]
        for worker in self.workers:
            if not worker.alive():  # ended since (killed): a fresh one when first used
                worker.close()
        return list(self.workers)

    def prepare(self, scripts: list[Path], cwd: Path) -> None:
        """Release the zygote as soon as the scripts exist (their imports are known),
        so that it imports them and forks its workers while ``run_study`` reads the
        manifest, hashes the scripts and opens the store. A no-op once released."""
        if self.workers is None and self.proc is not None:
            self.lend(preload_modules(scripts, tuple(self.base)), cwd)

    def cancel(self) -> None:
        """Kill the zygote if it was not released (it has forked nothing)."""
        proc, self.proc = self.proc, None
        if proc is not None:
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGKILL)
            proc.wait()
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
        for sock in self.socks or ():
            sock.close()
        self.socks = None

    def close(self) -> None:
        """Cancel if unused, else stop the workers and their zygotes; remove the log."""
        self.cancel()
        for worker in self.workers or ():
            worker.close()  # its socket's EOF ends the worker (and a run in it)
        if self.zygotes is not None:
            self.zygotes.stop()
        self.workers = None
        shutil.rmtree(self.dir, ignore_errors=True)


def source_files(target: str | Path) -> list[Path]:
    """What a command's scripts will import, before they exist: the model file
    itself, or a study's baseline script (none for anything else)."""
    path, _ = split_model_spec(str(target))
    found = path if path.suffix == ".py" else path / "baseline.py"
    return [found] if found.is_file() else []


@contextlib.contextmanager
def warm_pool(
    study_dir: str | Path, options: RunOptions, sources: Sequence[Path] = ()
) -> Iterator[WarmStart | None]:
    """A :class:`WarmStart` for the calls to ``run_study(..., warm=)`` inside
    (``sources``: see :meth:`WarmStart.begin`)."""
    warm = WarmStart.begin(study_dir, options, sources)
    try:
        yield warm
    finally:
        if warm is not None:
            warm.close()


class _Zygotes:
    """Starts zygote processes (see :mod:`.worker`): each imports once, forks workers."""

    def __init__(
        self, env: dict[str, str], preload: list[str], tmp: Path, cwd: Path
    ) -> None:
        self.env, self.preload, self.cwd = env, preload, cwd
        # the workers' own stderr, for post-mortems
        self.stderr_path = tmp / "workers.log"
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, n: int) -> list[socket.socket]:
        """Start a zygote with ``n`` workers; returns one connected socket per worker."""
        pairs = [socket.socketpair() for _ in range(n)]
        theirs = [b.fileno() for _, b in pairs]
        try:
            with open(self.stderr_path, "ab") as stderr:
                self.procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            str(WORKER),
                            ",".join(map(str, theirs)),
                            *self.preload,
                        ],
                        pass_fds=theirs,
                        stdin=subprocess.DEVNULL,
                        stdout=stderr,
                        stderr=stderr,
                        env=_dies_with_us(self.env),
                        cwd=self.cwd,
                    )
                )
        except OSError as exc:
            raise BackendError(
                f"cannot start the local worker processes ({exc})",
                "check the Python interpreter and free memory",
            ) from exc
        finally:
            for _, b in pairs:
                b.close()
        return [a for a, _ in pairs]

    def last_words(self) -> str:
        """The workers' last stderr line, else how the last zygote ended (killed?)."""
        lines = read_tail(self.stderr_path).strip().splitlines()
        if lines:
            return lines[-1]
        code = self.procs[-1].poll() if self.procs else None
        if code is not None and code < 0:
            return f"its zygote was killed by signal {-code}"
        return ""

    def stop(self) -> None:
        for proc in self.procs:  # they end once their workers' sockets are closed
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


class _Worker:
    """The orchestrator's end of one warm worker; replaced by a fresh one if it dies."""

    def __init__(self, zygotes: _Zygotes, sock: socket.socket | None = None) -> None:
        self.zygotes = zygotes
        self.sock = sock
        self.pid: int | None = None
        self._rfile: IO[bytes] | None = None

    def _reply(self) -> dict[str, Any] | None:
        if self._rfile is None:
            assert self.sock is not None
            self._rfile = self.sock.makefile("rb")
        line = self._rfile.readline()
        return json.loads(line) if line else None

    def warm(self) -> None:
        """Wait until the worker has imported its modules (starting one if needed)."""
        if self.sock is None:
            self.sock = self.zygotes.spawn(1)[0]
        if self.pid is None:
            ready = self._reply()
            if ready is None:
                raise OSError("the worker process ended before it was ready")
            self.pid = int(ready["pid"])

    def alive(self) -> bool:
        """False once its socket reads EOF (the worker ended); True while it starts."""
        if self.sock is None:
            return False
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
            return not readable or self.sock.recv(1, socket.MSG_PEEK) != b""
        except OSError:
            return False

    def run(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send one run, wait for its reply; a dead worker becomes an error reply."""
        try:
            self.warm()
            assert self.sock is not None
            self.sock.sendall(json.dumps(request).encode() + b"\n")
            reply = self._reply()
            error = None if reply is not None else "its socket closed"
        except (OSError, ValueError) as exc:
            reply, error = None, f"{type(exc).__name__}: {exc}"
        if reply is None:
            self.close()
            reply = {
                "exit_code": None,
                "wall_time_s": 0.0,
                "timed_out": False,
                "error": f"the worker process died ({error}) {self.zygotes.last_words()}".strip(),
            }
        return reply

    def interrupt(self) -> None:
        """From another thread: end the worker (and its run); its thread sees EOF."""
        sock = self.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Closing the socket makes the worker kill its running child and exit."""
        sock, self.sock, self.pid = self.sock, None, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        if self._rfile is not None:
            self._rfile.close()
            self._rfile = None


class _SubprocessWorker:
    """Where ``os.fork`` is missing (Windows): each run is ``python script.py``."""

    def warm(self) -> None:
        """Nothing to warm up."""

    def run(self, request: dict[str, Any]) -> dict[str, Any]:
        start = time.monotonic()
        with open(request["log"], "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, request["script"], *request["argv"]],
                cwd=request["cwd"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(request.get("env") or {})},
            )
            try:
                code, timed_out = proc.wait(timeout=request["timeout"]), False
            except subprocess.TimeoutExpired:
                proc.kill()
                code, timed_out = proc.wait(), True
        return {
            "exit_code": code,
            "wall_time_s": time.monotonic() - start,
            "timed_out": timed_out,
        }

    def interrupt(self) -> None:
        """A run in progress finishes or times out on its own."""

    def close(self) -> None:
        """Nothing to close."""


class LocalBackend:
    """Runs scripts in forked children of ``jobs`` warm worker processes."""

    name = "local"

    def __init__(
        self, study_dir: Path, options: RunOptions, tmp: Path, scripts: list[Path]
    ) -> None:
        self.study_dir = study_dir
        self.preload = preload_modules(
            scripts, BASE_PRELOAD if options.preload is None else options.preload
        )
        self.tmp = tmp
        self.timeout_s = options.timeout_s
        self.placement = place(options.device, options.gpus, options.runs_per_gpu)
        self.jobs, self.threads = _sizing(options, self.placement)
        self.memory_limit = options.memory_limit_bytes(self.jobs)
        self._zygotes = _Zygotes(
            _worker_env(self.threads), self.preload, tmp, study_dir
        )
        self._warm: WarmStart | None = None
        self._workers: list[_Worker | _SubprocessWorker] = []
        self._busy: set[int] = set()  # indexes of the workers in the middle of a run
        self._todo: queue.Queue[RunSpec | None] = queue.Queue()
        self._done: queue.Queue[RawOutcome | BaseException] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._closing = threading.Event()
        self._counter = 0
        self._lock = threading.Lock()

    @property
    def capacity(self) -> int:
        return self.jobs

    def describe(self) -> str:
        if self.threads is None:
            where = "local, 1 warm worker"
        else:
            where = f"local, {self.jobs} warm workers x {self.threads} thread{'s' * (self.threads > 1)}"
        if self.placement is not None:
            where = f"{where}, {self.placement.describe()}"
        if self.memory_limit is None:
            return f"{where}, no memory limit"
        return f"{where}, at most {gigabytes(self.memory_limit)} memory per run"

    def adopt(self, warm: WarmStart) -> bool:
        """Use ``warm`` (started before the runs were planned) for this pool if it
        was started exactly as :meth:`__enter__` would start one; else stop it now
        (unless an earlier backend released it: it may still fit a later one)."""
        z = self._zygotes
        if warm.matches(z.env, self.preload, self.jobs, z.cwd):
            self._warm = warm
            return True
        if not warm.released:
            warm.cancel()
        return False

    def __enter__(self) -> LocalBackend:
        if self._warm is not None:
            self._workers = list(self._warm.lend(self.preload, self._zygotes.cwd))
        elif hasattr(os, "fork"):
            self._workers = [
                _Worker(self._zygotes, sock) for sock in self._zygotes.spawn(self.jobs)
            ]
        else:
            self._workers = [_SubprocessWorker() for _ in range(self.jobs)]
        for index, worker in enumerate(self._workers):
            thread = threading.Thread(
                target=self._serve,
                args=(index, worker, self._env(index)),
                daemon=True,
                name=f"ablagen-worker-{index}",
            )
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _out_path(self) -> Path:
        with self._lock:
            self._counter += 1
            return self.tmp / f"result-{self._counter}.json"

    def _env(self, index: int) -> dict[str, str]:
        """What worker ``index``'s runs get on top of the environment (its GPU)."""
        return {} if self.placement is None else self.placement.env(index)

    def _start_worker(self, worker: _Worker | _SubprocessWorker) -> bool:
        """Wait for the worker's imports (they run while the first runs are claimed);
        one that dies meanwhile (killed) is started afresh, twice at most. False:
        the pool is closing."""
        for attempt in (1, 2, 3):
            try:
                worker.warm()
                return True
            except OSError as exc:
                if self._closing.is_set():
                    return False
                worker.close()
                if attempt == 3:
                    words = getattr(worker, "zygotes", self._zygotes).last_words()
                    raise BackendError(
                        f"a local worker process failed to start ({exc}: {words})",
                        "check that torch imports in this environment (`python -c 'import torch'`)",
                    ) from exc
        return False

    def _serve(
        self, index: int, worker: _Worker | _SubprocessWorker, env: dict[str, str]
    ) -> None:
        lent = False  # a worker of a pool that outlives this backend: handed back
        try:
            if not self._start_worker(worker):
                return
            while not self._closing.is_set():
                spec = self._todo.get()
                with self._lock:
                    if spec is None or self._closing.is_set():
                        break
                    self._busy.add(index)
                self._done.put(self._run(worker, spec, env))
                with self._lock:
                    self._busy.discard(index)
            lent = self._warm is not None
        except BaseException as exc:  # noqa: BLE001
            self._done.put(exc)  # handed to the main thread, raised there
        finally:
            if not lent:
                worker.close()

    def _run(
        self, worker: _Worker | _SubprocessWorker, spec: RunSpec, env: dict[str, str]
    ) -> RawOutcome:
        # in the study, not the scratch dir: it outlives this process (see the runner)
        out = (self.study_dir / spec.result_path).resolve()
        out.unlink(missing_ok=True)
        request = {
            "script": str((self.study_dir / spec.script).resolve()),
            "argv": spec.argv(str(out)),
            "cwd": str(self.study_dir.resolve()),
            "log": str((self.study_dir / spec.log_path).resolve()),
            "timeout": self.timeout_s,
            "threads": self.threads,
            "learn": str(self._out_path().with_suffix(".modules.json")),
            "max_memory": self.memory_limit,
            "env": env,
            "lock": spec.checkpoint and checkpoints.lock_path(spec.checkpoint),
        }
        reply = worker.run(request)
        try:
            result_text: str | None = out.read_text(encoding="utf-8", errors="replace")
        except OSError:
            result_text = None
        return from_reply(spec, reply, result_text, self.name, self.memory_limit)

    def submit(self, spec: RunSpec) -> None:
        self._todo.put(spec)

    def next_done(self, timeout: float | None = None) -> RawOutcome | None:
        """Block until a run finishes (a worker thread's own failure is raised here);
        None once ``timeout`` seconds pass without one."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            try:
                item = self._done.get(timeout=max(wait, 0.0))  # wake up for Ctrl-C
            except queue.Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                continue
            if isinstance(item, BaseException):
                raise item
            return item

    def close(self) -> None:
        """Stop the runs in flight; a pool's idle workers go back to it (see
        :class:`WarmStart`), the others end."""
        if self._closing.is_set():
            return
        with self._lock:
            self._closing.set()
            busy = set(self._busy)
        for _ in self._threads:
            self._todo.put(None)
        for index, worker in enumerate(self._workers):
            # a pool's worker goes back to it unless it is running or still starting
            if self._warm is None or index in busy or getattr(worker, "pid", 0) is None:
                worker.interrupt()  # it kills its running child when its socket closes
        for thread in self._threads:
            thread.join(timeout=15)
        self._zygotes.stop()

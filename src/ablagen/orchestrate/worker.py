"""The warm workers of the local backend; standalone (stdlib only, no ablagen).

Started as ``python worker.py FD[,FD...] MODULE...`` (the FDs are one end of a
socketpair each, inherited from the orchestrator). A module list ending in ``-``
(a pool started before the study's runs are planned, see ``local.WarmStart``)
imports those, then reads one JSON list of further modules from stdin and goes
on; EOF instead ends the zygote before it forks anything. This process -- the zygote --
imports the given modules once (torch, numpy, ...: the ~2 s a fresh
``python script.py`` pays), then forks one worker per FD and waits for them. So
``--jobs N`` pays the imports once, and the workers share those pages. A worker
serves one run at a time over a JSON-lines protocol on its socket::

    -> {"ready": true, "pid": 123, "preloaded": ["torch", ...]}
    <- {"script": ABS, "argv": [...], "cwd": DIR, "log": ABS, "timeout": S|null,
        "threads": N|null, "learn": PATH|null, "max_memory": BYTES|null, "env": {...},
        "lock": PATH|null}
    -> {"exit_code": 0, "wall_time_s": 1.2, "timed_out": false,
        "peak_memory_bytes": N|null, "oom": false}

Each run is a fresh fork of the worker (no state leaks between runs) that becomes
its own process group, points fds 0/1/2 at /dev/null and the run's log, sets
``sys.argv``, the cwd, ``sys.path[0]`` and torch's thread count, and executes the
script with ``runpy.run_path(script, run_name="__main__")``: the code path of
``python script.py``. The worker's own objects (the preloaded modules) sit in
the garbage collector's permanent generation (``gc.freeze()`` before it forks):
a run's full collections skip them instead of walking, and so copying, every
page they live on (~0.4 s a collection with torch loaded).
``exit_code`` < 0 means killed by that signal. A timeout
kills the run's whole process group. With ``lock`` (a checkpointed run: its
checkpoint's ``.lock`` file) the run holds that file's ``lockf`` from before the
script starts until its process ends; a second claimant waits for it. EOF
on the socket (the orchestrator closed it or died, even by ``kill -9``) or SIGTERM
kills the running child's group and ends the worker; the zygote ends when its
workers have.

No process outlives its parent (Linux): the zygote (when started with
``ABLAGEN_PARENT_PID``), each worker and each run ask the kernel for SIGKILL when
their parent ends (``prctl(PR_SET_PDEATHSIG)``), so a ``kill -9`` of the
orchestrator, or of its whole process group, ends them at once. What a run forks
itself (DataLoader workers, subprocesses) is left to each worker's guard: a small
fork of the worker, in a process group of its own so a group kill misses it, that
holds the read end of a pipe only the worker writes; the worker names each run's
process group on it, and when the pipe reads EOF (the worker is gone, however it
ended) the guard kills the groups of the runs still in flight and exits.

Memory: while a run lasts, the worker watches the proportional set size (PSS,
``/proc/PID/smaps_rollup``) of the run's process and its descendants: shared pages
(the preloaded torch) are split among the processes sharing them, so the sum is
what the run takes from the machine. It looks every 0.1 s, every 0.02 s past half
of ``max_memory``, and kills the run's group once the sum passes ``max_memory``
(``"oom": true``); ``peak_memory_bytes`` is the highest sum seen. The first look
is one period after the fork (a fresh fork shares every page with its worker,
and reading its PSS costs more than a short run); a run that ends before it
reports the peak resident set size the kernel kept for it (``ru_maxrss``, shared
pages counted in full: an upper bound). Without ``/proc`` nothing is measured (``null``). Reading PSS walks the run's page tables
(5-20 ms for a process holding torch, taken from the runs' own cores), so each
look first sums the resident set size (RSS, ``/proc/PID/statm``: one counter),
which is never below PSS, and reads PSS only when it can matter: when the RSS sum
is past ``max_memory`` (so the kill decision is the same as reading PSS every
time), when it has grown since the last PSS read (a new peak is possible), and at
least every 0.5 s (pages the run stops sharing raise its PSS, not its RSS).

With ``learn``, the child lists the installed modules the script imported lazily
(an optimizer pulls in torch._dynamo and sympy: ~1 s) and the worker imports them
after replying, so its next runs skip that cost too.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import io
import json
import os
import select
import signal
import sys
import threading
import time
from typing import Any

_child_pid: int | None = None
_guard_fd: int | None = None  # the write end of this worker's guard pipe
PARENT_ENV = "ABLAGEN_PARENT_PID"  # the zygote dies with this process
PR_SET_PDEATHSIG = 1
POLL_S = 0.1  # memory sampling period
POLL_NEAR_S = 0.02  # ... once past half of the limit
PSS_EVERY_S = 0.5  # PSS is read at least this often (else only when RSS says so)
RSS_GROWTH = 1 << 22  # RSS growth (bytes) since the last PSS read that reads it again
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (``/proc/PID/task/TID/children``)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{current}/task/{task}/children") as fh:
                    todo += [int(c) for c in fh.read().split()]
            except (OSError, ValueError):
                continue
    return found


def _pss(pid: int) -> int:
    """One process's proportional set size in bytes (RSS where PSS is unknown)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as fh:
            for line in fh:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(f"/proc/{pid}/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def _rss(pid: int) -> int:
    """One process's resident set size in bytes (0 if it is gone): an upper bound
    of its PSS that costs one counter read."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this process when its parent ends (Linux
    ``prctl(PR_SET_PDEATHSIG)``: the parent *thread* that forked or started it);
    end now if ``parent`` is already gone. A no-op where prctl is missing."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: the socket's EOF still ends us
        return
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it ended before the request took effect
        os._exit(1)


def _start_guard() -> int:
    """Fork this worker's guard; returns the write end of its pipe.

    The guard leaves the worker's process group, closes every other descriptor
    (the run sockets above all: the orchestrator must read EOF when the worker
    dies), and reads ``+PGID`` / ``-PGID`` lines: the runs in flight. On EOF it
    kills the groups still listed, so nothing a run forked outlives the worker.
    """
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.setpgid(0, 0)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.closerange(3, read)
            os.closerange(read + 1, 1 << 16)
            groups: set[int] = set()
            buf = b""
            while chunk := os.read(read, 4096):
                *lines, buf = (buf + chunk).split(b"\n")
                for line in lines:
                    (groups.add if line[:1] == b"+" else groups.discard)(int(line[1:]))
            for group in groups:
                _kill_group(group)
        except BaseException:  # noqa: BLE001 - never return into the worker's code
            code = 1
        finally:
            os._exit(code)
    os.close(read)
    return write


def _tell_guard(sign: str, pid: int) -> None:
    if _guard_fd is not None:
        with contextlib.suppress(OSError):  # the guard was killed: no guard then
            os.write(_guard_fd, f"{sign}{pid}\n".encode())


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _on_sigterm(signum: int, frame: object) -> None:
    if _child_pid is not None:
        _kill_group(_child_pid)
    os._exit(128 + signum)


def _exit_code(code: object) -> int:
    """Python's own mapping of ``SystemExit.code`` to an exit status."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _report(exc: BaseException, script: str) -> None:
    """Print an uncaught exception as ``python script.py`` would: no runpy frames."""
    if sys.excepthook is not sys.__excepthook__:
        sys.excepthook(type(exc), exc, exc.__traceback__)
        return
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != script:
        tb = tb.tb_next
    import traceback

    traceback.print_exception(type(exc), exc, tb or exc.__traceback__)


def _write_learned(path: str, last: str | None, local_dirs: tuple[str, ...]) -> None:
    """Name the installed modules the script imported, for the worker to preload
    (no file when there are none: the worker has them all).

    The new modules are the ``sys.modules`` entries after ``last``, the newest
    one the worker had (a dict keeps insertion order): walking only those leaves
    the thousands of inherited entries untouched, where a full pass would copy
    every page they live on (~10 ms a run). If ``last`` left ``sys.modules``
    during the run, nothing is learned this time.
    """
    fresh = []
    for name in reversed(sys.modules):
        if name == last:
            break
        fresh.append(name)
    else:
        if last is not None:
            return
    names = []
    for name in reversed(fresh):  # in import order
        module = sys.modules.get(name)
        if module is None or name.startswith("__"):
            continue
        file = getattr(module, "__file__", None)
        if file and any(
            os.path.abspath(file).startswith(os.path.join(d, "")) for d in local_dirs
        ):
            continue  # the study's own modules stay the script's business
        names.append(name)
    if names:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(names, fh)


def _learn(path: str) -> bool:
    """Import what the last run imported lazily (torch._dynamo, sympy, ...): later
    forks start with it. Only imports here, never torch ops, so forking stays safe.
    Returns whether it imported anything."""
    try:
        with open(path, encoding="utf-8") as fh:
            names = json.load(fh)
        os.unlink(path)
    except (OSError, ValueError):
        return False
    for name in names:
        if name not in sys.modules:
            # best effort: what fails here, the script imports itself
            with contextlib.suppress(Exception):
                importlib.import_module(name)
    sys.stdout.flush()
    sys.stderr.flush()
    return bool(names)


#: exit-time finalizers that only tidy the process's own state: torch.library
#: registers one per operator library (~170 on import), which unregister the
#: operators from the dispatcher at exit (~30 ms in all)
IN_PROCESS_FINALIZERS = (("torch.library", "_del_library"),)


def _drop_inherited_finalizers() -> None:
    """In the worker: let its runs' exits skip the in-process finalizers its
    imports registered (it never runs them itself: it ends with ``os._exit``).

    ``weakref.finalize`` callbacks marked to run at exit belong to the modules the
    worker imported; those in ``IN_PROCESS_FINALIZERS`` change nothing outside the
    process, which ends right after them. Every other finalizer runs at a run's
    exit as before, and so do the script's own. Called when the worker starts and
    after it learns modules, so a run's fork inherits them switched off.
    """
    import weakref

    for finalizer in list(getattr(weakref.finalize, "_registry", ())):
        alive = finalizer.peek()  # (obj, func, args, kwargs); None once it ran
        func = alive[1] if alive else None
        name = (getattr(func, "__module__", None), getattr(func, "__qualname__", None))
        if name in IN_PROCESS_FINALIZERS:
            finalizer.atexit = False


def _hold_lock(path: str) -> None:
    """Lock ``path`` (a POSIX ``lockf``, relative to the run's cwd) for the run's
    whole life: the lock is the run process's own (what it forks, DataLoader
    workers, do not inherit it) and goes when it ends, as the scripts' own lock
    does. A run of the same checkpoint that is still alive (an orphan being killed)
    is waited for: the run never reads a checkpoint that another process may still
    write. No lock where ``fcntl`` is missing."""
    try:
        import fcntl
    except ImportError:
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        print(f"ablagen: waiting for the process that holds {path}", flush=True)
        fcntl.lockf(fd, fcntl.LOCK_EX)


def _child(req: dict[str, Any], channel: int) -> None:
    """In the forked child: become the script. Never returns."""
    code = 1
    try:
        os.setpgid(0, 0)
        die_with_parent(req["worker_pid"])
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for sig in (signal.SIGTERM, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        os.close(channel)
        if _guard_fd is not None:  # else its children would keep the guard's pipe open
            os.close(_guard_fd)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        log = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.close(devnull)
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
        sys.stdout = io.TextIOWrapper(
            io.FileIO(1, "w", closefd=False), encoding="utf-8", line_buffering=True
        )
        sys.stderr = io.TextIOWrapper(
            io.FileIO(2, "w", closefd=False),
            encoding="utf-8",
            errors="backslashreplace",
            line_buffering=True,
        )
        os.environ.update(req.get("env") or {})  # e.g. CUDA_VISIBLE_DEVICES of its GPU
        os.chdir(req["cwd"])
        if req.get("lock"):
            # the script's own lockf of it succeeds: a POSIX lock is this process's
            _hold_lock(req["lock"])
        script = req["script"]
        sys.argv = [script, *req["argv"]]  # runpy sets argv[0] to the script's path
        sys.path.insert(0, os.path.dirname(os.path.abspath(script)))  # as python does
        torch = sys.modules.get("torch")
        if torch is not None and req.get("threads"):
            torch.set_num_threads(int(req["threads"]))
        import runpy

        last = next(reversed(sys.modules), None)  # what came before the script
        try:
            runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as exc:
            code = _exit_code(exc.code)
        except BaseException as exc:  # noqa: B036
            _report(exc, script)  # a script's uncaught error, reported as python does
            code = 1
        shutdown = getattr(threading, "_shutdown", None)
        if shutdown is not None:
            shutdown()  # wait for the script's non-daemon threads, as python does at exit
        atexit._run_exitfuncs()
        if req.get("learn"):
            _write_learned(req["learn"], last, (sys.path[0], os.getcwd()))
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(code)


class _Watch:
    """A run's memory samples: the peak, and whether it passed the limit.

    Each sample sums RSS over the run's processes (cheap, and never below their
    PSS) and reads the PSS sum only on the first sample (one period after the
    fork: see :func:`_wait`), when RSS is past the
    limit (PSS decides the kill, so it is decided as if PSS were read every time),
    when RSS grew by ``RSS_GROWTH`` since the last PSS read (a new peak is
    likely), or ``PSS_EVERY_S`` after the last read. ``reads`` counts PSS reads.
    """

    def __init__(self, pid: int, limit: int | None) -> None:
        self.pid, self.limit = pid, limit
        self.peak: int | None = None
        self.over = False
        self.rss = 0  # the RSS sum of the last sample
        self.reads = 0
        self._read_rss = -1  # the RSS sum at the last PSS read
        self._read_at = 0.0

    def sample(self) -> None:
        if not os.path.isdir("/proc/self"):
            return
        tree = _descendants(self.pid)
        self.rss = sum(_rss(p) for p in tree)
        now = time.monotonic()
        if not (
            (self.limit is not None and self.rss > self.limit)
            or self.rss > self._read_rss + RSS_GROWTH
            or now - self._read_at >= PSS_EVERY_S
        ):
            return  # PSS <= RSS <= limit: no kill; the peak waits for the next read
        used = sum(_pss(p) for p in tree)
        self.reads += 1
        self._read_rss, self._read_at = self.rss, now
        self.peak = used if self.peak is None else max(self.peak, used)
        if self.limit is not None and used > self.limit:
            self.over = True

    def period(self) -> float:
        # RSS >= PSS: at least as soon as the PSS peak would have said so
        near = (
            self.limit is not None and max(self.peak or 0, self.rss) > self.limit // 2
        )
        return POLL_NEAR_S if near else POLL_S


def _wait(
    pid: int, deadline: float | None, channel: int, watch: _Watch
) -> tuple[bool, bool]:
    """Wait until the child exits (not reaped), the deadline passes, the channel
    closes or the run passes its memory limit (``watch.over``).

    Returns (exited, orphaned): orphaned means the orchestrator is gone.
    """
    pidfd = os.pidfd_open(pid) if hasattr(os, "pidfd_open") else None
    first = True  # a fresh fork is not sampled: it shares all its worker's pages
    try:
        while True:
            if not first:
                watch.sample()
            first = False
            if watch.over:
                return False, False
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False, False
            wait = watch.period() if left is None else min(left, watch.period())
            if pidfd is not None:
                ready, _, _ = select.select([channel, pidfd], [], [], wait)
            else:
                ready, _, _ = select.select([channel], [], [], min(wait, 0.01))
                if (
                    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
                    is not None
                ):
                    return True, False
            if channel in ready:
                return False, True  # EOF (or stray input): the orchestrator is gone
            if pidfd is not None and pidfd in ready:
                return True, False
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _run(req: dict[str, Any], channel: int) -> dict[str, Any]:
    global _child_pid
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    start = time.monotonic()
    req = dict(req, worker_pid=os.getpid())
    pid = os.fork()
    if pid == 0:
        _child(req, channel)
    _child_pid = pid
    with contextlib.suppress(OSError):  # the child already did, or already exited
        os.setpgid(pid, pid)
    _tell_guard("+", pid)
    timeout = req.get("timeout")
    limit = req.get("max_memory")
    watch = _Watch(pid, None if limit is None else int(limit))
    exited, orphaned = _wait(
        pid, None if timeout is None else start + float(timeout), channel, watch
    )
    _kill_group(pid)  # the timed-out or oversized run, or what it left behind
    _, status, usage = os.wait4(pid, 0)
    if watch.peak is None and os.path.isdir("/proc/self"):  # ended before a look
        watch.peak = usage.ru_maxrss * 1024  # Linux: kilobytes
    _tell_guard("-", pid)
    _child_pid = None
    wall = time.monotonic() - start
    if orphaned:
        os._exit(0)
    return {
        "exit_code": os.waitstatus_to_exitcode(status),
        "wall_time_s": wall,
        "timed_out": not exited and not watch.over,
        "oom": watch.over and not exited,
        "peak_memory_bytes": watch.peak,
    }


def _read_line(channel: int, buf: bytearray) -> bytes | None:
    while b"\n" not in buf:
        chunk = os.read(channel, 65536)
        if not chunk:
            return None
        buf.extend(chunk)
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return line


def _send(channel: int, message: dict[str, Any]) -> None:
    data = (json.dumps(message) + "\n").encode()
    while data:
        data = data[os.write(channel, data) :]


def _serve(channel: int, preloaded: list[str]) -> None:
    """A worker: run requests until the channel closes. Never returns."""
    global _guard_fd
    signal.signal(signal.SIGTERM, _on_sigterm)
    _guard_fd = _start_guard()
    _drop_inherited_finalizers()
    gc.freeze()
    _send(channel, {"ready": True, "pid": os.getpid(), "preloaded": preloaded})
    buf = bytearray()
    while (line := _read_line(channel, buf)) is not None:
        req = json.loads(line)
        try:
            reply = _run(req, channel)
        except OSError as exc:
            reply = {
                "exit_code": None,
                "wall_time_s": 0.0,
                "timed_out": False,
                "error": f"{type(exc).__name__}: {exc}",
            }
        _send(channel, reply)
        if req.get("learn") and _learn(req["learn"]):
            _drop_inherited_finalizers()
            gc.freeze()
    # the channel closed: done; skip the interpreter's slow teardown of torch & co.
    os._exit(0)


def _preload(modules: list[str]) -> list[str]:
    """Import ``modules`` in order; returns those that imported."""
    preloaded = []
    for name in modules:
        try:
            importlib.import_module(name)
            preloaded.append(name)
        except Exception as exc:  # noqa: BLE001 - optional; the script imports it too
            print(
                f"ablagen worker: not preloading {name}: {type(exc).__name__}: {exc}",
                file=sys.stderr,
            )
    return preloaded


def main(channels: list[int], modules: list[str]) -> None:
    # python put this file's folder first; a run puts its script's folder there
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(__file__):
        sys.path.pop(0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the orchestrator decides on Ctrl-C
    parent = os.environ.pop(PARENT_ENV, "")
    if parent.isdigit():  # started by a thread that lives as long as the pool
        die_with_parent(int(parent))
    more = "-" in modules  # started early: the rest of the list comes on stdin
    preloaded = _preload(modules[: modules.index("-")] if more else modules)
    if more:
        line = sys.stdin.readline()
        if not line.strip():
            os._exit(0)  # the orchestrator gave up on this pool before it forked
        preloaded += _preload(json.loads(line))
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)  # as a zygote started with stdin on /dev/null
        os.close(devnull)
    sys.stdout.flush()
    sys.stderr.flush()
    workers, zygote = [], os.getpid()
    for channel in channels:
        pid = os.fork()
        if pid == 0:
            die_with_parent(zygote)
            for other in channels:
                if other != channel:
                    os.close(other)
            _serve(channel, preloaded)
        workers.append(pid)
    for channel in channels:
        os.close(channel)
    for pid in workers:
        os.waitpid(pid, 0)
    os._exit(0)


if __name__ == "__main__":
    main([int(fd) for fd in sys.argv[1].split(",")], sys.argv[2:])

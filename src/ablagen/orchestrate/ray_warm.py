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
and the worker's runs die with the worker, as in the local pool.
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
        self.dir = tempfile.mkdtemp(prefix="ablagen-ray-slot-")
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
        return socket.gethostname()

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
    ) -> dict[str, Any]:
        self.runs += 1
        tmp = os.path.join(self.dir, f"run-{self.runs}")
        os.mkdir(tmp)
        try:
            in_place = Path(study_dir, script_name)
            if in_place.is_file() and in_place.read_bytes() == script:
                cwd, path = study_dir, str(in_place)
            else:
                cwd, path = tmp, os.path.join(tmp, script_name)
                Path(path).write_bytes(script)
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
            try:
                assert self.sock is not None
                self.sock.sendall(json.dumps(request).encode() + b"\n")
                line = self.rfile.readline()
                reply = json.loads(line) if line else None
                why = "its socket closed"
            except (OSError, ValueError) as exc:
                reply, why = None, f"{type(exc).__name__}: {exc}"
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

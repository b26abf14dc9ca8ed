"""The Ray backend: each run is a Ray task that runs ``python script.py`` in a subprocess.

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
must be whole numbers (Ray's rule). Mid-run checkpoints resume when the node runs
the script in the study directory (a shared or local study); in a temporary
directory a checkpoint lasts only for that try.
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

from ablagen.errors import BackendError
from ablagen.fsutil import writing
from ablagen.orchestrate.options import RunOptions, RunSpec, usable_cpus
from ablagen.orchestrate.outcome import RawOutcome

CONNECT_TIMEOUT_S = 5.0
CONNECT_RETRIES = 5  # one a second
LOG_LIMIT = 1 << 20  # bytes of a run's log sent back to the driver (its end)


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
) -> dict[str, Any]:
    """Body of the Ray task, executed on a worker node."""
    import subprocess
    import tempfile
    import time

    with tempfile.TemporaryDirectory(prefix="ablagen-ray-") as tmp:
        in_place = Path(study_dir, script_name)
        if in_place.is_file() and in_place.read_bytes() == script:
            cwd, path = study_dir, str(in_place)
        else:
            cwd, path = tmp, os.path.join(tmp, script_name)
            Path(path).write_bytes(script)
        if "--resume-from" in argv:  # in the study: resumable; in tmp: for this try
            ckpt = Path(cwd, argv[argv.index("--resume-from") + 1])
            ckpt.parent.mkdir(parents=True, exist_ok=True)
        out = os.path.join(tmp, "result.json")
        log_path = os.path.join(tmp, "run.log")
        env = dict(
            os.environ,
            OMP_NUM_THREADS=str(threads),
            MKL_NUM_THREADS=str(threads),
            PYTHONUNBUFFERED="1",
        )
        start = time.monotonic()
        with open(log_path, "wb") as log:
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
    """Runs each script as a Ray task with ``--cpus-per-run``/``--gpus-per-run``."""

    name = "ray"

    def __init__(
        self, study_dir: Path, options: RunOptions, tmp: Path, scripts: list[Path]
    ) -> None:
        self.ray = _import_ray()
        self.study_dir = study_dir
        self.options = options
        self._started_ray = False
        self._pending: dict[Any, RunSpec] = {}
        self._task: Any = None
        self.jobs = options.jobs or 0
        # only an explicit --max-memory: the cluster's nodes are not this machine
        self.memory_limit = (
            None if options.max_memory_gb is None else options.memory_limit_bytes(1)
        )

    @property
    def capacity(self) -> int:
        return self.jobs

    def describe(self) -> str:
        where = self.options.ray_address or "a local instance"
        line = f"ray ({where}), up to {self.jobs} run{'s' * (self.jobs > 1)} at once"
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
        resources: dict[str, Any] = {}
        if self.memory_limit is not None:
            resources["memory"] = self.memory_limit  # Ray schedules by it
        self._task = ray.remote(
            num_cpus=options.cpus_per_run,
            num_gpus=options.gpus_per_run,
            max_retries=0,
            **resources,
        )(_run_task)
        if not self.jobs:
            cpus = float(ray.cluster_resources().get("CPU", 1))
            self.jobs = max(1, int(cpus // options.cpus_per_run))
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, spec: RunSpec) -> None:
        script = (self.study_dir / spec.script).read_bytes()
        argv = spec.argv("")[:-2]  # the task adds its own --out
        threads = max(1, int(self.options.cpus_per_run))
        ref = self._task.remote(
            spec.script,
            script,
            str(self.study_dir.resolve()),
            argv,
            self.options.timeout_s,
            threads,
        )
        self._pending[ref] = spec

    def next_done(self, timeout: float | None = None) -> RawOutcome | None:
        ray = self.ray
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = (
                0.5
                if deadline is None
                else max(0.0, min(0.5, deadline - time.monotonic()))
            )
            done, _ = ray.wait(list(self._pending), num_returns=1, timeout=wait)
            if done:
                break
            if deadline is not None and time.monotonic() >= deadline:
                return None
        ref = done[0]
        spec = self._pending.pop(ref)
        try:
            reply = ray.get(ref)
        except ray.exceptions.RayError as exc:
            oom = isinstance(exc, getattr(ray.exceptions, "OutOfMemoryError", ()))
            return RawOutcome(
                spec,
                None,
                0.0,
                error=(
                    None
                    if oom
                    else f"the Ray task failed: {type(exc).__name__}: "
                    f"{' '.join(str(exc).split())[:300]}"
                ),
                backend=self.name,
                oom=oom,
                memory_limit_bytes=self.memory_limit,
            )
        log_file = self.study_dir / spec.log_path
        with writing(log_file, "the run log"):
            log_file.write_text(reply["log"], encoding="utf-8")
        return RawOutcome(
            spec,
            reply["exit_code"],
            float(reply["wall_time_s"]),
            result_text=reply["result"],
            timed_out=bool(reply["timed_out"]),
            backend=self.name,
        )

    def close(self) -> None:
        for ref in list(self._pending):
            with contextlib.suppress(
                self.ray.exceptions.RayError, ValueError, TypeError
            ):
                self.ray.cancel(ref, force=True)
        self._pending.clear()
        if self._started_ray:
            self._started_ray = False
            self.ray.shutdown()

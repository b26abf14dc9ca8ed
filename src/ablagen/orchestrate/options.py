"""What to run and how: the run options, one planned run, and the summary of a study run."""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ablagen.core.errors import ConfigError
from ablagen.orchestrate.run_record import RunRecord

DEVICES = ("cpu", "cuda")
FAILED_STATUSES = ("failed", "diverged", "timeout", "crashed", "oom")


def usable_cpus() -> int:
    """CPU cores this process may run on (affinity-aware where the OS says)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


#: share of the machine's memory the runs may use together (the rest: the system,
#: the orchestrator, page cache); the default limit gives each job an equal part
MEMORY_SHARE = 0.8


def machine_memory_bytes() -> int | None:
    """Memory this process may use: the machine's, or its cgroup's limit if lower."""
    total = None
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    for path in (
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < (total or 1 << 62):
            total = int(text)
        break
    return total


def default_memory_limit(jobs: int) -> int | None:
    """``MEMORY_SHARE`` of the machine's memory divided by ``jobs`` (None if unknown)."""
    total = machine_memory_bytes()
    return None if total is None else int(total * MEMORY_SHARE / max(1, jobs))


@dataclass(frozen=True)
class RunOptions:
    """Options of :func:`ablagen.orchestrate.run_study`; every field has a CLI flag.

    ``jobs``: runs at once (local: worker processes; ray: tasks in flight); ``None``
    means one per usable CPU core (local) or as many as the cluster's CPUs allow (ray).
    ``seeds``: ``None`` means the manifest's ``config["seeds"]`` if it has them, else (0,).
    ``epochs``: ``None`` lets each script use its generated default.
    ``timeout_s``: per run; ``None`` means no limit.
    ``max_memory_gb``: per run, in GB (10^9 bytes); the local backend kills a run
    whose processes pass it (status ``oom``), Ray gets it as the task's memory
    resource. ``None``: :func:`default_memory_limit` (local) or no limit (ray);
    ``0``: no limit.
    ``preload`` (local backend, library only): modules the warm workers import up
    front instead of the default torch, torch._dynamo, numpy, sklearn; the scripts'
    own top-level imports are always added.
    ``gpus``, ``runs_per_gpu`` (local backend, ``device="cuda"``): the GPUs the
    workers are pinned to (``None``: every visible one) and the most runs one GPU
    holds at once (see :mod:`.placement`).
    ``keep_checkpoints``, ``restart``, ``checkpoint_every``: what scripts that take
    ``--resume-from`` are told (see :mod:`.checkpoints`): keep the checkpoint of a
    finished run, drop an existing checkpoint and start over, save every N epochs
    (``None``: the script's default; 0: never).
    """

    jobs: int | None = None
    seeds: tuple[int, ...] | None = None
    epochs: int | None = None
    timeout_s: float | None = None
    backend: str = "local"
    ray_address: str | None = None
    storage: str | None = None  # Ray: where nodes keep checkpoints and results
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    only: tuple[str, ...] | None = None
    retry_failed: bool = False
    device: str = "cpu"
    preload: tuple[str, ...] | None = None
    max_memory_gb: float | None = None
    wait: bool = True  # wait for runs another live orchestrator holds
    gpus: tuple[int, ...] | None = None
    runs_per_gpu: int = 1
    keep_checkpoints: bool = False
    restart: bool = False
    checkpoint_every: int | None = None

    def __post_init__(self) -> None:
        if self.jobs is not None and self.jobs < 1:
            raise ConfigError(
                f"--jobs {self.jobs} is not a positive number", "pass --jobs 1 or more"
            )
        if self.seeds is not None:
            check_seeds(self.seeds)
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(
                f"--epochs {self.epochs} is not a positive number",
                "pass --epochs 1 or more",
            )
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ConfigError(
                f"--timeout {self.timeout_s} is not positive",
                "pass a number of seconds > 0",
            )
        if self.cpus_per_run <= 0 or self.gpus_per_run < 0:
            raise ConfigError(
                f"--cpus-per-run {self.cpus_per_run} / --gpus-per-run {self.gpus_per_run} out of range",
                "pass --cpus-per-run > 0 and --gpus-per-run >= 0",
            )
        if self.ray_address and self.backend != "ray":
            raise ConfigError(
                f"--ray-address {self.ray_address} needs the ray backend",
                "add --backend ray",
            )
        if self.storage and self.backend != "ray":
            raise ConfigError(
                f"--storage {self.storage} needs the ray backend (local runs keep"
                " checkpoints and results in the study)",
                "add --backend ray, or leave --storage out",
            )
        if self.max_memory_gb is not None and not (
            math.isfinite(self.max_memory_gb) and self.max_memory_gb >= 0
        ):
            raise ConfigError(
                f"--max-memory {self.max_memory_gb} is not a size in GB",
                "pass a positive number of GB, e.g. --max-memory 4 (0 turns the limit off)",
            )
        if self.device not in DEVICES:
            raise ConfigError(
                f"unknown device {self.device!r}",
                f"pass --device {' or '.join(DEVICES)}",
            )
        self._check_placement()

    def _check_placement(self) -> None:
        if self.runs_per_gpu < 1:
            raise ConfigError(
                f"--runs-per-gpu {self.runs_per_gpu} is not a positive number",
                "pass --runs-per-gpu 1 or more",
            )
        if self.checkpoint_every is not None and self.checkpoint_every < 0:
            raise ConfigError(
                f"--checkpoint-every {self.checkpoint_every} is negative",
                "pass a number of epochs >= 1 (0: no mid-run checkpoints)",
            )
        if self.gpus is not None and self.device != "cuda":
            raise ConfigError(
                f"--gpus {','.join(map(str, self.gpus))} needs CUDA runs",
                "add --device cuda (or drop --gpus)",
            )
        if self.gpus_per_run > 1 and self.gpus_per_run != int(self.gpus_per_run):
            raise ConfigError(
                f"--gpus-per-run {self.gpus_per_run}: a fraction above 1 GPU",
                "pass a share of one GPU (e.g. 0.5) or a whole number of GPUs",
            )
        if self.backend == "ray" and self.device == "cuda" and not self.gpus_per_run:
            raise ConfigError(
                "--device cuda on Ray needs GPUs per run: at --gpus-per-run 0 Ray "
                "places no run on a GPU",
                "pass --gpus-per-run 1 (or 0.5: two runs per GPU)",
            )
        if self.gpus is not None and self.backend != "local":
            raise ConfigError(
                f"--gpus is for the local backend, not {self.backend}",
                "with --backend ray pass --gpus-per-run (e.g. 0.5: two runs per GPU)",
            )

    def memory_limit_bytes(self, jobs: int) -> int | None:
        """The per-run memory limit in bytes (``None``: no limit)."""
        if self.max_memory_gb == 0:
            return None
        if self.max_memory_gb is None:
            return default_memory_limit(jobs)
        return int(self.max_memory_gb * 1e9)

    def script_args(self) -> dict[str, Any]:
        """The run arguments beyond ``--seed`` and ``--out``, as stored in each record."""
        args: dict[str, Any] = {"device": self.device}
        if self.epochs is not None:
            args["epochs"] = self.epochs
        return args


def check_seeds(seeds: tuple[int, ...]) -> tuple[int, ...]:
    if not seeds:
        raise ConfigError(
            "no seeds given", "pass seeds as a comma list, e.g. --seeds 0,1,2"
        )
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(
                f"seed {seed!r} is not a non-negative integer",
                "pass e.g. --seeds 0,1,2",
            )
    if len(set(seeds)) != len(seeds):
        raise ConfigError(
            f"seeds {list(seeds)} repeat a seed",
            "list each seed once, e.g. --seeds 0,1,2",
        )
    return tuple(seeds)


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` or ``"0-4"`` (inclusive) or a mix -> a tuple of distinct seeds."""
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        lo, sep, hi = part.partition("-")
        try:
            if sep and lo:
                seeds.extend(range(int(lo), int(hi) + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise ConfigError(
                f"bad --seeds {text!r}: {part!r} is not a non-negative integer",
                "pass seeds as a comma list, e.g. --seeds 0,1,2 (or a range, 0-4)",
            ) from None
    try:
        return check_seeds(tuple(seeds))
    except ConfigError as exc:
        raise ConfigError(f"bad --seeds {text!r}: {exc.problem}", exc.fix) from None


def parse_ids(text: str) -> tuple[str, ...]:
    ids = tuple(p.strip() for p in text.split(",") if p.strip())
    if not ids:
        raise ConfigError(
            f"bad --only {text!r}: no variant ids",
            "pass ids as a comma list, e.g. --only baseline,conv1:zero",
        )
    return ids


def args_json(args: dict[str, Any]) -> str:
    """The canonical text of run arguments: the store's key column."""
    return json.dumps(args, sort_keys=True, separators=(",", ":"))


def args_hash8(args: dict[str, Any]) -> str:
    return hashlib.sha256(args_json(args).encode()).hexdigest()[:8]


@dataclass(frozen=True)
class RunSpec:
    """One planned run: a variant's script with one seed and one set of arguments."""

    variant_id: str
    script: str  # file name inside the study directory
    script_sha256: str
    seed: int
    args: dict[str, Any] = field(default_factory=dict)
    #: every manifest entry this one run scores (a knockout.py run scores them all);
    #: empty for an ordinary one-variant script
    members: tuple[str, ...] = ()
    #: its mid-run checkpoint (relative to the study), for scripts that take one
    checkpoint: str | None = None
    #: flags after ``args`` that are not part of the run's key (``--resume-from``...)
    extra_argv: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[str, int, str, str]:
        return (self.variant_id, self.seed, args_json(self.args), self.script_sha256)

    @property
    def label(self) -> str:
        return f"{self.variant_id} seed={self.seed}"

    @property
    def log_path(self) -> str:
        """``logs/<script stem>__seed<S>__<argshash8>.log``, relative to the study directory."""
        stem = Path(self.script).stem
        return f"logs/{stem}__seed{self.seed}__{args_hash8(self.args)}.log"

    @property
    def result_path(self) -> str:
        """``logs/<stem>__seed<S>__<args8>__<sha8>.result.json``: the run's ``--out``
        on the local backend, kept until its outcome is stored, so a run that finished
        while its orchestrator died is stored by the next one, not run again."""
        stem = Path(self.script).stem
        name = f"{stem}__seed{self.seed}__{args_hash8(self.args)}__{self.script_sha256[:8]}"
        return f"logs/{name}.result.json"

    def argv(self, out: str) -> list[str]:
        """Command-line arguments after the script path, per the script contract."""
        argv = ["--seed", str(self.seed)]
        for name in sorted(self.args):
            argv += [f"--{name.replace('_', '-')}", str(self.args[name])]
        return argv + list(self.extra_argv) + ["--out", out]


@dataclass(frozen=True)
class HeldRun:
    """A run another live orchestrator holds: which, and who (host, pid)."""

    spec: RunSpec
    host: str
    pid: int

    @property
    def holder(self) -> str:
        return f"pid {self.pid} on {self.host}"


@dataclass(frozen=True)
class RunSummary:
    """What one :func:`run_study` call did. ``all_ok`` decides the CLI's exit code.

    Counts, and the records of the runs that did not succeed (what the CLI prints):
    an ok run leaves no record here, so the driver's memory stays flat in the number
    of runs. Every outcome is in the store (:class:`~.store.ResultStore`), and each
    run's record reaches ``run_study(progress=...)`` as its "finished" event.
    """

    study_dir: str
    backend: str
    jobs: int
    planned: int  # runs in scope: selected variants x seeds
    ran: int  # finished by this call
    ran_ok: int  # of ``ran``, ok
    skipped_ok: int  # already ok in the store (resume)
    skipped_failed: tuple[
        RunRecord, ...
    ]  # failed before, not retried (no --retry-failed)
    #: of ``ran``, the ones that did not succeed, in finishing order
    ran_failed: tuple[RunRecord, ...] = ()
    #: held by another live orchestrator and not waited for (``--no-wait``)
    running_elsewhere: tuple[HeldRun, ...] = ()
    wall_time_s: float = 0.0
    #: held by another orchestrator when this call reached them, waited for: how
    #: many that orchestrator finished, how many of them ok, and the others' records
    finished_elsewhere: int = 0
    elsewhere_ok: int = 0
    elsewhere_failed: tuple[RunRecord, ...] = ()

    @property
    def failures(self) -> tuple[RunRecord, ...]:
        """Every run in scope that did not succeed: this call's, the ones another
        orchestrator finished while this one waited, and the skipped ones."""
        return self.ran_failed + self.elsewhere_failed + self.skipped_failed

    @property
    def ok_count(self) -> int:
        return self.skipped_ok + self.ran_ok + self.elsewhere_ok

    @property
    def all_ok(self) -> bool:
        """No run in scope failed. Runs still held by another live orchestrator
        (``--no-wait``) are not failures: that orchestrator reports them."""
        return not self.failures

"""Outcomes are data: one frozen record per (variant, seed, run args, script hash)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: every status a run can end in; "running" only while a worker holds it
STATUSES = ("ok", "failed", "diverged", "timeout", "crashed", "oom")


@dataclass(frozen=True)
class RunRecord:
    variant_id: str
    seed: int
    args: dict[str, Any]  # the run arguments beyond --seed (e.g. {"epochs": 1})
    script_sha256: str
    status: str  # one of STATUSES (or "running" while in flight)
    result: dict[str, Any] | None = None  # the script's JSON result, when it wrote one
    wall_time_s: float = 0.0
    log_path: str | None = None  # relative to the study directory
    exit_code: int | None = None
    error_tail: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    script: str | None = None  # the script's file name in the study directory
    attempts: int = 0  # how many times this run was started
    finished_at: float | None = None  # unix time the outcome was stored
    #: the run's peak memory (bytes, proportional set size of the run's processes)
    #: where the backend watched it; an ``oom`` run's is the peak that got it killed
    peak_memory_bytes: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

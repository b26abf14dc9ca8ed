"""Run a study's scripts (local warm-worker pool or Ray) into a SQLite result store.

Public API::

    from ablagen.orchestrate import RunOptions, ResultStore, run_study

    summary = run_study("generated/digits", RunOptions(jobs=2, seeds=(0, 1)))
    summary.all_ok, summary.failures          # RunSummary: outcomes are data

    with ResultStore("generated/digits", readonly=True) as store:
        store.records(status="ok")            # list[RunRecord], every stored row
        store.latest_ok()                     # current manifest: one per (variant, seed)

    study_status("generated/digits").to_json()   # what `ablagen status --json` prints
"""

from ablagen.orchestrate.backends import Backend, register_backend
from ablagen.orchestrate.options import (
    RunOptions,
    RunSpec,
    RunSummary,
    parse_ids,
    parse_seeds,
)
from ablagen.orchestrate.run_record import STATUSES, RunRecord
from ablagen.orchestrate.runner import Progress, run_study
from ablagen.orchestrate.status import StudyStatus, study_status
from ablagen.orchestrate.store import ResultStore

__all__ = [
    "STATUSES",
    "Backend",
    "Progress",
    "ResultStore",
    "RunOptions",
    "RunRecord",
    "RunSpec",
    "RunSummary",
    "StudyStatus",
    "parse_ids",
    "parse_seeds",
    "register_backend",
    "run_study",
    "study_status",
]

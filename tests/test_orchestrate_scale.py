"""The orchestrator's cost per run does not grow with the number of runs.

An in-process backend finishes every run at once (no processes), so what is left is
the runner and the store: the SQL statements each run costs are counted (SQLite's
trace callback) at three study sizes, and every statement is checked to find its
row through an index, not by scanning the table (which would make each run's cost
grow with the runs stored: n² in all).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from conftest_orchestrate import make_study

from ablagen.orchestrate import ResultStore, RunOptions, run_study
from ablagen.orchestrate import backends
from ablagen.orchestrate.outcome import RawOutcome

VARIANTS = ("baseline", "a:zero", "b:zero", "c:zero")


class InstantBackend:
    """Every submitted run is done at once: an ok result, or a failure for seed 1."""

    name = "instant"
    capacity = 2

    def __init__(self, study: Path, options, tmp: Path, scripts) -> None:
        self.done: list[RawOutcome] = []

    def describe(self) -> str:
        return "in-process, instant"

    def __enter__(self) -> InstantBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, spec) -> None:
        ok = spec.seed != 1
        result = {
            "schema": 1,
            "status": "ok",
            "seed": spec.seed,
            "final": {"val_acc": 0.5},
        }
        self.done.append(
            RawOutcome(
                spec=spec,
                exit_code=0 if ok else 1,
                wall_time_s=0.01,
                result_text=json.dumps(result) if ok else None,
                backend=self.name,
            )
        )

    def next_done(self, timeout: float | None = None) -> RawOutcome | None:
        return self.done.pop(0) if self.done else None

    def close(self) -> None:
        self.done.clear()


@pytest.fixture
def traced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every SQL statement the stores opened from now on execute."""
    statements: list[str] = []
    connect = ResultStore._connect

    def traced_connect(self) -> sqlite3.Connection:
        conn = connect(self)
        conn.set_trace_callback(statements.append)
        return conn

    monkeypatch.setattr(ResultStore, "_connect", traced_connect)
    monkeypatch.setitem(backends._BACKENDS, "instant", InstantBackend)
    return statements


def _run(tmp_path: Path, seeds: int, statements: list[str]) -> tuple[int, list]:
    study = make_study(
        tmp_path / f"study{seeds}",
        dict.fromkeys(VARIANTS, "ok"),
        config={"seeds": list(range(seeds))},
    )
    events = []
    statements.clear()
    summary = run_study(study, RunOptions(backend="instant"), progress=events.append)
    assert summary.ran == len(VARIANTS) * seeds
    finished = [e for e in events if e.event == "finished"]
    # the progress counts are right at every event (kept as runs come, not recounted)
    failed = 0
    for event in finished:
        failed += not event.record.ok
        assert event.failed == failed
    assert failed == len(VARIANTS)  # seed 1 of each variant
    return len(statements), list(statements)


def test_store_statements_per_run_are_constant_and_indexed(
    tmp_path: Path, traced: list[str]
) -> None:
    sizes = (2, 4, 8)  # seeds; x 4 variants = 8, 16, 32 runs
    counts = {}
    seen: list[str] = []
    for seeds in sizes:
        counts[seeds], statements = _run(tmp_path, seeds, traced)
        seen += statements
    per_run_small = (counts[4] - counts[2]) / (4 * len(VARIANTS) - 2 * len(VARIANTS))
    per_run_large = (counts[8] - counts[4]) / (8 * len(VARIANTS) - 4 * len(VARIANTS))
    assert per_run_small == per_run_large > 0
    assert per_run_large <= 12  # claim and finish: two transactions of a few statements

    conn = sqlite3.connect(tmp_path / "study8" / "results.sqlite")
    try:
        checked = 0
        for sql in dict.fromkeys(seen):
            if (
                not sql.lstrip()
                .upper()
                .startswith(("SELECT", "UPDATE", "DELETE", "INSERT"))
            ):
                continue
            if " runs" not in sql:
                continue
            plan = " | ".join(
                row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}")
            )
            assert "SCAN runs" not in plan, (sql, plan)
            checked += 1
        assert checked > 0
    finally:
        conn.close()


def test_status_of_many_seeds_counts_each_variants_cells(
    tmp_path: Path, traced: list[str]
) -> None:
    """Past MAX_SEED_COLUMNS seeds, the status table has one column of counts per
    variant (one column per seed is unreadable at 100 seeds, and slow to lay out)."""
    from rich.console import Console

    from ablagen.orchestrate import study_status
    from ablagen.orchestrate.display import MAX_SEED_COLUMNS, status_table

    seeds = MAX_SEED_COLUMNS + 2
    _run(tmp_path, seeds, traced)
    state = study_status(tmp_path / f"study{seeds}")
    console = Console(record=True, width=100)
    console.print(status_table(state))
    lines = console.export_text().splitlines()
    assert any("seeds" in line for line in lines[:4])
    assert not any("seed 0" in line for line in lines)
    for variant in VARIANTS:  # seed 1 failed, the rest ok (InstantBackend)
        (row,) = [line for line in lines if f" {variant} " in line]
        assert f"{seeds - 1} ok, 1 failed" in row, row


def test_driver_memory_is_flat_in_the_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the driver allocates between the 10th and the 99th percent of a study's
    runs, per run, is a small share of one ok run's record (every record kept was
    2.4 kB a run: 24 MB at 10,000 runs); the summary keeps the failures' records."""
    import tracemalloc

    monkeypatch.setitem(backends._BACKENDS, "instant", InstantBackend)
    seeds = 250  # x 4 variants: 1,000 runs, seed 1's failing
    study = make_study(
        tmp_path / "study",
        dict.fromkeys(VARIANTS, "ok"),
        config={"seeds": list(range(seeds))},
    )
    total = len(VARIANTS) * seeds
    marks = {total // 10: 0, total - total // 100: 0}

    def progress(event) -> None:
        if event.event == "finished" and event.done in marks:
            marks[event.done] = tracemalloc.get_traced_memory()[0]

    tracemalloc.start()
    try:
        summary = run_study(study, RunOptions(backend="instant"), progress=progress)
        # the reference: what one ok record, as read back from the store, holds
        with ResultStore(study, readonly=True) as store:
            before = tracemalloc.get_traced_memory()[0]
            kept = store.records(status="ok", variant_ids=["baseline"], seeds=[0])
            record_bytes = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(kept) == 1 and kept[0].ok
    first, last = sorted(marks)
    growth = (marks[last] - marks[first]) / (last - first)
    assert record_bytes > 500  # the reference measures a record (result and all)
    assert growth < record_bytes / 10, (growth, record_bytes)
    assert (summary.ran, summary.ran_ok) == (total, total - len(VARIANTS))
    assert sorted(r.variant_id for r in summary.ran_failed) == sorted(VARIANTS)
    assert summary.failures == summary.ran_failed


def test_summary_line_is_told_from_counts_and_the_failures() -> None:
    from rich.console import Console

    from ablagen.orchestrate import RunRecord, RunSummary
    from ablagen.orchestrate.display import print_summary

    def failed(variant: str, status: str) -> RunRecord:
        tail = f"[ablagen] {variant} went wrong"
        return RunRecord(
            variant, 0, {}, "0" * 64, status, error_tail=tail, log_path="x.log"
        )

    summary = RunSummary(
        "s", "local", 2, planned=10_007, ran=10_000, ran_ok=9_998,
        skipped_ok=3, skipped_failed=(failed("c:zero", "failed"),),
        ran_failed=(failed("a:zero", "timeout"), failed("b:zero", "failed")),
        wall_time_s=150.0, finished_elsewhere=3, elsewhere_ok=2,
        elsewhere_failed=(failed("d:zero", "diverged"),),
    )  # fmt: skip
    console = Console(record=True, width=200)
    print_summary(summary, console)
    assert console.export_text().splitlines() == [
        "9998 ok, 2 not ok (1 failed, 1 timeout), 3 already ok, 1 failed before (not"
        " retried), 3 run by another orchestrator (2 ok) in 150.0 s",
        "  timeout  a:zero seed=0: a:zero went wrong (log: x.log)",
        "  failed   b:zero seed=0: b:zero went wrong (log: x.log)",
        "  diverged d:zero seed=0: d:zero went wrong (log: x.log)",
        "  failed   c:zero seed=0: c:zero went wrong (log: x.log)",
        "rerun the failed runs with --retry-failed",
    ]
    assert summary.ok_count == 3 + 9_998 + 2 and not summary.all_ok

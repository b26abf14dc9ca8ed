"""Killing the orchestrator (kill -9, SIGTERM) loses nothing and leaves nothing behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest_orchestrate import counter, db_rows, make_study, session_pids

from ablagen.cli import main
from ablagen.core.studydir import RESULTS_DB

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        not Path("/proc/self/stat").exists(),
        reason="needs Linux /proc to find leftover processes",
    ),
]

VARIANTS = {"baseline": ("ok", 0.2), **{f"v{i}:zero": ("ok", 0.2) for i in range(9)}}


def wait_until(predicate, timeout: float = 30.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def status_count(study: Path, status: str) -> int:
    if not (study / RESULTS_DB).exists():
        return 0
    conn = sqlite3.connect(study / RESULTS_DB, timeout=10)
    try:
        query = "SELECT COUNT(*) FROM runs WHERE status = ?"
        return conn.execute(query, (status,)).fetchone()[0]
    except sqlite3.OperationalError:
        return 0  # the schema is being created
    finally:
        conn.close()


def ok_count(study: Path) -> int:
    return status_count(study, "ok")


def start_orchestrator(study: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "ablagen", "run", str(study), "--jobs", "2", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own session: every process it starts can be found
    )


def comparable(rows: list[tuple]) -> list[tuple]:
    """(variant, seed, status, metrics) without the wall time the scripts measure."""
    out = []
    for variant, seed, status, result in rows:
        data = json.loads(result) if result else None
        if data:
            data.pop("wall_time_s", None)
        out.append((variant, seed, status, data))
    return out


def test_kill_9_loses_nothing_and_reruns_nothing(tmp_path: Path) -> None:
    study = make_study(tmp_path / "study", VARIANTS)
    reference = tmp_path / "reference"
    shutil.copytree(study, reference)

    proc = start_orchestrator(study)
    assert wait_until(lambda: ok_count(study) >= 3), proc.communicate(timeout=5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # its workers notice and kill the runs in flight: nothing is left running
    assert wait_until(lambda: not session_pids(proc.pid), timeout=15), session_pids(
        proc.pid
    )
    rows = db_rows(study)
    survived = {(v, s) for v, s, status, _ in rows if status == "ok"}
    assert len(survived) >= 3
    # stale rows, reset by the rerun
    assert any(status == "running" for _, _, status, _ in rows)
    finished_before = counter(study)

    leftovers = Path(tempfile.gettempdir()).glob(f"ablagen-run-{proc.pid}-*")
    assert list(leftovers)  # kill -9 leaves its scratch dir behind ...
    # resets stale rows, runs the rest
    assert main(["run", str(study), "--jobs", "2", "--quiet"]) == 0
    leftovers = Path(tempfile.gettempdir()).glob(f"ablagen-run-{proc.pid}-*")
    assert not list(leftovers)  # ... which the next run sweeps away
    # never interrupted
    assert main(["run", str(reference), "--jobs", "2", "--quiet"]) == 0
    # none stuck in "running"
    assert all(status == "ok" for _, _, status, _ in db_rows(study))
    assert comparable(db_rows(study)) == comparable(db_rows(reference))
    finished = counter(study)
    for variant, seed in survived:  # stored before the kill: never run again
        assert finished[f"{variant} {seed}"] == 1
    # every run completed exactly once: one that finished but was not yet stored
    # when the orchestrator died is stored from its result file, not run again
    assert finished == {f"{variant} 0": 1 for variant in VARIANTS}
    assert sum(finished_before.values()) >= len(survived)


def test_sigterm_stops_runs_and_gives_their_rows_back(tmp_path: Path) -> None:
    study = make_study(
        tmp_path / "study",
        {"baseline": ("ok", 0.0), "slow:zero": ("hang", 0), "b:zero": ("hang", 0)},
    )
    proc = start_orchestrator(study)
    # both hangs are in flight: their rows are taken (a fixed sleep raced this)
    assert wait_until(
        lambda: ok_count(study) >= 1 and status_count(study, "running") == 2
    ), proc.communicate(timeout=5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and err.decode().startswith(
        "interrupted: finished runs are stored"
    )
    assert wait_until(lambda: not session_pids(proc.pid), timeout=15), session_pids(
        proc.pid
    )
    assert [(v, status) for v, _, status, _ in db_rows(study)] == [
        ("baseline", "ok")
    ]  # no "running" row

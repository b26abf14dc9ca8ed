"""Faults inside runs: each is recorded as data, the study goes on, a resume loses nothing.

Runs the real CLI in a subprocess (its stderr must hold no traceback) on a study
with one script per fault, then resumes it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest_orchestrate import counter, db_rows, make_study

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        not Path("/proc/self/smaps_rollup").exists(),
        reason="the memory watch reads /proc (Linux)",
    ),
]

SCRIPTS = {
    "baseline": ("ok", 0.2),
    "segv:zero": "segv",
    "abort:zero": "abort",
    "hang:zero": "hang",
    "raise:zero": "raise",
    "garbage:zero": "garbage",
    "oom:zero": "oom",
    "sigkill:zero": "sigkill",
    "ok:zero": ("ok", 0.2),
}
#: status, exit code, the reason's words (the last line of the stored error tail)
EXPECTED = {
    "baseline": ("ok", 0, None),
    "segv:zero": ("crashed", -11, "killed by SIGSEGV"),
    "abort:zero": ("crashed", -6, "killed by SIGABRT"),
    "hang:zero": ("timeout", -9, "timeout"),
    "raise:zero": ("failed", 1, "RuntimeError: boom in raise:zero"),
    "garbage:zero": ("failed", 0, "the script wrote no result JSON to --out"),
    "oom:zero": ("oom", -9, "out of memory: killed at"),
    "sigkill:zero": ("crashed", -9, "killed by SIGKILL (out of memory?)"),
    "ok:zero": ("ok", 0, None),
}
LIMIT_GB = 0.3


def ablagen(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ablagen", *argv],
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )


def status_json(study: Path) -> dict:
    proc = ablagen("status", str(study), "--json")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return json.loads(proc.stdout)


def test_script_faults_are_recorded(tmp_path: Path) -> None:
    study = make_study(tmp_path / "study", SCRIPTS)
    argv = ["run", str(study), "--jobs", "2", "--timeout", "5"]
    proc = ablagen(*argv, "--max-memory", str(LIMIT_GB))
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "at most 300 MB memory per run" in proc.stdout.splitlines()[0]
    state = status_json(study)
    got = {}
    for variant in state["variants"]:
        cell = variant["seeds"]["0"]
        got[variant["id"]] = (cell["status"], cell["exit_code"])
    assert got == {v: (status, code) for v, (status, code, _) in EXPECTED.items()}

    from ablagen.orchestrate import ResultStore

    with ResultStore(study, readonly=True) as store:
        records = {r.variant_id: r for r in store.records()}
    for variant, (_, _, words) in EXPECTED.items():
        if words is not None:
            assert words in records[variant].error_tail.splitlines()[-1], variant
    peak = records["oom:zero"].peak_memory_bytes
    # killed within a couple of 50 MB steps past the limit, never near the 4 GB it wanted
    assert LIMIT_GB * 1e9 < peak < LIMIT_GB * 1e9 + 300e6
    assert records["baseline"].peak_memory_bytes > 0  # every run is watched
    assert counter(study) == {
        "baseline 0": 1,
        "ok:zero 0": 1,
    }  # the rest never finished

    # resume: nothing is lost, nothing reruns
    before = db_rows(study)
    proc = ablagen(*argv, "--quiet")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "2 already ok, 7 failed before (not retried)" in proc.stdout
    assert db_rows(study) == before and counter(study) == {
        "baseline 0": 1,
        "ok:zero 0": 1,
    }
    # --retry-failed reruns only the failures; the ok results stay as they were
    proc = ablagen(*argv, "--quiet", "--retry-failed", "--only", "raise:zero")
    assert proc.returncode == 1 and "1 not ok (1 failed)" in proc.stdout
    ok_rows = [r for r in db_rows(study) if r[2] == "ok"]
    assert ok_rows == [r for r in before if r[2] == "ok"]


def test_bad_memory_limits_are_one_line(tmp_path: Path) -> None:
    study = make_study(tmp_path / "study", {"baseline": "ok"})
    for bad in ("-1", "nan"):
        proc = ablagen("run", str(study), f"--max-memory={bad}")
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1
        assert proc.stderr.startswith(f"error: --max-memory {bad}")
        assert "(0 turns the limit off)" in proc.stderr
    assert not (study / "results.sqlite").exists()


def test_no_memory_limit_says_so(tmp_path: Path) -> None:
    study = make_study(tmp_path / "study", {"baseline": "ok"})
    proc = ablagen("run", str(study), "--jobs", "1", "--max-memory", "0")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == (
        "running 1 run on local, 1 warm worker, no memory limit"
    )


def test_default_limit_is_a_share_of_the_machine_per_job() -> None:
    from ablagen.orchestrate.options import (
        MEMORY_SHARE,
        RunOptions,
        machine_memory_bytes,
    )

    total = machine_memory_bytes()
    assert total is not None and total > 0
    assert RunOptions().memory_limit_bytes(4) == int(total * MEMORY_SHARE / 4)
    assert RunOptions(max_memory_gb=1.5).memory_limit_bytes(4) == 1_500_000_000
    assert RunOptions(max_memory_gb=0).memory_limit_bytes(4) is None

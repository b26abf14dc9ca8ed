"""Killing the driver of a Ray study (issue #24): no actor or worker process of it
is left 2 s later, and resuming finishes the study with the same results."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest_orchestrate import db_rows, make_study

pytest.importorskip("ray")
pytestmark = [
    pytest.mark.ray,
    pytest.mark.slow,
    pytest.mark.timeout(600),
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc"),
]

#: Ray's own daemons, which outlive a SIGKILLed driver by 20 s and more (Ray's
#: behaviour, not ablagen's processes): listed, not counted
RAY_DAEMONS = (b"ray::DashboardAgent", b"ray::RuntimeEnvAgent")


def marked(mark: str) -> list[tuple[int, bytes]]:
    """Live processes whose environment carries ``mark`` (all the driver started)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if mark.encode() not in (entry / "environ").read_bytes():
                continue
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            found.append((int(entry.name), (entry / "cmdline").read_bytes()))
        except OSError:
            continue
    return found


def wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def ray_run(study: Path, mark: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "ablagen", "run", str(study), "--backend", "ray"]
        + ["--jobs", "2", "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=dict(os.environ, ABLAGEN_TEST_MARK=mark),
    )


def comparable(study: Path) -> list[tuple]:
    rows = []
    for variant, seed, status, result in db_rows(study):
        data = json.loads(result)
        data.pop("wall_time_s", None)
        rows.append((variant, seed, status, data))
    return rows


def test_killing_the_ray_driver_leaves_no_process_and_resumes(tmp_path: Path) -> None:
    # 1. runs that fork a child and a subprocess, then hang: the driver is SIGKILLed
    study = make_study(tmp_path / "hang", {"baseline": "family", "a:zero": "family"})
    mark = uuid.uuid4().hex
    proc = ray_run(study, mark)
    family = study / "counter.txt.family"
    assert wait_for(
        lambda: family.exists() and len(family.read_text().splitlines()) == 2, 300
    )
    assert len(marked(mark)) >= 10  # Ray, two slots, their workers, runs, children
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(2.0)
    left = marked(mark)
    ours = [cmd for _, cmd in left if not cmd.startswith(RAY_DAEMONS)]
    for pid, _ in left:  # tidy up (Ray's daemons included)
        os.kill(pid, signal.SIGKILL)
    assert ours == []  # no WarmSlot actor, idle worker, zygote, worker or run

    # 2. runs that finish: killed after the first is stored, resumed, compared
    variants = {
        "baseline": ("ok", 1.0),
        **{f"v{i}:zero": ("ok", 1.0) for i in range(5)},
    }
    study = make_study(tmp_path / "study", variants)
    reference = make_study(tmp_path / "reference", variants)
    mark = uuid.uuid4().hex
    proc = ray_run(study, mark)
    def one_stored() -> bool:
        try:  # the file exists a moment before its table does
            return any(status == "ok" for *_, status, _ in db_rows(study))
        except sqlite3.OperationalError:
            return False

    assert wait_for(lambda: (study / "results.sqlite").exists() and one_stored(), 300)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert wait_for(
        lambda: not [c for _, c in marked(mark) if not c.startswith(RAY_DAEMONS)], 2.0
    )
    for pid, _ in marked(mark):
        os.kill(pid, signal.SIGKILL)
    for target in (study, reference):
        done = ray_run(target, uuid.uuid4().hex)
        assert done.wait(timeout=300) == 0
    assert comparable(study) == comparable(reference)
    assert all(status == "ok" for _, _, status, _ in comparable(study))

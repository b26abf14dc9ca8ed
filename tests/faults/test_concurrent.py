"""Two orchestrators on one study: each run exactly once, both exit 0; a waiting
one reports the other's outcomes and takes over the runs of one that dies."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest_orchestrate import counter, db_rows, make_study

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]


def start(study: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ablagen", "run", str(study), "--jobs", "1", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for(predicate, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def running(study: Path) -> int:
    try:
        return sum(1 for *_, status, _ in db_rows(study) if status == "running")
    except Exception:  # noqa: BLE001 - the store is being created
        return 0


def test_two_orchestrators_share_the_runs(tmp_path: Path) -> None:
    variants = {
        "baseline": ("ok", 0.3),
        **{f"v{i}:zero": ("ok", 0.3) for i in range(5)},
    }
    study = make_study(tmp_path / "study", variants)
    first, second = start(study), start(study)
    outs = [p.communicate(timeout=150) for p in (first, second)]
    for proc, (out, err) in zip((first, second), outs, strict=True):
        assert proc.returncode == 0, out + err
        assert "Traceback" not in err
    assert counter(study) == {f"{v} 0": 1 for v in variants}  # every run exactly once
    assert sorted(v for v, *_ in db_rows(study)) == sorted(variants)
    assert all(status == "ok" for _, _, status, _ in db_rows(study))
    # between them, the summaries account for every run once
    ran = [int(out.strip().splitlines()[-1].split()[0]) for out, _ in outs]
    assert sum(ran) == len(variants)


def test_no_wait_names_the_holder_and_exits_0(tmp_path: Path) -> None:
    study = make_study(tmp_path / "study", {"baseline": ("ok", 4.0)})
    first = start(study)
    assert wait_for(lambda: running(study) == 1)
    proc = subprocess.run(
        [sys.executable, "-m", "ablagen", "run", str(study), "--no-wait"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-2].startswith("0 ok, 1 still running in another orchestrator in ")
    assert lines[-1] == (
        f"  pid {first.pid} on {socket.gethostname()} holds baseline seed=0;"
        f" `ablagen status {study}` shows their outcome"
    )
    assert first.wait(timeout=60) == 0
    assert counter(study) == {"baseline 0": 1}


def test_a_waiting_orchestrator_takes_over_a_dead_ones_runs(tmp_path: Path) -> None:
    study = make_study(
        tmp_path / "study", {"baseline": ("ok", 8.0), "a:zero": ("ok", 1.0)}
    )
    first = start(study)
    assert wait_for(lambda: running(study) == 1)
    second = start(study, "--jobs", "2")  # claims a:zero, waits for baseline
    assert wait_for(lambda: running(study) == 2)
    time.sleep(0.5)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, out + err
    assert "waiting for baseline seed=0: another orchestrator is running it" in out
    assert all(status == "ok" for _, _, status, _ in db_rows(study))
    assert counter(study)["a:zero 0"] == 1 and counter(study)["baseline 0"] == 1

"""A checkpoint has one user at a time (issue #24): a run's process holds a POSIX
lock (``lockf``) on ``FILE.lock`` from before its script starts until it ends; a
second claimant waits."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest_orchestrate import db_rows, write_manifest

from ablagen.cli import main
from ablagen.orchestrate import checkpoints
from ablagen.orchestrate.options import RunOptions
from ablagen.orchestrate.runner import plan_runs
from ablagen.core.studydir import load_manifest

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(sys.platform == "win32", reason="lockf is POSIX"),
]

#: declares --resume-from (so it gets a checkpoint), says when it started and
#: whether its checkpoint's lock was held while it ran
SCRIPT = """
import argparse, fcntl, json, os, time

parser = argparse.ArgumentParser()
for flag in ("--epochs", "--seed"):
    parser.add_argument(flag, type=int, default=0)
for flag in ("--device", "--out", "--resume-from", "--checkpoint-every"):
    parser.add_argument(flag, default=None)
args = parser.parse_args()
started = time.time()
pid = os.fork()  # a POSIX lock is its process's: another process asks for it
if pid == 0:
    fd = os.open(args.resume_from + ".lock", os.O_WRONLY)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os._exit(0)
    except OSError:
        os._exit(1)
held = os.waitpid(pid, 0)[1] != 0  # by this run's own process
result = {"schema": 1, "status": "ok", "final": {"val_acc": 1.0}, "history": [],
          "started": started, "held": held, "error": None}
with open(args.out, "w") as fh:
    json.dump(result, fh)
"""

HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)
fcntl.lockf(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
print(time.time(), flush=True)
"""


@pytest.fixture(autouse=True)
def light_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ablagen.orchestrate.local.BASE_PRELOAD", ())


def test_a_run_waits_for_the_live_holder_of_its_checkpoint(tmp_path: Path) -> None:
    study = tmp_path / "study"
    study.mkdir()
    (study / "baseline.py").write_text(SCRIPT)
    write_manifest(study, ["baseline"])
    (spec,) = plan_runs(study, load_manifest(study), RunOptions())
    assert spec.checkpoint is not None
    lock = study / checkpoints.lock_path(spec.checkpoint)
    lock.parent.mkdir(parents=True)
    # an orphan of an earlier orchestrator, still alive for 1.5 s
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock), "1.5"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    assert main(["run", str(study), "--quiet"]) == 0
    released = float(holder.stdout.readline())
    holder.wait()
    ((_, _, status, result),) = db_rows(study)
    data = json.loads(result)
    assert status == "ok" and data["held"]  # the run held the lock while it ran
    assert data["started"] >= released  # ... and started only once the orphan was gone
    log = (study / spec.log_path).read_text()
    assert (
        f"waiting for the process that holds {checkpoints.lock_path(spec.checkpoint)}"
        in log
    )
    assert not lock.exists()  # an ok run's checkpoint files go, the lock with them


def test_an_unheld_lock_costs_no_wait(tmp_path: Path) -> None:
    study = tmp_path / "study"
    study.mkdir()
    (study / "baseline.py").write_text(SCRIPT)
    write_manifest(study, ["baseline"])
    began = time.time()
    assert main(["run", str(study), "--quiet"]) == 0
    ((_, _, status, result),) = db_rows(study)
    assert status == "ok" and json.loads(result)["held"]
    assert json.loads(result)["started"] >= began
    assert "waiting" not in next((study / "logs").glob("*.log")).read_text()

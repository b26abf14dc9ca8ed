"""A study killed mid-run (SIGKILL to the orchestrator, its workers and the run) and
rerun: the interrupted run resumes from its mid-run checkpoint, ``ablagen status``
showed it resumable before the rerun, and every run's metrics equal those of a study
never interrupted, bit for bit (CPU)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest_orchestrate import db_rows
from faults.test_orchestrator_killed import session_pids, wait_until
from scriptutil import generate

from ablagen.cli import main
from ablagen.generate.context import TrainConfig

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        not Path("/proc/self/stat").exists(),
        reason="needs Linux /proc to find the processes to kill",
    ),
]

#: dropout draws from the global RNG: a resume must restore it too
MODEL = """
import torch
from torch import nn

INPUT_SHAPE = (32,)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(32, 256)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(0.2)
        self.fc2 = nn.Linear(256, 4)

    def forward(self, x):
        return self.fc2(self.drop(self.act(self.fc1(x))))
"""
TIMING = ("wall_time_s", "samples_per_s", "peak_memory_bytes")
RUN = ["--jobs", "1", "--seeds", "0,1", "--quiet"]


def _study(tmp_path: Path, epochs: int = 4) -> Path:
    model = tmp_path / "net.py"
    model.write_text(textwrap.dedent(MODEL))
    train = TrainConfig(epochs=epochs, batch_size=16, scheduler="cosine")
    out = tmp_path / "study"
    return generate(model, out, train=train, dataset="synthetic", components=("fc1",))


def _metrics(study: Path) -> list[tuple]:
    rows = []
    for variant, seed, status, result in db_rows(study):
        data = json.loads(result)
        for key in TIMING:
            data.pop(key)
        rows.append((variant, seed, status, data))
    return rows


def _first_note(study: Path) -> dict | None:
    for note in (study / "runs").glob("*/*.pt.json"):
        try:
            return {"path": str(note), **json.loads(note.read_text())}
        except (OSError, ValueError):
            return None  # being replaced
    return None


def test_killed_study_resumes_mid_run_bit_identical(tmp_path, capsys):
    # an epoch takes milliseconds: 40 of them leave the kill time to land mid-run
    study = _study(tmp_path, epochs=40)
    reference = tmp_path / "reference"
    shutil.copytree(study, reference)

    proc = subprocess.Popen(
        [sys.executable, "-m", "ablagen", "run", str(study), *RUN],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert wait_until(lambda: _first_note(study) is not None, timeout=120)
    for pid in session_pids(proc.pid):  # the orchestrator, its workers, the run
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    assert wait_until(lambda: not session_pids(proc.pid), timeout=15)
    note = _first_note(study)
    assert note is not None and 1 <= note["epoch"] < 40

    assert main(["status", str(study), "--seeds", "0,1", "--json"]) == 0
    state = json.loads(capsys.readouterr().out)
    variant = next(v for v in state["variants"] if v["id"] == note["variant"])
    cell = variant["seeds"][str(note["seed"])]
    assert cell["status"] == "pending" and cell["resumable_epoch"] == note["epoch"]
    assert state["checkpoints"]["files"] == 1 and state["checkpoints"]["bytes"] > 0
    assert main(["status", str(study), "--seeds", "0,1"]) == 0
    table = capsys.readouterr().out
    assert f"resumable at epoch {note['epoch']}" in table
    assert "checkpoints: 1 in" in table and "1 resumable run" in table

    env = {"OMP_NUM_THREADS": "1"}  # the same threads as the killed study had
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        assert main(["run", str(study), *RUN]) == 0
        assert main(["run", str(reference), *RUN]) == 0
    logs = "".join(p.read_text() for p in (study / "logs").glob("*.log"))
    assert f"resumed {note['variant']} after epoch {note['epoch']}" in logs
    assert "resumed" not in "".join(
        p.read_text() for p in (reference / "logs").glob("*.log")
    )
    resumed, never_stopped = _metrics(study), _metrics(reference)
    assert len(resumed) == 4 and all(row[2] == "ok" for row in resumed)
    assert resumed == never_stopped  # floats compared exactly
    assert not list((study / "runs").glob("*/*.pt*"))  # finished: deleted


def test_keep_checkpoints_and_a_foreign_checkpoint_needs_restart(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    study = _study(tmp_path)
    run = ["run", str(study), "--jobs", "1", "--seeds", "0", "--quiet", "--only"]
    assert main([*run, "fc1:zero", "--keep-checkpoints"]) == 0
    kept = list((study / "runs" / "fc1__zero").glob("seed0__*.pt"))
    assert len(kept) == 1
    assert json.loads(Path(f"{kept[0]}.json").read_text()) == {
        "epoch": 4,
        "variant": "fc1:zero",
        "seed": 0,
    }
    # plant it where the baseline's run looks: the baseline refuses it, one line
    sha8 = json.loads((study / "manifest.json").read_text())["variants"][0]["sha256"]
    args8 = kept[0].name.split("__")[1]
    planted = study / "runs" / "baseline" / f"seed0__{args8}__{sha8[:8]}.pt"
    planted.parent.mkdir()
    shutil.copy(kept[0], planted)
    assert main([*run, "baseline"]) == 1
    rows = {v: (status, result) for v, _, status, result in db_rows(study)}
    assert rows["baseline"][0] == "failed"
    assert json.loads(rows["baseline"][1])["status"] == "refused"
    tail = _tail(study, "baseline")
    assert "baseline:" in tail and "ablagen run --retry-failed --restart" in tail
    # --restart drops it and trains from epoch 1; finished, nothing is left behind
    assert main([*run, "baseline", "--retry-failed", "--restart"]) == 0
    assert not planted.exists() and kept[0].exists()  # --keep-checkpoints kept that


def _tail(study: Path, variant: str) -> str:
    from ablagen.orchestrate.store import ResultStore

    with ResultStore(study, readonly=True) as store:
        return next(r.error_tail for r in store.records() if r.variant_id == variant)

"""Mid-run checkpoints (--resume-from FILE, --checkpoint-every N): a run killed with
SIGKILL mid-epoch resumes from its last finished epoch and ends bit-identical to a run
never stopped (CPU); another run's checkpoint is refused (exit 2) until --restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ablagen.generate.context import TrainConfig
from scriptutil import generate

#: slow enough per epoch that a kill lands mid-run; dropout and noise use RNG streams
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

LOADERS = """

from torch.utils.data import DataLoader, TensorDataset


def build_datasets():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 32, generator=g)
    y = (x[:, :4].argmax(dim=1))
    return TensorDataset(x[:1792], y[:1792]), TensorDataset(x[1792:], y[1792:])
"""


def _study(tmp_path: Path, streamed: bool, **train) -> Path:
    model = tmp_path / "net.py"
    model.write_text(
        textwrap.dedent(MODEL) + (textwrap.dedent(LOADERS) if streamed else "")
    )
    config = TrainConfig(epochs=4, batch_size=16, scheduler="cosine", **train)
    kwargs = {} if streamed else {"dataset": "synthetic"}
    return generate(model, tmp_path / "s", train=config, **kwargs)


def _run(script: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, script.name, *args],
        cwd=script.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _kill_after_first_checkpoint(script: Path, ckpt: Path, *args: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, script.name, "--resume-from", ckpt.name, *args],
        cwd=script.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)  # mid-epoch 2: the checkpoint holds epoch 1
    proc.wait()
    assert ckpt.exists() and proc.returncode == -signal.SIGKILL


@pytest.mark.slow
@pytest.mark.parametrize(
    "streamed, train, workers",
    [
        (False, {"sigma": 0.01}, None),
        (True, {}, 0),
        (True, {}, 2),  # DataLoader workers: seeded from the checkpointed generator
        (False, {"sigma": 0.01, "amp": "bf16", "grad_accum": 2}, None),
        (False, {"sigma": 0.01, "noise_schedule": "adaptive"}, None),
    ],
    ids=[
        "in-memory-noisy",
        "streamed",
        "streamed-2-workers",
        "bf16-grad-accum",
        "adaptive-noise",
    ],
)
def test_sigkill_then_resume_is_bit_identical(tmp_path, streamed, train, workers):
    study = _study(tmp_path, streamed, **train)
    script = study / "baseline.py"
    extra = ["--num-workers", str(workers)] if streamed else []
    assert _run(script, "--out", "full.json", *extra).returncode == 0
    ckpt = study / "run.ckpt"
    _kill_after_first_checkpoint(script, ckpt, *extra)
    resumed = _run(script, "--out", "resumed.json", "--resume-from", ckpt.name, *extra)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed baseline after epoch" in resumed.stdout
    full = json.loads((study / "full.json").read_text())
    again = json.loads((study / "resumed.json").read_text())
    assert again["final"] == full["final"]  # bit for bit: floats compared exactly
    assert [h["val_loss"] for h in again["history"]] == [
        h["val_loss"] for h in full["history"]
    ]
    # a finished run keeps its checkpoint: run again, it resumes after its last epoch
    rerun = _run(script, "--out", "rerun.json", "--resume-from", ckpt.name, *extra)
    assert rerun.returncode == 0 and f"after epoch {len(full['history'])}" in rerun.stdout
    assert json.loads((study / "rerun.json").read_text())["history"] == full["history"]


def test_another_runs_checkpoint_is_refused_until_restart(tmp_path):
    study = _study(tmp_path, streamed=False)
    ckpt = study / "run.ckpt"
    variant = sorted(p for p in study.glob("*.py") if p.name != "baseline.py")[0]
    args = ["--epochs", "1", "--checkpoint-every", "1"]
    assert _run(variant, "--resume-from", ckpt.name, *args).returncode == 0
    assert ckpt.exists()
    refused = _run(study / "baseline.py", "--resume-from", ckpt.name, "--out", "r.json")
    assert refused.returncode == 2
    result = json.loads((study / "r.json").read_text())
    assert result["status"] == "refused" and "baseline:" in result["error"]
    assert "--restart" in result["error"] and "Traceback" not in refused.stderr
    restarted = _run(
        study / "baseline.py", "--resume-from", ckpt.name, "--restart", "--epochs", "1"
    )
    assert restarted.returncode == 0 and "resumed" not in restarted.stdout


def test_negative_checkpoint_every_is_one_line(tmp_path):
    study = _study(tmp_path, streamed=False)
    bad = _run(study / "baseline.py", "--checkpoint-every", "-1")
    assert bad.returncode == 2
    assert "--checkpoint-every must be 0" in bad.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_a_checkpoint_in_use_is_refused_in_one_line_and_left_intact(tmp_path):
    """One run owns its --resume-from file (lockf on FILE.lock while it lives): a
    second script process on the same file is refused (exit 2, one line) and neither
    reads nor touches it; the lock goes with the first process."""
    import fcntl

    import torch

    study = _study(tmp_path, streamed=False)
    script, ckpt = study / "baseline.py", study / "run.ckpt"
    first = subprocess.Popen(  # many epochs: alive until killed below
        [sys.executable, script.name, "--resume-from", ckpt.name, "--epochs", "999"],
        cwd=study,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while (
            not ckpt.exists() and first.poll() is None and time.monotonic() < deadline
        ):
            time.sleep(0.01)
        assert ckpt.exists() and first.poll() is None
        second = _run(script, "--resume-from", ckpt.name, "--out", "second.json")
        assert first.poll() is None  # still running: the second met a live owner
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2
    assert second.stderr.strip().splitlines() == [
        f"error: baseline: {ckpt.name} is in use by another run; let it end first"
    ]
    assert "resumed" not in second.stdout
    result = json.loads((study / "second.json").read_text())
    assert result["status"] == "refused" and "in use by another run" in result["error"]
    state = torch.load(ckpt, weights_only=True)["baseline"]  # whole: saved atomically
    note = json.loads((study / f"{ckpt.name}.json").read_text())
    assert state["run"]["epoch"] >= note["epoch"] >= 1  # the note follows the file
    with open(study / f"{ckpt.name}.lock", "a") as lock:  # gone with the first process
        fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)

"""generated/digits_cnn is the committed study of examples/digits_cnn.py: never stale."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from ablagen.core.studydir import load_manifest
from conftest import ROOT

STUDY = ROOT / "generated" / "digits_cnn"


def test_regenerating_with_the_recorded_command_gives_identical_bytes(
    tmp_path, monkeypatch
):
    """Run the docstring's command in a copy of the same layout: every byte must match."""
    from ablagen.cli import main

    (tmp_path / "examples").mkdir()
    shutil.copy(ROOT / "examples" / "digits_cnn.py", tmp_path / "examples")
    target = tmp_path / "generated" / "digits_cnn"
    target.mkdir(parents=True)
    command = load_manifest(STUDY).config["command"]
    words = shlex.split(command)
    assert words[:2] == ["ablagen", "generate"]
    monkeypatch.chdir(target)
    assert main(words[1:]) == 0
    committed = sorted(
        p.name
        for p in STUDY.iterdir()
        if p.suffix in (".py", ".json") and p.name != "results.json"
    )
    fresh = sorted(p.name for p in target.iterdir())
    assert fresh == committed
    for name in committed:
        assert (target / name).read_bytes() == (
            STUDY / name
        ).read_bytes(), f"{name} is stale: regenerate it"


def test_committed_example_uses_a_scheduler_and_early_stopping():
    train = load_manifest(STUDY).config["train"]
    assert train["scheduler"] != "none" and train["patience"] >= 1


@pytest.mark.slow
def test_every_committed_script_runs_one_epoch(tmp_path):
    """Each script runs with plain python, ablagen unimportable."""
    manifest = load_manifest(STUDY)

    blocker = tmp_path / "no-ablagen" / "ablagen"  # shadows the installed package
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text(
        "raise ImportError('scripts never import ablagen')"
    )

    def run(entry):
        out = tmp_path / f"{entry.script}.json"
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(blocker.parent))
        proc = subprocess.run(
            [sys.executable, entry.script, "--epochs", "1", "--seed", "0", "--out", str(out)],
            cwd=STUDY, capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
        return entry, proc, out

    with ThreadPoolExecutor(max_workers=2) as pool:
        for entry, proc, out in pool.map(run, manifest.variants):
            assert proc.returncode == 0, proc.stderr[-2000:]
            result = json.loads(out.read_text())
            assert result["status"] == "ok" and result["variant"] == entry.id
            assert len(result["history"]) == 1 and 0 <= result["final"]["val_acc"] <= 1
            assert result["params_effective"] <= result["params_total"]


@pytest.mark.slow
def test_same_arguments_give_the_same_metrics(tmp_path):
    def run(name):
        out = tmp_path / name
        subprocess.run(
            [
                sys.executable,
                "baseline.py",
                "--epochs",
                "2",
                "--seed",
                "3",
                "--out",
                str(out),
            ],
            cwd=STUDY,
            check=True,
            capture_output=True,
        )
        result = json.loads(out.read_text())
        for timing in ("wall_time_s", "samples_per_s", "peak_memory_bytes"):
            result.pop(timing)
        return result

    first, second = run("a.json"), run("b.json")
    assert first == second and first["history"][1]["val_loss"] > 0

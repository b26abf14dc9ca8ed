"""`ablagen run` / `ablagen status`: exit codes, output, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest_orchestrate import make_study

from ablagen.cli import main
from ablagen.core.studydir import MANIFEST

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def study(tmp_path: Path) -> Path:
    return make_study(tmp_path / "study", {"baseline": "ok", "a:zero": "raise"})


def test_run_then_status(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(study), "--jobs", "2"]) == 1  # a run failed
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("running 2 runs on local, 2 warm workers x 1 thread, at most ")
    assert out[0].endswith(" memory per run")
    finished = sorted(line for line in out if line.startswith("[") and "/2]" in line)
    assert len(finished) == 2
    assert any(
        " ok " in line and "baseline seed=0" in line and "val_acc=" in line
        for line in finished
    )
    assert any(
        "failed" in line
        and "RuntimeError: boom in a:zero" in line
        and "logs/a__zero__seed0__" in line
        for line in finished
    )
    assert any(line.startswith("1 ok, 1 not ok (1 failed)") for line in out)

    assert main(["status", str(study), "--json"]) == 0
    text = capsys.readouterr().out
    state = json.loads(text)
    # stable: sorted keys
    assert text == json.dumps(state, indent=2, sort_keys=True) + "\n"
    assert state["schema"] == 1 and state["seeds"] == [0] and state["total"] == 2
    assert state["counts"] == {
        "ok": 1,
        "failed": 1,
        "diverged": 0,
        "timeout": 0,
        "crashed": 0,
        "oom": 0,
        "running": 0,
        "pending": 0,
    }
    assert state["left"] == [] and [c["variant"] for c in state["not_ok"]] == ["a:zero"]
    cell = state["variants"][0]["seeds"]["0"]
    assert state["variants"][0]["id"] == "baseline" and cell["status"] == "ok"
    assert cell["args"] == {"device": "cpu"} and cell["final"][
        "val_acc"
    ] == pytest.approx(0.5082)

    assert main(["status", str(study), "--seeds", "0,1", "--json"]) == 0
    state = json.loads(capsys.readouterr().out)
    assert state["left"] == [
        {"seed": 1, "variant": "baseline"},
        {"seed": 1, "variant": "a:zero"},
    ]
    assert [v["status"] for v in state["variants"]] == ["pending", "failed"]

    assert main(["status", str(study), "--seeds", "0,1"]) == 0
    table = capsys.readouterr().out
    assert "baseline" in table and "a:zero" in table and "left to run: 2" in table

    # resume: only the missing seed of baseline runs; the failure is reported, not rerun
    assert (
        main(["run", str(study), "--only", "baseline", "--seeds", "0,1", "--quiet"])
        == 0
    )
    out = capsys.readouterr().out
    assert out.strip().startswith("1 ok, 1 already ok in ")
    assert main(["run", str(study), "--quiet"]) == 1
    assert "1 failed before (not retried)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "{tmp}/nope"], "does not exist"),
        (["run", "{tmp}"], "is not an ablagen study"),
        (["run", "{study}", "--only", "baseline,nope"], "unknown variant id 'nope'"),
        (["run", "{study}", "--seeds", "a,b"], "bad --seeds 'a,b'"),
        (["run", "{study}", "--seeds=-1"], "bad --seeds '-1'"),
        (["run", "{study}", "--seeds", "0,-2"], "bad --seeds '0,-2'"),
        (["run", "{study}", "--jobs", "0"], "--jobs 0 is not a positive number"),
        (["run", "{study}", "--backend", "slurm"], "unknown backend 'slurm'"),
        (["run", "{study}", "--device", "tpu"], "unknown device 'tpu'"),
        (["run", "{study}", "--ray-address", "auto"], "add --backend ray"),
        (["status", "{tmp}/nope"], "does not exist"),
        (["status", "{study}", "--seeds", "x"], "bad --seeds 'x'"),
        (["run", "{corrupt}"], "is corrupt"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str],
    message: str,
    study: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / MANIFEST).write_text("{ not json")
    argv = [a.format(tmp=tmp_path, study=study, corrupt=corrupt) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert "Traceback" not in err


def test_ray_not_installed(
    study: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # `import ray` now fails as if it were missing
    monkeypatch.setitem(sys.modules, "ray", None)
    assert main(["run", str(study), "--backend", "ray"]) == 2
    assert (
        capsys.readouterr().err
        == "error: ray is not installed; install it with `pip install 'ablagen[ray]'`\n"
    )
    assert not (study / "results.sqlite").exists()  # nothing touched


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ablagen", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_subprocess_errors_have_no_traceback(tmp_path: Path) -> None:
    proc = run_cli("run", str(tmp_path / "missing"))
    assert proc.returncode == 2 and proc.stdout == ""
    assert (
        "does not exist" in proc.stderr
        and proc.stderr.count("\n") == 1
        and "Traceback" not in proc.stderr
    )


def test_unreachable_ray_address(study: Path) -> None:
    pytest.importorskip("ray")
    proc = run_cli(
        "run", str(study), "--backend", "ray", "--ray-address", "127.0.0.1:9"
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: cannot reach the Ray cluster at 127.0.0.1:9")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr

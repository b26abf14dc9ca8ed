"""GPU placement of the local backend, tested on CPU with a faked set of GPUs.

``placement.visible_gpus`` is replaced by a list of ``CUDA_VISIBLE_DEVICES`` names;
each run of the study records the ``CUDA_VISIBLE_DEVICES`` it got and when it ran,
so the test checks which GPU every run saw and that no GPU held more than
``--runs-per-gpu`` runs at once.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import EXAMPLES
from conftest_orchestrate import write_manifest

from ablagen.cli import main
from ablagen.core.errors import ConfigError
from ablagen.orchestrate import RunOptions, run_study
from ablagen.orchestrate import placement
from ablagen.orchestrate.store import ResultStore

TABULAR = EXAMPLES / "tabular_mlp.py"  # a small model file for study and sweep

#: a contract-following script that reports the GPU it was shown and its interval
SCRIPT = """
import argparse, json, os, time

parser = argparse.ArgumentParser()
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--device", default="cpu")
parser.add_argument("--out", default=None)
args = parser.parse_args()
start = time.time()
time.sleep(0.4)
result = {
    "schema": 1, "variant": VARIANT, "status": "ok", "seed": args.seed,
    "device": args.device, "final": {"val_acc": 0.5},
    "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    "interval": [start, time.time()],
}
with open(args.out, "w") as fh:
    json.dump(result, fh)
"""


def _study(tmp_path: Path, n: int) -> Path:
    study = tmp_path / "study"
    study.mkdir()
    ids = ["baseline", *(f"v{i}:zero" for i in range(n - 1))]
    for vid in ids:
        name = vid.replace(":", "__")
        (study / f"{name}.py").write_text(f"VARIANT = {vid!r}\n" + SCRIPT)
    write_manifest(study, ids)
    return study


def _fake(monkeypatch: pytest.MonkeyPatch, names: list[str]) -> None:
    monkeypatch.setattr(placement, "visible_gpus", lambda: list(names))


def _runs(study: Path) -> list[dict]:
    with ResultStore(study, readonly=True) as store:
        return [r.result for r in store.records(status="ok")]


def _most_at_once(intervals: list[list[float]]) -> int:
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    most = now = 0
    for _, step in events:  # an end sorts before a start at the same instant
        now += step
        most = max(most, now)
    return most


@pytest.mark.timeout(120)
def test_runs_spread_over_the_chosen_gpus_at_most_k_each(tmp_path, monkeypatch):
    _fake(monkeypatch, ["GPU-a", "GPU-b", "GPU-c"])  # three GPUs seen
    study = _study(tmp_path, 8)
    options = RunOptions(device="cuda", gpus=(0, 2), runs_per_gpu=2, seeds=(0,))
    summary = run_study(study, options)
    assert summary.all_ok and summary.jobs == 4  # 2 GPUs x 2 runs
    runs = _runs(study)
    assert len(runs) == 8 and all(r["device"] == "cuda" for r in runs)
    seen = {r["cuda_visible_devices"] for r in runs}
    assert seen == {"GPU-a", "GPU-c"}  # GPU 1 ("GPU-b") was not chosen
    for name in seen:
        spans = [r["interval"] for r in runs if r["cuda_visible_devices"] == name]
        assert _most_at_once(spans) <= 2


@pytest.mark.timeout(120)
def test_default_is_every_visible_gpu_one_run_each(tmp_path, monkeypatch):
    _fake(monkeypatch, ["0", "1"])
    study = _study(tmp_path, 4)
    summary = run_study(study, RunOptions(device="cuda", jobs=8, seeds=(0,)))
    assert summary.all_ok and summary.jobs == 2  # --jobs is capped at GPUs x K
    runs = _runs(study)
    assert {r["cuda_visible_devices"] for r in runs} == {"0", "1"}
    for name in ("0", "1"):
        spans = [r["interval"] for r in runs if r["cuda_visible_devices"] == name]
        assert _most_at_once(spans) == 1


@pytest.mark.timeout(60)
def test_cpu_runs_get_no_gpu_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    study = _study(tmp_path, 1)
    assert run_study(study, RunOptions(jobs=1)).all_ok
    assert _runs(study)[0]["cuda_visible_devices"] is None


def test_visible_gpus_follows_an_outer_cuda_visible_devices(monkeypatch):
    monkeypatch.setattr(placement, "_cuda_device_count", lambda: 3)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5, 7,GPU-1234")
    assert placement.visible_gpus() == ["5", "7", "GPU-1234"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,,7")  # CUDA stops at the empty one
    assert placement.visible_gpus() == ["5"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert placement.visible_gpus() == ["0", "1", "2"]
    monkeypatch.setattr(placement, "_cuda_device_count", lambda: 0)
    assert placement.visible_gpus() == []


def test_placement_maps_indices_to_the_outer_names():
    where = placement.place("cuda", (1,), 3, visible=lambda: ["5", "7"])
    assert where is not None and where.slots == 3
    assert [where.env(i) for i in range(3)] == [{"CUDA_VISIBLE_DEVICES": "7"}] * 3
    assert placement.place("cpu", None, 1, visible=lambda: ["0"]) is None


BAD_PLACEMENT = [
    (["--gpus", "0"], "--gpus 0 needs CUDA runs; add --device cuda"),
    (["--device", "cuda", "--gpus", "0,4"], "GPU 4 does not exist"),
    (["--device", "cuda", "--runs-per-gpu", "0"], "--runs-per-gpu 0 is not"),
    (["--checkpoint-every", "-1"], "--checkpoint-every -1 is negative"),
    (["--device", "cuda", "--gpus", "0,x"], "bad --gpus '0,x'"),
    (["--device", "cuda", "--gpus", "1,1"], "a GPU is listed twice"),
    (["--gpus-per-run", "1.5", "--backend", "ray"], "a fraction above 1 GPU"),
    (["--device", "cuda", "--backend", "ray"], "at --gpus-per-run 0 Ray places no run"),
]


@pytest.mark.parametrize("argv, says", BAD_PLACEMENT)
def test_bad_placement_input_is_one_line_exit_2(
    tmp_path, monkeypatch, capsys, argv, says
):
    _fake(monkeypatch, ["0", "1"])
    study = _study(tmp_path, 1)
    assert main(["run", str(study), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err, err
    assert not (study / "logs").exists()  # nothing ran


def _refused(argv: list[str], out: Path, capsys) -> str:
    """``argv`` exits 2 with one line, no traceback and nothing written; the line."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not out.exists()  # refused before generating anything
    return err


@pytest.mark.parametrize("command", ["study", "sweep"])
@pytest.mark.parametrize(
    "argv, says", [*BAD_PLACEMENT, (["--device", "cuda"], "no CUDA GPU is visible")]
)
def test_study_and_sweep_refuse_bad_placement_before_writing(
    tmp_path, monkeypatch, capsys, command, argv, says
):
    _fake(monkeypatch, [] if argv == ["--device", "cuda"] else ["0", "1"])
    out = tmp_path / "out"
    err = _refused(
        [command, str(TABULAR), "--out", str(out), "--quiet", *argv], out, capsys
    )
    assert says in err, err


def test_cuda_without_a_gpu_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    _fake(monkeypatch, [])
    study = _study(tmp_path, 1)
    assert main(["run", str(study), "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no CUDA GPU is visible" in err


class _Stop(Exception):
    """Ends a study or sweep once its runs' options reached the orchestrator."""


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "command, where, extra",
    [
        ("study", "ablagen.study.pipeline", ["--kinds", "layer", "--no-arms"]),
        ("sweep", "ablagen.sweep.driver", ["--lrs", "0.01", "--arms", "plain"]),
    ],
)
def test_study_and_sweep_spread_their_runs_over_the_gpus_asked_for(
    tmp_path, monkeypatch, command, where, extra
):
    """``ablagen study``/``sweep --device cuda --gpus 1,2 --runs-per-gpu 2``: the
    orchestrator gets those options, and with them (on this machine's faked GPUs)
    runs land on GPUs 1 and 2 only, at most 2 at once on each."""
    import importlib

    _fake(monkeypatch, ["GPU-a", "GPU-b", "GPU-c"])
    contract = _study(tmp_path, 8)  # scripts that report the GPU they were shown
    module = importlib.import_module(where)
    real_run_study = module.run_study
    got = []

    def orchestrator(study, options, **kwargs):
        got.append(options)  # the generated scripts need CUDA: run contract ones
        got.append(real_run_study(contract, replace(options, only=None, seeds=(0,))))
        raise _Stop

    monkeypatch.setattr(module, "run_study", orchestrator)
    argv = [command, str(TABULAR), "--out", str(tmp_path / "out"), "--seeds", "0",
            "--epochs", "3", "--quiet", "--device", "cuda", "--gpus", "1,2",
            "--runs-per-gpu", "2", "--checkpoint-every", "2", "--keep-checkpoints",
            "--gpus-per-run", "0.5", *extra]  # fmt: skip
    with pytest.raises(_Stop):
        main(argv)
    options, summary = got
    assert (options.device, options.gpus, options.runs_per_gpu) == ("cuda", (1, 2), 2)
    assert (options.checkpoint_every, options.keep_checkpoints) == (2, True)
    assert options.gpus_per_run == 0.5
    assert summary.all_ok and summary.jobs == 4  # 2 GPUs x 2 runs
    runs = _runs(contract)
    seen = {r["cuda_visible_devices"] for r in runs}
    assert len(runs) == 8 and seen == {"GPU-b", "GPU-c"}  # GPU 0 was not asked for
    for name in seen:
        spans = [r["interval"] for r in runs if r["cuda_visible_devices"] == name]
        assert _most_at_once(spans) <= 2


def test_option_errors_name_the_flag():
    with pytest.raises(ConfigError, match="--gpus is for the local backend"):
        RunOptions(device="cuda", gpus=(0,), backend="ray", gpus_per_run=1)
    assert RunOptions(gpus_per_run=0.25).gpus_per_run == 0.25  # Ray: a quarter GPU
    assert json.loads(json.dumps(RunOptions().script_args())) == {"device": "cpu"}

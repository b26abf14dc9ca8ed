"""The run options of ``ablagen run``, ``study`` and ``sweep`` (devices, GPUs,
checkpoints) and the accelerator options of ``generate``, ``study`` and ``sweep``
(--amp, --channels-last, --compile, --grad-accum): one definition each, values that
reach the orchestrator and the scripts, and bad input refused in one line, exit 2,
with nothing written."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
import typer
from conftest import EXAMPLES
from conftest_orchestrate import db_rows, make_study
from scriptutil import generate

from ablagen.cli import app, main
from ablagen.generate.context import TrainConfig
from ablagen.orchestrate import RunOptions, placement

TABULAR = EXAMPLES / "tabular_mlp.py"  # 2-D input: (N, 13)
DIGITS = EXAMPLES / "digits_cnn.py"  # 4-D input: (N, 1, 8, 8)
RUN_FLAGS = ("device", "gpus", "runs_per_gpu", "gpus_per_run", "checkpoint_every",
             "keep_checkpoints")  # fmt: skip
ACCEL_FLAGS = ("amp", "channels_last", "compile", "grad_accum")


def _params(command: str) -> dict[str, object]:
    group = typer.main.get_command(app)
    return {p.name: p for p in group.commands[command].params}  # type: ignore[attr-defined]


def test_study_and_sweep_take_runs_options_with_its_help_and_defaults():
    run = _params("run")
    for name in RUN_FLAGS:  # stated once: RunOptions' field defaults
        assert run[name].default == getattr(RunOptions(), name), name
    for command in ("study", "sweep"):
        params = _params(command)
        for name in RUN_FLAGS:
            mine, theirs = params[name], run[name]
            assert (mine.opts, mine.help, mine.default) == (
                theirs.opts,
                theirs.help,
                theirs.default,
            ), f"{command} --{name}"


#: the other run flags study and sweep take, and which of them takes each
SHARED_RUN_FLAGS = {"jobs": ("study", "sweep"), "backend": ("study", "sweep"),
                    "max_memory": ("study",), "ray_address": ("sweep",),
                    "timeout": ("sweep",), "retry_failed": ("sweep",)}  # fmt: skip


def test_the_other_run_flags_of_study_and_sweep_are_runs():
    run = _params("run")
    for name, commands in SHARED_RUN_FLAGS.items():
        for command in commands:
            mine, theirs = _params(command)[name], run[name]
            assert (mine.opts, mine.help, mine.default) == (
                theirs.opts,
                theirs.help,
                theirs.default,
            ), f"{command} --{name}"


def test_run_options_parses_and_names_the_flags_once():
    """cli.flags.run_options: the one place run flags become RunOptions."""
    from ablagen.cli.flags import run_options

    assert run_options() == RunOptions()
    got = run_options(
        jobs=3, seeds="0-2", only="a:zero,b", gpus="0,1", timeout=5.0,
        max_memory=2.0, no_wait=True, backend="local", device="cuda",
    )  # fmt: skip
    assert got == RunOptions(
        jobs=3, seeds=(0, 1, 2), only=("a:zero", "b"), gpus=(0, 1), timeout_s=5.0,
        max_memory_gb=2.0, wait=False, backend="local", device="cuda",
    )  # fmt: skip
    assert run_options(seeds=None, gpus=None, only=None) == RunOptions()


def test_study_and_sweep_take_generates_accelerator_options():
    gen = _params("generate")
    study, sweep = _params("study"), _params("sweep")
    for name in ACCEL_FLAGS:
        assert study[name].help == sweep[name].help == gen[name].help, name
        assert study[name].default == gen[name].default == getattr(TrainConfig(), name)
        assert sweep[name].default is None  # unset: the study's recorded value


def _one_line(argv: list, capsys) -> str:
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# -- --amp fp16 needs CUDA: refused before any run starts --------------------------


def test_run_refuses_an_fp16_study_on_cpu_before_any_run(tmp_path, capsys, monkeypatch):
    study = make_study(tmp_path / "s", {"baseline": "ok"}, {"train": {"amp": "fp16"}})
    err = _one_line(["run", study, "--jobs", "1"], capsys)
    assert "generated with --amp fp16, which needs CUDA" in err
    assert "pass --device cuda, or regenerate it with --amp bf16" in err
    assert sorted(p.name for p in study.iterdir()) == ["baseline.py", "manifest.json"]
    # on (faked) CUDA the same study runs
    monkeypatch.setattr(placement, "visible_gpus", lambda: ["0"])
    assert main(["run", str(study), "--device", "cuda", "--quiet"]) == 0


@pytest.mark.parametrize("command", ["study", "sweep"])
def test_study_and_sweep_refuse_fp16_on_cpu_before_writing(tmp_path, capsys, command):
    out = tmp_path / "out"
    err = _one_line([command, TABULAR, "--out", out, "--amp", "fp16", "-q"], capsys)
    assert "--amp fp16, which needs CUDA, but the runs use --device cpu" in err
    assert "use --amp bf16" in err and not out.exists()


@pytest.mark.slow
def test_generate_takes_fp16_and_run_and_sweep_refuse_its_study_on_cpu(
    tmp_path, capsys
):
    study = tmp_path / "s"
    code = main(["generate", str(TABULAR), "--out", str(study), "--amp", "fp16",
                 "--kinds", "layer"])  # fmt: skip
    assert code == 0  # the device is chosen when the scripts run
    capsys.readouterr()
    manifest = json.loads((study / "manifest.json").read_text())
    assert manifest["config"]["train"]["amp"] == "fp16"
    err = _one_line(["run", study], capsys)
    assert f"{study} was generated with --amp fp16" in err
    assert not (study / "logs").exists()
    err = _one_line(["sweep", study, "--lrs", "0.01", "--arms", "plain"], capsys)
    assert "--amp fp16, which needs CUDA" in err and not (study / "sweep").exists()


# -- --channels-last needs an N,C,H,W input: refused when generating ----------------


@pytest.mark.parametrize("command", ["generate", "study"])
def test_channels_last_on_a_2d_model_is_refused_at_generate_time(
    tmp_path, capsys, command
):
    out = tmp_path / "out"
    err = _one_line([command, TABULAR, "--out", out, "--channels-last"], capsys)
    assert "--channels-last needs image input (N,C,H,W)" in err
    assert "has shape (13,)" in err and "drop --channels-last" in err
    assert not out.exists()


def test_channels_last_on_an_image_model_is_recorded(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["generate", str(DIGITS), "--out", str(out), "--channels-last",
                 "--kinds", "layer"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    train = json.loads((out / "manifest.json").read_text())["config"]["train"]
    assert train["channels_last"] is True


# -- checkpoint options reach the scripts through study and sweep (CPU, real runs) --


def _notes(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("runs/*/*.pt.json"))]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_study_and_sweep_pass_checkpoint_options_to_the_scripts(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    study = tmp_path / "wine"
    argv = ["study", TABULAR, "--out", study, "--epochs", "3", "--seeds", "0",
            "--kinds", "layer", "--no-arms", "-q", "-j", "2"]  # fmt: skip
    assert (
        main([str(a) for a in argv + ["--checkpoint-every", "2", "--keep-checkpoints"]])
        == 0
    )
    scripts = sorted(p.stem for p in study.glob("*.py"))
    notes = _notes(study)
    # every run kept its checkpoint, saved at epoch 2 (of 3): every 2 epochs
    assert sorted(n["variant"].replace(":", "__") for n in notes) == scripts
    assert {n["epoch"] for n in notes} == {2}
    sweep = ["sweep", TABULAR, "--lrs", "0.01", "--arms", "plain", "--seeds", "0",
             "--epochs", "3", "-q", "--no-plots"]  # fmt: skip
    kept = tmp_path / "kept"
    assert main([str(a) for a in sweep + ["--out", kept, "--keep-checkpoints"]]) == 0
    assert [n["epoch"] for n in _notes(kept)] == [3]  # the default: every epoch
    none = tmp_path / "none"
    argv = sweep + ["--out", none, "--keep-checkpoints", "--checkpoint-every", "0"]
    assert main([str(a) for a in argv]) == 0
    assert _notes(none) == [] and not list(none.glob("runs/*/*.pt"))  # 0: never


# -- a checkpoint of another model shape, through the orchestrator ------------------

MODEL = """
import torch
from torch import nn

INPUT_SHAPE = (16,)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, HIDDEN)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(HIDDEN, 4)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_checkpoint_of_another_shape_is_refused_until_restart(
    tmp_path, capsys, monkeypatch
):
    """The model changes shape and the study is regenerated; a checkpoint of the
    old shape put where the new baseline's run looks for its own is refused with the
    run's name and the fix, and only ``--restart`` trains that run again."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    model, study = tmp_path / "net.py", tmp_path / "s"
    train = TrainConfig(epochs=3, batch_size=32)
    model.write_text(textwrap.dedent(MODEL).replace("HIDDEN", "64"))
    generate(model, study, dataset="synthetic", train=train, kinds="layer")
    run = ["run", str(study), "--jobs", "1", "--seeds", "0", "--only", "baseline"]
    assert main([*run, "--keep-checkpoints"]) == 0
    (old,) = (study / "runs" / "baseline").glob("seed0__*.pt")
    model.write_text(textwrap.dedent(MODEL).replace("HIDDEN", "32"))
    generate(model, study, dataset="synthetic", train=train, kinds="layer", force=True)
    sha8 = json.loads((study / "manifest.json").read_text())["variants"][0]["sha256"]
    planted = old.with_name(f"{old.name.rsplit('__', 1)[0]}__{sha8[:8]}.pt")
    assert planted != old
    shutil.copy(old, planted)
    capsys.readouterr()
    assert main(run) == 1  # the run failed; the others (none here) would go on
    (row,) = [r for r in db_rows(study) if r[0] == "baseline" and r[2] == "failed"]
    assert json.loads(row[3])["status"] == "refused"
    out = capsys.readouterr()
    said = out.out + out.err
    assert "baseline:" in said and "is not this run's checkpoint" in said, said
    assert "ablagen run --retry-failed --restart" in said and "Traceback" not in said
    assert planted.exists()  # refused: left alone
    assert main(run) == 1  # still refused without --restart (failed runs wait)
    assert main([*run, "--retry-failed"]) == 1  # and a retry alone refuses again
    assert main([*run, "--retry-failed", "--restart"]) == 0
    assert not planted.exists() and not old.exists()  # finished: both gone

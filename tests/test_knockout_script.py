"""``ablagen generate --mode knockout``: the manifest, and knockout.py run for real.

One study of digits_cnn on synthetic data (quick to train), run twice with the same
--checkpoint: the first run trains and saves, the second loads and does not train.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import black
import pytest
import torch

from ablagen.analyze import analyze
from ablagen.core.studydir import split_result
from ablagen.generate.variants import parse_kinds, plan_variants
from ablagen.analyze.loading import load_model
from conftest import EXAMPLES, MODELS, ROOT, run_cli
from scriptutil import generate, load_script

KINDS = "layers,blocks,activations,neurons"


def _run(script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, script.name, "--epochs", "1", *args]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
    }  # 2 threads spin-wait on a busy 2-core machine
    return subprocess.run(
        command, cwd=script.parent, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("knockout") / "digits"
    return generate(
        EXAMPLES / "digits_cnn.py",
        out,
        mode="knockout",
        kinds=KINDS,
        neuron_groups=4,
        dataset="synthetic",
    )


@pytest.fixture(scope="module")
def two_runs(study):
    """The first run trains and saves the checkpoint, the second loads it."""
    first = _run(
        study / "knockout.py", "--out", "first.json", "--checkpoint", "base.pt"
    )
    second = _run(
        study / "knockout.py", "--out", "second.json", "--checkpoint", "base.pt"
    )
    assert first.returncode == 0 and second.returncode == 0, (
        first.stderr + second.stderr
    )
    return [
        json.loads((study / name).read_text()) for name in ("first.json", "second.json")
    ]


def test_every_manifest_entry_points_at_knockout_py(study):
    manifest = json.loads((study / "manifest.json").read_text())
    inventory = analyze(load_model(str(EXAMPLES / "digits_cnn.py")), 4)
    planned = [f"{c.id}:{m}" for c, m in plan_variants(inventory, parse_kinds(KINDS))]
    ids = [v["id"] for v in manifest["variants"]]
    assert ids[0] == "baseline" and sorted(ids[1:]) == sorted(planned)
    assert {v["script"] for v in manifest["variants"]} == {"knockout.py"}
    assert all(v["extra"] == {"knockout": True} for v in manifest["variants"])
    assert manifest["mode"] == "knockout" and (study / "baseline.py").is_file()
    assert sorted(p.name for p in study.glob("*.py")) == ["baseline.py", "knockout.py"]


def test_result_holds_every_variant_and_a_reload_does_not_train(study, two_runs):
    first, second = two_runs
    manifest = json.loads((study / "manifest.json").read_text())
    assert set(first["variants"]) == {v["id"] for v in manifest["variants"]}
    assert all(
        v["status"] == "ok" and set(v["final"]) == {"val_loss", "val_acc"}
        for v in first["variants"].values()
    )
    assert (
        first["trained"]
        and len(first["history"]) == 1
        and first["knockout_path"] == "fast"
    )
    assert (
        abs(
            first["variants"]["baseline"]["final"]["val_loss"]
            - first["final"]["val_loss"]
        )
        < 1e-6
    )
    assert (
        not second["trained"] and second["history"] == [] and second["epochs_run"] == 0
    )
    assert second["variants"] == first["variants"]
    assert (
        second["final"]["val_loss"]
        == first["variants"]["baseline"]["final"]["val_loss"]
    )
    params = first["params_total"]
    assert first["variants"]["conv1:zero"]["params_effective"] == params - 160


@pytest.fixture
def in_process():
    """One thread, like the subprocesses (sums then add up in the same order); main()
    turns deterministic algorithms on, so the flag is put back afterwards."""
    flag, threads = (
        torch.are_deterministic_algorithms_enabled(),
        torch.get_num_threads(),
    )
    torch.set_num_threads(1)
    yield
    torch.use_deterministic_algorithms(flag)
    torch.set_num_threads(threads)


def test_split_result_gives_one_contract_result_per_entry(study, two_runs):
    ids = [
        v["id"] for v in json.loads((study / "manifest.json").read_text())["variants"]
    ]
    split = split_result(two_runs[0], ids)
    assert list(split) == ids and all(
        r["status"] == "ok" and r["variant"] == i for i, r in split.items()
    )
    assert (
        split["conv1:zero"]["final"] == two_runs[0]["variants"]["conv1:zero"]["final"]
    )
    assert (
        split["baseline"]["history"] == two_runs[0]["history"]
        and split["conv1:zero"]["history"] == []
    )
    failed = split_result(
        {"status": "failed", "error": "checkpoint x does not match", "variants": {}},
        ids,
    )
    assert all(
        r["status"] == "failed" and r["final"] is None and "x does not" in r["error"]
        for r in failed.values()
    )


def test_training_matches_baseline_py(study, two_runs, in_process):
    """Same code, same seed: knockout.py trained the weights baseline.py trains."""
    baseline = load_script(study / "baseline.py")
    args = [
        "--epochs",
        "1",
        "--out",
        str(study / "baseline.json"),
        "--checkpoint",
        str(study / "baseline.pt"),
    ]
    assert baseline.main(args) == 0
    assert (
        json.loads((study / "baseline.json").read_text())["history"]
        == two_runs[0]["history"]
    )
    ours, theirs = torch.load(study / "base.pt"), torch.load(study / "baseline.pt")
    assert ours.keys() == theirs.keys() and all(
        torch.equal(ours[k], theirs[k]) for k in theirs
    )


def test_a_checkpoint_of_another_model_is_one_line_and_exit_1(
    study, capsys, in_process
):
    torch.save({"fc.weight": torch.zeros(2, 2)}, study / "other.pt")
    script = load_script(study / "knockout.py")
    code = script.main(
        ["--out", str(study / "mismatch.json"), "--checkpoint", str(study / "other.pt")]
    )
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert re.search(
        r"checkpoint \S*other\.pt does not match the model \(missing keys .*; unexpected keys fc\.weight\)",
        err,
    )
    assert err.strip().endswith(
        f"retrain with python baseline.py --checkpoint {study / 'other.pt'}"
    )
    assert json.loads((study / "mismatch.json").read_text())["status"] == "failed"


def test_untraceable_model_takes_the_naive_path(tmp_path, in_process):
    methods = "identity,zero,mean,mask"
    out = generate(
        MODELS / "dynamic.py",
        tmp_path / "dyn",
        mode="knockout",
        kinds=KINDS,
        methods=methods,
    )
    assert (
        load_script(out / "knockout.py").main(
            ["--epochs", "1", "--out", str(out / "r.json")]
        )
        == 0
    )
    result = json.loads((out / "r.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert result["knockout_path"] == "naive" and manifest["model"]["traced"] is False
    assert set(result["variants"]) == {v["id"] for v in manifest["variants"]}
    assert all(
        v["status"] == "ok" and v["path"] == "naive"
        for v in result["variants"].values()
    )


def test_knockout_py_is_black_formatted_deterministic_and_defines_each_name_once(
    study, tmp_path
):
    text = (study / "knockout.py").read_text()
    assert black.format_str(text, mode=black.Mode(line_length=88)) == text
    again = generate(EXAMPLES / "digits_cnn.py", tmp_path / "again", mode="knockout", kinds=KINDS, neuron_groups=4,
                     dataset="synthetic")  # fmt: skip
    assert (again / "knockout.py").read_bytes() == (study / "knockout.py").read_bytes()
    names = []
    for statement in ast.parse(text).body:
        if isinstance(statement, (ast.FunctionDef, ast.ClassDef)):
            names.append(statement.name)
        elif isinstance(statement, ast.Assign):
            names += [t.id for t in statement.targets if isinstance(t, ast.Name)]
    assert sorted({n for n in names if names.count(n) > 1}) == []
    assert not re.search(r"^\s*(import|from) ablagen", text, re.MULTILINE)


def test_top_template_keeps_the_script_sections():
    """knockout.py.j2 = script.py.j2's training sections (training.py.j2), results.py.j2
    swapped for the knockout ones."""
    script, knockout = (re.findall(r'{% include "([^"]+)" %}', (ROOT / "templates" / name).read_text())
                        for name in ("script.py.j2", "knockout.py.j2"))  # fmt: skip
    assert knockout[: len(script) - 1] == script[:-1] and script[-1] == "results.py.j2"
    assert all(name.startswith("knockout/") for name in knockout[len(script) - 1 :])


TWO_INPUTS = """
import torch
from torch import nn


class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, a, b):
        return self.fc(a + b)


def example_input():
    return torch.zeros(2, 4), torch.zeros(2, 4)


def build_data():
    x = torch.zeros(8, 4)
    return x, torch.zeros(8, dtype=torch.long), x, torch.zeros(8, dtype=torch.long)
"""

CLASHING = """
import torch
from torch import nn

INPUT_SHAPE = (4,)


class Knockout(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x)
"""


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    model = tmp_path / "model.py"
    model.write_text(textwrap.dedent(TWO_INPUTS))
    code, out, err = run_cli(
        ["generate", model, "--out", tmp_path / "study", "--mode", "knockout"], capsys
    )
    assert code == 2 and "takes 2 inputs" in err and err.count("\n") == 1, err
    assert not (tmp_path / "study").exists()


def test_a_model_named_like_the_engines_classes_is_kept_and_the_engines_give_way(
    tmp_path, capsys
):
    model = tmp_path / "model.py"
    model.write_text(textwrap.dedent(CLASHING))
    study = tmp_path / "study"
    args = ["generate", model, "--out", study, "--mode", "knockout", "--epochs", "1"]
    code, _, err = run_cli([*args, "--dataset", "synthetic"], capsys)
    assert code == 0, err
    text = (study / "knockout.py").read_text()
    assert "class Knockout(nn.Module):" in text and "class Knockout_:" in text
    load_script(study / "knockout.py").main(["--out", str(tmp_path / "r.json")])
    assert json.loads((tmp_path / "r.json").read_text())["status"] == "ok"


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["knockout", "screen"])
def test_long_runs_train_their_baseline_once_without_resume_code(tmp_path, mode):
    """knockout.py and screen.py of a 3+ epoch study run (their baseline trains once,
    start to end) and carry none of the retrain scripts' mid-run checkpoint code."""
    from ablagen.generate.context import TrainConfig

    study = generate(
        EXAMPLES / "digits_cnn.py",
        tmp_path / "s",
        mode=mode,
        train=TrainConfig(epochs=3),
    )
    script = study / f"{mode}.py"
    assert "load_run_state" not in script.read_text()
    assert "load_run_state" in (study / "baseline.py").read_text()
    out = tmp_path / "r.json"
    subprocess.run(
        [sys.executable, script.name, "--epochs", "3", "--out", str(out)],
        cwd=study, check=True, capture_output=True,
    )  # fmt: skip
    result = json.loads(out.read_text())
    assert result["status"] == "ok" and len(result["history"]) == 3
    assert "gpu" in result and result["gpu"] is None  # named on CUDA, as baseline.py


STREAMED = """
import torch
from torch import nn
from torch.utils.data import TensorDataset

INPUT_SHAPE = (4,)


def build_model():
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))


def build_datasets():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 4, generator=g), torch.randint(0, 3, (64,), generator=g)
    return TensorDataset(x[:48], y[:48]), TensorDataset(x[48:], y[48:])
"""


IN_MEMORY = STREAMED.replace("def build_datasets():", "def _datasets():") + """

def build_data():
    train, val = _datasets()
    return (*train.tensors, *val.tensors)
"""


def test_streamed_data_knockout_and_screen_run(tmp_path, capsys):
    """knockout.py and screen.py on build_datasets(); given the baseline the in-memory
    ones trained on the same samples, the streamed knockout measures and the streamed
    screen estimates what they do."""
    model = tmp_path / "model.py"
    model.write_text(textwrap.dedent(STREAMED))
    (tmp_path / "held.py").write_text(textwrap.dedent(IN_MEMORY))
    for name, mode in (
        ("model", "knockout"), ("held", "knockout"), ("model", "screen"), ("held", "screen")
    ):  # fmt: skip
        code, _, err = run_cli(
            ["generate", tmp_path / f"{name}.py", "--out", tmp_path / f"{name}_{mode}",
             "--mode", mode, "--batch-size", "5"],
            capsys,
        )  # fmt: skip
        assert code == 0, err
    weights = tmp_path / "b.pt"
    results = {}
    for study, script, extra in (
        ("held_screen", "screen.py", ["--checkpoint", str(weights)]),  # trains, saves
        ("model_screen", "screen.py", ["--checkpoint", str(weights)]),
        ("held_knockout", "knockout.py", ["--checkpoint", str(weights)]),
        ("model_knockout", "knockout.py", ["--checkpoint", str(weights)]),
    ):
        streamed = ["--num-workers", "0"] if study.startswith("model") else []
        done = subprocess.run(
            [sys.executable, script, "--epochs", "1", "--out", "r.json", *extra, *streamed],
            cwd=tmp_path / study, capture_output=True, text=True,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        results[study] = json.loads((tmp_path / study / "r.json").read_text())
    text = (tmp_path / "model_screen" / "screen.py").read_text()
    assert "screen_batches(" in text and "validation_batches(args" in text
    held, streamed = results["held_knockout"], results["model_knockout"]
    assert held["variants"].keys() == streamed["variants"].keys()
    assert len(held["variants"]) > 3
    for vid, want in held["variants"].items():
        got = streamed["variants"][vid]
        assert got["status"] == want["status"] == "ok", vid
        for key in ("val_loss", "val_acc"):
            assert got["final"][key] == pytest.approx(
                want["final"][key], rel=1e-5, abs=1e-7
            ), (vid, key)
    held, streamed = results["held_screen"], results["model_screen"]
    assert streamed["screen"]["ggn_samples"] == held["screen"]["ggn_samples"] == 8
    assert held["variants"].keys() == streamed["variants"].keys()
    assert len(held["variants"]) > 3
    for vid, want in held["variants"].items():
        got = streamed["variants"][vid]
        assert got["status"] == want["status"] == "ok", vid
        assert got["final"]["val_loss"] == pytest.approx(
            want["final"]["val_loss"], rel=1e-5, abs=1e-7
        )

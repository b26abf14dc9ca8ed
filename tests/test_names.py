"""Names the model file shares with the script: imports of one object are one name,
and the script's own names give way (renamed alike in every script), never the
model's. Checked on the passes (before/after strings) and on scripts that run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ablagen.generate.names import (
    DEFINED,
    bindings,
    clashing_names,
    fresh_names,
    rename_globals,
)
from conftest import run_cli

PLAIN = """\
import torch
from torch import nn

INPUT_SHAPE = (6,)
{defs}

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x))){use}
"""


def test_imports_of_one_object_are_one_name() -> None:
    model = bindings("import torch.nn as nn\nimport torch.nn.functional as F\n")
    script = bindings("from torch import nn\nfrom torch.nn import functional as F\n")
    assert model == script == {
        "nn": frozenset({"torch.nn"}),
        "F": frozenset({"torch.nn.functional"}),
    }
    assert clashing_names(model, script) == frozenset()
    other = bindings("import numpy as F\nnn = 3\n")
    assert clashing_names(other, script) == {"F", "nn"}
    assert bindings("import torch.nn\n") == {"torch": frozenset({"torch"})}
    assert bindings("def f(): pass\nx, (y, z) = 1, (2, 3)\n") == {
        n: frozenset({DEFINED}) for n in "fxyz"
    }


def test_renaming_touches_module_level_names_and_their_uses_only() -> None:
    before = textwrap.dedent("""\
        import json
        from torch import nn

        EPOCHS = 3


        def train(args, model=None):
            import json  # a local import: stays
            device = 1
            return dict(train=train, EPOCHS=EPOCHS), args.train, json, device


        class Box:
            device = 2  # a class attribute: stays

            def get(self):
                return device, nn.Linear


        def main():
            for device in range(2):  # a local: stays
                pass
            return train([d for d in (device,)]), helper()
        """)
    renames = fresh_names({"json", "EPOCHS", "train", "device", "nn", "helper"}, ())
    after = rename_globals(before, renames)
    assert after == textwrap.dedent("""\
        import json as json_
        from torch import nn as nn_

        EPOCHS_ = 3


        def train_(args, model=None):
            import json  # a local import: stays
            device = 1
            return dict(train=train_, EPOCHS=EPOCHS_), args.train, json, device


        class Box:
            device = 2  # a class attribute: stays

            def get(self):
                return device_, nn_.Linear


        def main():
            for device in range(2):  # a local: stays
                pass
            return train_([d for d in (device,)]), helper_()
        """)


def test_fresh_names_skip_taken_ones_in_a_stable_order() -> None:
    assert fresh_names({"b", "a"}, {"a_", "b_", "b__"}) == {"a": "a__", "b": "b___"}


def _script_names(study: Path) -> set[str]:
    """The top-level names the scripts of ``study`` bind, beyond the model's own."""
    names: set[str] = set()
    for script in study.glob("*.py"):
        names |= bindings(script.read_text()).keys()
    return names


def _run(script: Path, *args: str) -> dict:
    out = script.parent / f"{script.stem}.json"
    subprocess.run(
        [sys.executable, script.name, "--epochs", "1", "--out", out.name, *args],
        cwd=script.parent,
        check=True,
        capture_output=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    return _without_timings(json.loads(out.read_text()))


def _without_timings(value):
    """``value`` without the fields that vary run to run (times, memory)."""
    if isinstance(value, dict):
        return {
            key: _without_timings(item)
            for key, item in value.items()
            if not key.endswith(("_s", "_bytes"))
        }
    if isinstance(value, list):
        return [_without_timings(item) for item in value]
    return value


FLAGS = {
    "retrain": ["--sigma", "0.01", "--components", "fc1:zero"],
    "knockout": ["--mode", "knockout"],
    "screen": ["--mode", "screen"],
}
SCRIPT = {"retrain": "fc1__zero.py", "knockout": "knockout.py", "screen": "screen.py"}


@pytest.mark.slow
@pytest.mark.parametrize("mode", sorted(FLAGS))
def test_a_model_file_defining_every_name_of_the_scripts_runs_as_the_plain_one(
    tmp_path, capsys, mode
):
    """The model file binds every top-level name its scripts use (and the names
    newcomers' files define: train, main, model, args, device, ...), and its forward
    reads them all, so each is embedded. The scripts still run, with the metrics of
    the same model without those names."""
    plain = tmp_path / "plain" / "model.py"
    plain.parent.mkdir()
    plain.write_text(PLAIN.format(defs="", use=""))
    generate = ["generate", "--dataset", "synthetic", "--epochs", "1", *FLAGS[mode]]
    code, _, err = run_cli([*generate, plain, "--out", tmp_path / "a"], capsys)
    assert code == 0, err
    common = {"train", "main", "evaluate", "model", "args", "device", "loss_fn"}
    common |= {"prediction", "parser", "optim", "math", "json", "test", "EPOCHS", "SEED"}
    taken = {"torch", "nn", "Net", "INPUT_SHAPE", "F"}  # the model's own imports
    names = sorted((_script_names(tmp_path / "a") | common) - taken)
    defs = "\n".join(f"{name} = {name!r}" for name in names)
    defs += f"\nSCRIPT_NAMES = ({', '.join(names)},)\n"
    clashing = tmp_path / "clashing" / "model.py"
    clashing.parent.mkdir()
    clashing.write_text(PLAIN.format(defs=defs, use=" * len(SCRIPT_NAMES) ** 0"))
    code, _, err = run_cli([*generate, clashing, "--out", tmp_path / "b"], capsys)
    assert code == 0, err
    script = (tmp_path / "b" / SCRIPT[mode]).read_text()
    assert '\nEPOCHS = "EPOCHS"\n' in script and "\nEPOCHS_ = 1  #" in script
    first = _run(tmp_path / "a" / SCRIPT[mode])
    second = _run(tmp_path / "b" / SCRIPT[mode])
    assert first["status"] == "ok" and second == first


def test_every_script_of_a_study_renames_alike(tmp_path, capsys):
    """Variants still differ only in their ablation section."""
    model = tmp_path / "model.py"
    model.write_text(PLAIN.format(defs="train = 1\nEPOCHS = 2\n", use=" * train * EPOCHS"))
    args = ["generate", model, "--out", tmp_path / "s", "--dataset", "synthetic"]
    assert run_cli(args, capsys)[0] == 0
    scripts = {p.name: p.read_text() for p in (tmp_path / "s").glob("*.py")}
    assert len(scripts) > 3
    for text in scripts.values():
        assert "def train_(args):" in text and "EPOCHS_ = " in text
        assert "\ntrain = 1\nEPOCHS = 2\n" in text  # the model's, as written


def test_a_model_file_redefining_a_builtin_the_script_uses_is_refused(
    tmp_path, capsys
):
    model = tmp_path / "model.py"
    model.write_text(PLAIN.format(defs="def len(x):\n    return 1\n", use=" * len(x)"))
    out = tmp_path / "study"
    args = ["generate", model, "--out", out, "--dataset", "synthetic"]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and err.count("\n") == 1
    assert f"{model} redefines the builtin len" in err and "rename it" in err
    assert not out.exists()


def test_a_name_a_template_defines_next_to_the_models_source_is_refused(tmp_path, capsys):
    """A user's model.py.j2 that defines a helper beside the model's source: a model
    file binding the same name cannot give way, nor can the helper."""
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "model.py.j2").write_text(
        "# %% model\n{{ ctx.model.source }}\n\n\ndef fresh():\n    return {{ ctx.model.expression }}\n"
    )
    model = tmp_path / "model.py"
    model.write_text(PLAIN.format(defs="def fresh():\n    return 1\n", use=" * fresh()"))
    out = tmp_path / "study"
    argv = ["generate", model, "--out", out, "--dataset", "synthetic", "--templates", templates]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and err.count("\n") == 1
    assert f"{model} defines fresh, which baseline.py defines next to" in err
    assert not out.exists()

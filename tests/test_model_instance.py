"""A model file whose model is a module-level instance (issue #24): the scripts
build it again after seeding, so its runs repeat and follow --seed exactly as a
factory's do; an instance ablagen cannot rebuild is refused in one line."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ablagen.cli import main
from ablagen.analyze.loading import constructor_call
from scriptutil import generate

NET = """
import torch
from torch import nn

INPUT_SHAPE = (8,)
WIDTH = 16


class Net(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc1 = nn.Linear(8, width)
        self.fc2 = nn.Linear(width, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))
"""


@pytest.mark.parametrize(
    "tail, call",
    [
        ("net = Net(WIDTH)\n", "Net(WIDTH)"),
        ("net = Net(\n    WIDTH,\n)\n", "Net(\n    WIDTH,\n)"),
        ("net: nn.Module = Net(4)\n", "Net(4)"),
        ("net = Net(4)\n\ndef show():\n    print(net)\n", "Net(4)"),
        (
            'net = Net(4)\nif __name__ == "__main__":\n    print(net(torch.ones(1, 8)))\n',
            "Net(4)",
        ),
        ("net = Net(4)\nnet.eval()\n", None),  # changed after it was built
        ("net = Net(4)\nnet = Net(8)\n", None),  # built twice
        ("net = nets[0]\n", None),  # not a call
        ("net, other = Net(4), Net(8)\n", None),
    ],
)
def test_constructor_call(tail: str, call: str | None) -> None:
    assert constructor_call(textwrap.dedent(NET) + tail, "net") == call


def _run(script: Path, seed: int) -> dict:
    out = script.parent / f"{script.stem}-{seed}.json"
    done = subprocess.run(
        [sys.executable, script.name, "--seed", str(seed), "--out", out.name],
        cwd=script.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    return {k: result[k] for k in ("final", "history")}


def test_an_instance_is_built_after_seeding_like_a_factory(tmp_path: Path) -> None:
    instance = tmp_path / "instance.py"
    instance.write_text(textwrap.dedent(NET) + "net = Net(WIDTH)\n")
    factory = tmp_path / "factory.py"
    factory.write_text(
        textwrap.dedent(NET) + "def build_model():\n    return Net(WIDTH)\n"
    )
    a = generate(instance, tmp_path / "a", dataset="synthetic") / "baseline.py"
    b = generate(factory, tmp_path / "b", dataset="synthetic") / "baseline.py"
    assert "    model = Net(WIDTH)  #" in a.read_text() and "deepcopy" not in a.read_text()
    # the reference: the factory's script, whose model is built after seeding
    assert _run(a, 0) == _run(b, 0)
    assert _run(a, 1) == _run(b, 1)
    assert _run(a, 0) != _run(a, 1)  # the weights follow --seed


def test_an_instance_changed_after_it_is_built_is_refused(tmp_path, capsys) -> None:
    model = tmp_path / "changed.py"
    model.write_text(textwrap.dedent(NET) + "net = Net(WIDTH)\nnet.eval()\n")
    out = tmp_path / "s"
    assert (
        main(["generate", str(model), "--out", str(out), "--dataset", "synthetic"]) == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "changed.py:net is a model instance" in err and "def build_model()" in err
    assert not out.exists()

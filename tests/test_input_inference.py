"""Issue #30: the example input inferred from the model file's data, and the hints
when the model fails on an input: what the model file says, not a fixed 1,8,8."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

from ablagen.core.errors import InputShapeError
from ablagen.analyze.loading import load_model
from conftest import run_cli

CNN = """
import torch
import torch.nn as nn
import torch.nn.functional as F
{data}

class Net(nn.Module):
    def __init__(self, width=16, flat={flat}):
        super(Net, self).__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, width, 3, padding=1)
        self.fc = nn.Linear(flat, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        return self.fc(torch.flatten(x, 1))
"""
BUILD_DATA = """
def build_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 1, 8, 8, generator=g)
    y = torch.arange(20) % 10
    return x[:16], y[:16], x[16:], y[16:]
"""
MLP = """
import torch.nn as nn
{data}

class MLP(nn.Module):
    def __init__(self):
        super(MLP, self).__init__()
        self.fc1 = nn.Linear(30, 16)
        self.fc2 = nn.Linear(16, 2)

    def forward(self, x):
        return self.fc2(self.fc1(x).relu())
"""


def _write(tmp_path, name, template, **fields):
    path = tmp_path / name
    path.write_text(textwrap.dedent(template).format(**fields))
    return path


@pytest.mark.parametrize(
    ("template", "data", "flat", "shape", "source"),
    [
        (CNN, BUILD_DATA, 256, (1, 8, 8), "one sample of build_data()"),
        (CNN, 'DATASET = "digits"', 256, (1, 8, 8), "DATASET = 'digits' (64 features)"),
        (MLP, 'DATASET = "breast_cancer"', None, (30,), "DATASET = 'breast_cancer' (30 features)"),
    ],
)  # fmt: skip
def test_input_shape_is_inferred_from_the_data(
    tmp_path, template, data, flat, shape, source
):
    path = _write(tmp_path, "model.py", template, data=data, flat=flat)
    loaded = load_model(str(path))
    assert loaded.input_shapes == [(2, *shape)]
    assert loaded.input_from == source
    assert loaded.input_note.startswith(f"input shape {shape} inferred from {source}")


def test_dataset_option_gives_the_shape(tmp_path):
    path = _write(tmp_path, "model.py", MLP, data="")
    assert load_model(str(path), dataset="breast_cancer").input_shapes == [(2, 30)]


def test_analyze_takes_the_shape_from_dataset_as_generate_does(tmp_path, capsys):
    path = _write(tmp_path, "model.py", MLP, data="")
    code, out, err = run_cli(
        ["analyze", path, "--dataset", "breast_cancer", "--json"], capsys
    )
    assert code == 0, err
    assert json.loads(out)["input_shapes"] == [[2, 30]]
    assert (
        "input shape (30,) inferred from --dataset 'breast_cancer' (30 features)" in err
    )


def test_a_given_input_is_not_inferred(tmp_path):
    path = _write(
        tmp_path, "model.py", MLP, data='DATASET = "breast_cancer"\nINPUT_SHAPE = (30,)'
    )
    loaded = load_model(str(path))
    assert loaded.input_from == "INPUT_SHAPE" and loaded.input_note is None


def test_no_data_no_shape_hint_names_the_first_layer(tmp_path, capsys):
    path = _write(tmp_path, "mlp.py", MLP, data="")
    code, _, err = run_cli(["analyze", path], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "--input-shape 30 (fc1 takes 30 features)" in err and "1,8,8" not in err
    cnn = _write(tmp_path, "cnn.py", CNN, data="", flat=256)
    code, _, err = run_cli(["analyze", cnn], capsys)
    assert code == 2 and "--input-shape 1,H,W (conv1 takes 1 channels)" in err


def test_generate_says_where_the_shape_came_from(tmp_path, capsys):
    path = _write(tmp_path, "mlp.py", MLP, data='DATASET = "breast_cancer"')
    code, _, err = run_cli(
        ["generate", path, "--out", tmp_path / "s", "--kinds", "layers"], capsys
    )
    assert code == 0
    assert (
        "note: input shape (30,) inferred from DATASET = 'breast_cancer' (30 features)"
        in err
    )


def test_a_broken_forward_on_the_files_own_input_names_the_layer(tmp_path, capsys):
    """Issue #30.4: INPUT_SHAPE is right, the model's fc is not (it gets 256 features,
    takes 128): the message says the model fails on its own input, in fc, and does
    not ask for another --input-shape."""
    path = _write(tmp_path, "cnn.py", CNN, data="INPUT_SHAPE = (1, 8, 8)", flat=128)
    with pytest.raises(InputShapeError) as info:
        load_model(str(path))
    message = str(info.value)
    assert "fails on its own input (INPUT_SHAPE" in message
    assert "in fc (Linear) on input of shape (2, 256)" in message
    assert "2x256 and 128x10" in message and "--input-shape" not in message
    code, _, err = run_cli(["analyze", path], capsys)
    assert code == 2 and err.count("\n") == 1 and "fix the model's forward" in err


def test_a_wrong_input_shape_option_is_still_the_shape(tmp_path):
    path = _write(tmp_path, "mlp.py", MLP, data="")
    with pytest.raises(InputShapeError) as info:
        load_model(str(path), "20")
    message = str(info.value)
    assert "from --input-shape" in message and "in fc1 (Linear)" in message
    assert "--input-shape 30 (fc1 takes 30 features)" in message


@pytest.mark.parametrize(
    ("data", "needle"),
    [(BUILD_DATA, "build_data has 10 classes"), ('DATASET = "digits"', "digits has 10 classes")],
)  # fmt: skip
def test_too_few_outputs_for_the_datas_classes_is_refused_at_generate(
    tmp_path, capsys, data, needle
):
    """Issue #30.5: a 5-output model on 10-class data used to generate fine, then every
    run failed with 'Target 8 is out of bounds'."""
    source = CNN.replace("nn.Linear(flat, 10)", "nn.Linear(flat, 5)")
    path = _write(tmp_path, "cnn.py", source, data=data, flat=256)
    out = tmp_path / "s"
    code, _, err = run_cli(["generate", path, "--out", out], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert needle in err and "scores 5" in err and "give the model 10 outputs" in err
    assert not out.exists()
    fits = _write(tmp_path, "ok.py", CNN, data=data, flat=256)
    code, _, err = run_cli(
        ["generate", fits, "--out", out, "--kinds", "layers"], capsys
    )
    assert code == 0, err


def test_a_wrong_name_suggests_models_not_data_functions(tmp_path, capsys):
    """Issue #30.7: `:Nope` listed build_data among the models to pick."""
    path = _write(
        tmp_path,
        "cnn.py",
        CNN,
        data=BUILD_DATA
        + "\ndef example_input():\n    return torch.randn(2, 1, 8, 8)\n",
        flat=256,
    )
    code, _, err = run_cli(["analyze", f"{path}:Nope"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "use one of: Net" in err
    assert "build_data" not in err and "example_input" not in err


def test_a_scripted_model_still_loads(tmp_path):
    """The layer-naming hooks skip TorchScript modules (they take no hooks)."""
    path = tmp_path / "scripted.py"
    path.write_text(
        "import torch\nfrom torch import nn\n\nINPUT_SHAPE = (4,)\n"
        "net = torch.jit.script(nn.Sequential(nn.Linear(4, 3), nn.ReLU()))\n"
    )
    assert load_model(str(path)).input_shapes == [(2, 4)]


EMBEDDING_LM = """
import torch.nn as nn


class TokenModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(50, 8)
        self.head = nn.Linear(8, 50)

    def forward(self, idx):
        return self.head(self.wte(idx))
"""


def test_input_shape_of_a_token_model_is_a_block_of_ids(tmp_path, capsys):
    """--input-shape T on a model whose input feeds an embedding is T token ids; a
    shape it refuses as floats and as ids is told the fix: text data or an
    example_input() of token ids, not another shape."""
    path = _write(tmp_path, "token_model.py", EMBEDDING_LM, data="")
    (ids,) = load_model(str(path), "16").example_inputs
    assert ids.dtype == torch.long and tuple(ids.shape) == (2, 16)
    with pytest.raises(InputShapeError) as info:
        load_model(str(path), "4,16")  # floats, as a 2-D sample is
    message = str(info.value)
    assert "in wte (Embedding)" in message and "integer token ids" in message
    assert "--dataset text:FILE" in message and "example_input()" in message
    code, _, err = run_cli(["analyze", str(path), "--input-shape", "4,16"], capsys)
    assert code == 2 and err.count("\n") == 1 and "token ids" in err


TOKEN_WINDOWS = """
import torch


def build_data():
    ids = torch.arange(24 * 17).remainder(50).view(24, 17)
    return ids[:20, :16], ids[:20, 1:], ids[20:, :16], ids[20:, 1:]
"""


@pytest.mark.parametrize("given", ["INPUT_SHAPE = (16,)", TOKEN_WINDOWS])
def test_a_token_models_own_shape_is_a_block_of_ids(tmp_path, given):
    """INPUT_SHAPE or one sample of build_data() on a model that embeds tokens: token
    ids, as --input-shape T gives (random floats fail in the embedding)."""
    path = _write(tmp_path, "token_model.py", EMBEDDING_LM + given)
    (ids,) = load_model(str(path)).example_inputs
    assert ids.dtype == torch.long and tuple(ids.shape) == (2, 16)


LAST_POSITION = """

class LastOnly(TokenModel):
    def forward(self, idx):
        return super().forward(idx)[:, [-1], :]  # scores for the next token only
"""


def test_an_lm_that_scores_only_the_last_position_is_refused(tmp_path):
    """build_data() gives a label per position; the model scores one: refused at
    generate in one line that names the shortcut, not in every run."""
    from scriptutil import generate

    from ablagen.core.errors import ConfigError
    from ablagen.generate.context import TrainConfig

    path = _write(tmp_path, "lm.py", EMBEDDING_LM + TOKEN_WINDOWS + LAST_POSITION)
    with pytest.raises(ConfigError) as info:
        generate(f"{path}:LastOnly", tmp_path / "s", train=TrainConfig(task="lm"))
    message = str(info.value)
    assert "targets of shape (2, 16) do not match" in message and "\n" not in message
    assert "(2, 1, 50)" in message and "logits[:, [-1], :]" in message
    assert not (tmp_path / "s").exists()
    generate(f"{path}:TokenModel", tmp_path / "ok", train=TrainConfig(task="lm"))


COUNTED_DATA = """
from pathlib import Path


def build_data():
    with open(Path(__file__).parent / "calls.txt", "a") as fh:
        fh.write("called\\n")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 1, 8, 8, generator=g)
    y = torch.arange(20) % 10
    return x[:16], y[:16], x[16:], y[16:]
"""


def test_generate_calls_build_data_once(tmp_path):
    """The sample's shape, the class count and the labels all come from one call: a
    data function may load a whole dataset."""
    from scriptutil import generate

    path = _write(tmp_path, "net.py", CNN, data=COUNTED_DATA, flat=256)
    generate(path, tmp_path / "s")
    assert (tmp_path / "calls.txt").read_text() == "called\n"

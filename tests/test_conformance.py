"""The conformance suite: model files in the idioms of public PyTorch code (aliases,
old-style super, config dicts, factories, sibling and package imports, module-level
test code, forward helpers, containers, concatenation, grouped convs, shuffles,
log-softmax outputs, hidden-state arguments), under tests/conformance/. Each is
analyzed, generated in retrain, knockout and screen modes, and its baseline, one
variant, knockout.py and screen.py run for one epoch."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from conftest import run_cli
from scriptutil import load_script, new_model

SUITE = Path(__file__).parent / "conformance"


@dataclass(frozen=True)
class Case:
    spec: str  # FILE.py[:NAME], relative to tests/conformance
    flags: tuple[str, ...] = ("--input-shape", "3,8,8")
    traceable: bool = True  # torch.fx traces it (else the screen probes on hooks)


CASES = [
    Case("alias_lenet.py:LeNet"),
    Case("from_imports_lenet.py:LeNet"),
    Case("named_layers.py"),
    Case("qualified_names.py"),
    Case("torch_aliases.py:Net"),
    Case("vgg_cfg.py:VGG11"),
    Case("resnet_expansion.py:ResNetTiny"),
    Case("resnet_expansion.py:ResNetTinyBottleneck"),
    Case("module_list_config.py"),
    Case("module_dict_heads.py"),
    Case("sequential_loop.py"),
    Case("factory_noargs.py:small_cnn"),
    Case("factory_with_args.py:wide_resnet"),
    Case("factory_file/make_model.py:make_model"),
    Case("sibling/net.py:Net"),
    Case("star_sibling/net.py:Net"),
    Case("package/main.py:build"),
    Case("package/models/small.py:SmallNet"),
    Case("package/models/tiny.py:tiny_net"),
    Case("abs_package/make.py:build_model"),
    Case("module_extras.py:Net"),
    Case("module_instance.py:model"),
    Case("efficient_swish.py:EfficientNet"),
    Case("densenet_cat.py:densenet_tiny"),
    Case("depthwise_grouped.py:MobileNet"),
    Case("channel_shuffle.py:ShuffleNet", traceable=False),  # N, C, H, W = x.size()
    Case("inplace_residual.py:PreActNet"),
    Case("init_modules_loop.py"),
    Case("log_softmax_mnist.py:Net", ("--input-shape", "1,8,8")),
    Case("conv1d_signal.py", ("--input-shape", "2,16")),
    Case("pixel_shuffle_upscale.py", ("--input-shape", "1,6,6", "--task", "regression")),
    Case("lstm_classifier.py", ("--input-shape", "12,6")),
    Case("cell_loop.py:Stepper", ("--input-shape", "5", "--task", "regression"), traceable=False),  # loops over input.split
    Case("rnn_lm_hidden.py", ("--task", "lm")),
    Case("causal_attention.py:build", ("--task", "lm"), traceable=False),  # B, T, C = x.size()
]


def _generate(case: Case, out: Path, capsys, *flags: str) -> Path:
    args = ["generate", SUITE / case.spec, "--out", out, "--dataset", "synthetic"]
    code, _, err = run_cli([*args, "--epochs", "1", *case.flags, *flags], capsys)
    assert code == 0, err
    return out


def _run(script: Path, *flags: str) -> dict:
    out = script.with_suffix(".json")
    load_script(script).main(["--epochs", "1", "--out", str(out), *flags])
    result = json.loads(out.read_text())
    assert result["status"] == "ok", result["error"]
    return result


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.spec)
def test_generates_and_runs(tmp_path, capsys, case):
    shape = case.flags[:2] if case.flags[0] == "--input-shape" else ()
    code, out, err = run_cli(["analyze", SUITE / case.spec, "--json", *shape], capsys)
    assert code == 0, err
    assert json.loads(out)["components"]
    study = _generate(case, tmp_path / "retrain", capsys)
    manifest = json.loads((study / "manifest.json").read_text())
    scripts = sorted(v["script"] for v in manifest["variants"])
    # a functional call's ablation when there is one: it edits the traced graph
    variant = next((s for s in scripts if s.startswith("fn_")), scripts[0])
    weights = str(tmp_path / "baseline.pt")  # knockout.py and screen.py load them
    _run(study / "baseline.py", "--checkpoint", weights)
    _run(study / variant)
    study = _generate(case, tmp_path / "knockout", capsys, "--mode", "knockout")
    _run(study / "knockout.py", "--checkpoint", weights)
    study = _generate(case, tmp_path / "screen", capsys, "--mode", "screen")
    # untraceable: probes on hooks, no graph
    result = _run(study / "screen.py", "--checkpoint", weights)
    assert result["screen"].get("path", "graph") == (
        "graph" if case.traceable else "hooks"
    )


def test_aliased_imports_give_the_same_metrics_as_from_imports(tmp_path, capsys):
    """`import torch.nn as nn` and `from torch import nn`: one model, one result."""
    results = []
    for spec in ("alias_lenet.py:LeNet", "from_imports_lenet.py:LeNet"):
        study = _generate(Case(spec), tmp_path / spec.split(".")[0], capsys)
        results.append(_run(study / "baseline.py"))
    assert results[0]["history"] == results[1]["history"]


@pytest.mark.parametrize(
    ("spec", "flags", "message"),
    [
        (
            "two_inputs.py",
            (),
            "two_inputs.py's model takes 2 inputs; the built-in loop feeds one tensor",
        ),
        (
            "seq_first_transformer.py",
            ("--input-shape", "10,8"),
            "mixes the samples of a batch",
        ),
        (  # causal: the first position never sees the rest, so both ways are tried
            "causal_seq_first_lm.py:CausalLM",
            ("--input-shape", "12"),
            "mixes the samples of a batch",
        ),
    ],
)
def test_what_the_built_in_loop_cannot_feed_is_refused_in_one_line(
    tmp_path, capsys, spec, flags, message
):
    args = ["generate", SUITE / spec, "--out", tmp_path / "s", "--dataset", "synthetic"]
    code, _, err = run_cli([*args, *flags], capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "s").exists()


def test_study_takes_the_input_shape_in_one_command(tmp_path, capsys):
    """A file with no INPUT_SHAPE and no data is studied in one command, as generated."""
    out = tmp_path / "study"
    args = ["study", SUITE / "alias_lenet.py:LeNet", "--input-shape", "3,8,8"]
    args += ["--out", out, "--dataset", "synthetic", "--epochs", "1", "--seeds", "0"]
    args += ["--batch-size", "32", "--components", "conv1:zero,fc1:zero"]
    args += ["--val-fraction", "0.25", "--split-seed", "3"]  # generate's options too
    code, _, err = run_cli([*args, "--mode", "knockout", "--no-arms", "--quiet"], capsys)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["input_shape"] == "3,8,8"
    variants = {v["id"] for v in manifest["variants"]} - {"baseline"}
    assert variants == {"conv1:zero", "fc1:zero"}
    baseline = (out / "baseline.py").read_text()
    assert "\nBATCH_SIZE = 32  #" in baseline and "\nVAL_FRACTION = 0.25  #" in baseline
    assert "\nSPLIT_SEED = 3  #" in baseline
    assert (out / "report.md").is_file()


def test_synthetic_regression_targets_are_shaped_like_an_image_output(tmp_path, capsys):
    """An image-to-image model (super-resolution) regresses every output pixel: the
    synthetic targets take the output's shape, a fixed projection of the input."""
    case = Case("pixel_shuffle_upscale.py", ("--input-shape", "1,6,6", "--task", "regression"))
    study = _generate(case, tmp_path / "s", capsys)
    baseline = (study / "baseline.py").read_text()
    assert "\nTARGET_SHAPE = (1, 12, 12)  #" in baseline and "NUM_OUTPUTS" not in baseline
    module = load_script(study / "baseline.py")
    x_train, y_train, _, _ = module.load_data()
    assert y_train.shape == (len(x_train), 1, 12, 12)
    gen = torch.Generator().manual_seed(module.SPLIT_SEED)
    x = torch.randn((module.SYNTHETIC_SAMPLES, 1, 6, 6), generator=gen)
    projection = torch.randn(36, 144, generator=gen)
    expected = (x.reshape(len(x), -1) @ projection).reshape(len(x), 1, 12, 12)
    for got, want in zip(module.load_data(), module.split(x, expected)):
        torch.testing.assert_close(got, want)


def test_a_recurrent_models_shape_hint_names_its_features_a_step(capsys):
    """No input shape: the hint for an LSTM-first model is T,FEATURES (its input size),
    not the features of the Linear head after it."""
    code, _, err = run_cli(["analyze", SUITE / "lstm_classifier.py"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "--input-shape T,6 (lstm takes 6 features a step)" in err


def test_a_cell_loops_hint_and_a_dtype_clash_are_one_line_each(capsys):
    """A cell stepped by hand takes one value a step: the hint says T. A state made in
    float64 for float32 samples is a dtype clash, not a shape: the message says so
    and does not ask for another --input-shape."""
    code, _, err = run_cli(["analyze", f"{SUITE / 'cell_loop.py'}:Stepper"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "--input-shape T (cell takes 1 feature a step)" in err
    spec = f"{SUITE / 'cell_loop.py'}:DoubleStepper"
    code, _, err = run_cli(["analyze", spec, "--input-shape", "5"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "mixes float dtypes in cell (LSTMCell)" in err and "dtype=x.dtype" in err
    assert "pass one sample's shape" not in err


def test_one_input_shape_for_a_two_input_forward_names_the_inputs(tmp_path, capsys):
    """--input-shape gives one tensor; a siamese-style forward(a, b) is told so, not to
    pass another shape."""
    code, _, err = run_cli(["analyze", SUITE / "two_inputs.py", "--input-shape", "3,8,8"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "takes 2 inputs (image, meta) and --input-shape gives one" in err
    assert "example_input()" in err and "pass one sample's shape" not in err


def test_a_package_that_imports_itself_by_name_is_embedded_with_its_aliases(
    tmp_path, capsys
):
    """minGPT's model.py says ``from mingpt.utils import CfgNode as CN``: the package
    is the user's own (above the module's folder), so its class is embedded and the
    alias bound, and the scripts run where no netpkg can be imported."""
    study = _generate(Case("abs_package/make.py:build_model"), tmp_path / "s", capsys)
    baseline = (study / "baseline.py").read_text()
    assert "netpkg" not in baseline and "\nclass Settings:" in baseline
    assert "\nS = Settings\n" in baseline
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    done = subprocess.run(
        [sys.executable, str(study / "baseline.py"), "--epochs", "1", "--out", "r.json"],
        cwd=elsewhere, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((elsewhere / "r.json").read_text())["status"] == "ok"


def test_a_layer_stepped_in_a_loop_is_one_component_ablated_at_every_step(
    tmp_path, capsys
):
    """An LSTMCell called once a time step from one line is one component (not one per
    step); zeroing it zeroes every step's state, so the head sees zeros throughout."""
    spec = f"{SUITE / 'cell_loop.py'}:Stepper"
    code, out, err = run_cli(["analyze", spec, "--input-shape", "5", "--json"], capsys)
    assert code == 0, err
    comps = {c["id"]: c for c in json.loads(out)["components"]}
    assert sorted(comps) == ["cell", "out", "out[0]"]
    assert comps["cell"]["call_site"] is None and comps["cell"]["params"] == 352
    case = Case("cell_loop.py:Stepper", ("--input-shape", "5", "--task", "regression"))
    study = _generate(case, tmp_path / "s", capsys, "--components", "cell:zero")
    module = load_script(study / "cell__zero.py")
    model = new_model(module).eval()
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model.out(torch.zeros(3, 8)).expand(3, 5)
        got = module.ablate(model)(x)
    torch.testing.assert_close(got, expected)


def test_a_last_position_output_for_one_label_per_sample_is_refused_in_one_line(
    tmp_path, capsys
):
    """nanoGPT's forward without targets returns (batch, 1, vocab): cross-entropy on
    one label per sample cannot train on it, so generate says so, not every run."""
    model = tmp_path / "last.py"
    model.write_text(
        "import torch\nfrom torch import nn\n\nINPUT_SHAPE = (4,)\n\n\n"
        "class Last(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.fc = nn.Linear(4, 3)\n\n    def forward(self, x):\n"
        "        return self.fc(x)[:, None, :]\n"
    )
    out = tmp_path / "s"
    code, _, err = run_cli(["generate", model, "--out", out, "--dataset", "synthetic"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "needs one score vector per sample" in err and "returns (2, 1, 3)" in err
    assert not out.exists()


def test_input_shape_gives_token_ids_to_a_model_that_embeds_them(tmp_path, capsys):
    """--input-shape T on a token model is a block of T ids, not random floats."""
    spec = f"{SUITE / 'causal_seq_first_lm.py'}:BatchFirstLM"
    code, out, err = run_cli(["analyze", spec, "--input-shape", "12", "--json"], capsys)
    assert code == 0, err
    inventory = json.loads(out)
    assert inventory["input_shapes"] == [[2, 12]]  # floats would fail in the embedding
    shapes = {c["id"]: c["output_shape"] for c in inventory["components"]}
    assert shapes["lm.tok"] == [12, 2, 16]  # ids embedded (time-first inside)


def test_skipping_a_layer_its_container_reads_keeps_it_in_place(tmp_path, capsys):
    """nn.TransformerEncoder reads layers[0].self_attn and passes its layers keyword
    arguments: nn.Identity in their place breaks it, so the variant replaces the
    layer's output by its input with a hook, and computes what the model without it
    computes."""
    spec = f"{SUITE / 'causal_seq_first_lm.py'}:BatchFirstLM"
    out = tmp_path / "s"
    args = ["generate", spec, "--input-shape", "12", "--out", out, "--dataset", "synthetic"]
    args += ["--task", "lm", "--components", "lm.blocks.layers.0:identity,lm.out:zero"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    script = out / "lm_blocks_layers_0__identity.py"
    assert "register_forward_hook(" in script.read_text()
    module = load_script(script)
    model = new_model(module).eval()
    idx = torch.randint(0, 40, (3, 12), generator=torch.Generator().manual_seed(0))
    lm = model.lm
    mask = torch.triu(torch.full((12, 12), float("-inf")), diagonal=1)
    with torch.no_grad():
        h = lm.tok(idx.t()) * math.sqrt(lm.d_model)
        expected = lm.out(lm.blocks.layers[1](h, src_mask=mask)).transpose(0, 1)
        got = module.ablate(model)(idx)
    torch.testing.assert_close(got, expected)
    result = _run(script)
    assert result["status"] == "ok" and len(result["history"]) == 1


def test_a_file_that_parses_its_flags_at_import_sees_none_of_ablagens(tmp_path, capsys):
    """Module-level ``parser.parse_args()`` reads the model file's own defaults, not
    ablagen's command line; the scripts embed the model, not the program."""
    spec = f"{SUITE / 'argparse_at_import.py'}:MLP"
    out = tmp_path / "s"
    args = ["generate", spec, "--input-shape", "20", "--out", out, "--dataset", "synthetic"]
    code, _, err = run_cli([*args, "--components", "fc1:zero"], capsys)
    assert code == 0, err
    baseline = (out / "baseline.py").read_text()
    assert "parse_args()\n" not in baseline.split("# %% ablation")[0]  # not embedded
    assert _run(out / "fc1__zero.py")["status"] == "ok"


def test_a_file_that_exits_when_imported_is_refused_in_one_line(tmp_path, capsys):
    model = tmp_path / "runs.py"
    model.write_text(
        "import sys\nfrom torch import nn\n\n\nclass Net(nn.Linear):\n    pass\n\n\n"
        "sys.exit(3)\n"
    )
    code, _, err = run_cli(["analyze", model, "--input-shape", "4"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "(line 9) exited (SystemExit 3): it runs a program when imported" in err
    assert 'if __name__ == "__main__":' in err


def test_build_data_reads_files_beside_the_model_file_through_its_file(tmp_path, capsys):
    """``Path(__file__).parent / "x.pt"`` in a model file names the model's folder,
    in the scripts too (there, ``__file__`` is the script's own)."""
    folder = tmp_path / "project"
    folder.mkdir()
    gen = torch.Generator().manual_seed(0)
    torch.save({"x": torch.randn(64, 6, generator=gen), "y": torch.randint(0, 2, (64,), generator=gen)}, folder / "xy.pt")  # fmt: skip
    (folder / "model.py").write_text(
        "from pathlib import Path\n\nimport torch\nfrom torch import nn\n\n\n"
        "class Net(nn.Sequential):\n    def __init__(self):\n"
        "        super().__init__(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))\n\n\n"
        "def build_data():\n    data = torch.load(Path(__file__).parent / 'xy.pt')\n"
        "    x, y = data['x'], data['y']\n    return x[:48], y[:48], x[48:], y[48:]\n"
    )
    out = tmp_path / "studies" / "s"
    args = ["generate", f"{folder / 'model.py'}:Net", "--out", out, "--components", "0:zero"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    baseline = (out / "baseline.py").read_text()
    assert 'os.path.join(os.path.dirname(__file__), "../../project/model.py")' in baseline
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    done = subprocess.run(
        [sys.executable, str(out / "baseline.py"), "--epochs", "1", "--out", "r.json"],
        cwd=elsewhere, capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((elsewhere / "r.json").read_text())["status"] == "ok"

"""Hugging Face models (tiny configs, random weights, nothing downloaded): read by
torch.export, heads found in BERT / GPT-2 / ViT and ablated exactly, Conv1D's units,
custom activation classes, functional calls found by export ablated at run time,
and the examples generated and scored end to end. Needs the ``[hf]`` extra."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ablagen.ablate import (
    HeadMaskAblation,
    HeadMeanAblation,
    ZeroAblation,
    ablate_call,
    ablate_head,
)
from ablagen.analyze import build_inventory
from ablagen.analyze.behaviour import acts_like_activation
from ablagen.analyze.ops import is_activation_module, unit_count
from conftest import EXAMPLES, run_cli

transformers = pytest.importorskip("transformers")

TOL = 1e-5


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tokens(n: int = 4, length: int = 8, vocab: int = 50) -> torch.Tensor:
    return torch.randint(
        0, vocab, (n, length), generator=torch.Generator().manual_seed(0)
    )


def gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=4, vocab_size=50, n_positions=16,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return transformers.GPT2Model(config).eval(), (_tokens(),)


def bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
        intermediate_size=48, vocab_size=50, max_position_embeddings=16, pad_token_id=0,
    )  # fmt: skip
    return transformers.BertModel(config).eval(), (_tokens(),)


def vit():
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        num_hidden_layers=1, hidden_size=32, num_attention_heads=4,
        intermediate_size=48, image_size=8, patch_size=4, num_channels=1,
    )  # fmt: skip
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    return transformers.ViTModel(config).eval(), (x,)


MODELS = {"gpt2": gpt2, "bert": bert, "vit": vit}
FIRST_HEADS = {
    "gpt2": ("h.0.attn.heads[0]", "h.0.attn.c_proj"),
    "bert": (
        "encoder.layer.0.attention.heads[0]",
        "encoder.layer.0.attention.output.dense",
    ),
    "vit": ("layers.0.attention.heads[0]", "layers.0.attention.o_proj"),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_hf_models_are_read_by_torch_export(name):
    model, inputs = MODELS[name]()
    with pytest.raises(Exception):
        torch.fx.symbolic_trace(model)  # why the second tracer exists
    inventory = build_inventory(model, inputs, name, 4)
    assert inventory.tracer == "export" and not inventory.warnings
    kinds = {c.kind for c in inventory.components}
    assert kinds == {"layer", "block", "activation", "neuron", "head"}
    heads = inventory.of_kinds(("head",))
    layers = 2 if name != "vit" else 1
    assert len(heads) == 4 * layers
    head_id, out_proj = FIRST_HEADS[name]
    assert heads[0].id == head_id and heads[0].out_proj == out_proj
    assert any(c.feeds_residual for c in inventory.components)  # residual adds seen
    acts = [c for c in inventory.components if c.kind == "activation"]
    assert acts and all(c.module for c in acts)  # HF activations are module classes
    norms = [c for c in inventory.components if c.op == "LayerNorm"]
    assert norms and all("identity" in c.methods for c in norms)
    if name != "vit":
        embeddings = [c for c in inventory.components if c.op == "Embedding"]
        assert embeddings and all("zero" in c.methods for c in embeddings)


def test_gpt2_conv1d_is_a_linear_layer_with_units_on_its_last_dim():
    model, inputs = gpt2()
    conv = model.h[0].mlp.c_fc
    assert unit_count(conv) == (128, -1)
    inventory = build_inventory(model, inputs, "gpt2", 4)
    group = inventory.get("h.0.mlp.c_fc[32:64]")
    assert group.kind == "neuron" and group.slices == (
        ("h.0.mlp.c_fc.weight", 1, 32, 64),
        ("h.0.mlp.c_fc.bias", 0, 32, 64),
    )
    assert is_activation_module(model.h[0].mlp.act)  # NewGELUActivation
    assert inventory.get("h.0.mlp.act").kind == "activation"
    head = inventory.get("h.1.attn.heads[2]")  # c_attn columns, c_proj rows
    assert head.slices[0] == ("h.1.attn.c_attn.weight", 1, 16, 24)
    assert head.slices[-1] == ("h.1.attn.c_proj.weight", 0, 16, 24)


def _last_hidden(model: nn.Module, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(*inputs).last_hidden_state


def _surgery(model: nn.Module, out_proj: str, lo: int, hi: int, mean=None) -> None:
    """Weight edits that do what a head ablation does: the head's input columns of the
    projection zeroed (Conv1D: rows), their product with the mean added to the bias."""
    proj = model.get_submodule(out_proj)
    conv1d = type(proj).__name__ == "Conv1D"
    with torch.no_grad():
        cols = proj.weight[lo:hi, :] if conv1d else proj.weight[:, lo:hi]
        if mean is not None:
            proj.bias += mean @ cols if conv1d else cols @ mean
        cols.zero_()


@pytest.mark.parametrize("method", ["mask", "mean"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_hf_heads_equal_weight_surgery(name, method):
    model, inputs = MODELS[name]()
    inventory = build_inventory(model, inputs, name, 4)
    for comp in inventory.of_kinds(("head",))[1:3]:
        lo, hi = comp.units
        seen = []
        handle = model.get_submodule(comp.out_proj).register_forward_pre_hook(
            lambda m, args: seen.append(args[0].detach())
        )
        base = _last_hidden(model, inputs)
        handle.remove()
        mean = seen[0].reshape(-1, seen[0].shape[-1])[:, lo:hi].mean(dim=0)
        reference, ablated = MODELS[name]()[0], MODELS[name]()[0]
        _surgery(reference, comp.out_proj, lo, hi, mean if method == "mean" else None)
        op = (
            HeadMaskAblation(comp.num_heads, comp.head)
            if method == "mask"
            else HeadMeanAblation(comp.num_heads, comp.head, mean).eval()
        )
        ablate_head(ablated, comp.out_proj, op)
        expected = _last_hidden(reference, inputs)
        assert torch.allclose(_last_hidden(ablated, inputs), expected, atol=TOL)
        assert not torch.allclose(base, expected, atol=TOL)


def test_head_mask_where_transformers_still_has_it():
    model, inputs = bert()
    if "head_mask" not in inspect.signature(model.forward).parameters:
        pytest.skip(f"transformers {transformers.__version__} has no head_mask")
    mask = torch.ones(2, 4)
    mask[0, 1] = 0
    ablated = bert()[0]
    ablate_head(
        ablated, "encoder.layer.0.attention.output.dense", HeadMaskAblation(4, 1)
    )
    with torch.no_grad():
        expected = model(*inputs, head_mask=mask).last_hidden_state
    assert torch.allclose(_last_hidden(ablated, inputs), expected, atol=TOL)


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class Squish(nn.Module):  # a Mish, under a name that says nothing
    def forward(self, x):
        return x * torch.tanh(F.softplus(x))


class Scale2(nn.Module):  # elementwise, but no activation
    def forward(self, x):
        return 2 * x


def test_activations_are_recognised_by_behaviour():
    assert acts_like_activation(QuickGELU()) and acts_like_activation(Squish())
    assert acts_like_activation(transformers.activations.NewGELUActivation())
    assert not acts_like_activation(Scale2())
    assert not acts_like_activation(nn.Softmax(dim=-1))  # not elementwise
    assert not acts_like_activation(nn.Identity()) and not acts_like_activation(
        nn.Dropout()
    )


class Untraceable(nn.Module):
    """A branch on a size (torch.fx fails, torch.export does not), functional activations."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x):
        if x.size(0) > 0:  # fx cannot branch on a traced size; export can
            x = x * 1.0
        h = F.gelu(self.fc1(x))
        return self.fc2(F.silu(h) + h)


def test_functional_calls_found_by_export_are_ablated_at_run_time():
    torch.manual_seed(0)
    model, x = Untraceable().eval(), torch.randn(5, 6)
    inventory = build_inventory(model, (x,), "untraceable", None)
    assert inventory.tracer == "export"
    calls = [c for c in inventory.components if c.call_op]
    assert [c.id for c in calls] == ["fn.gelu@0", "fn.silu@0"]
    assert calls[1].feeds_residual and calls[0].param_owner == "fc1"
    ablated = Untraceable().eval()
    ablated.load_state_dict(model.state_dict())
    ablate_call(ablated, "", "silu", 0, ZeroAblation())
    with torch.no_grad():
        h = F.gelu(model.fc1(x))
        expected = model.fc2(torch.zeros_like(h) + h)  # the hand-written forward
        assert torch.allclose(ablated(x), expected, atol=TOL)


def test_a_model_no_tracer_captures_gets_hooks_and_one_warning():
    class Opaque(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) * float(x.sum().item() > 0)  # .item(): export fails too

    inventory = build_inventory(Opaque(), (torch.randn(2, 4),), "opaque", None)
    assert inventory.tracer == "hooks" and len(inventory.warnings) == 1
    assert "neither torch.fx nor torch.export" in inventory.warnings[0]
    assert inventory.get("fc").kind == "layer"


@pytest.mark.slow
def test_hf_bert_example_knockout_end_to_end(tmp_path, capsys):
    out = tmp_path / "study"
    code, _, err = run_cli(
        ["generate", EXAMPLES / "hf_bert_tiny.py", "--out", out, "--kinds", "heads",
         "--methods", "mask,mean", "--mode", "knockout", "--epochs", "1"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    weights = tmp_path / "baseline.pt"  # baseline.py trains and saves, knockout loads
    results = {}
    for script in ("baseline.py", "knockout.py"):
        results[script] = tmp_path / f"{script}.json"
        run = subprocess.run(
            [sys.executable, script, "--out", str(results[script]),
             "--checkpoint", str(weights)],
            cwd=out, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-2000:]
    trained = json.loads(results["baseline.py"].read_text())["final"]
    variants = json.loads(results["knockout.py"].read_text())["variants"]
    # the knockout's own baseline is baseline.py's model, measured the same way
    for key in ("val_loss", "val_acc"):
        assert variants["baseline"]["final"][key] == pytest.approx(
            trained[key], rel=1e-5
        ), key
    heads = {k: v for k, v in variants.items() if ".heads[" in k}
    assert len(heads) == 16 and all(v["status"] == "ok" for v in heads.values())
    # each knockout is measured on the trained model: a head's mask changes the loss
    losses = [v["final"]["val_loss"] for v in heads.values()]
    assert len(set(losses)) > 1 and trained["val_loss"] not in losses


def test_gpt2_knockout_generates(tmp_path, capsys):
    model_file = tmp_path / "gpt2_tiny.py"
    model_file.write_text(
        "import torch\nfrom transformers import GPT2Config, GPT2Model\n\n"
        "def build_model():\n"
        "    return GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=20,"
        " n_positions=8, bos_token_id=0, eos_token_id=0))\n\n"
        "def example_input():\n    return torch.randint(0, 20, (2, 8))\n"
    )
    code, _, err = run_cli(
        ["generate", model_file, "--out", tmp_path / "s", "--kinds", "heads",
         "--mode", "knockout", "--task", "tokens"],  # hidden states: one per position
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "Traceback" not in err
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert sorted(v["id"] for v in manifest["variants"])[1:] == [
        "h.0.attn.heads[0]:mask",
        "h.0.attn.heads[1]:mask",
    ]


@pytest.mark.slow
def test_a_retrain_script_edits_a_call_torch_export_found(tmp_path, capsys):
    """The script of a functional call of an untraceable model: ablate_call, run."""
    model_file = tmp_path / "untraceable.py"
    model_file.write_text(
        "import torch\nimport torch.nn.functional as F\nfrom torch import nn\n\n"
        "INPUT_SHAPE = (6,)\nDATASET = 'synthetic'\n\n\n"
        "class Untraceable(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 3)\n\n"
        "    def forward(self, x):\n"
        "        if x.size(0) > 0:\n"
        "            x = x * 1.0\n"
        "        h = F.gelu(self.fc1(x))\n"
        "        return self.fc2(F.silu(h) + h)\n"
    )
    out = tmp_path / "s"
    code, _, err = run_cli(
        ["generate", model_file, "--out", out, "--components", "fn.silu@0:zero",
         "--epochs", "1"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    script = out / "fn_silu_0__zero.py"
    text = script.read_text()
    assert 'ablate_call(model, "", "silu", 0, ZeroAblation())' in text
    run = subprocess.run(
        [sys.executable, script.name, "--out", "r.json"],
        cwd=out, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads((out / "r.json").read_text())["status"] == "ok"

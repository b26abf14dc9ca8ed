"""ablagen prune: Torch-Pruning's groups with ablagen's measured importance, the plan
replayed with plain torch, the pruned scripts, and the refusals."""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

tp = pytest.importorskip("torch_pruning")

from ablagen.prune.importance import (
    CRITERIA,
    MeasuredImportance,
    SameGroups,
)  # noqa: E402
from ablagen.prune.plan import PruneError, make_plan  # noqa: E402
from ablagen.prune.surgery import apply_plan  # noqa: E402

from conftest import EXAMPLES, run_cli  # noqa: E402
from scriptutil import load_tensors, new_model  # noqa: E402

RESIDUAL = ("stem.0", "layer1.0.conv2", "layer1.1.conv2")  # tied by the additions


def _module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resnet_small() -> torch.nn.Module:
    torch.manual_seed(0)
    model = _module(EXAMPLES / "resnet_small.py", "resnet_small_prune").ResNetSmall()
    for m in model.modules():  # BatchNorm statistics that are not all 0 and 1
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def scores_for(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A made-up measured importance for every Conv output channel."""
    gen = torch.Generator().manual_seed(1)
    return {
        name: torch.rand(m.out_channels, generator=gen)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Conv2d)
    }


def measured(scores):
    return lambda graph, names: MeasuredImportance(
        scores, names, graph.is_out_channel_pruning_fn
    )


def tp_pruned(model, example, importance_for, ratio):
    """Torch-Pruning's own pruning of a copy, the reference for the plan."""
    pruned = copy.deepcopy(model)
    names = {m: n for n, m in pruned.named_modules()}
    pruner = tp.pruner.BasePruner(
        pruned,
        example,
        importance=tp.importance.RandomImportance(),
        pruning_ratio=ratio,
        ignored_layers=[pruned.fc],
    )
    pruner.importance = importance_for(pruner.DG, names)
    pruner.step()
    return pruned.eval()


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
def test_plan_replayed_with_torch_equals_torch_pruning(ratio):
    model, x = resnet_small(), torch.randn(4, 1, 8, 8)
    scores = scores_for(model)
    plan = make_plan(model, x, measured(scores), ratio)
    mine = apply_plan(copy.deepcopy(model), plan.layers).eval()
    ref = tp_pruned(model, x, measured(scores), ratio)
    assert sum(p.numel() for p in mine.parameters()) == sum(
        p.numel() for p in ref.parameters()
    )
    for (name, a), (_, b) in zip(mine.state_dict().items(), ref.state_dict().items()):
        assert a.shape == b.shape, name
    with torch.no_grad():
        torch.testing.assert_close(mine(x), ref(x), rtol=0, atol=0)
    for name, kept in plan.layers.items():  # the pruned shapes are the plan's
        weight = dict(mine.named_modules())[name].weight
        assert weight.shape[0] == len(kept.get("out", range(weight.shape[0])))
        if "in" in kept:
            assert weight.shape[1] == len(kept["in"])
    assert sum(p.numel() for p in model.parameters()) == 33050  # unchanged


def test_residual_group_pruned_together_by_summed_importance():
    model, x = resnet_small(), torch.randn(2, 1, 8, 8)
    scores = scores_for(model)
    plan = make_plan(model, x, measured(scores), 0.5)
    summed = sum(scores[name] for name in RESIDUAL)
    expected = sorted(torch.argsort(summed, descending=True)[:8].tolist())
    for name in RESIDUAL:  # one choice for every layer tied by the residual
        assert plan.layers[name]["out"] == expected
    for bn in ("stem.1", "layer1.0.bn2", "layer1.1.bn2"):
        assert plan.layers[bn]["out"] == expected
    assert plan.layers["down"]["in"] == expected
    assert "out" not in plan.layers["fc"]  # the classes stay


def test_other_criteria_prune_the_same_groups():
    model, x = resnet_small(), torch.randn(2, 1, 8, 8)
    scores = {"layer2.conv1": torch.rand(32)}  # only one group was ranked
    plan = make_plan(model, x, measured(scores), 0.5)
    assert sorted(plan.layers) == ["layer2.bn1", "layer2.conv1", "layer2.conv2"]
    for name in ("l1", "l2", "random"):

        def same(graph, names, name=name):
            return SameGroups(CRITERIA[name](), measured(scores)(graph, names))

        other = make_plan(model, x, same, 0.5)
        assert sorted(other.layers) == sorted(plan.layers)
        counts = {
            k: {s: len(v) for s, v in kept.items()} for k, kept in other.layers.items()
        }
        assert counts == {
            k: {s: len(v) for s, v in kept.items()} for k, kept in plan.layers.items()
        }


def test_model_torch_pruning_cannot_group_is_refused():
    class Listed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.out = torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)

        def forward(self, x):
            return self.out(self.fc(x)).tolist()

    with pytest.raises(PruneError, match="Torch-Pruning cannot group") as err:
        make_plan(Listed(), torch.randn(2, 4), measured({"fc": torch.rand(8)}), 0.5)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("ratios", ["1.5", "0", "0.3,1", "-0.2"])
def test_ratio_outside_unit_interval_refused(ratios, tmp_path, capsys):
    code, out, err = run_cli(["prune", tmp_path, "--ratios", ratios], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "outside (0, 1)" in err
    assert not (tmp_path / "prune").exists()


@pytest.fixture(scope="module")
def digits_study(tmp_path_factory) -> Path:
    """A knockout study of digits_cnn over its output channels: 1 epoch, 1 seed."""
    study = tmp_path_factory.mktemp("prune") / "digits"
    base = [sys.executable, "-m", "ablagen"]
    gen = ["generate", str(EXAMPLES / "digits_cnn.py"), "--out", str(study)]
    gen += ["--mode", "knockout", "--kinds", "neurons", "--neuron-groups", "4"]
    subprocess.run(base + gen + ["--epochs", "1"], check=True, capture_output=True)
    return study


@pytest.mark.slow
def test_study_without_ranking_refused(digits_study, capsys):
    code, out, err = run_cli(["prune", digits_study, "--ratios", "0.5"], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "has no ranking" in err and "ablagen rank" in err
    assert not (digits_study / "prune").exists()


@pytest.fixture(scope="module")
def ranked_study(digits_study) -> Path:
    """digits_study run (seed 0) and ranked, after the no-ranking test used it."""
    base = [sys.executable, "-m", "ablagen"]
    subprocess.run(base + ["run", str(digits_study), "--seeds", "0", "-j", "1", "--quiet"], check=True, capture_output=True)  # fmt: skip
    subprocess.run(base + ["rank", str(digits_study), "--no-plots"], check=True, capture_output=True)  # fmt: skip
    return digits_study


@pytest.mark.slow
def test_pruned_script_equals_plan_applied_in_process(ranked_study, tmp_path, capsys):
    digits_study = ranked_study
    code, _, err = run_cli(
        ["prune", digits_study, "--ratios", "0.5", "--no-run"], capsys
    )
    assert code == 0, err
    script = digits_study / "prune" / "pruned_0.5.py"
    data = script.read_bytes()
    assert b"import ablagen" not in data and b"from ablagen" not in data
    import black

    assert black.format_str(data.decode(), mode=black.Mode()) == data.decode()
    code, _, err = run_cli(
        ["prune", digits_study, "--ratios", "0.5", "--no-run"], capsys
    )
    assert script.read_bytes() == data  # generating twice: the same bytes

    # the script's PLAN and surgery against Torch-Pruning on the same weights
    checkpoint = tmp_path / "baseline.pt"
    result_file = tmp_path / "result.json"
    cmd = [sys.executable, script.name, "--epochs", "1", "--finetune-epochs", "1"]
    cmd += ["--checkpoint", str(checkpoint), "--out", str(result_file)]
    done = subprocess.run(cmd, cwd=script.parent, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(result_file.read_text())
    pruned_script = _module(script, "pruned_script")
    model = pruned_script.load_checkpoint(str(checkpoint), "cpu").eval()
    x = load_tensors(pruned_script)[2][:16]
    mine = pruned_script.apply_plan(copy.deepcopy(model), pruned_script.PLAN).eval()

    from ablagen.prune.importance import unit_scores
    from ablagen.rank.ranking import load_ranking
    from ablagen.core.studydir import load_manifest

    scores = unit_scores(load_ranking(digits_study), load_manifest(digits_study))
    ref = copy.deepcopy(model)
    names = {m: n for n, m in ref.named_modules()}
    pruner = tp.pruner.BasePruner(ref, x[:1], importance=tp.importance.RandomImportance(), pruning_ratio=0.5, ignored_layers=[ref.fc2])  # fmt: skip
    pruner.importance = measured(scores)(pruner.DG, names)
    pruner.step()
    with torch.no_grad():
        torch.testing.assert_close(mine(x), ref.eval()(x), rtol=0, atol=0)
    params = sum(p.numel() for p in ref.parameters())
    assert result["status"] == "ok"
    assert result["pruned"]["params"] == params == result["finetuned"]["params"]
    assert result["before"]["params"] == sum(p.numel() for p in model.parameters())
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        ref(x[:1])
    assert result["pruned"]["macs"] == counter.get_total_flops() // 2
    assert result["pruned"]["macs"] < result["before"]["macs"]
    for stage in ("before", "pruned"):
        assert (
            result[stage]["latency_ms_b1"] > 0 and result[stage]["latency_ms_b64"] > 0
        )
    assert len(result["finetune_history"]) == 1
    assert result["final"]["val_acc"] == result["finetuned"]["val_acc"]


def test_unit_scores_spread_each_group_over_its_units():
    from types import SimpleNamespace

    from ablagen.prune.importance import unit_scores

    comps = {
        "conv[0:2]": {"kind": "neuron", "module": "conv", "unit_dim": 1, "units": [0, 2], "output_shape": [2, 4, 8, 8]},  # fmt: skip
        "conv[2:4]": {"kind": "neuron", "module": "conv", "unit_dim": 1, "units": [2, 4], "output_shape": [2, 4, 8, 8]},  # fmt: skip
        "act": {"kind": "activation", "module": "act"},
    }
    manifest = SimpleNamespace(component=comps.get)
    row = lambda c, mean, diffs: SimpleNamespace(
        component=c, mean=mean, seeds=(0, 1), diffs=diffs
    )  # noqa: E731
    ranking = SimpleNamespace(
        rows=[row("conv[0:2]", 0.3, (0.2, 0.4)), row("conv[2:4]", -0.1, (0.0, -0.2)), row("act", 0.9, (0.9, 0.9))]  # fmt: skip
    )
    assert unit_scores(ranking, manifest)["conv"].tolist() == pytest.approx([0.3, 0.3, -0.1, -0.1])  # fmt: skip
    assert unit_scores(ranking, manifest, seed=1)["conv"].tolist() == pytest.approx([0.4, 0.4, -0.2, -0.2])  # fmt: skip
    assert set(unit_scores(ranking, manifest)) == {"conv"}


@pytest.mark.slow
def test_prune_runs_scripts_and_sums_them_up(ranked_study, capsys):
    argv = ["prune", ranked_study, "--ratios", "0.6", "--seeds", "0,1"]
    code, out, err = run_cli(argv + ["--epochs", "1", "--finetune-epochs", "1"], capsys)
    assert code == 0, err
    prune_dir = ranked_study / "prune"
    summary = json.loads((prune_dir / "prune.json").read_text())
    assert (prune_dir / "prune.png").read_bytes().startswith(b"\x89PNG")
    for ratio in ("0.6",):
        row = summary["scripts"][f"pruned_{ratio}.py"]
        assert row["ok"] == row["runs"] == 2 and row["ratio"] == float(ratio)
        runs = [
            json.loads(
                (prune_dir / "results" / f"pruned_{ratio}_seed{s}.json").read_text()
            )
            for s in (0, 1)
        ]
        accs = [r["finetuned"]["val_acc"] for r in runs]
        stat = row["stats"]["finetuned.val_acc"]
        assert stat["value"] == pytest.approx(sum(accs) / 2) and stat["n"] == 2
        assert stat["ci_low"] <= stat["value"] <= stat["ci_high"]
        assert row["stats"]["pruned.params"]["value"] == runs[0]["pruned"]["params"]
        assert f"pruned_{ratio}.py" in out
    before = runs[0]["before"]["params"]
    assert row["stats"]["pruned.params"]["value"] < before


def test_recalibrate_norms_measures_batchnorm_statistics_again():
    from ablagen.prune.surgery import recalibrate_norms

    torch.manual_seed(0)
    conv, bn = torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4)
    model = torch.nn.Sequential(conv, bn, torch.nn.Dropout(0.5)).eval()
    x = torch.randn(32, 1, 8, 8)
    recalibrate_norms(model, x, batch_size=8)  # four batches, averaged
    with torch.no_grad():
        h = conv(x)
    per_batch = h.view(4, 8, 4, 6, 6).transpose(1, 2).reshape(4, 4, -1)
    torch.testing.assert_close(bn.running_mean, per_batch.mean(-1).mean(0))
    torch.testing.assert_close(bn.running_var, per_batch.var(-1).mean(0))
    assert bn.momentum == 0.1 and not model.training and not bn.training


# --------------------------------------------------------------------------- transformers
def bert_tiny():
    pytest.importorskip("transformers")
    return _module(EXAMPLES / "hf_bert_tiny.py", "hf_bert_tiny_prune")


def bert_heads(model) -> dict[str, int]:
    return {
        f"{name}.{proj}": m.num_attention_heads
        for name, m in model.named_modules()
        if name.endswith("attention.self")
        for proj in ("query", "key", "value")
    }


def linear_scores(model) -> dict[str, torch.Tensor]:
    """A made-up measured importance for every Linear output unit."""
    gen = torch.Generator().manual_seed(2)
    return {
        name: torch.rand(m.out_features, generator=gen)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
    }


@pytest.mark.parametrize("ratio,heads_left", [(0.3, 2), (0.5, 2), (0.7, 1)])
def test_bert_heads_and_mlp_plan_equals_torch_pruning(ratio, heads_left):
    """Whole heads (Torch-Pruning's prune_num_heads, ratio of the heads rounded up)
    and MLP neurons; the residual stream (the embeddings' group) kept whole."""
    example = bert_tiny()
    model, x = example.build_model().eval(), example.example_input()
    heads, scores = bert_heads(model), linear_scores(model)
    plan = make_plan(model, x, measured(scores), ratio, heads=heads)
    mine = apply_plan(copy.deepcopy(model), plan.layers).eval()

    ref = copy.deepcopy(model)  # Torch-Pruning's own pruning, attributes set by hand
    names = {m: n for n, m in ref.named_modules()}
    modules = dict(ref.named_modules())
    pruner = tp.pruner.BasePruner(
        ref, x, importance=tp.importance.RandomImportance(), pruning_ratio=ratio,
        ignored_layers=[ref.classifier], num_heads={modules[n]: h for n, h in heads.items()},
        prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=ratio,
    )  # fmt: skip
    pruner.importance = measured(scores)(pruner.DG, names)
    pruner.step()
    for layer in ref.bert.encoder.layer:
        attn = layer.attention.self
        attn.num_attention_heads = pruner.num_heads[attn.query]
        attn.all_head_size = attn.query.out_features

    assert sum(p.numel() for p in mine.parameters()) == sum(
        p.numel() for p in ref.parameters()
    )
    for (name, a), (_, b) in zip(mine.state_dict().items(), ref.state_dict().items()):
        assert a.shape == b.shape, name
    with torch.no_grad():
        torch.testing.assert_close(mine(x).logits, ref.eval()(x).logits, rtol=0, atol=0)
    layers = dict(mine.named_modules())
    for i in range(2):
        attn = f"bert.encoder.layer.{i}.attention.self"
        assert plan.layers[attn]["set"] == {
            "all_head_size": 8 * heads_left,
            "num_attention_heads": heads_left,
        }
        kept = plan.layers[f"{attn}.query"]["out"]
        assert (
            len(kept) == 8 * heads_left and kept == plan.layers[f"{attn}.value"]["out"]
        )
        assert {k // 8 for k in kept} and all(  # whole heads: 8 units each
            set(range(8 * (k // 8), 8 * (k // 8) + 8)) <= set(kept) for k in kept
        )
        fc = f"bert.encoder.layer.{i}.intermediate.dense"
        assert layers[fc].out_features == len(plan.layers[fc]["out"]) == int(64 * (1 - ratio))  # fmt: skip
    for name, kept in plan.layers.items():  # the pruned shapes are the plan's
        weight = getattr(layers[name], "weight", None)
        if "out" in kept:
            assert weight.shape[0] == len(kept["out"]), name
        if "in" in kept:
            assert weight.shape[1] == len(kept["in"]), name
    untouched = ("embeddings", "LayerNorm", "attention.output.dense", "output.dense")
    for name in plan.layers:  # the residual stream's width (32) is kept
        if any(part in name for part in untouched):
            assert "out" not in plan.layers[name], name
    assert mine.bert.embeddings.word_embeddings.weight.shape == (24, 32)


def test_fused_qkv_heads_refused_in_one_line():
    """tiny_gpt's heads live in one fused qkv layer split by a stored width:
    Torch-Pruning 1.6 cannot remove whole heads there, and the plan says so."""
    gpt = _module(EXAMPLES / "tiny_gpt.py", "tiny_gpt_prune")
    torch.manual_seed(0)
    model, x = gpt.TinyGPT().eval(), gpt.example_input()
    heads = {f"h.{i}.attn.qkv": 4 for i in range(2)}
    with pytest.raises(PruneError, match="Torch-Pruning cannot group") as err:
        make_plan(model, x, measured(linear_scores(model)), 0.5, heads=heads)
    assert "\n" not in str(err.value)


def test_unit_scores_of_heads_spread_over_query_key_value():
    from types import SimpleNamespace

    from ablagen.prune.importance import attention_heads, unit_scores

    def head(i):
        slices = [[f"attn.{p}.weight", 0, 2 * i, 2 * i + 2] for p in ("q", "k", "v")]
        slices.append(["attn.out.weight", 1, 2 * i, 2 * i + 2])
        return {"id": f"attn.heads[{i}]", "kind": "head", "module": "attn", "num_heads": 2, "slices": slices}  # fmt: skip

    comps = [head(0), head(1)]
    comps += [{"id": f"attn.q[{u}]", "kind": "neuron", "module": "attn.q", "op": "Linear", "unit_dim": -1, "units": [u, u + 1], "output_shape": [2, 5, 4]} for u in range(4)]  # fmt: skip
    comps += [{"id": "fc[0:2]", "kind": "neuron", "module": "fc", "op": "Linear", "unit_dim": -1, "units": [0, 2], "output_shape": [2, 5, 4]}]  # fmt: skip
    comps += [{"id": "conv[0:1]", "kind": "neuron", "module": "conv", "op": "Conv1d", "unit_dim": -1, "units": [0, 1], "output_shape": [2, 3, 7]}]  # fmt: skip
    by_id = {c["id"]: c for c in comps}
    manifest = SimpleNamespace(components=comps, component=by_id.get)
    row = lambda c, mean: SimpleNamespace(component=c, mean=mean, seeds=(0,), diffs=(mean,))  # noqa: E731  # fmt: skip
    ranking = SimpleNamespace(
        rows=[row("attn.heads[0]", 0.5), row("attn.heads[1]", 0.1)]
        + [row(f"attn.q[{u}]", 9.0) for u in range(4)]
        + [row("fc[0:2]", 0.3), row("conv[0:1]", 0.7)]
    )
    scores = unit_scores(ranking, manifest)
    for proj in ("q", "k", "v"):  # the heads' scores, not the neurons' (9.0)
        assert scores[f"attn.{proj}"].tolist() == pytest.approx([0.5, 0.5, 0.1, 0.1])
    assert scores["fc"].tolist() == pytest.approx([0.3, 0.3, 0.0, 0.0])
    assert (
        "conv" not in scores and "attn.out" not in scores
    )  # a conv's last dim: no channels
    assert attention_heads(manifest) == {"attn.k": 2, "attn.q": 2, "attn.v": 2}


def test_pruning_section_in_report_md_and_html(tmp_path):
    from ablagen.report.markdown import prune_markdown, report_extra_sections

    assert prune_markdown(tmp_path) is None
    stat = lambda v, lo, hi: {
        "value": v,
        "ci_low": lo,
        "ci_high": hi,
        "n": 2,
    }  # noqa: E731
    summary = {
        "finetune_epochs": 1,
        "seeds": [0, 1],
        "scripts": {
            "pruned_0.5.py": {
                "ratio": 0.5, "runs": 2, "ok": 2, "errors": [],
                "stats": {"before.params": stat(100, 100, 100), "before.val_acc": stat(0.9, 0.85, 0.95),
                          "pruned.params": stat(40, 40, 40), "pruned.val_acc": stat(0.5, 0.4, 0.6),
                          "finetuned.val_acc": stat(0.8, 0.7, 0.9)},
            }
        },
    }  # fmt: skip
    (tmp_path / "prune").mkdir()
    (tmp_path / "prune" / "prune.json").write_text(json.dumps(summary))
    text = prune_markdown(tmp_path)
    lines = text.splitlines()
    assert "2 seed(s), 1 fine-tuning epoch(s)" in lines[0]
    baseline = next(line for line in lines if line.startswith("| baseline"))
    assert "| 100 [100, 100] |" in baseline and "0.9000 [0.8500, 0.9500]" in baseline
    row = next(line for line in lines if line.startswith("| 0.5 |"))
    assert row.endswith("| 0.5000 [0.4000, 0.6000] | 0.8000 [0.7000, 0.9000] |")
    report = "# t\n\n## A\n\na\n\n## Reproduce\n\n```sh\nx\n```\n\n## Arms\n\n| a |\n|---|\n\n## More\n\nm\n"
    assert report_extra_sections(report) == [("Arms", "| a |\n|---|"), ("More", "m\n")]


@pytest.mark.slow
def test_prune_bert_heads_end_to_end(tmp_path, capsys):
    """A knockout study of hf_bert_tiny's heads (1 epoch, seed 0), ranked on the
    validation loss, pruned at 0.5: the script runs standalone, removes two heads a
    layer, and report.md and report.html gain their Pruning section."""
    pytest.importorskip("transformers")
    study = tmp_path / "bert"
    base = [sys.executable, "-m", "ablagen"]
    gen = ["generate", str(EXAMPLES / "hf_bert_tiny.py"), "--out", str(study)]
    gen += ["--mode", "knockout", "--kinds", "heads", "--epochs", "1"]
    for cmd in (gen, ["run", str(study), "--seeds", "0", "-j", "1", "--quiet"],
                ["rank", str(study), "--metric", "val_loss", "--no-plots"]):  # fmt: skip
        done = subprocess.run(base + cmd, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
    argv = ["prune", study, "--ratios", "0.5", "--seeds", "0", "--finetune-epochs", "1"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    script = study / "prune" / "pruned_0.5.py"
    assert b"import ablagen" not in script.read_bytes()
    assert b"gc.freeze" not in script.read_bytes()
    result = json.loads((study / "prune" / "results" / "pruned_0.5_seed0.json").read_text())  # fmt: skip
    assert result["status"] == "ok"
    pruned = _module(script, "pruned_bert")
    model = apply_plan(new_model(pruned).eval(), pruned.PLAN)
    assert result["pruned"]["params"] == sum(p.numel() for p in model.parameters())
    assert result["before"]["params"] == sum(p.numel() for p in new_model(pruned).parameters())  # fmt: skip
    for layer in model.bert.encoder.layer:  # two of four heads, the MLP unranked: whole
        assert layer.attention.self.num_attention_heads == 2
        assert layer.attention.self.query.weight.shape == (16, 32)
        assert layer.intermediate.dense.weight.shape == (64, 32)
    assert result["pruned"]["macs"] < result["before"]["macs"]
    report = (study / "report.md").read_text()
    assert "## Pruning" in report and "![prune.png](prune/prune.png)" in report
    assert report.index("## Pruning") < report.index("## Reproduce")
    html = (study / "report.html").read_text()
    assert "Pruning" in html and "val_acc fine-tuned" in html


BESIDE_ITS_DATA = '''"""A small CNN whose data sits beside it, found through __file__."""

from pathlib import Path

import numpy as np
from torch import nn

INPUT_SHAPE = (1, 8, 8)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        return self.head(self.act(self.conv(x)).flatten(1))


def build_data():
    data = np.load(Path(__file__).parent / "digits.npz")
    x, y = data["x"].reshape(-1, 1, 8, 8), data["y"]
    return x[:300], y[:300], x[300:], y[300:]
'''


@pytest.mark.slow
def test_a_pruned_script_finds_what_the_model_file_reads_beside_it(tmp_path, capsys):
    """The pruned scripts sit one folder below the study: the embedded code's
    ``__file__`` still names the model file from there."""
    from sklearn.datasets import load_digits

    import numpy as np

    digits = load_digits()
    np.savez(
        tmp_path / "digits.npz",
        x=digits.data[:400].astype("float32") / 16,
        y=digits.target[:400],
    )
    (tmp_path / "net.py").write_text(BESIDE_ITS_DATA)
    study = tmp_path / "study"
    base = [sys.executable, "-m", "ablagen"]
    gen = [
        "generate",
        str(tmp_path / "net.py"),
        "--out",
        str(study),
        "--mode",
        "knockout",
    ]
    gen += ["--kinds", "neurons", "--neuron-groups", "4", "--epochs", "1"]
    for argv in (
        gen,
        ["run", str(study), "--seeds", "0", "-j", "1", "-q"],
        ["rank", str(study), "--no-plots"],
    ):
        subprocess.run(base + argv, check=True, capture_output=True)  # fmt: skip
    code, _, err = run_cli(["prune", study, "--ratios", "0.5", "--no-run"], capsys)
    assert code == 0, err
    result = tmp_path / "result.json"
    done = subprocess.run(
        [sys.executable, "pruned_0.5.py", "--epochs", "1", "--finetune-epochs", "0", "--out", str(result)],
        cwd=study / "prune", capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(result.read_text())["status"] == "ok"

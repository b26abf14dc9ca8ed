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
    x = pruned_script.load_data()[2][:16]
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

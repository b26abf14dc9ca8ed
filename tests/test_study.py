"""The main job end to end: ablagen study, resumable; ablagen hybrid's arms."""

from __future__ import annotations

import json

import pytest

from ablagen.core.studydir import load_manifest
from conftest import EXAMPLES, MODELS, run_cli
from scriptutil import load_script, new_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A small real study: the wine MLP, 2 epochs, 2 seeds, both arm sets."""
    from ablagen.cli import main

    out = tmp_path_factory.mktemp("study") / "wine"
    args = ["study", str(EXAMPLES / "tabular_mlp.py"), "--out", str(out), "--epochs", "2", "--seeds", "0,1",
            "--arm-seeds", "0,1", "--quiet", "--sigma", "0.01", "--ablate-bottom", "1"]  # fmt: skip
    assert main(args) == 0
    return out


def test_study_writes_ranking_noise_scales_arms_and_report(study):
    for name in (
        "importance.json",
        "importance.csv",
        "noise_scales.json",
        "arms.json",
        "report.md",
        "hybrid.py",
    ):
        assert (study / name).is_file(), name
    arms = json.loads((study / "arms.json").read_text())["arms"]
    assert [a["arm"] for a in arms] == [
        "baseline",
        "arm:ablated",
        "arm:perturbed",
        "arm:hybrid",
        "arm:shuffled",
    ]
    assert all(a["seeds"] == [0, 1] for a in arms)  # shuffled.py trained too
    report = (study / "report.md").read_text()
    assert "The five arms" in report and "arm:shuffled" in report
    ranked = json.loads((study / "importance.json").read_text())["rows"]
    assert ranked and not any(r["variant"].startswith("arm:") for r in ranked)


def test_second_study_run_trains_nothing_traces_once_and_reports_once(
    study, monkeypatch
):
    from dataclasses import replace

    import ablagen.generate.prepare
    import ablagen.study.pipeline
    from ablagen.generate.build import GenerateOptions
    from ablagen.study.pipeline import run_full_study
    from ablagen.study import STUDY_TRAIN, ArmOptions, StudyOptions

    calls = {"analyze": 0, "report": 0}

    def counting(name, real):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(
        ablagen.generate.prepare,
        "analyze",
        counting("analyze", ablagen.generate.prepare.analyze),
    )
    monkeypatch.setattr(
        ablagen.study.pipeline,
        "write_report",
        counting("report", ablagen.study.pipeline.write_report),
    )
    manifest_before = (study / "manifest.json").read_bytes()
    opts = StudyOptions(
        generate=GenerateOptions(
            model=str(EXAMPLES / "tabular_mlp.py"),
            out=study,
            train=replace(STUDY_TRAIN, epochs=2),  # the CLI's defaults, --epochs 2
        ),
        seeds=(0, 1),
        arm_seeds=(0, 1),
        arms=ArmOptions(sigma=0.01, ablate_bottom=1),
    )
    outcome = run_full_study(opts)
    assert (
        outcome.ablation_runs.ran == 0
        and outcome.arm_runs is not None
        and outcome.arm_runs.ran == 0
    )
    assert outcome.ablation_runs.skipped_ok == outcome.ablation_runs.planned > 0
    assert calls == {"analyze": 1, "report": 1}  # the arms reuse the traced model
    assert (study / "manifest.json").read_bytes() == manifest_before
    assert outcome.report == study / "report.md"
    assert outcome.ranking.files[-2:] == (outcome.report, study / "report.html")


def test_hybrid_command_renders_the_arms_the_study_rendered(study, capsys):
    """``ablagen hybrid`` rebuilds the state from the manifest and the ranking files:
    the same scripts and manifest as the pipeline's objects gave."""
    names = ("ablated.py", "perturbed.py", "hybrid.py", "shuffled.py", "manifest.json")
    before = {name: (study / name).read_bytes() for name in names}
    code, out, err = run_cli(
        ["hybrid", study, "--sigma", "0.01", "--ablate-bottom", "1"], capsys
    )
    assert code == 0, err
    assert {name: (study / name).read_bytes() for name in names} == before


def test_hybrid_script_carries_the_noise_scales(study):
    from ablagen.arms.hybrid import energy_matched

    raw = json.loads((study / "noise_scales.json").read_text())["parameters"]
    scales = energy_matched(raw, load_manifest(study).model["parameters"])
    module = load_script(study / "hybrid.py")
    assert module.NOISE_SCALES == scales
    model = new_model(module)
    optimizer = module.make_optimizer(model, 0.01)
    by_param = {
        id(p): g["noise_scale"] for g in optimizer.param_groups for p in g["params"]
    }
    for name, param in model.named_parameters():
        expected = scales[name] if not isinstance(scales[name], list) else 1.0
        assert by_param[id(param)] == expected
    assert module.SIGMA == 0.01
    perturbed = load_script(study / "perturbed.py")
    assert perturbed.SIGMA == 0.01 and not hasattr(perturbed, "NOISE_SCALES")


def test_shuffled_script_carries_the_hybrids_scales_permuted(study):
    from ablagen.arms.hybrid import arm_scales
    from ablagen.arms.noise_scales import load_noise_scales, shuffled_noise_scales
    from ablagen.rank.ranking import load_ranking

    manifest, noise = load_manifest(study), load_noise_scales(study)
    parameters = manifest.model["parameters"]
    shuffled = shuffled_noise_scales(manifest, load_ranking(study), noise, seed=0)
    module = load_script(study / "shuffled.py")
    assert module.NOISE_SCALES == arm_scales(shuffled, parameters)
    assert module.NOISE_SCALES != load_script(study / "hybrid.py").NOISE_SCALES
    assert module.SIGMA == 0.01
    scales = sorted(c["scale"] for c in shuffled.components.values())
    assert scales == sorted(c["scale"] for c in noise.components.values())


def test_ablated_arm_removes_the_least_important_component(study):
    manifest = load_manifest(study)
    arm = manifest.variant("arm:ablated")
    ranked = json.loads((study / "importance.json").read_text())["rows"]
    assert arm.extra["removed"] == [ranked[-1]["variant"]]


def test_hybrid_needs_a_ranking(tmp_path, capsys):
    from scriptutil import generate

    out = generate(MODELS / "mlp.py", tmp_path / "s", dataset="synthetic")
    code, _, err = run_cli(["hybrid", out], capsys)
    assert code == 2 and "ablagen rank" in err and err.count("\n") == 1


def test_rank_without_results_says_run_it_first(tmp_path, capsys):
    from scriptutil import generate

    out = generate(MODELS / "mlp.py", tmp_path / "s", dataset="synthetic")
    code, _, err = run_cli(["rank", out], capsys)
    assert code == 2 and "run" in err and err.count("\n") == 1


def test_energy_matched_scales_keep_the_order_and_the_total_noise():
    from ablagen.arms.hybrid import energy_matched

    parameters = [["a.weight", [4, 3]], ["a.bias", [4]], ["b.weight", [2, 4]]]
    raw = {
        "a.weight": [0.1, 0.1, 2.0, 2.0],
        "a.bias": [0.1, 0.1, 2.0, 2.0],
        "b.weight": 0.5,
    }
    matched = energy_matched(raw, parameters)
    energy = sum(u * u * 3 for u in matched["a.weight"]) + sum(
        u * u for u in matched["a.bias"]
    )
    energy += matched["b.weight"] ** 2 * 8
    assert energy == pytest.approx(
        12 + 4 + 8, rel=1e-4
    )  # as much noise as scale 1 everywhere
    ratio = matched["b.weight"] / raw["b.weight"]
    assert matched["a.weight"] == pytest.approx(
        [u * ratio for u in raw["a.weight"]], rel=1e-4
    )


def test_spearman_is_scipys_and_none_where_undefined():
    import scipy.stats

    from ablagen.study.pipeline import spearman

    a, b = [0.9, 0.1, 0.5, 0.5, 0.3], [0.8, 0.2, 0.4, 0.6, 0.1]
    assert spearman(a, b) == pytest.approx(
        scipy.stats.spearmanr(a, b).statistic, abs=1e-12
    )
    assert spearman([1.0], [2.0]) is None
    assert spearman([1.0, 1.0, 1.0], [0.1, 0.2, 0.3]) is None  # constant: undefined


def test_two_stage_retrains_the_top_and_the_most_uncertain():
    from types import SimpleNamespace as Row

    from ablagen.study.pipeline import _retrain_choice

    rows = [
        Row(variant="a", ci_low=0.8, ci_high=0.9),
        Row(variant="b", ci_low=0.1, ci_high=0.7),
        Row(variant="c", ci_low=-0.5, ci_high=0.5),
        Row(variant="d", ci_low=None, ci_high=None),
    ]
    assert _retrain_choice(rows, 1) == ("a", "d")
    assert _retrain_choice(rows, 2) == ("a", "b", "d", "c")


def _row(rank, variant, mean):
    from ablagen.rank.ranking import ImportanceRow

    component, method = variant.split(":")
    return ImportanceRow(rank, variant, component, "activation", method, mean, None,
                         1, None, None, True, (0,), (mean,), 0.9, 0.9 - mean)  # fmt: skip


def test_two_stage_ablated_arm_removes_the_least_important_of_the_whole_ranking():
    """Issue #30.1: the screen and the verification disagree. The screen ranks six
    components (f least important); its top 2 and its 2 widest (e, f) are verified:
    f and e matter after all, b does not. The ablated arm removes the screen's
    least important unverified components (d, c), never what verification found to
    matter, nor the verification's own bottom (b, e) as it used to."""
    from types import SimpleNamespace

    from ablagen.arms.hybrid import least_important, removal_order

    screen = tuple(
        _row(i + 1, f"{c}:identity", 0.6 - 0.1 * i) for i, c in enumerate("abcdef")
    )
    verified = (_row(1, "f:identity", 0.05), _row(2, "a:identity", 0.03),
                _row(3, "e:identity", 0.01), _row(4, "b:identity", -0.01))  # fmt: skip
    comps = {
        c: SimpleNamespace(id=c, module=c, param_owner=None, methods=("identity",))
        for c in "abcdef"
    }
    inventory = SimpleNamespace(get=comps.get)
    order = removal_order(screen, verified)
    assert [r.variant[0] for r in order] == list("faebcd")
    removed = [c.id for c, _ in least_important(inventory, order, 2)]
    assert removed == ["d", "c"]
    assert [c.id for c, _ in least_important(inventory, verified, 2)] == [
        "b",
        "e",
    ]  # the old choice
    # with more to remove than the unverified: the harmless verified b, then by the screen
    assert [c.id for c, _ in least_important(inventory, order, 4)] == [
        "d",
        "c",
        "b",
        "e",
    ]


def test_two_stage_study_writes_a_report_at_its_top(tmp_path, capsys, monkeypatch):
    """Issue #30.7: the two-stage report was only in retrain/; now OUT/report.md and
    OUT/report.html link both stages, and the command prints where they are. The
    ablated arm takes the screen's least important, never a verified one. One pool
    of warm workers runs the three stages (screen, retraining, arms): started once."""
    import subprocess

    from ablagen.orchestrate.local import WORKER

    pools = []
    popen = subprocess.Popen

    class Counted(popen):  # the real processes, counted on their way through
        def __init__(self, args, *rest, **kwargs):
            if str(WORKER) in map(str, args):
                pools.append(args)
            super().__init__(args, *rest, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", Counted)
    out = tmp_path / "two"
    code, stdout, _ = run_cli(
        ["study", EXAMPLES / "digits_cnn.py", "--out", out, "--mode", "two-stage",
         "--retrain-top", "1", "--epochs", "1", "--seeds", "0,1", "--arm-seeds", "0",
         "--quiet", "--jobs", "2"],
        capsys,
    )  # fmt: skip
    assert code == 0
    assert len(pools) == 1
    assert f"report: {out / 'report.md'} and {out / 'report.html'}" in " ".join(
        stdout.split()
    )
    md = (out / "report.md").read_text()
    assert "(screen/report.md)" in md and "(retrain/report.md)" in md
    assert "## Taylor screen versus retraining" in md and "## The five arms" in md
    assert 'href="retrain/report.html"' in (out / "report.html").read_text()
    screen = json.loads((out / "screen" / "importance.json").read_text())["rows"]
    verified = json.loads((out / "retrain" / "importance.json").read_text())["rows"]
    removed = load_manifest(out / "retrain").variant("arm:ablated").extra["removed"]
    assert removed and not set(removed) & {r["variant"] for r in verified}
    assert {r["variant"] for r in screen[-len(removed) - 2 :]} >= set(removed)

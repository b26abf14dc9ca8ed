"""ablagen sweep: grid parsing, the robustness figures against hand computations,
bad input (one line, exit 2, nothing written) and a tiny sweep end to end."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as sps

from ablagen.core.errors import ConfigError
from ablagen.sweep import parse_arms, parse_lrs
from ablagen.sweep.stats import (
    paired_t,
    per_seed_drops,
    seed_variance,
    t_interval,
    variance_comparison,
    window_decades,
)
from conftest import EXAMPLES, run_cli


def test_parse_lrs_list_and_log_range():
    assert parse_lrs("1e-2, 1e-3,0.1") == (1e-3, 1e-2, 0.1)
    assert parse_lrs("1e-4:1e-1:7") == (
        1e-4,
        3.16228e-4,
        1e-3,
        3.16228e-3,
        1e-2,
        3.16228e-2,
        1e-1,
    )
    assert parse_arms("hybrid,plain") == ("plain", "hybrid")  # drawing order
    assert parse_arms("shuffled,hybrid,plain") == ("plain", "hybrid", "shuffled")
    for bad in ("", "1e-3,0", "1e-3,-1", "abc", "1e-3:1e-3:4", "1e-3,1e-3"):
        with pytest.raises(ConfigError):
            parse_lrs(bad)


def test_lr_window_interpolates_to_the_threshold_crossing():
    x = np.array([-3.0, -2.0, -1.0, 0.0])
    # best 90 at 1e-2; threshold 89: crosses at -3 + 39/40 on the left,
    # 0 - 19/19.5 on the right (hand-computed)
    got = window_decades(x, np.array([50.0, 90.0, 89.5, 70.0]), 1.0)
    assert got == pytest.approx((0 - 19 / 19.5) - (-3 + 39 / 40))
    assert window_decades(x, np.array([80.0, 80.5, 80.2, 79.9]), 1.0) == 3.0
    assert window_decades(x, np.array([10.0, 10.0, 90.0, 10.0]), 1.0) == pytest.approx(
        1 / 80 * 2
    )


def test_drop_variance_and_paired_tests_match_hand_formulas():
    good = np.array([[50.0, 90.0, 80.0], [55.0, 92.0, 70.0], [40.0, 91.0, 85.0]])
    assert per_seed_drops(good).tolist() == [40.0, 37.0, 51.0]
    per_lr = [statistics.variance(col) for col in good.T.tolist()]
    assert seed_variance(good) == pytest.approx(statistics.fmean(per_lr))
    a, b = np.array([1.0, 1.5, 0.7, 1.2]), np.array([0.8, 1.0, 0.9, 0.6])
    d = a - b
    t = statistics.fmean(d) / (statistics.stdev(d) / math.sqrt(4))
    cmp = paired_t(a, b)
    assert cmp.p_value == pytest.approx(2 * sps.t.sf(abs(t), 3))
    half = sps.t.ppf(0.975, 3) * statistics.stdev(d) / 2
    assert (cmp.diff.low, cmp.diff.high) == pytest.approx(
        (statistics.fmean(d) - half, statistics.fmean(d) + half)
    )
    assert paired_t(a, a).p_value == 1.0
    other = good + np.array([[0.0, 1.0, -3.0], [0.0, -1.0, 3.0], [0.0, 0.0, 0.0]])
    var = variance_comparison(other, good)
    assert var.diff.value == pytest.approx(seed_variance(other) - seed_variance(good))
    assert var.n == 3
    assert t_interval(np.array([1.0])).low is None


@pytest.mark.parametrize(
    "args, message",
    [
        (["--lrs", ""], "no learning rates given"),
        (["--lrs", "1e-3,0"], "is not positive"),
        (["--lrs", "-1e-3"], "is not positive"),
        (["--arms", "plain,noisy"], "unknown arm 'noisy'"),
        (["--arms", "plain,hybrid"], "the hybrid arm needs a ranked study"),
        (["--arms", "plain,shuffled"], "the shuffled arm needs a ranked study"),
        (["--sigmas", "0.01,0.1", "--seeds", "0-19"], "more than --max-runs 500"),
        (["--seeds", "0,1", "--max-runs", "10"], "more than --max-runs 10"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    tmp_path, capsys, args, message
):
    out = tmp_path / "sweep"
    code, stdout, err = run_cli(
        ["sweep", EXAMPLES / "digits_cnn.py", "--out", out, "--quiet", *args], capsys
    )
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err and not out.exists()


@pytest.mark.slow
def test_tiny_sweep_end_to_end(tmp_path, capsys):
    """A ranked knockout study of the wine MLP, then 5 arms x 2 lrs x 2 seeds."""
    study = tmp_path / "wine"
    code, _, err = run_cli(
        ["study", EXAMPLES / "tabular_mlp.py", "--out", study, "--mode", "knockout",
         "--epochs", "1", "--seeds", "0,1", "--no-arms", "--quiet"], capsys,
    )  # fmt: skip
    assert code == 0, err
    # an unranked study refuses hybrid too
    code, _, err = run_cli(["sweep", tmp_path, "--arms", "hybrid"], capsys)
    assert code == 2 and "not an ablagen study" in err
    sweep = ["sweep", study, "--lrs", "0.001,0.03", "--seeds", "0,1", "--epochs", "2",
             "--arms", "plain,perturbed,annealed,hybrid,shuffled",
             "--quiet", "--jobs", "2"]  # fmt: skip
    code, out, err = run_cli(sweep, capsys)
    assert code == 0, err
    folder = study / "sweep"
    data = json.loads((folder / "sweep.json").read_text())
    labels = [s["label"] for s in data["series"]]
    assert labels == [
        "plain",
        "perturbed sigma=0.01",
        "annealed sigma=0.01",
        "hybrid sigma=0.01",
        "shuffled sigma=0.01",
    ]
    from ablagen.orchestrate import ResultStore

    with ResultStore(folder, readonly=True) as store:
        records = store.records()
    assert len(records) == 5 * 2 * 2 and all(r.ok for r in records)
    by_key = {(r.variant_id, r.seed): r.result["final"]["val_acc"] for r in records}
    for series in data["series"]:
        values = np.array(
            [[p["values"][str(s)] * 100 for p in series["points"]] for s in (0, 1)]
        )
        for p, lr in zip(series["points"], (0.001, 0.03)):
            vid = (
                "plain:lr="
                if series["arm"] == "plain"
                else f"{series['arm']}:sigma=0.01:lr="
            )
            assert [p["values"][k] for k in ("0", "1")] == [
                by_key[(vid + format(lr, "g"), s)] for s in (0, 1)
            ]
        figs = series["figures"]
        drops = values.max(axis=1) - values.min(axis=1)
        assert figs["worst_case_drop"]["value"] == pytest.approx(drops.mean())
        for name in ("lr_window_decades", "worst_case_drop", "seed_variance"):
            assert (
                figs[name]["ci_low"] is not None and figs[name]["ci_high"] is not None
            )
            assert (figs[name]["vs_plain"] is None) == (series["arm"] == "plain")
        if series["arm"] != "plain":
            plain = data["series"][0]["figures"]["worst_case_drop"]["per_seed"]
            d = [figs["worst_case_drop"]["per_seed"][s] - plain[s] for s in ("0", "1")]
            ref = sps.ttest_rel([figs["worst_case_drop"]["per_seed"][s] for s in ("0", "1")],
                                [plain[s] for s in ("0", "1")]).pvalue  # fmt: skip
            got = figs["worst_case_drop"]["vs_plain"]
            assert got["value"] == pytest.approx(statistics.fmean(d))
            if not math.isclose(d[0], d[1], abs_tol=1e-9):  # else: p undefined
                assert got["p_value"] == pytest.approx(ref)
    # a generated script reruns alone with plain python and gives the stored number
    script = folder / "perturbed__sigma_0p01__lr_0p03.py"
    assert "NOISE_SCALES" in (folder / "hybrid__sigma_0p01__lr_0p03.py").read_text()
    from ablagen.arms.hybrid import arm_scales
    from ablagen.arms.noise_scales import load_noise_scales, shuffled_noise_scales
    from ablagen.core.studydir import load_manifest
    from ablagen.rank.ranking import load_ranking
    from scriptutil import load_script

    manifest, noise = load_manifest(study), load_noise_scales(study)
    shuffled = shuffled_noise_scales(manifest, load_ranking(study), noise)
    module = load_script(folder / "shuffled__sigma_0p01__lr_0p03.py")
    assert module.NOISE_SCALES == arm_scales(shuffled, manifest.model["parameters"])
    result = tmp_path / "r.json"
    subprocess.run([sys.executable, script, "--seed", "1", "--out", result], check=True,
                   capture_output=True, cwd=folder)  # fmt: skip
    rerun = json.loads(result.read_text())["final"]["val_acc"]
    assert rerun == by_key[("perturbed:sigma=0.01:lr=0.03", 1)]
    assert (folder / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (study / "report.md").read_text()
    assert (
        report.count("<!-- ablagen:sweep sweep -->") == 1
        and "sweep/sweep.png" in report
    )
    # resumable: a second sweep trains nothing and replaces its report section
    code, out, err = run_cli(sweep, capsys)
    assert code == 0, err
    with ResultStore(folder, readonly=True) as store:
        assert len(store.records()) == 20
    assert (study / "report.md").read_text().count("<!-- ablagen:sweep sweep -->") == 1

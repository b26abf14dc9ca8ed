"""Paired importance with t intervals, checked against hand-computed references."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from scipy import stats

from ablagen.core.errors import StudyError
from ablagen.orchestrate.run_record import RunRecord
from ablagen.rank.ranking import (
    metric_value,
    IMPORTANCE_JSON,
    Ranking,
    load_ranking,
    rank,
    select_records,
    single_seed_note,
    write_importance,
)
from ablagen.core.studydir import Manifest, VariantEntry

SEEDS = (0, 1, 2, 3, 4)
BASE_ACC = (0.90, 0.92, 0.88, 0.91, 0.89)
# per-seed drop of val_acc when the component is ablated (the ground truth)
ESSENTIAL = (0.50, 0.52, 0.48, 0.49, 0.51)
MIDDLE = (0.10, 0.12, 0.08, 0.11, 0.09)
DEAD = (0.001, -0.002, 0.0, 0.001, -0.001)


def _variant(vid: str) -> VariantEntry:
    if vid == "baseline":
        return VariantEntry(
            "baseline", None, "baseline", None, "baseline.py", "sha-baseline"
        )
    comp, method = vid.rsplit(":", 1)
    kind = "neuron" if "[" in comp else "layer"
    return VariantEntry(
        vid, comp, kind, method, vid.replace(":", "__") + ".py", f"sha-{vid}"
    )


VARIANT_IDS = (
    "baseline",
    "branch:zero",
    "conv1:zero",
    "fc1:mean",
    "act:zero",
    "fc2:zero",
)
MANIFEST = Manifest(
    "0.1.0",
    "retrain",
    {"path": "m.py", "parameters": []},
    {},
    tuple(_variant(v) for v in VARIANT_IDS),
)


def record(
    vid: str, seed: int, status: str = "ok", acc: float | None = None, **extra
) -> RunRecord:
    final = (
        {} if acc is None else {"val_acc": acc, "val_loss": 1.0 - acc, "train_acc": acc}
    )
    result = {"final": final, "epochs_to_target": extra.pop("ett", None), "seed": seed}
    return RunRecord(
        vid,
        seed,
        extra.pop("args", {"epochs": 2}),
        extra.pop("sha", f"sha-{vid}"),
        status,
        result if status == "ok" else None,
    )


def study_records() -> list[RunRecord]:
    recs = []
    for i, seed in enumerate(SEEDS):
        base = BASE_ACC[i]
        recs.append(record("baseline", seed, acc=base, ett=3 + i % 2))
        recs.append(record("conv1:zero", seed, acc=base - ESSENTIAL[i], ett=None))
        recs.append(record("fc1:mean", seed, acc=base - MIDDLE[i], ett=4))
        recs.append(record("branch:zero", seed, acc=base - DEAD[i], ett=3))
        recs.append(
            record("act:zero", seed, "diverged" if seed == 2 else "ok", acc=base - 0.2)
        )
        if seed != 4:
            recs.append(record("fc2:zero", seed, acc=base - 0.3))
    return recs


@pytest.mark.parametrize("confidence", [0.8, 0.9, 0.95, 0.99])
def test_interval_is_scipys_student_t_interval(confidence: float) -> None:
    ranking = rank(MANIFEST, study_records(), confidence=confidence)
    for row in ranking.rows:
        low, high = stats.t.interval(
            confidence, row.n - 1, loc=row.mean, scale=stats.sem(row.diffs)
        )
        assert (row.ci_low, row.ci_high) == pytest.approx((low, high), abs=1e-12)


def test_ranking_reads_back_what_it_wrote(tmp_path) -> None:
    ranking = rank(MANIFEST, study_records())
    assert ranking.failed and ranking.rows  # both kinds of row travel
    assert Ranking.from_json(json.loads(ranking.dumps())) == ranking
    write_importance(tmp_path, ranking)
    assert load_ranking(tmp_path) == ranking


def test_missing_or_corrupt_ranking_says_run_rank(tmp_path) -> None:
    with pytest.raises(StudyError, match="ablagen rank"):
        load_ranking(tmp_path)
    (tmp_path / IMPORTANCE_JSON).write_text('{"metric": "val_acc"}')
    with pytest.raises(StudyError, match="corrupt.*ablagen rank"):
        load_ranking(tmp_path)


def test_ranks_essential_first_and_dead_includes_zero() -> None:
    ranking = rank(MANIFEST, study_records())
    assert [r.variant for r in ranking.rows] == [
        "conv1:zero",
        "fc1:mean",
        "branch:zero",
    ]
    assert [r.rank for r in ranking.rows] == [1, 2, 3]
    essential, middle, dead = ranking.rows
    assert not essential.ci_includes_zero and not middle.ci_includes_zero
    assert dead.ci_includes_zero
    assert dead.ci_low < 0.0 < dead.ci_high


def test_paired_differences_match_hand_computation() -> None:
    row = rank(MANIFEST, study_records()).row("conv1:zero")
    assert row is not None and row.n == 5 and row.seeds == SEEDS
    assert row.diffs == pytest.approx(ESSENTIAL, abs=1e-12)
    # mean 0.50; deviations 0, .02, -.02, -.01, .01 -> var = .001 / 4
    assert row.mean == pytest.approx(0.50, abs=1e-12)
    assert row.std == pytest.approx(math.sqrt(0.00025), abs=1e-12)
    half = 2.7764451052 * math.sqrt(0.00025) / math.sqrt(5)
    assert row.ci_low == pytest.approx(0.50 - half, abs=1e-9)
    assert row.ci_high == pytest.approx(0.50 + half, abs=1e-9)
    assert row.baseline_mean == pytest.approx(sum(BASE_ACC) / 5)
    assert row.variant_mean == pytest.approx(sum(BASE_ACC) / 5 - 0.50)


def test_loss_metric_sign_keeps_positive_means_hurts() -> None:
    ranking = rank(MANIFEST, study_records(), metric="val_loss")
    assert not ranking.higher_is_better
    row = ranking.row("conv1:zero")
    assert row is not None and row.mean == pytest.approx(0.50, abs=1e-12)
    assert [r.variant for r in ranking.rows][0] == "conv1:zero"


def test_failed_and_missing_variants_are_listed_apart() -> None:
    ranking = rank(MANIFEST, study_records())
    failed = {f.variant: dict(f.statuses) for f in ranking.failed}
    assert failed == {
        "act:zero": {0: "ok", 1: "ok", 2: "diverged", 3: "ok", 4: "ok"},
        "fc2:zero": {0: "ok", 1: "ok", 2: "ok", 3: "ok", 4: "missing"},
    }
    assert ranking.row("act:zero") is None and ranking.row("fc2:zero") is None


def test_top_level_metric_with_null_value_fails_not_ranks() -> None:
    ranking = rank(MANIFEST, study_records(), metric="epochs_to_target")
    assert not ranking.higher_is_better
    failed = {f.variant: dict(f.statuses) for f in ranking.failed}
    assert set(failed["conv1:zero"].values()) == {"no-metric"}
    row = ranking.row("fc1:mean")
    assert row is not None and row.diffs == (1.0, 0.0, 1.0, 0.0, 1.0)  # 4 - (3 + i % 2)


def test_single_seed_has_no_interval() -> None:
    recs = [r for r in study_records() if r.seed == 0]
    row = rank(MANIFEST, recs).row("conv1:zero")
    assert row is not None and row.n == 1
    assert row.std is None and row.ci_low is None and row.ci_high is None
    assert row.ci_includes_zero is None and row.mark == "–"  # no interval, no "≈0"


def test_single_seed_note_only_when_a_variant_has_one_seed() -> None:
    one = rank(MANIFEST, [r for r in study_records() if r.seed == 0])
    note = single_seed_note(one, "runs/s")
    assert note is not None and note.startswith("every variant ranked on one seed")
    assert "--seeds 0,1,2" in note and "ablagen run runs/s" in note
    assert single_seed_note(rank(MANIFEST, study_records())) is None
    assert {r.mark for r in rank(MANIFEST, study_records()).rows} <= {"", "≈0"}


def test_missing_metric_names_it_and_lists_available() -> None:
    with pytest.raises(StudyError) as err:
        rank(MANIFEST, study_records(), metric="val_f1")
    message = str(err.value)
    assert "'val_f1'" in message and "val_acc" in message and "val_loss" in message


def test_no_results_says_run_it_first() -> None:
    with pytest.raises(StudyError) as err:
        rank(MANIFEST, [], study="generated/demo")
    assert (
        str(err.value)
        == "no results in generated/demo; run it first with `ablagen run generated/demo`"
    )


def test_stale_records_are_ignored() -> None:
    stale = [record("baseline", s, acc=0.1, sha="old") for s in SEEDS]
    assert rank(MANIFEST, stale + study_records()).baseline_mean == pytest.approx(0.90)
    with pytest.raises(StudyError, match="stale"):
        rank(MANIFEST, stale)


def test_selection_prefers_args_group_with_most_baseline_seeds_and_last_wins() -> None:
    short = [record("baseline", 0, acc=0.5, args={"epochs": 1})]
    retried = [record("conv1:zero", 0, "failed"), record("conv1:zero", 0, acc=0.4)]
    sel = select_records(MANIFEST, short + study_records() + retried)
    assert sel.args == {"epochs": 2}
    assert sel.runs["conv1:zero"][0].result["final"]["val_acc"] == pytest.approx(0.4)


def test_baseline_without_ok_run_is_an_error() -> None:
    recs = [r for r in study_records() if r.variant_id != "baseline"]
    recs.append(record("baseline", 0, "crashed"))
    with pytest.raises(StudyError, match="baseline"):
        rank(MANIFEST, recs)


def test_tracked_runs_tag_no_interval_verdict_for_one_seed() -> None:
    from ablagen.track.runs import parent_run

    entry = next(v for v in MANIFEST.variants if v.id == "conv1:zero")
    one = parent_run(entry, rank(MANIFEST, [r for r in study_records() if r.seed == 0]))
    assert "importance.ci_includes_zero" not in one.tags  # one seed: no interval
    assert "importance/ci_low" not in {p.key for p in one.metrics}
    five = parent_run(entry, rank(MANIFEST, study_records()))
    assert five.tags["importance.ci_includes_zero"] == "false"


def test_the_one_t_interval_is_scipys_and_serves_ranking_and_sweep():
    """rank.intervals.t_interval against scipy.stats.t.interval; the ranking's and
    the sweep's intervals are that one."""
    import numpy as np
    from scipy import stats

    from ablagen.rank.intervals import t_interval
    from ablagen.rank.ranking import _stats
    from ablagen.sweep.stats import t_interval as sweep_interval

    values = [0.12, 0.31, 0.25, 0.4, 0.05]
    low, high = stats.t.interval(
        0.9, len(values) - 1, loc=np.mean(values), scale=stats.sem(values)
    )
    got = t_interval(values, 0.9)
    assert (got.low, got.high) == pytest.approx((low, high), rel=1e-12)
    assert got.std == pytest.approx(np.std(values, ddof=1), rel=1e-12)
    assert _stats(values, 0.9) == (got.mean, got.std, got.low, got.high)
    at95 = t_interval(values)
    swept = sweep_interval(np.array(values))
    assert (swept.value, swept.low, swept.high) == (at95.mean, at95.low, at95.high)
    one = t_interval([0.3])
    assert (one.mean, one.std, one.low, one.high) == (0.3, None, None, None)


def test_rank_table_prints_tiny_importances_readably(capsys) -> None:
    """val_loss importances of 1e-5 read as such, not as +0.0000 (four decimals
    stay for the rest); the numbers: mean and Student-t 95 % half-width of the
    paired differences (2, 4, 3)e-5 and (10, 12, 14)e-3 over 3 seeds."""
    from ablagen.cli.rank import _print_table

    manifest = Manifest(
        "0.1.0",
        "retrain",
        {"path": "m.py", "parameters": []},
        {},
        tuple(_variant(v) for v in ("baseline", "fc1:mean", "conv1:zero")),
    )
    recs = []
    for seed, tiny, small in zip((0, 1, 2), (2e-5, 4e-5, 3e-5), (0.010, 0.012, 0.014)):
        recs += [
            record("baseline", seed, acc=0.5),
            record("fc1:mean", seed, acc=0.5 - tiny),  # val_loss up by `tiny`
            record("conv1:zero", seed, acc=0.5 - small),
        ]
    _print_table(rank(manifest, recs, metric="val_loss"), "STUDY")
    rows = {
        line.split("│")[2].strip(): [c.strip() for c in line.split("│")[5:7]]
        for line in capsys.readouterr().out.splitlines()
        if line.count("│") > 5 and ":" in line
    }
    assert rows == {
        "conv1:zero": ["+0.0120 ± 0.0050", "[+0.0070, +0.0170]"],
        "fc1:mean": ["+3.00e-05 ± 2.48e-05", "[+5.16e-06, +5.48e-05]"],
    }


def test_peak_memory_on_cpu_is_the_orchestrators_measurement():
    """A script reports peak_memory_bytes on a GPU only (null on CPU): the metric is
    then what the orchestrator measured of the run's process; a script's figure wins."""
    on_cpu = dataclasses.replace(record("baseline", 0, acc=0.9), peak_memory_bytes=123)
    assert metric_value(on_cpu, "peak_memory_bytes") == 123.0
    on_gpu = dataclasses.replace(
        on_cpu, result={**on_cpu.result, "peak_memory_bytes": 456}
    )
    assert metric_value(on_gpu, "peak_memory_bytes") == 456.0
    assert metric_value(record("baseline", 0, acc=0.9), "peak_memory_bytes") is None


def test_a_task_without_accuracy_ranks_on_val_loss_by_default(tmp_path, capsys) -> None:
    """A regression (or lm) study has val_acc None in every result: the default metric
    is its val_loss; an explicit --metric val_acc is refused in one line."""
    from conftest import run_cli

    from ablagen.report.markdown import study_metric

    config = {"train": {"task": "regression"}}
    manifest = dataclasses.replace(MANIFEST, config=config)
    assert study_metric(manifest, "val_acc") == "val_loss"
    assert study_metric(MANIFEST, "val_acc") == "val_acc"  # classification keeps it
    lm = dataclasses.replace(MANIFEST, config={"train": {"task": "lm"}})
    assert study_metric(lm, "val_acc") == "val_ppl"  # as `ablagen study --task lm`
    recs = [
        dataclasses.replace(r, result={**r.result, "final": {"val_acc": None, "val_loss": 1 - r.result["final"]["val_acc"]}})  # fmt: skip
        for r in study_records()
        if r.ok
    ]
    ranking = rank(manifest, recs, study_metric(manifest, "val_acc"))
    assert ranking.metric == "val_loss" and ranking.rows[0].variant == "conv1:zero"
    with pytest.raises(StudyError) as err:  # None everywhere: not listed as available
        rank(manifest, recs, "val_acc")
    assert "one of the available metrics: epochs_to_target, val_loss" in str(err.value)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest.to_json()))
    for v in manifest.variants:
        (tmp_path / v.script).write_text("")
    code, _, out = run_cli(["rank", tmp_path, "--metric", "val_acc"], capsys)
    assert code == 2 and out.count("\n") == 1
    assert "a --task regression study scores no accuracy (val_acc)" in out

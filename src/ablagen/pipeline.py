"""``ablagen study``: analyze -> generate -> run -> rank -> noise scales -> arms -> report.

Every step is resumable: generating is deterministic (unchanged scripts keep their
hashes), the orchestrator skips every run already stored as ok, and ranking and
reports are recomputed from the store. A second ``ablagen study`` on the same model
therefore trains nothing again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from ablagen.codegen.study import GenerateOptions, generate_study
from ablagen.errors import ConfigError
from ablagen.hybrid import (
    ArmOptions,
    ArmResult,
    arms_markdown,
    compare_arms,
    write_arms,
    write_arms_json,
)
from ablagen.orchestrate import RunOptions, RunSummary, run_study
from ablagen.report import RankOutputs, rank_study
from ablagen.studydir import ABLATION_KINDS, BASELINE_ID, load_manifest

#: study modes: retrain every variant; screen them on one trained model; or screen,
#: then retrain only the most important and the most uncertain ones
STUDY_MODES = ("retrain", "knockout", "two-stage")


@dataclass(frozen=True)
class StudyOptions:
    generate: GenerateOptions
    seeds: tuple[int, ...] = (0, 1, 2)  # seeds of the ablation runs (the ranking)
    arm_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # seeds of the four arms
    run: RunOptions = field(default_factory=RunOptions)
    arms: ArmOptions = field(default_factory=ArmOptions)
    metric: str = "val_acc"
    with_arms: bool = True
    retrain_top: int = (
        5  # two-stage: retrain the K most important and the K widest intervals
    )


@dataclass(frozen=True)
class StudyOutcome:
    study: Path
    ablation_runs: RunSummary
    ranking: RankOutputs
    arm_runs: RunSummary | None
    arms: list[ArmResult]
    report: Path


Step = Callable[[str], None]


def run_full_study(
    opts: StudyOptions,
    step: Step = lambda message: None,
    progress=None,
    extra_sections: tuple[tuple[str, str], ...] = (),
) -> StudyOutcome:
    """The main job, end to end; ``step`` hears one line per stage."""
    if opts.generate.mode not in STUDY_MODES:
        raise ConfigError(
            f"unknown study mode {opts.generate.mode!r}",
            f"use one of: {', '.join(STUDY_MODES)}",
        )
    if opts.generate.mode == "two-stage":
        return _two_stage(opts, step, progress)
    step("generate: one script per variant")
    generated = generate_study(opts.generate)
    study = generated.out
    ablation_ids = tuple(
        v.id
        for v in generated.manifest.variants
        if v.kind in ABLATION_KINDS or v.id == BASELINE_ID
    )
    step(f"run: {len(ablation_ids)} variants x {len(opts.seeds)} seeds")
    ablation_runs = run_study(
        study, replace(opts.run, seeds=opts.seeds, only=ablation_ids), progress=progress
    )
    step("rank: importance with 95% intervals, noise scales")
    ranking = rank_study(study, opts.metric, extra_sections=extra_sections)
    if not opts.with_arms:
        return StudyOutcome(study, ablation_runs, ranking, None, [], ranking.files[-1])
    step("hybrid: ablated, perturbed and importance-guided arms")
    manifest = write_arms(study, opts.arms)
    arm_ids = (BASELINE_ID, *(v.id for v in manifest.variants if v.kind == "arm"))
    step(f"run: {len(arm_ids)} arms x {len(opts.arm_seeds)} seeds")
    arm_runs = run_study(
        study, replace(opts.run, seeds=opts.arm_seeds, only=arm_ids), progress=progress
    )
    arms = compare_arms(study, opts.arm_seeds)
    write_arms_json(study, arms)
    target = load_manifest(study).config["train"]["target_acc"]
    section = (
        "The four arms",
        f"Final validation metrics over seeds {', '.join(map(str, opts.arm_seeds))} "
        f"(`arms.json`; reproduce with `ablagen hybrid STUDY` then "
        f"`ablagen run STUDY --only {','.join(arm_ids)} --seeds {','.join(map(str, opts.arm_seeds))}`).\n\n"
        + arms_markdown(arms, target),
    )
    step("report: report.md")
    ranking = rank_study(study, opts.metric, extra_sections=[*extra_sections, section])
    return StudyOutcome(
        study, ablation_runs, ranking, arm_runs, arms, ranking.files[-1]
    )


def _two_stage(opts: StudyOptions, step: Step, progress) -> StudyOutcome:
    """Knockout screen of every component, then retrain the top K and the K most uncertain.

    The screen lives in ``OUT/knockout``, the retrain study (with the arms) in
    ``OUT/retrain``; the retrain report shows both rankings side by side.
    """
    out = opts.generate.out
    step(f"stage 1: knockout screen in {out / 'knockout'}")
    screen = run_full_study(
        replace(
            opts,
            generate=replace(opts.generate, mode="knockout", out=out / "knockout"),
            with_arms=False,
        ),
        step,
        progress,
    )
    rows = screen.ranking.ranking.rows
    chosen = _retrain_choice(rows, opts.retrain_top)
    if not chosen:
        raise ConfigError(
            "the knockout screen ranked no component",
            "check the screen's report for failed variants",
        )
    step(f"stage 2: retrain {len(chosen)} variants in {out / 'retrain'}")
    retrain_opts = replace(
        opts,
        generate=replace(
            opts.generate, mode="retrain", out=out / "retrain", components=chosen
        ),
    )
    first = run_full_study(replace(retrain_opts, with_arms=False), step, progress)
    section = (
        "Knockout screen versus retraining",
        compare_rankings(rows, first.ranking.ranking.rows),
    )
    return run_full_study(retrain_opts, step, progress, extra_sections=(section,))


def _retrain_choice(rows, k: int) -> tuple[str, ...]:
    """The k most important variants and the k with the widest intervals, in rank order."""

    def width(row) -> float:
        return (
            float("inf")
            if row.ci_low is None or row.ci_high is None
            else row.ci_high - row.ci_low
        )

    top = [r.variant for r in rows[:k]]
    widest = [r.variant for r in sorted(rows, key=lambda r: (-width(r), r.variant))[:k]]
    return tuple(dict.fromkeys(top + widest))


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None for fewer than 2 pairs."""
    if len(a) < 2:
        return None

    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2 + 1
            i = j + 1
        return out

    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    var = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return cov / var if var else None


def compare_rankings(screen_rows, retrain_rows) -> str:
    """Markdown: both rankings of the retrained variants and their rank correlation."""
    screen = {r.variant: r for r in screen_rows}
    lines = [
        "| variant | knockout rank | knockout importance | retrain rank | retrain importance |",
        "|---|---:|---:|---:|---:|",
    ]
    pairs = []
    for row in retrain_rows:
        other = screen.get(row.variant)
        if other is None:
            continue
        pairs.append((other.mean, row.mean))
        lines.append(
            f"| {row.variant} | {other.rank} | {other.mean:+.4f} | {row.rank} | {row.mean:+.4f} |"
        )
    rho = spearman([p[0] for p in pairs], [p[1] for p in pairs])
    verdict = "n/a (fewer than 2 variants)" if rho is None else f"{rho:+.3f}"
    return (
        f"Spearman rank correlation of the two importances: **{verdict}** over {len(pairs)} variants.\n\n"
        + "\n".join(lines)
        + "\n"
    )

"""``ablagen study``: analyze -> generate -> run -> rank -> noise scales -> arms -> report.

State flows one way, as objects: the generated study (with its prepared model) goes
to the arms, the ranking and noise scales too; files are written for people and for
later commands, never read back here. The report is written once, at the end.

Every step is resumable: generating is deterministic (unchanged scripts keep their
hashes), the orchestrator skips every run already stored as ok, and ranking and
reports are recomputed from the store. A second ``ablagen study`` on the same model
therefore trains nothing again.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ablagen.codegen.study import generate_study
from ablagen.codegen.writer import add_scripts
from ablagen.errors import ConfigError
from ablagen.hybrid import (
    ArmResult,
    arms_markdown,
    compare_arms,
    render_arms,
    write_arms_json,
)
from ablagen.orchestrate import RunSummary, run_study
from ablagen.ranking import ImportanceRow, load_records
from ablagen.report import RankOutputs, rank_and_write, write_report
from ablagen.study.options import STUDY_MODES, STUDY_TRAIN, StudyOptions
from ablagen.studydir import ABLATION_KINDS, ARM_KIND, BASELINE_ID

__all__ = [
    "STUDY_MODES",
    "STUDY_TRAIN",
    "StudyOptions",
    "StudyOutcome",
    "compare_rankings",
    "run_full_study",
    "spearman",
]


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
    return _one_study(opts, step, progress, extra_sections)


def _one_study(
    opts: StudyOptions,
    step: Step,
    progress,
    extra_sections: Sequence[tuple[str, str]] = (),
    screen: tuple[ImportanceRow, ...] | None = None,
) -> StudyOutcome:
    """Generate, run, rank, arms, report; ``screen``: compare with a knockout screen."""
    step("generate: one script per variant")
    generated = generate_study(opts.generate)
    study, manifest = generated.out, generated.manifest
    ablation_ids = tuple(
        v.id
        for v in manifest.variants
        if v.kind in ABLATION_KINDS or v.id == BASELINE_ID
    )
    step(f"run: {len(ablation_ids)} variants x {len(opts.seeds)} seeds")
    ablation_runs = run_study(
        study, replace(opts.run, seeds=opts.seeds, only=ablation_ids), progress=progress
    )
    step("rank: importance with 95% intervals, noise scales")
    ranked = rank_and_write(study, manifest, opts.rank)
    sections = list(extra_sections)
    if screen is not None:
        section = compare_rankings(screen, ranked.ranking.rows)
        sections.append(("Knockout screen versus retraining", section))
    arm_runs, arms = None, []
    if opts.with_arms:
        step("hybrid: ablated, perturbed and importance-guided arms")
        scripts = render_arms(
            generated.prepared, manifest, ranked.ranking, ranked.noise, opts.arms
        )
        manifest = add_scripts(study, manifest, scripts, ARM_KIND)
        arm_ids = (
            BASELINE_ID,
            *(v.id for v in manifest.variants if v.kind == ARM_KIND),
        )
        step(f"run: {len(arm_ids)} arms x {len(opts.arm_seeds)} seeds")
        arm_runs = run_study(
            study,
            replace(opts.run, seeds=opts.arm_seeds, only=arm_ids),
            progress=progress,
        )
        arms = compare_arms(study, opts.arm_seeds)
        write_arms_json(study, arms)
        seeds = ",".join(map(str, opts.arm_seeds))
        sections.append(
            (
                "The four arms",
                f"Final validation metrics over seeds {', '.join(map(str, opts.arm_seeds))} "
                f"(`arms.json`; reproduce with `ablagen hybrid STUDY` then "
                f"`ablagen run STUDY --only {','.join(arm_ids)} --seeds {seeds}`).\n\n"
                + arms_markdown(arms, generated.config.train.target_acc),
            )
        )
    step("report: report.md")
    report = write_report(
        study,
        manifest,
        ranked.ranking,
        load_records(study),  # the arms' runs too
        sections,
        noise=ranked.noise,
        link_plots=opts.rank.plots,
    )
    ranked = replace(ranked, files=(*ranked.files, report))
    return StudyOutcome(study, ablation_runs, ranked, arm_runs, arms, report)


def _two_stage(opts: StudyOptions, step: Step, progress) -> StudyOutcome:
    """Knockout screen of every component, then retrain the top K and the K most uncertain.

    The screen lives in ``OUT/knockout``, the retrain study (with the arms) in
    ``OUT/retrain``; the retrain report shows both rankings side by side.
    """
    out = opts.generate.out
    step(f"stage 1: knockout screen in {out / 'knockout'}")
    screen = _one_study(
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
    retrain = replace(
        opts,
        generate=replace(
            opts.generate, mode="retrain", out=out / "retrain", components=chosen
        ),
    )
    return _one_study(retrain, step, progress, screen=rows)


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
    """Spearman's rank correlation (scipy); None for fewer than 2 pairs or a
    constant side, where it is undefined."""
    if len(a) < 2:
        return None
    from scipy import stats  # lazy: the CLI starts without it

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        rho = float(stats.spearmanr(a, b).statistic)
    return None if math.isnan(rho) else rho


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

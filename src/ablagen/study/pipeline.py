"""``ablagen study``: analyze -> generate -> run -> rank -> noise scales -> arms -> report.

State flows one way, as objects: the generated study (with its prepared model) goes
to the arms, the ranking and noise scales too; files are written for people and for
later commands, never read back here. The report is written once, at the end.

One pool of warm workers (``local.warm_pool``) serves the whole pipeline: it starts
first thing, imports torch while the model is traced and the scripts generated, and
runs the ablations, the arms and, in a two-stage study, both stages.

Every step is resumable: generating is deterministic (unchanged scripts keep their
hashes), the orchestrator skips every run already stored as ok, and ranking and
reports are recomputed from the store. A second ``ablagen study`` on the same model
therefore trains nothing again.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ablagen.generate.screen_mode import SCREEN_METRIC
from ablagen.generate.build import generate_study
from ablagen.generate.writer import add_scripts
from ablagen.core.errors import ConfigError
from ablagen.arms.hybrid import (
    ArmResult,
    arms_markdown,
    compare_arms,
    removal_order,
    render_arms,
    write_arms_json,
)
from ablagen.orchestrate import RunSummary, run_study
from ablagen.orchestrate.local import WarmStart, source_files, warm_pool
from ablagen.orchestrate.placement import check_devices
from ablagen.rank.ranking import ImportanceRow, load_records
from ablagen.report.html import REPORT_HTML
from ablagen.report.markdown import (
    RankOutputs,
    rank_and_write,
    write_report,
    write_stage_index,
)
from ablagen.study.options import (
    SCREENS,
    STUDY_MODES,
    STUDY_TRAIN,
    VERIFIERS,
    StudyOptions,
)
from ablagen.core.studydir import ABLATION_KINDS, ARM_KIND, BASELINE_ID

__all__ = [
    "STUDY_MODES",
    "STUDY_TRAIN",
    "StudyOptions",
    "StudyOutcome",
    "check_screen_metric",
    "compare_rankings",
    "run_full_study",
    "spearman",
    "stage_dirs",
    "top_overlap",
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
    warm: WarmStart | None = None,
) -> StudyOutcome:
    """The main job, end to end; ``step`` hears one line per stage. ``warm``: the
    local pool the caller started (``local.warm_pool``); without one, one starts
    here. Either way that one pool runs every stage's scripts."""
    if opts.generate.mode not in STUDY_MODES:
        raise ConfigError(
            f"unknown study mode {opts.generate.mode!r}",
            f"use one of: {', '.join(STUDY_MODES)}",
        )
    # fp16 without CUDA, no GPU, an unknown --gpus index: refused before generating
    check_devices(opts.run, opts.generate.train.amp)
    with contextlib.ExitStack() as stack:
        if warm is None:  # its workers import torch while the scripts are generated
            sources = source_files(opts.generate.model)
            warm = stack.enter_context(warm_pool(opts.generate.out, opts.run, sources))
        if opts.generate.mode == "two-stage":
            return _two_stage(opts, step, progress, warm)
        if opts.generate.mode == "screen":  # a screen has no accuracy to rank on
            opts = replace(opts, rank=replace(opts.rank, metric=SCREEN_METRIC))
        return _one_study(opts, step, progress, warm, extra_sections)


def check_screen_metric(mode: str, screen: str, metric: str | None) -> None:
    """A metric asked for (``metric``; None: the default) that a Taylor screen cannot
    rank on: one line, exit 2. The screen estimates loss changes, not accuracy."""
    taylor = mode == "screen" or (mode == "two-stage" and screen == "taylor")
    if taylor and metric is not None and metric != SCREEN_METRIC:
        raise ConfigError(
            f"the taylor screen estimates changes of the validation loss, not {metric}",
            f"drop --metric (screens rank on {SCREEN_METRIC}), or use --screen knockout "
            "to rank on exact knockouts",
        )


def _one_study(
    opts: StudyOptions,
    step: Step,
    progress,
    warm: WarmStart | None,
    extra_sections: Sequence[tuple[str, str]] = (),
    screen: tuple[str, str, tuple[ImportanceRow, ...]] | None = None,
) -> StudyOutcome:
    """Generate, run, rank, arms, report; ``screen``: (its name, the name of this
    study's verdict, its rows): the report compares the two rankings."""
    step("generate: one script per variant")
    generated = generate_study(opts.generate)
    if generated.prepared.loaded.input_note:
        step(generated.prepared.loaded.input_note)
    study, manifest = generated.out, generated.manifest
    ablation_ids = tuple(
        v.id
        for v in manifest.variants
        if v.kind in ABLATION_KINDS or v.id == BASELINE_ID
    )
    if warm is not None:  # its workers fork while run_study plans
        scripts = [study / v.script for v in manifest.variants if v.id in ablation_ids]
        warm.prepare(scripts, study)
    step(f"run: {len(ablation_ids)} variants x {len(opts.seeds)} seeds")
    ablation_runs = run_study(
        study,
        replace(opts.run, seeds=opts.seeds, only=ablation_ids),
        progress=progress,
        warm=warm,
    )
    step("rank: importance with 95% intervals, noise scales")
    ranked = rank_and_write(study, manifest, opts.rank)
    sections = list(extra_sections)
    if screen is not None:
        name, verdict, rows = screen
        section = compare_rankings(
            rows, ranked.ranking.rows, name, verdict, opts.retrain_top
        )
        sections.append((f"{name.capitalize()} screen versus {verdict}", section))
    arm_runs, arms = None, []
    if opts.with_arms:
        step("hybrid: ablated, perturbed, importance-guided and shuffled arms")
        removal = None
        if screen is not None:  # the whole ranking: the screen, verified
            removal = (
                removal_order(screen[2], ranked.ranking.rows),
                f"the {screen[0]} screen, corrected by {screen[1]}",
            )
        scripts = render_arms(
            generated.prepared,
            manifest,
            ranked.ranking,
            ranked.noise,
            opts.arms,
            removal,
        )
        manifest = add_scripts(study, manifest, scripts, ARM_KIND)
        arm_ids = (
            BASELINE_ID,
            *(v.id for v in manifest.variants if v.kind == ARM_KIND),
        )
        step(f"run: {len(arm_ids)} arms x {len(opts.arm_seeds)} seeds")
        arm_runs = run_study(  # the same pool, its workers still warm
            study,
            replace(opts.run, seeds=opts.arm_seeds, only=arm_ids),
            progress=progress,
            warm=warm,
        )
        arms = compare_arms(study, opts.arm_seeds)
        write_arms_json(study, arms)
        seeds = ",".join(map(str, opts.arm_seeds))
        sections.append(
            (
                "The five arms",
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
    ranked = replace(
        ranked, files=(*ranked.files, report, report.with_name(REPORT_HTML))
    )
    return StudyOutcome(study, ablation_runs, ranked, arm_runs, arms, report)


def _two_stage(
    opts: StudyOptions, step: Step, progress, warm: WarmStart | None
) -> StudyOutcome:
    """Screen every component, then verify the top K and the K most uncertain.

    ``--screen taylor`` estimates every ablation with ``screen.py`` (in ``OUT/screen``,
    ranked on val_loss), ``--screen knockout`` scores them exactly with
    ``knockout.py`` (``OUT/knockout``); the chosen ones are then knocked out exactly
    (``--verify knockout``: ``OUT/exact``) or retrained (``OUT/retrain``, with the
    arms). The verifier's report shows both rankings side by side.
    """
    if opts.screen not in SCREENS or opts.verify not in VERIFIERS:
        raise ConfigError(
            f"unknown two-stage pair --screen {opts.screen} --verify {opts.verify}",
            f"use --screen {' or '.join(SCREENS)} and --verify {' or '.join(VERIFIERS)}",
        )
    if opts.screen == opts.verify:
        raise ConfigError(
            "--screen knockout --verify knockout would check exact knockouts with themselves",
            "use --screen taylor --verify knockout, or --verify retrain",
        )
    first, second = stage_dirs(opts)
    mode = "screen" if opts.screen == "taylor" else "knockout"
    rank = replace(opts.rank, metric=SCREEN_METRIC) if mode == "screen" else opts.rank
    step(f"stage 1: {opts.screen} screen in {first}")
    screen = _one_study(
        replace(
            opts,
            generate=replace(opts.generate, mode=mode, out=first),
            rank=rank,
            with_arms=False,
        ),
        step,
        progress,
        warm,
    )
    rows = screen.ranking.ranking.rows
    chosen = _retrain_choice(rows, opts.retrain_top)
    if not chosen:
        raise ConfigError(
            f"the {opts.screen} screen ranked no component",
            "check the screen's report for failed variants",
        )
    step(f"stage 2: verify {len(chosen)} variants by {opts.verify} in {second}")
    verify = replace(
        opts,
        generate=replace(
            opts.generate, mode=opts.verify, out=second, components=chosen
        ),
    )
    verdict = "retraining" if opts.verify == "retrain" else "exact knockout"
    outcome = _one_study(
        verify, step, progress, warm, screen=(opts.screen, verdict, rows)
    )
    return replace(outcome, report=_stage_index(opts, outcome, rows, verdict))


def _stage_index(opts: StudyOptions, outcome: StudyOutcome, rows, verdict: str) -> Path:
    """report.md and report.html at the top of a two-stage study: a link to each
    stage's report, the two rankings compared and the arms; returns report.md."""
    first, second = stage_dirs(opts)
    verified = outcome.ranking.ranking.rows
    sections = [
        (
            f"{opts.screen.capitalize()} screen versus {verdict}",
            compare_rankings(rows, verified, opts.screen, verdict, opts.retrain_top),
        )
    ]
    if outcome.arms:
        sections.append(
            (
                "The five arms",
                f"Final validation metrics, from `{second.name}/arms.json`.\n\n"
                + arms_markdown(outcome.arms, opts.generate.train.target_acc),
            )
        )
    lead = (
        f"A {opts.screen} screen of every component in `{first.name}/`, then "
        f"{verdict} of the variants it chose in `{second.name}/`."
    )
    md, _ = write_stage_index(
        opts.generate.out,
        f"Two-stage ablation study: {opts.generate.out.name}",
        lead,
        (
            (f"Stage 1: {opts.screen} screen of every component", first),
            (
                f"Stage 2: {verdict} of the chosen variants"
                + (", and the arms" if outcome.arms else ""),
                second,
            ),
        ),
        sections,
    )
    return md


def stage_dirs(opts: StudyOptions) -> tuple[Path, Path]:
    """Where a two-stage study keeps its screen and its verification."""
    out = opts.generate.out
    return (
        out / ("screen" if opts.screen == "taylor" else "knockout"),
        out / ("retrain" if opts.verify == "retrain" else "exact"),
    )


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


def top_overlap(screen: list[str], verified: list[str], k: int) -> int:
    """How many of the verifier's top ``k`` the screen also puts in its top ``k``."""
    return len(set(screen[:k]) & set(verified[:k]))


def compare_rankings(
    screen_rows,
    verify_rows,
    screen_name: str = "screen",
    verdict: str = "verifier",
    k: int | None = None,
) -> str:
    """Markdown: both rankings of the verified variants, their Spearman rho and the
    top-K overlap (the screen ranks every component; the verifier, the chosen ones)."""
    screen = {r.variant: r for r in screen_rows}
    lines = [
        f"| variant | {screen_name} rank | {screen_name} importance | {verdict} rank | {verdict} importance |",
        "|---|---:|---:|---:|---:|",
    ]
    pairs = []
    for row in verify_rows:
        other = screen.get(row.variant)
        if other is None:
            continue
        pairs.append((other.mean, row.mean))
        lines.append(
            f"| {row.variant} | {other.rank} | {other.mean:+.4f} | {row.rank} | {row.mean:+.4f} |"
        )
    rho = spearman([p[0] for p in pairs], [p[1] for p in pairs])
    verdict_rho = "n/a (fewer than 2 variants)" if rho is None else f"{rho:+.3f}"
    verified = [r.variant for r in verify_rows if r.variant in screen]
    in_order = sorted(verified, key=lambda v: screen[v].rank)
    k = min(k or max(1, len(verified) // 2), max(1, len(verified)))
    both = top_overlap(in_order, verified, k)
    return (
        f"Spearman rank correlation of the two importances: **{verdict_rho}** over {len(pairs)} variants; "
        f"top-{k} overlap: **{both}/{k}** (of the {verdict}'s {k} most important, "
        f"those the {screen_name} screen also ranks in its top {k} of these).\n\n"
        + "\n".join(lines)
        + "\n"
    )

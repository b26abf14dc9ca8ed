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
from ablagen.hybrid import ArmOptions, ArmResult, arms_markdown, compare_arms, write_arms, write_arms_json
from ablagen.orchestrate import RunOptions, RunSummary, run_study
from ablagen.report import RankOutputs, rank_study
from ablagen.studydir import ABLATION_KINDS, BASELINE_ID, load_manifest

#: study modes: retrain every variant, or screen them on one trained model
STUDY_MODES = ("retrain", "knockout")


@dataclass(frozen=True)
class StudyOptions:
    generate: GenerateOptions
    seeds: tuple[int, ...] = (0, 1, 2)  # seeds of the ablation runs (the ranking)
    arm_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # seeds of the four arms
    run: RunOptions = field(default_factory=RunOptions)
    arms: ArmOptions = field(default_factory=ArmOptions)
    metric: str = "val_acc"
    with_arms: bool = True


@dataclass(frozen=True)
class StudyOutcome:
    study: Path
    ablation_runs: RunSummary
    ranking: RankOutputs
    arm_runs: RunSummary | None
    arms: list[ArmResult]
    report: Path


Step = Callable[[str], None]


def run_full_study(opts: StudyOptions, step: Step = lambda message: None, progress=None) -> StudyOutcome:
    """The main job, end to end; ``step`` hears one line per stage."""
    if opts.generate.mode not in STUDY_MODES:
        raise ConfigError(f"unknown study mode {opts.generate.mode!r}", f"use one of: {', '.join(STUDY_MODES)}")
    step("generate: one script per variant")
    generated = generate_study(opts.generate)
    study = generated.out
    ablation_ids = tuple(v.id for v in generated.manifest.variants if v.kind in ABLATION_KINDS or v.id == BASELINE_ID)
    step(f"run: {len(ablation_ids)} variants x {len(opts.seeds)} seeds")
    ablation_runs = run_study(study, replace(opts.run, seeds=opts.seeds, only=ablation_ids), progress=progress)
    step("rank: importance with 95% intervals, noise scales")
    ranking = rank_study(study, opts.metric)
    if not opts.with_arms:
        return StudyOutcome(study, ablation_runs, ranking, None, [], ranking.files[-1])
    step("hybrid: ablated, perturbed and importance-guided arms")
    manifest = write_arms(study, opts.arms)
    arm_ids = (BASELINE_ID, *(v.id for v in manifest.variants if v.kind == "arm"))
    step(f"run: {len(arm_ids)} arms x {len(opts.arm_seeds)} seeds")
    arm_runs = run_study(study, replace(opts.run, seeds=opts.arm_seeds, only=arm_ids), progress=progress)
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
    ranking = rank_study(study, opts.metric, extra_sections=[section])
    return StudyOutcome(study, ablation_runs, ranking, arm_runs, arms, ranking.files[-1])

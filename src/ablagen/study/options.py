"""Options of ``ablagen rank``, ``ablagen hybrid`` and ``ablagen study``.

Each is a frozen dataclass whose field defaults are the CLI's defaults; the
library functions take them whole (:func:`ablagen.report.markdown.rank_study`,
:func:`ablagen.arms.hybrid.render_arms`, :func:`ablagen.study.pipeline.run_full_study`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ablagen.generate.context import TrainConfig
from ablagen.generate.request import GenerateOptions
from ablagen.core.errors import ConfigError
from ablagen.arms.noise_scales import (
    DEFAULT_MAX_SCALE,
    DEFAULT_MIN_SCALE,
    DEFAULT_TEMPERATURE,
)
from ablagen.orchestrate.options import RunOptions

#: study modes: retrain every variant; screen them on one trained model; or screen,
#: then retrain only the most important and the most uncertain ones
STUDY_MODES = ("retrain", "knockout", "screen", "two-stage")

#: two-stage: what ranks every component first, and what checks the chosen ones
SCREENS = ("taylor", "knockout")
VERIFIERS = ("knockout", "retrain")

#: the training settings of ``ablagen study`` (its CLI defaults): longer than a bare
#: ``ablagen generate``, with a cosine schedule and early stopping
STUDY_TRAIN = replace(TrainConfig(), epochs=8, scheduler="cosine", patience=3)


@dataclass(frozen=True)
class RankOptions:
    """Options of ``ablagen rank``."""

    metric: str = "val_acc"
    plots: bool = True
    top_k: int = 5  # variants shown next to the baseline in curves.png
    min_scale: float = DEFAULT_MIN_SCALE
    max_scale: float = DEFAULT_MAX_SCALE
    temperature: float = DEFAULT_TEMPERATURE


@dataclass(frozen=True)
class ArmOptions:
    """Options of the importance-guided arms (``ablagen hybrid``)."""

    sigma: float = 0.01  # base noise std of the perturbed and hybrid arms
    noise: str = "gaussian"
    ablate_bottom: int = 2  # components the ablated arm removes (0: no ablated arm)
    # rescale the hybrid's scales: the same total noise as the perturbed arm
    match_noise: bool = True

    def validate(self) -> ArmOptions:
        if self.sigma < 0 or self.ablate_bottom < 0:
            raise ConfigError(
                "--sigma and --ablate-bottom must not be negative", "give 0 or more"
            )
        return self


@dataclass(frozen=True)
class StudyOptions:
    """Options of ``ablagen study`` (:func:`ablagen.study.pipeline.run_full_study`)."""

    generate: GenerateOptions
    seeds: tuple[int, ...] = (0, 1, 2)  # seeds of the ablation runs (the ranking)
    arm_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # seeds of the arms
    run: RunOptions = field(default_factory=RunOptions)
    arms: ArmOptions = field(default_factory=ArmOptions)
    rank: RankOptions = field(default_factory=RankOptions)
    with_arms: bool = True
    retrain_top: int = 5  # two-stage: verify the K most important and K widest
    screen: str = "taylor"  # two-stage: taylor (screen.py) | knockout (knockout.py)
    verify: str = "retrain"  # two-stage: knockout (exact) | retrain

"""What ``ablagen sweep`` is asked for: the grid (arms x sigmas x learning rates x
seeds), its parsing, and the checks that turn bad input into one line and exit 2.

:class:`SweepOptions` is the request; its field defaults are the CLI's defaults.
Every check runs before anything is loaded, rendered or written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ablagen.generate.context import TrainConfig
from ablagen.core.errors import ConfigError
from ablagen.orchestrate.options import RunOptions

#: the arms, in the order they are drawn and tabled
ARMS = ("plain", "perturbed", "annealed", "hybrid", "shuffled")
ARM_HELP = {
    "plain": "sigma = 0: the bare optimizer",
    "perturbed": "constant gradient noise of std sigma on every parameter",
    "annealed": "Neelakantan et al. (2015): sigma_t^2 = sigma^2 / (1 + t)^0.55",
    "hybrid": "importance-guided noise scales at the perturbed arm's total noise",
    "shuffled": "the hybrid's scales permuted among components (the control)",
}
#: noise arms: each is swept over every sigma; plain has sigma 0 only
NOISY_ARMS = ("perturbed", "annealed", "hybrid", "shuffled")
#: arms that need a ranked study; shuffled only runs when asked for (--arms)
RANKED_ARMS = ("hybrid", "shuffled")
DEFAULT_LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
DEFAULT_MAX_RUNS = 500
SWEEP_DIR = "sweep"


@dataclass(frozen=True)
class SweepOptions:
    """Options of :func:`ablagen.sweep.run_sweep`.

    ``target``: a model file (``path.py[:NAME]``) or a study directory. ``arms``
    ``None``: plain, perturbed and annealed, plus hybrid when the study is ranked.
    ``train``: overrides of the training settings (field name -> value) applied on
    top of the study's recorded ones (or :class:`TrainConfig`'s for a model file).
    ``out``: the sweep directory (default ``STUDY/sweep``, or
    ``studies/<model stem>/sweep`` for a model file).
    """

    target: str
    lrs: tuple[float, ...] = DEFAULT_LRS
    arms: tuple[str, ...] | None = None
    sigmas: tuple[float, ...] = (0.01,)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    noise: str = "gaussian"
    metric: str = "val_acc"
    tolerance: float = 0.01  # "within 1 point": 0.01 of an accuracy
    max_runs: int = DEFAULT_MAX_RUNS
    out: Path | None = None
    train: dict[str, object] = field(default_factory=dict)
    dataset: str | None = None  # a model file only: see ``ablagen generate``
    run: RunOptions = field(default_factory=RunOptions)
    plots: bool = True
    force: bool = False

    def validate(self) -> SweepOptions:
        check_lrs(self.lrs)
        if self.arms is not None:
            check_arms(self.arms)
        if not self.sigmas or any(not s > 0 or math.isinf(s) for s in self.sigmas):
            raise ConfigError(
                f"bad --sigmas {list(self.sigmas)}: every sigma must be positive",
                "pass e.g. --sigmas 0.003,0.01,0.03 (plain is the sigma = 0 arm)",
            )
        if not self.tolerance > 0:
            raise ConfigError(
                f"bad --tolerance {self.tolerance}", "give a positive metric difference"
            )
        if self.max_runs < 1:
            raise ConfigError(f"bad --max-runs {self.max_runs}", "give 1 or more")
        for name in self.train:
            if name not in TrainConfig.__dataclass_fields__ or name in ("lr", "sigma"):
                raise ConfigError(
                    f"{name!r} is not a training option a sweep can set",
                    "lr and sigma are the sweep's axes (--lrs, --sigmas)",
                )
        return self

    def series(self, arms: tuple[str, ...]) -> list[tuple[str, float]]:
        """Every (arm, sigma) line of the plot: plain once, the noisy arms per sigma."""
        out: list[tuple[str, float]] = []
        for arm in arms:
            out += [(arm, 0.0)] if arm == "plain" else [(arm, s) for s in self.sigmas]
        return out

    def check_size(self, arms: tuple[str, ...]) -> int:
        """The number of runs; more than ``max_runs`` must be asked for explicitly."""
        runs = len(self.series(arms)) * len(self.lrs) * len(self.seeds)
        if runs > self.max_runs:
            raise ConfigError(
                f"the sweep has {runs} runs ({len(self.series(arms))} arm lines x "
                f"{len(self.lrs)} lrs x {len(self.seeds)} seeds), more than --max-runs {self.max_runs}",
                f"pass --max-runs {runs} to run it anyway, or shrink --lrs/--seeds/--sigmas/--arms",
            )
        return runs


def check_lrs(lrs: tuple[float, ...]) -> tuple[float, ...]:
    if not lrs:
        raise ConfigError(
            "no learning rates given",
            "pass --lrs 1e-4,1e-3,1e-2 or a log range START:STOP:COUNT (1e-4:1e-1:7)",
        )
    for lr in lrs:
        if not lr > 0 or math.isinf(lr):
            raise ConfigError(
                f"learning rate {lr!r} is not positive",
                "every --lrs value must be a positive number, e.g. 1e-3",
            )
    if len(set(lrs)) != len(lrs):
        raise ConfigError(f"--lrs {list(lrs)} repeats a value", "list each lr once")
    return lrs


def check_arms(arms: tuple[str, ...]) -> tuple[str, ...]:
    if not arms:
        raise ConfigError("no arms given", f"pass --arms {','.join(ARMS)}")
    for arm in arms:
        if arm not in ARMS:
            raise ConfigError(f"unknown arm {arm!r}", f"use some of: {', '.join(ARMS)}")
    if len(set(arms)) != len(arms):
        raise ConfigError(f"--arms {','.join(arms)} repeats an arm", "list each once")
    return tuple(a for a in ARMS if a in arms)  # drawing order


def parse_lrs(text: str) -> tuple[float, ...]:
    """``"1e-4,1e-3,1e-2"`` or a log range ``"1e-4:1e-1:7"`` (START:STOP:COUNT,
    both ends included, log-spaced) -> sorted learning rates."""
    text = text.strip()
    fix = "pass --lrs 1e-4,1e-3,1e-2 or a log range START:STOP:COUNT (1e-4:1e-1:7)"
    if not text:
        return check_lrs(())
    try:
        if ":" in text:
            start, stop, count = text.split(":")
            lo, hi, n = float(start), float(stop), int(count)
            check_lrs((lo, hi))
            if n < 2 or lo == hi:
                raise ConfigError(
                    f"bad --lrs {text!r}: a range needs START != STOP and COUNT >= 2",
                    fix,
                )
            step = (math.log10(hi) - math.log10(lo)) / (n - 1)
            values = [
                float(f"{10 ** (math.log10(lo) + i * step):.6g}") for i in range(n)
            ]
        else:
            values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise ConfigError(f"bad --lrs {text!r}: not a number", fix) from None
    return tuple(sorted(check_lrs(tuple(values))))


def parse_floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise ConfigError(
            f"bad {flag} {text!r}: not a comma list of numbers",
            f"pass e.g. {flag} 0.01",
        ) from None


def parse_arms(text: str) -> tuple[str, ...]:
    return check_arms(tuple(p.strip() for p in text.split(",") if p.strip()))

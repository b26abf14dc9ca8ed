"""Sweep options -> the sweep directory: one standalone script per grid point.

The sweep directory (``STUDY/sweep`` by default) is a study directory of its own
(``manifest.json``, scripts, later ``results.sqlite``), so the orchestrator runs it
unchanged: resumable, on the local warm pool or Ray, one record per arm x lr x seed.
Scripts are rendered with the study's recorded options (or the model file's), each
with its learning rate and noise in the config block; the hybrid arm's per-parameter
scales come from the ranked study's :class:`~ablagen.arms.noise_scales.NoiseScales`,
rescaled by :func:`ablagen.arms.hybrid.energy_matched` to the perturbed arm's total noise;
the shuffled arm's are the same scales permuted among components (the study's
``shuffled.py`` at its default seed), at the same total noise.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ablagen import __version__
from ablagen.generate.context import TrainConfig
from ablagen.generate.request import GenerateOptions, StudyConfig, relative_to
from ablagen.generate.prepare import Prepared, prepare
from ablagen.generate.writer import check_out, write_study
from ablagen.core.errors import StudyError
from ablagen.core.atomic import sha256_bytes
from ablagen.arms.hybrid import SHUFFLE_SEED, arm_scales
from ablagen.core.spec import split_model_spec
from ablagen.arms.noise_scales import (
    NOISE_SCALES_JSON,
    NoiseScales,
    load_noise_scales,
    shuffled_noise_scales,
)
from ablagen.orchestrate.placement import check_devices
from ablagen.rank.ranking import IMPORTANCE_JSON, load_ranking
from ablagen.core.studydir import (
    MANIFEST,
    Manifest,
    VariantEntry,
    is_study_dir,
    load_manifest,
)
from ablagen.sweep.grid import SWEEP_KIND, Point, grid
from ablagen.sweep.config import (
    ARMS,
    RANKED_ARMS,
    SWEEP_DIR,
    SweepOptions,
    check_arms,
)


@dataclass(frozen=True)
class Target:
    """What the sweep is of: a model file, or a study (ranked or not)."""

    model: str  # path.py[:NAME], absolute
    study: Path | None
    manifest: Manifest | None

    @property
    def ranked(self) -> bool:
        return self.study is not None and all(
            (self.study / name).is_file()
            for name in (IMPORTANCE_JSON, NOISE_SCALES_JSON)
        )


@dataclass(frozen=True)
class GeneratedSweep:
    out: Path
    manifest: Manifest
    points: tuple[Point, ...]
    arms: tuple[str, ...]
    prepared: Prepared


def resolve_target(target: str) -> Target:
    path = Path(target)
    if path.is_dir():
        if not is_study_dir(path):
            raise StudyError(
                f"{target!r} is a directory but not an ablagen study",
                "pass a model file (model.py) or a study made by `ablagen study`/`generate`",
            )
        study = path.resolve()
        manifest = load_manifest(study)
        model = str((study / manifest.model["path"]).resolve())
        if manifest.model.get("name") and ":" not in Path(manifest.model["path"]).name:
            model = f"{model}:{manifest.model['name']}"
        return Target(model, study, manifest)
    file, name = split_model_spec(target)
    model = str(file.resolve()) + (f":{name}" if name else "")
    return Target(model, None, None)


def choose_arms(opts: SweepOptions, target: Target) -> tuple[str, ...]:
    """The arms asked for; by default plain, perturbed and annealed, and hybrid when
    the study is ranked (shuffled only when asked for)."""
    if opts.arms is None:
        return tuple(
            a for a in ARMS if a not in RANKED_ARMS or (a == "hybrid" and target.ranked)
        )
    arms = check_arms(opts.arms)
    needs = [a for a in arms if a in RANKED_ARMS]
    if needs and not target.ranked:
        where = (
            f"{target.study} has no ranking ({IMPORTANCE_JSON}, {NOISE_SCALES_JSON})"
            if target.study
            else f"{opts.target} is a model file, not a ranked study"
        )
        raise StudyError(
            f"the {' and '.join(needs)} arm{'s need' if len(needs) > 1 else ' needs'} a ranked study: {where}",
            f"run `ablagen study MODEL` (or `ablagen rank STUDY`) and sweep the study, or drop {','.join(needs)} from --arms",
        )
    return arms


def sweep_dir(opts: SweepOptions, target: Target) -> Path:
    if opts.out is not None:
        return opts.out.resolve()
    if target.study is not None:
        return target.study / SWEEP_DIR
    return (
        Path("studies") / split_model_spec(opts.target)[0].stem / SWEEP_DIR
    ).resolve()


def base_options(opts: SweepOptions, target: Target, out: Path) -> GenerateOptions:
    """The study's recorded generate options (or the model file's defaults), with the
    sweep's training overrides, rendering into ``out``."""
    if target.study is None or target.manifest is None:
        gen = GenerateOptions(model=target.model, out=out, dataset=opts.dataset)
    else:
        try:
            config = StudyConfig.from_manifest(target.manifest.config)
        except (KeyError, TypeError) as exc:
            raise StudyError(
                f"{target.study / MANIFEST} records no usable generate options ({exc})",
                "regenerate the study with `ablagen generate ... --force`",
            ) from exc
        gen = replace(
            config.options(target.study, target.model), out=out, mode="retrain"
        )
        gen = replace(gen, components=(), force=opts.force)
    train = replace(gen.train, **opts.train, sigma=0.0, noise=opts.noise)  # type: ignore[arg-type]
    return replace(gen, train=train.validate(), force=opts.force)


def sweep_command(opts: SweepOptions, target: Target, out: Path) -> str:
    """``ablagen sweep ...`` that regenerates (and reruns) the sweep, from inside ``out``."""
    where = relative_to(target.study, out) if target.study else None
    if where is None:
        file, name = split_model_spec(target.model)
        where = relative_to(file, out) + (f":{name}" if name else "")
    words = ["ablagen", "sweep", where, "--out", "."]
    words += ["--lrs", ",".join(format(lr, "g") for lr in sorted(opts.lrs))]
    if opts.arms is not None:
        words += ["--arms", ",".join(opts.arms)]
    words += ["--sigmas", ",".join(format(s, "g") for s in opts.sigmas)]
    words += ["--seeds", ",".join(map(str, opts.seeds))]
    defaults = SweepOptions(target="")
    for name in ("noise", "metric", "tolerance", "dataset"):
        if getattr(opts, name) != getattr(defaults, name):
            words += [f"--{name}", str(getattr(opts, name))]
    for name, value in sorted(opts.train.items()):
        flag = name.replace("_", "-")
        words += [f"--{flag}" if value is not False else f"--no-{flag}"]
        if not isinstance(value, bool):
            words.append(str(value))
    return shlex.join(words)


def point_train(base: TrainConfig, point: Point) -> TrainConfig:
    if point.arm == "plain":
        return replace(base, lr=point.lr, sigma=0.0).validate()
    schedule = "annealed" if point.arm == "annealed" else "constant"
    return replace(
        base, lr=point.lr, sigma=point.sigma, noise_schedule=schedule
    ).validate()


def ranked_scales(
    arms: tuple[str, ...],
    target: Target,
    noise: NoiseScales | None,
    parameters: list[list[Any]],
) -> dict[str, dict[str, Any]]:
    """The hybrid's and the shuffled arm's scales (those asked for), in the model's
    parameter order, at the uniform arm's energy."""
    wanted = [a for a in arms if a in RANKED_ARMS]
    if not wanted:
        return {}
    assert target.study is not None and target.manifest is not None  # choose_arms
    noise = noise or load_noise_scales(target.study)
    out = {}
    for arm in wanted:
        if arm == "shuffled":
            ranking = load_ranking(target.study)
            scales = shuffled_noise_scales(
                target.manifest, ranking, noise, SHUFFLE_SEED
            )
        else:
            scales = noise
        out[arm] = arm_scales(scales, parameters)
    return out


def _describe(point: Point, base: TrainConfig) -> tuple[str, ...]:
    kind = base.noise
    return {
        "plain": ("The plain arm: no gradient noise (sigma = 0).",),
        "perturbed": (f"The perturbed arm: {kind} gradient noise of constant sigma {point.sigma:g} on every parameter.",),
        "annealed": (f"The annealed arm (Neelakantan et al. 2015): {kind} noise, sigma_t^2 = {point.sigma:g}^2 / (1 + t)^0.55.",),
        "hybrid": (f"The hybrid arm: {kind} noise of base sigma {point.sigma:g}, scaled per parameter and output unit by",
                   "the study's noise_scales.json, rescaled to the perturbed arm's total noise energy."),
        "shuffled": (f"The shuffled arm: {kind} noise of base sigma {point.sigma:g}, scaled by the study's component scales",
                     "permuted among components (seed 0), rescaled to the perturbed arm's total noise energy."),
    }[point.arm]  # fmt: skip


def check_sweep(opts: SweepOptions) -> tuple[Target, tuple[str, ...]]:
    """Every check that needs no model loaded: options, target, arms, size, and the
    devices (fp16 needs CUDA; the GPUs asked for exist)."""
    opts.validate()
    target = resolve_target(opts.target)
    arms = choose_arms(opts, target)
    opts.check_size(arms)
    amp = base_options(opts, target, sweep_dir(opts, target)).train.amp
    check_devices(opts.run, amp)
    return target, arms


def generate_sweep(
    opts: SweepOptions, noise: NoiseScales | None = None
) -> GeneratedSweep:
    """Check, render every grid point into memory, then write the sweep directory in
    one swap (its results and logs are kept: unchanged scripts are not rerun).

    ``noise``: the study's noise scales when the caller holds them already.
    """
    target, arms = check_sweep(opts)
    out = sweep_dir(opts, target)
    check_out(out, target.model, opts.force)
    gen = base_options(opts, target, out)
    command = sweep_command(opts, target, out)
    prepared = prepare(gen, command=command)
    if (
        target.manifest is not None
        and prepared.loaded.sha256 != target.manifest.model["sha256"]
    ):
        raise StudyError(
            f"{target.manifest.model['path']} changed since {target.study} was generated (stale study)",
            "regenerate the study first (its report names the command)",
        )
    parameters = [[n, list(s)] for n, s in prepared.inventory.parameters]
    scales = ranked_scales(arms, target, noise, parameters)
    points = tuple(grid(opts.series(arms), opts.lrs))
    label = prepared.loaded.ref.label
    files: dict[str, bytes] = {}
    entries = []
    for point in points:
        fields: dict[str, Any] = {"train": point_train(gen.train, point)}
        if point.arm in scales:
            fields["noise_scales"] = scales[point.arm]
        data = prepared.render(
            point.script, point.variant_id,
            f"Learning-rate sweep of {label}: {point.series}, lr {point.lr:g}.",
            _describe(point, gen.train), **fields,
        )  # fmt: skip
        files[point.script] = data
        entries.append(
            VariantEntry(
                point.variant_id, None, SWEEP_KIND, None, point.script,
                sha256_bytes(data), point.extra(),
            )  # fmt: skip
        )
    config = prepared.config.to_manifest()
    config["seeds"] = list(opts.seeds)
    config["sweep"] = {
        "arms": list(arms),
        "lrs": sorted(opts.lrs),
        "sigmas": list(opts.sigmas),
        "metric": opts.metric,
        "tolerance": opts.tolerance,
        "study": relative_to(target.study, out) if target.study else None,
    }
    manifest = Manifest(
        ablagen_version=__version__,
        mode=SWEEP_KIND,
        model={
            "path": prepared.model.path,
            "sha256": prepared.loaded.sha256,
            "name": prepared.loaded.ref.name,
            "label": label,
            "parameters": parameters,
            "traced": prepared.inventory.traced,
        },
        config=config,
        variants=tuple(entries),
    )
    files[MANIFEST] = manifest.dumps().encode("utf-8")
    write_study(out, files)
    return GeneratedSweep(out, manifest, points, arms, prepared)

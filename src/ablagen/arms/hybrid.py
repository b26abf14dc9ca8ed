"""Importance-guided training: the arms of the seeds' experiment, as standalone scripts.

:func:`render_arms` takes the study's :class:`~ablagen.rank.ranking.Ranking` and
:class:`~ablagen.arms.noise_scales.NoiseScales` (objects, as ``ablagen study`` holds them)
and renders four scripts, each listed in the manifest as an entry of kind ``arm``:

- ``ablated.py``   (``arm:ablated``):   the baseline with its K least important
  components removed together, the way the ranking says they were ablated;
- ``perturbed.py`` (``arm:perturbed``): the baseline trained with gradient noise of
  the same base sigma on every parameter (the control arm);
- ``hybrid.py``    (``arm:hybrid``):    the baseline trained with gradient noise whose
  sigma is scaled per parameter (and per output unit) by the noise scales:
  important parts get little noise, unimportant ones more;
- ``shuffled.py`` (``arm:shuffled``): the hybrid's scales permuted among components
  by a seeded permutation (:func:`~ablagen.arms.noise_scales.shuffled_noise_scales`),
  at the same total noise: the control that shows whether the ranking matters.

``ablagen hybrid STUDY`` (:func:`write_arms`) is the later command: it reads the
ranking and noise scales ``ablagen rank`` wrote, loads the model with the study's
recorded options and adds the scripts. The fifth arm is ``baseline.py`` itself.
:func:`compare_arms` summarises the five over seeds from the result store.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ablagen.analyze import Component, Inventory
from ablagen.generate.context import AblationSpec
from ablagen.generate.request import StudyConfig
from ablagen.generate.variants import ablation_spec
from ablagen.generate.prepare import Prepared, prepare
from ablagen.generate.writer import add_scripts
from ablagen.core.errors import StudyError
from ablagen.core.atomic import atomic_write_text, sha256_bytes
from ablagen.arms.noise_scales import (
    NoiseScales,
    load_noise_scales,
    scale_values,
    shuffled_noise_scales,
)
from ablagen.rank.ranking import ImportanceRow, Ranking, load_ranking
from ablagen.study.options import ArmOptions
from ablagen.core.studydir import (
    ARM_KIND,
    BASELINE_ID,
    Manifest,
    VariantEntry,
    load_manifest,
)

ARMS = {
    "arm:ablated": "ablated.py",
    "arm:perturbed": "perturbed.py",
    "arm:hybrid": "hybrid.py",
    "arm:shuffled": "shuffled.py",
}
ARM_ORDER = (BASELINE_ID, "arm:ablated", "arm:perturbed", "arm:hybrid", "arm:shuffled")
ARMS_JSON = "arms.json"
#: the seed of the shuffled arm's permutation (fixed: the same study, the same bytes)
SHUFFLE_SEED = 0


ArmScripts = tuple[tuple[VariantEntry, bytes], ...]


def render_arms(
    prepared: Prepared,
    manifest: Manifest,
    ranking: Ranking,
    noise: NoiseScales,
    arm: ArmOptions = ArmOptions(),
    removal: tuple[tuple[ImportanceRow, ...], str] | None = None,
) -> ArmScripts:
    """The arm scripts and their manifest entries, rendered in memory.

    ``removal``: the rows the ablated arm takes its least important components from
    and what ranked them (a two-stage study: :func:`removal_order`); by default the
    ranking's own rows, as importance.json lists them."""
    arm.validate()
    rows, ranked_by = removal or (ranking.rows, "importance.json")
    label = prepared.loaded.ref.label
    noisy = replace(prepared.config.train, sigma=arm.sigma, noise=arm.noise).validate()
    specs = counted_once(
        prepared.inventory,
        least_important(prepared.inventory, rows, arm.ablate_bottom),
    )
    files: dict[str, bytes] = {}
    if specs:
        names = ", ".join(s.variant_id for s in specs)
        files["arm:ablated"] = prepared.render(
            ARMS["arm:ablated"], "arm:ablated", f"Ablated arm of {label}: its {len(specs)} least important components removed.",
            (f"Removed together, as ranked by {ranked_by}: {names}.",), ablations=specs,
        )  # fmt: skip
    files["arm:perturbed"] = prepared.render(
        ARMS["arm:perturbed"], "arm:perturbed", f"Perturbed arm of {label}: uniform gradient noise.",
        (f"Every parameter gets {arm.noise} gradient noise of sigma {arm.sigma:g} (the control arm).",), train=noisy,
    )  # fmt: skip
    parameters = manifest.model["parameters"]
    shuffled = shuffled_noise_scales(manifest, ranking, noise, SHUFFLE_SEED)
    hybrid_scales = arm_scales(noise, parameters, arm.match_noise)
    matched = (
        " rescaled so the total noise energy equals the perturbed arm's,"
        if arm.match_noise
        else ""
    )
    files["arm:hybrid"] = prepared.render(
        ARMS["arm:hybrid"], "arm:hybrid", f"Hybrid arm of {label}: importance-guided gradient noise.",
        (f"Base sigma {arm.sigma:g} ({arm.noise}), scaled per parameter and output unit by noise_scales.json{matched}:",
         "important components get less noise, unimportant ones more."),
        train=noisy, noise_scales=hybrid_scales,
    )  # fmt: skip
    files["arm:shuffled"] = prepared.render(
        ARMS["arm:shuffled"], "arm:shuffled", f"Shuffled arm of {label}: the hybrid's noise scales, permuted among components.",
        (f"Base sigma {arm.sigma:g} ({arm.noise}), scaled by noise_scales.json's component scales after a permutation",
         f"among components (seed {SHUFFLE_SEED}){matched}: the ranking carries no information here."),
        train=noisy, noise_scales=arm_scales(shuffled, parameters, arm.match_noise),
    )  # fmt: skip
    scripts = []
    for arm_id, data in files.items():
        extra = (
            {"removed": [s.variant_id for s in specs]}
            if arm_id == "arm:ablated"
            else {"sigma": arm.sigma, "noise": arm.noise}
        )
        entry = VariantEntry(
            arm_id, None, ARM_KIND, None, ARMS[arm_id], sha256_bytes(data), extra
        )
        scripts.append((entry, data))
    return tuple(scripts)


def write_arms(study_dir: str | Path, arm: ArmOptions = ArmOptions()) -> Manifest:
    """``ablagen hybrid``: add the arm scripts to a ranked study and its manifest."""
    arm.validate()
    study = Path(study_dir).resolve()
    manifest = load_manifest(study)
    ranking, noise = load_ranking(study), load_noise_scales(study)
    prepared = prepare_recorded(study, manifest)
    scripts = render_arms(prepared, manifest, ranking, noise, arm)
    return add_scripts(study, manifest, scripts, ARM_KIND)


def prepare_recorded(
    study: Path, manifest: Manifest, out: Path | None = None
) -> Prepared:
    """Load the study's model with the options its manifest records (a later
    command); ``out``: where its scripts go, if not in the study itself."""
    try:
        config = StudyConfig.from_manifest(manifest.config)
    except (KeyError, TypeError) as exc:
        raise StudyError(
            f"{study / 'manifest.json'} records no usable generate options ({exc})",
            "regenerate the study with `ablagen generate ... --force`",
        ) from exc
    model = str((study / manifest.model["path"]).resolve())
    if manifest.model.get("name") and ":" not in Path(manifest.model["path"]).name:
        model = f"{model}:{manifest.model['name']}"
    prepared = prepare(config.options(study, model, out), command=config.command)
    if prepared.loaded.sha256 != manifest.model["sha256"]:
        raise StudyError(
            f"{manifest.model['path']} changed since {study.name} was generated (stale study)",
            f"regenerate it: {config.command} (from the study directory)",
        )
    return prepared


def arm_scales(
    noise: NoiseScales, parameters: list[list[Any]], match: bool = True
) -> dict[str, Any]:
    """The scales in the model's parameter order (``manifest.model["parameters"]``),
    rescaled to the perturbed arm's total noise when ``match``."""
    scales = noise.to_json()["parameters"]
    ordered = {name: scales[name] for name, _ in parameters if name in scales}
    return energy_matched(ordered, parameters) if match else ordered


def energy_matched(
    scales: dict[str, Any], parameters: list[list[Any]]
) -> dict[str, Any]:
    """Divide every scale by their root-mean-square over all parameter elements.

    Then sum(numel * scale^2) equals the parameter count: the hybrid arm adds as much
    gradient noise in total as the perturbed arm, only distributed by importance.
    """
    energy, count = 0.0, 0
    for name, shape in parameters:
        numel = math.prod(shape)
        units = scale_values(scales.get(name, 1.0))
        energy += sum(u * u for u in units) * numel / len(units)
        count += numel
    rms = math.sqrt(energy / count) if count and energy else 1.0

    def rescaled(v: Any) -> Any:
        if isinstance(v, dict):  # per unit along another dimension (heads, Conv1D)
            return {"dim": v["dim"], "units": [round(u / rms, 6) for u in v["units"]]}
        if isinstance(v, (list, tuple)):
            return [round(u / rms, 6) for u in v]
        return round(v / rms, 6)

    return {name: rescaled(v) for name, v in scales.items()}


def least_important(
    inventory: Inventory, rows: tuple[ImportanceRow, ...], k: int
) -> list[tuple[Component, str]]:
    """The k lowest-ranked (component, method) pairs that do not nest in one another."""
    chosen: list[tuple[Component, str]] = []
    modules: list[str] = []
    for row in reversed(rows):
        if len(chosen) == k:
            break
        comp = inventory.get(row.component)
        if comp is None or row.method not in comp.methods:
            continue
        module = comp.module or comp.param_owner or comp.id
        if any(_nested(module, other) for other in modules):
            continue
        chosen.append((comp, row.method))
        modules.append(module)
    return chosen


def counted_once(
    inventory: Inventory, chosen: list[tuple[Component, str]]
) -> tuple[AblationSpec, ...]:
    """The ablations of ``chosen``, removed together, each counting only the
    parameters no earlier one cut off: zeroing ``conv2`` already cuts ``conv1``
    off, so zeroing ``conv1`` too removes nothing more (ABLATED_PARAMS sums them)."""
    numel = {n: math.prod(shape) for n, shape in inventory.parameters}
    gone: set[str] = set()
    specs = []
    for comp, method in chosen:
        spec = ablation_spec(comp, method)
        if method == "zero" and comp.id in inventory.cuts:
            names = set(inventory.cuts[comp.id])
        elif method != "mask" and comp.call_site is None and comp.module:
            prefix = comp.module + "."
            names = {n for n in numel if n.startswith(prefix)}
        else:  # a shared call site removes none of its own; neurons, part of them
            names = set()
        if names & gone:
            left = sum(numel[n] for n in names - gone)
            spec = replace(spec, ablated_params=left)
        gone |= names
        specs.append(spec)
    return tuple(specs)


def removal_order(
    screen_rows: tuple[ImportanceRow, ...], verified_rows: tuple[ImportanceRow, ...]
) -> tuple[ImportanceRow, ...]:
    """A two-stage study's whole ranking, most important first, for the ablated arm.

    The screen ranks every component; the verification measured some of them again,
    exactly. A verified variant whose verified importance is positive was found to
    matter: it goes first, in the verifier's order, so it is removed last. Every
    other variant (unverified, or verified as harmless) keeps the screen's order;
    the ablated arm takes its components from the bottom of that.
    """
    verified = {r.variant: r for r in verified_rows}
    matters = [r for r in verified_rows if r.mean > 0]
    found = {r.variant for r in matters}
    rest = [verified.get(r.variant, r) for r in screen_rows if r.variant not in found]
    return (*matters, *rest)


def _nested(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


# --------------------------------------------------------------------------- comparison


@dataclass(frozen=True)
class ArmResult:
    arm: str
    seeds: tuple[int, ...]
    val_acc: tuple[float, float]  # mean, std over seeds
    val_loss: tuple[float, float]
    epochs_to_target: float | None  # mean over the runs that reached the target
    reached: int  # runs that reached the target accuracy
    params_effective: int

    def to_json(self) -> dict[str, Any]:
        return {
            "arm": self.arm,
            "seeds": list(self.seeds),
            "val_acc_mean": self.val_acc[0],
            "val_acc_std": self.val_acc[1],
            "val_loss_mean": self.val_loss[0],
            "val_loss_std": self.val_loss[1],
            "epochs_to_target_mean": self.epochs_to_target,
            "reached_target": self.reached,
            "params_effective": self.params_effective,
        }


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (
        statistics.stdev(values) if len(values) > 1 else 0.0
    )


def compare_arms(study_dir: str | Path, seeds: tuple[int, ...]) -> list[ArmResult]:
    """Final metrics of the five arms over ``seeds`` (ok runs of the current scripts)."""
    from ablagen.orchestrate import ResultStore

    with ResultStore(study_dir, readonly=True) as store:
        latest = store.latest_ok()
    by_arm: dict[str, dict[int, dict[str, Any]]] = {}
    for rec in latest:
        if rec.variant_id in ARM_ORDER and rec.seed in seeds and rec.result:
            by_arm.setdefault(rec.variant_id, {})[rec.seed] = rec.result
    out = []
    for arm in ARM_ORDER:
        results = [by_arm[arm][s] for s in sorted(by_arm.get(arm, {}))]
        if not results:
            continue
        reached = [
            r["epochs_to_target"]
            for r in results
            if r.get("epochs_to_target") is not None
        ]
        out.append(
            ArmResult(
                arm=arm,
                seeds=tuple(sorted(by_arm[arm])),
                val_acc=_mean_std([r["final"]["val_acc"] for r in results]),
                val_loss=_mean_std([r["final"]["val_loss"] for r in results]),
                epochs_to_target=statistics.fmean(reached) if reached else None,
                reached=len(reached),
                params_effective=int(results[0]["params_effective"]),
            )
        )
    return out


def arms_markdown(results: list[ArmResult], target_acc: float) -> str:
    lines = [
        f"| arm | seeds | val acc (mean ± std) | val loss (mean ± std) | epochs to {target_acc:g} acc | effective params |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        ett = (
            "never"
            if r.epochs_to_target is None
            else f"{r.epochs_to_target:.2f} ({r.reached}/{len(r.seeds)} runs)"
        )
        lines.append(
            f"| {r.arm} | {len(r.seeds)} | {r.val_acc[0]:.4f} ± {r.val_acc[1]:.4f} | "
            f"{r.val_loss[0]:.4f} ± {r.val_loss[1]:.4f} | {ett} | {r.params_effective:,} |"
        )
    return "\n".join(lines) + "\n"


def write_arms_json(study_dir: str | Path, results: list[ArmResult]) -> Path:
    path = Path(study_dir) / ARMS_JSON
    payload = {"arms": [r.to_json() for r in results]}
    atomic_write_text(
        path, json.dumps(payload, indent=2, sort_keys=True, allow_nan=False) + "\n"
    )
    return path

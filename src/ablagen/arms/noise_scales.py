"""Importance → per-parameter gradient-noise scales (the hybrid's σ multipliers).

Mapping. Per component ``c`` take ``I_c``, the largest mean importance over its
ranked variants (``conv1:zero`` and ``conv1:mean`` → the worse ablation counts).
With ``M = max_c max(I_c, 0)`` over all ranked components::

    z_c = max(I_c, 0) / M                    in [0, 1]   (z = 0 for all when M == 0)
    g_c = (1 - exp(-z_c / T)) / (1 - exp(-1 / T))        in [0, 1], increasing in z
    s_c = max_scale - (max_scale - min_scale) * g_c

so the most important component gets ``min_scale``, a component whose ablation
changed nothing (or helped) gets ``max_scale``, and ``s`` is strictly decreasing
in importance between. The temperature ``T > 0`` bends the curve: small T gives
even mildly important components little noise; T → ∞ is linear in ``z``.

Assignment to parameters (names and shapes from ``manifest.model["parameters"]``):

* A component's importance belongs to its ``param_owner`` module; a parameter
  ``a.b.weight`` is owned by ``a.b`` and by ``a`` (qualname prefix). The most
  specific ranked owner wins: a layer beats the block containing it.
* An activation's importance goes to its ``param_owner`` (the layer producing
  its input); if that layer is ranked too, the larger importance (smaller scale)
  wins. Activations with no owner affect no parameter.
* Neuron groups (``fc1[0:8]``) give the owner layer's direct parameters
  (``fc1.weight``, ``fc1.bias``) a per-unit list of length ``shape[0]``; units no
  ranked group covers keep the scale the parameter gets otherwise.
* Components with parameter slices (attention heads: their rows of q/k/v and their
  columns of the output projection; ``Conv1D`` neuron groups: weight columns) give
  exactly those slices their scale: a per-unit list along the slice's dimension,
  written ``{"dim": d, "units": [...]}`` when ``d`` is not 0. A parameter sliced
  along two dimensions (an output projection with ranked heads *and* ranked
  output units) keeps the dimension of its most important slice.
* Parameters of modules with no ranked component get ``default`` (1.0).
  Components whose variants all failed are unranked: default, not max.

The shuffled control (:func:`shuffled_noise_scales`) assigns the same component
scales after a seeded permutation among components: the ranking's information gone.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ablagen.core.errors import ConfigError, StudyError
from ablagen.core.atomic import atomic_write_text
from ablagen.rank.ranking import Ranking, read_json
from ablagen.core.studydir import Manifest

NOISE_SCALES_JSON = "noise_scales.json"
DEFAULT_MIN_SCALE = 0.1
DEFAULT_MAX_SCALE = 2.0
DEFAULT_TEMPERATURE = 1.0
_DIGITS = 6  # scales are rounded so the JSON is short and stable

Scale = float | tuple[float, ...] | dict[str, Any]  # dict: {"dim": d, "units": (...)}


@dataclass(frozen=True)
class NoiseScales:
    metric: str
    default: float
    min_scale: float
    max_scale: float
    temperature: float
    components: dict[str, dict[str, float]]  # id -> {"importance": I_c, "scale": s_c}
    # every trainable parameter: one scale, or one per output unit (dim 0)
    parameters: dict[str, Scale] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "default": self.default,
            "min": self.min_scale,
            "max": self.max_scale,
            "temperature": self.temperature,
            "components": self.components,
            "parameters": {k: _scale_json(v) for k, v in self.parameters.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NoiseScales:
        """Read back what :meth:`to_json` wrote (KeyError/TypeError if it is not that)."""
        return cls(
            metric=data["metric"],
            default=data["default"],
            min_scale=data["min"],
            max_scale=data["max"],
            temperature=data["temperature"],
            components={k: dict(v) for k, v in data["components"].items()},
            parameters={k: _scale_read(v) for k, v in data["parameters"].items()},
        )

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n"


def _scale_json(value: Scale) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, dict):
        return {"dim": value["dim"], "units": list(value["units"])}
    return value


def _scale_read(value: Any) -> Scale:
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, dict):
        return {"dim": int(value["dim"]), "units": tuple(value["units"])}
    return value


def scale_values(value: Any) -> list[float]:
    """The numbers of one parameter's scale (one, one per unit, or per unit along a
    dimension), each covering an equal share of the parameter's elements."""
    if isinstance(value, dict):
        return list(value["units"])
    return list(value) if isinstance(value, (list, tuple)) else [value]


def scale_for(
    importance: float,
    top: float,
    min_scale: float,
    max_scale: float,
    temperature: float,
) -> float:
    """The module docstring's mapping for one importance, given ``top = M``."""
    z = max(importance, 0.0) / top if top > 0.0 else 0.0
    g = (1.0 - math.exp(-min(z, 1.0) / temperature)) / (
        1.0 - math.exp(-1.0 / temperature)
    )
    return round(max_scale - (max_scale - min_scale) * g, _DIGITS)


def _check_options(
    min_scale: float, max_scale: float, temperature: float, default: float
) -> None:
    if not (
        math.isfinite(min_scale)
        and math.isfinite(max_scale)
        and 0.0 <= min_scale <= max_scale
    ):
        raise ConfigError(
            f"bad noise-scale range [{min_scale}, {max_scale}]",
            "pass 0 <= --min-scale <= --max-scale, e.g. --min-scale 0.1 --max-scale 2.0",
        )
    if not (math.isfinite(temperature) and temperature > 0.0):
        raise ConfigError(
            f"bad temperature {temperature}", "pass --temperature > 0, e.g. 1.0"
        )
    if not (math.isfinite(default) and default >= 0.0):
        raise ConfigError(
            f"bad default scale {default}", "pass a default scale >= 0, e.g. 1.0"
        )


def _component_importance(ranking: Ranking) -> dict[str, float]:
    best: dict[str, float] = {}
    for row in ranking.rows:
        best[row.component] = max(row.mean, best.get(row.component, -math.inf))
    return best


def _owner_of(name: str, owners: dict[str, float]) -> str | None:
    """The longest ranked module qualname that is a prefix of parameter ``name``."""
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        owner = ".".join(parts[:cut])
        if owner in owners:
            return owner
    return None


Owners = dict[str, float]  # module qualname -> importance (layers, blocks, activations)
UnitGroups = dict[
    str, list[tuple[int, int, float]]
]  # layer -> [(start, stop, importance)]
SliceGroups = dict[
    str, list[tuple[int, int, int, float]]
]  # parameter -> [(dim, start, stop, importance)]


def _attribute(
    manifest: Manifest, ranking: Ranking, importance: dict[str, float]
) -> tuple[Owners, UnitGroups, SliceGroups]:
    """Give each ranked component's importance to its ``param_owner`` (max wins),
    its output units, or its parameter slices."""
    kinds = {row.component: row.kind for row in ranking.rows}
    owners: Owners = {}
    units: UnitGroups = {}
    slices: SliceGroups = {}
    for comp_id, value in importance.items():
        comp = manifest.component(comp_id)
        if comp is None:
            # not in the inventory: a layer's or block's id is its module qualname
            owned = kinds[comp_id] in ("layer", "block")
            comp = {"kind": kinds[comp_id], "param_owner": comp_id if owned else None}
        if comp.get("slices"):
            for name, dim, start, stop in comp["slices"]:
                slices.setdefault(str(name), []).append(
                    (int(dim), int(start), int(stop), value)
                )
            continue
        owner = comp.get("param_owner")
        if not owner:
            continue
        if comp.get("kind") == "neuron" and comp.get("units"):
            start, stop = (int(u) for u in comp["units"])
            units.setdefault(owner, []).append((start, stop, value))
        else:
            owners[owner] = max(value, owners.get(owner, -math.inf))
    return owners, units, slices


def _parameters(manifest: Manifest) -> list[tuple[str, tuple[int, ...]]]:
    raw = manifest.model.get("parameters")
    if not isinstance(raw, list):
        raise StudyError(
            "the manifest lists no model parameters (model.parameters)",
            "regenerate the study with `ablagen generate ... --force`",
        )
    return [(str(name), tuple(int(d) for d in shape)) for name, shape in raw]


def noise_scales(
    manifest: Manifest,
    ranking: Ranking,
    min_scale: float = DEFAULT_MIN_SCALE,
    max_scale: float = DEFAULT_MAX_SCALE,
    temperature: float = DEFAULT_TEMPERATURE,
    default: float = 1.0,
) -> NoiseScales:
    """Per-parameter σ multipliers from a ranking (see the module docstring)."""
    _check_options(min_scale, max_scale, temperature, default)
    importance = _component_importance(ranking)
    return _scales_from(
        manifest, ranking, importance, min_scale, max_scale, temperature, default
    )


def shuffled_noise_scales(
    manifest: Manifest, ranking: Ranking, noise: NoiseScales, seed: int = 0
) -> NoiseScales:
    """The shuffled control: ``noise``'s component scales permuted among components.

    The components whose scale reaches a parameter (an owner layer, output units or
    parameter slices; not an activation with no owner) trade importances by a
    permutation drawn from ``random.Random(seed)`` over their sorted ids, redrawn
    until no component keeps its own (for two or more). Their scales are then
    assigned to parameters exactly as :func:`noise_scales` assigns them: the same
    multiset of component scales, the same range, no information from the ranking.
    ``energy_matched`` then gives it the same total noise as the hybrid's.
    Deterministic: the same ranking and seed give the same scales.
    """
    importance = _component_importance(ranking)
    carriers = sorted(c for c in importance if _carries(manifest, ranking, c))
    order = list(carriers)
    rng = random.Random(seed)
    for _ in range(1000):  # a derangement: about 1 draw in e is one
        rng.shuffle(order)
        if len(order) < 2 or all(a != b for a, b in zip(order, carriers)):
            break
    shuffled = dict(importance)
    for comp, source in zip(carriers, order):
        shuffled[comp] = importance[source]
    return _scales_from(
        manifest, ranking, shuffled, noise.min_scale, noise.max_scale,
        noise.temperature, noise.default,
    )  # fmt: skip


def _carries(manifest: Manifest, ranking: Ranking, comp_id: str) -> bool:
    """Whether a component's importance reaches any parameter (:func:`_attribute`)."""
    return any(_attribute(manifest, ranking, {comp_id: 0.0}))


def _scales_from(
    manifest: Manifest,
    ranking: Ranking,
    importance: dict[str, float],
    min_scale: float,
    max_scale: float,
    temperature: float,
    default: float,
) -> NoiseScales:
    top = max((max(v, 0.0) for v in importance.values()), default=0.0)

    def to_scale(value: float) -> float:
        return scale_for(value, top, min_scale, max_scale, temperature)

    owners, units, slices = _attribute(manifest, ranking, importance)
    parameters: dict[str, Scale] = {}
    for name, shape in _parameters(manifest):
        owner = _owner_of(name, owners)
        base = default if owner is None else to_scale(owners[owner])
        layer = name.rpartition(".")[0]
        groups = [(0, a, b, v) for a, b, v in units.get(layer, [])] + slices.get(
            name, []
        )
        groups = [g for g in groups if g[0] < len(shape)]
        if not groups:
            parameters[name] = base
            continue
        dim = max(groups, key=lambda g: g[3])[0]  # the most important slice's dim
        per_unit = [base] * shape[dim]
        for _, start, stop, value in (g for g in groups if g[0] == dim):
            for unit in range(max(start, 0), min(stop, shape[dim])):
                per_unit[unit] = to_scale(value)
        parameters[name] = (
            tuple(per_unit) if dim == 0 else {"dim": dim, "units": tuple(per_unit)}
        )
    return NoiseScales(
        metric=ranking.metric,
        default=default,
        min_scale=min_scale,
        max_scale=max_scale,
        temperature=temperature,
        components={
            c: {"importance": v, "scale": to_scale(v)}
            for c, v in sorted(importance.items())
        },
        parameters=parameters,
    )


def write_noise_scales(study_dir: str | Path, scales: NoiseScales) -> Path:
    """Write ``noise_scales.json`` atomically (sorted keys, stable bytes); return its path."""
    path = Path(study_dir) / NOISE_SCALES_JSON
    atomic_write_text(path, scales.dumps())
    return path


def load_noise_scales(study_dir: str | Path) -> NoiseScales:
    """The noise scales ``ablagen rank`` wrote into the study (``noise_scales.json``)."""
    path = Path(study_dir) / NOISE_SCALES_JSON
    return read_json(path, f"ablagen rank {study_dir}", NoiseScales.from_json)

"""Importance → σ multipliers: monotone, clamped, complete, most specific owner wins."""

from __future__ import annotations

import math

import pytest

from ablagen.core.errors import ConfigError
from ablagen.arms.noise_scales import noise_scales, scale_for
from ablagen.rank.ranking import FailedVariant, ImportanceRow, Ranking
from ablagen.core.studydir import Manifest

PARAMETERS = [
    ["conv1.weight", [8, 1, 3, 3]],
    ["conv1.bias", [8]],
    ["layer1.0.conv1.weight", [8, 8, 3, 3]],
    ["layer1.0.bn.weight", [8]],
    ["layer1.0.bn.bias", [8]],
    ["fc1.weight", [16, 32]],
    ["fc1.bias", [16]],
    ["fc2.weight", [10, 16]],
    ["fc2.bias", [10]],
    ["head.proj.weight", [4, 10]],
]


def _comp(
    cid: str, kind: str, owner: str | None, units: list[int] | None = None
) -> dict:
    return {
        "id": cid,
        "kind": kind,
        "op": "X",
        "module": owner,
        "param_owner": owner,
        "units": units,
        "methods": ["zero"],
        "params": 0,
    }


COMPONENTS = (
    _comp("conv1", "layer", "conv1"),
    _comp("relu@0", "activation", "conv1"),
    _comp("fn.relu_2", "activation", None),
    _comp("layer1.0", "block", "layer1.0"),
    _comp("layer1.0.conv1", "layer", "layer1.0.conv1"),
    _comp("fc1", "layer", "fc1"),
    _comp("fc1[0:8]", "neuron", "fc1", [0, 8]),
    _comp("fc1[12]", "neuron", "fc1", [12, 13]),
    _comp("fc2", "layer", "fc2"),
)
MANIFEST = Manifest(
    "0.1.0", "retrain", {"path": "m.py", "parameters": PARAMETERS}, {}, (), COMPONENTS
)


def _row(variant: str, kind: str, mean: float) -> ImportanceRow:
    comp, method = variant.rsplit(":", 1)
    return ImportanceRow(
        0,
        variant,
        comp,
        kind,
        method,
        mean,
        0.01,
        5,
        mean - 0.01,
        mean + 0.01,
        False,
        (0,),
        (mean,),
        0.9,
        0.9 - mean,
    )


def _ranking(rows: list[ImportanceRow]) -> Ranking:
    rows = sorted(rows, key=lambda r: (-r.mean, r.variant))
    failed = (FailedVariant("fc2:zero", "fc2", "layer", "zero", ((0, "diverged"),)),)
    return Ranking(
        "val_acc", True, 0.95, {}, (0,), 0.9, ((0, "ok"),), tuple(rows), failed
    )


RANKING = _ranking(
    [
        _row("conv1:zero", "layer", 0.40),
        _row("conv1:mean", "layer", 0.10),
        _row("relu@0:identity", "activation", 0.20),
        _row("fn.relu_2:identity", "activation", 0.30),
        _row("layer1.0:identity", "block", 0.05),
        _row("layer1.0.conv1:zero", "layer", 0.25),
        _row("fc1:zero", "layer", 0.30),
        _row("fc1[0:8]:mask", "neuron", 0.0),
        _row("fc1[12]:mask", "neuron", 0.40),
    ]
)


def test_mapping_is_monotone_and_clamped() -> None:
    values = [-0.5, -0.01, 0.0, 0.001, 0.05, 0.1, 0.2, 0.33, 0.5, 0.9, 1.0, 1.5]
    for temperature in (0.1, 0.5, 1.0, 5.0, 100.0):
        scales = [scale_for(v, 1.0, 0.1, 2.0, temperature) for v in values]
        assert all(0.1 <= s <= 2.0 for s in scales)
        assert all(
            a >= b for a, b in zip(scales, scales[1:])
        )  # more important -> smaller or equal
        inside = [
            scale_for(v, 1.0, 0.1, 2.0, temperature) for v in (0.05, 0.1, 0.5, 0.9)
        ]
        assert all(a > b for a, b in zip(inside, inside[1:]))  # strictly inside (0, M]
    assert scale_for(1.0, 1.0, 0.1, 2.0, 1.0) == pytest.approx(0.1)
    assert scale_for(0.0, 1.0, 0.1, 2.0, 1.0) == pytest.approx(2.0)
    assert scale_for(-3.0, 1.0, 0.1, 2.0, 1.0) == pytest.approx(2.0)
    assert scale_for(0.3, 0.0, 0.1, 2.0, 1.0) == pytest.approx(
        2.0
    )  # nothing important at all
    # the documented formula at z = 0.5, T = 1
    g = (1 - math.exp(-0.5)) / (1 - math.exp(-1.0))
    assert scale_for(0.2, 0.4, 0.1, 2.0, 1.0) == pytest.approx(2.0 - 1.9 * g, abs=1e-6)
    # lower temperature protects mildly important components more
    assert scale_for(0.2, 1.0, 0.1, 2.0, 0.2) < scale_for(0.2, 1.0, 0.1, 2.0, 5.0)


def test_every_parameter_gets_a_scale_within_range_or_default() -> None:
    scales = noise_scales(MANIFEST, RANKING)
    assert sorted(scales.parameters) == sorted(name for name, _ in PARAMETERS)
    for name, value in scales.parameters.items():
        values = value if isinstance(value, tuple) else (value,)
        assert all(0.1 <= v <= 2.0 or v == 1.0 for v in values), name
    assert scales.parameters["head.proj.weight"] == 1.0  # unranked module
    assert (
        scales.parameters["fc2.weight"] == 1.0
    )  # only a failed variant: default, not max


def test_component_importance_is_max_over_methods_and_top_gets_min() -> None:
    scales = noise_scales(MANIFEST, RANKING)
    assert scales.components["conv1"] == {
        "importance": 0.40,
        "scale": pytest.approx(0.1),
    }
    assert scales.components["fc1[0:8]"]["scale"] == pytest.approx(2.0)
    assert scales.parameters["conv1.weight"] == pytest.approx(0.1)


def test_layer_beats_block_and_block_covers_the_rest() -> None:
    scales = noise_scales(MANIFEST, RANKING)
    assert (
        scales.parameters["layer1.0.conv1.weight"]
        == scales.components["layer1.0.conv1"]["scale"]
    )
    assert (
        scales.parameters["layer1.0.bn.weight"]
        == scales.components["layer1.0"]["scale"]
    )
    assert (
        scales.parameters["layer1.0.bn.bias"] == scales.components["layer1.0"]["scale"]
    )
    assert (
        scales.parameters["layer1.0.conv1.weight"]
        < scales.parameters["layer1.0.bn.weight"]
    )


def test_activation_importance_goes_to_its_producer_by_max() -> None:
    weaker_layer = _ranking(
        [
            _row("conv1:zero", "layer", 0.05),
            _row("relu@0:identity", "activation", 0.2),
            _row("fc1:zero", "layer", 0.4),
        ]
    )
    scales = noise_scales(MANIFEST, weaker_layer)
    assert scales.parameters["conv1.weight"] == scales.components["relu@0"]["scale"]
    assert scales.parameters["conv1.weight"] < scales.components["conv1"]["scale"]


def test_neuron_groups_give_per_unit_lists() -> None:
    scales = noise_scales(MANIFEST, RANKING)
    layer = scales.components["fc1"]["scale"]
    for name in ("fc1.weight", "fc1.bias"):
        per_unit = scales.parameters[name]
        assert isinstance(per_unit, tuple) and len(per_unit) == 16
        assert per_unit[:8] == (pytest.approx(2.0),) * 8  # fc1[0:8]: importance 0
        assert per_unit[12] == pytest.approx(0.1)  # fc1[12]: the top importance
        assert per_unit[8:12] == (layer,) * 4 and per_unit[13:] == (layer,) * 3


def test_json_form_is_stable_and_lists_per_unit_scales() -> None:
    scales = noise_scales(
        MANIFEST, RANKING, min_scale=0.2, max_scale=3.0, temperature=0.5
    )
    data = scales.to_json()
    assert (data["min"], data["max"], data["temperature"], data["default"]) == (
        0.2,
        3.0,
        0.5,
        1.0,
    )
    assert data["metric"] == "val_acc"
    assert (
        isinstance(data["parameters"]["fc1.bias"], list)
        and len(data["parameters"]["fc1.bias"]) == 16
    )
    assert scales.dumps() == noise_scales(MANIFEST, RANKING, 0.2, 3.0, 0.5).dumps()


@pytest.mark.parametrize(
    ("lo", "hi", "temp"),
    [(0.5, 0.1, 1.0), (-0.1, 1.0, 1.0), (0.1, 2.0, 0.0), (0.1, math.inf, 1.0)],
)
def test_bad_options_are_config_errors(lo: float, hi: float, temp: float) -> None:
    with pytest.raises(ConfigError):
        noise_scales(MANIFEST, RANKING, min_scale=lo, max_scale=hi, temperature=temp)


def test_noise_scales_read_back_what_they_wrote(tmp_path) -> None:
    from ablagen.arms.noise_scales import (
        NoiseScales,
        load_noise_scales,
        write_noise_scales,
    )

    scales = noise_scales(MANIFEST, RANKING)
    assert any(isinstance(v, tuple) for v in scales.parameters.values())
    assert NoiseScales.from_json(scales.to_json()) == scales
    write_noise_scales(tmp_path, scales)
    assert load_noise_scales(tmp_path) == scales


def _unit_energy(scales, parameters=PARAMETERS) -> float:
    from ablagen.arms.hybrid import arm_scales
    from ablagen.arms.noise_scales import scale_values

    matched = arm_scales(scales, parameters)
    total = 0.0
    for name, shape in parameters:
        units = scale_values(matched[name])
        total += sum(u * u for u in units) * math.prod(shape) / len(units)
    return total


def test_shuffled_scales_permute_the_hybrids_among_components() -> None:
    from ablagen.arms.noise_scales import shuffled_noise_scales

    hybrid = noise_scales(MANIFEST, RANKING)
    shuffled = shuffled_noise_scales(MANIFEST, RANKING, hybrid, seed=0)
    mine, theirs = hybrid.components, shuffled.components
    assert sorted(mine) == sorted(theirs)
    # the same multiset of (importance, scale) pairs: only who gets which changed
    pairs = sorted((c["importance"], c["scale"]) for c in mine.values())
    assert sorted((c["importance"], c["scale"]) for c in theirs.values()) == pairs
    # a derangement of the parameter-carrying components; fn.relu_2 owns no
    # parameter, so it keeps its own importance and nothing is lost to it
    carriers = [c for c in mine if c != "fn.relu_2"]
    assert theirs["fn.relu_2"] == mine["fn.relu_2"]
    moved = [c for c in carriers if theirs[c]["importance"] != mine[c]["importance"]]
    assert (
        len(moved) >= len(carriers) - 2
    )  # ties (0.40 twice, 0.30 twice) may land home
    assert shuffled.parameters != hybrid.parameters
    # assigned to parameters by the hybrid's rules: fc1's units from their groups
    per_unit = shuffled.parameters["fc1.weight"]
    assert per_unit[12] == theirs["fc1[12]"]["scale"]
    assert per_unit[0] == theirs["fc1[0:8]"]["scale"]
    assert (shuffled.min_scale, shuffled.max_scale) == (
        hybrid.min_scale,
        hybrid.max_scale,
    )
    # the same total noise once energy-matched: as much as scale 1 everywhere
    count = sum(math.prod(shape) for _, shape in PARAMETERS)
    assert _unit_energy(shuffled) == pytest.approx(count, rel=1e-4)
    assert _unit_energy(hybrid) == pytest.approx(count, rel=1e-4)


def test_shuffled_scales_are_deterministic_per_seed() -> None:
    from ablagen.arms.noise_scales import shuffled_noise_scales

    hybrid = noise_scales(MANIFEST, RANKING)
    first = shuffled_noise_scales(MANIFEST, RANKING, hybrid, seed=0).dumps()
    assert shuffled_noise_scales(MANIFEST, RANKING, hybrid, seed=0).dumps() == first
    others = {
        shuffled_noise_scales(MANIFEST, RANKING, hybrid, seed=s).dumps()
        for s in (1, 2, 3)
    }
    assert others - {first}  # another seed, another permutation

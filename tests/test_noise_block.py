"""The scripts' gradient-noise block against the library's PerturbedOptimizer.

Scripts that add noise carry a short, plain version of ``ablagen.perturb``
(``templates/noise.py.j2``): only their kind and schedule. For every kind and
schedule it must draw exactly the library's noise, bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from ablagen import perturb
from ablagen.generate.context import TrainConfig
from ablagen.generate.env import make_environment
from ablagen.core.errors import TemplateError

#: schedule -> {script constant: (library field, value used here)}; small values, so
#: a few steps see the factor change
SCHEDULE_CONSTANTS: dict[str, dict[str, tuple[str, Any]]] = {
    "constant": {},
    "exponential": {"NOISE_GAMMA": ("gamma", 0.7)},
    "step": {"NOISE_STEP_SIZE": ("step_size", 2), "NOISE_GAMMA": ("gamma", 0.5)},
    "cosine": {"NOISE_TOTAL_STEPS": ("total_steps", 4)},
    "warmup": {"NOISE_WARMUP_STEPS": ("warmup_steps", 3)},
    "annealed": {"NOISE_GAMMA": ("gamma", 0.55)},
    "adaptive": {"NOISE_BETA": ("beta", 0.5)},
}


def noise_block(
    noise: str, schedule: str, amp: str = "none", **constants: Any
) -> dict[str, Any]:
    """The noise config and block a script with this kind and schedule (and mixed
    precision) carries, run."""
    ctx = SimpleNamespace(
        train=TrainConfig(sigma=0.1, noise=noise, noise_schedule=schedule, amp=amp),
        noise_scales=None,
    )
    env = make_environment()
    source = "import math\nimport torch\n"
    source += env.get_template("noise/config.py.j2").render(ctx=ctx)
    source += env.get_template("noise.py.j2").render(ctx=ctx)
    namespace: dict[str, Any] = {"__name__": "script"}
    exec(compile(source, "<noise block>", "exec", dont_inherit=True), namespace)
    namespace.update(constants)
    return namespace


def model() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3), nn.Linear(3, 3))
    net[3].requires_grad_(False)  # a parameter without a gradient is skipped
    net[3].weight.requires_grad_(True)
    return net


def steps(net: nn.Module, optimizer: Any, add_noise: Any = None) -> list[torch.Tensor]:
    data = torch.Generator().manual_seed(5)
    for _ in range(6):
        x = torch.randn(8, 6, generator=data)
        y = torch.randint(0, 3, (8,), generator=data)
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        if add_noise is not None:
            add_noise()
        optimizer.step()
    return [p.detach().clone() for p in net.parameters()]


def groups(net: nn.Module) -> list[dict[str, Any]]:
    """Two groups with different noise scales (the hybrid arm's layout)."""
    first, rest = list(net[0].parameters()), list(net[2:].parameters())
    return [{"params": first, "noise_scale": 0.5}, {"params": rest}]


@pytest.mark.parametrize("schedule", sorted(SCHEDULE_CONSTANTS))
@pytest.mark.parametrize("kind", sorted(perturb.NOISE_KINDS))
def test_script_noise_is_the_librarys_bit_for_bit(kind: str, schedule: str) -> None:
    constants = SCHEDULE_CONSTANTS[schedule]
    block = noise_block(kind, schedule, **{k: v for k, (_, v) in constants.items()})
    fields = {name: value for name, value in constants.values()}

    net = model()
    library = perturb.PerturbedOptimizer(
        torch.optim.Adam(groups(net), lr=1e-2),
        noise=kind,
        sigma=0.1,
        schedule=perturb.make_schedule(schedule, **fields),
        seed=7,
        prefetch=False,
    )
    library.set_unit_scale(net[2].weight, torch.tensor([0.0, 1.0, 2.0]))
    expected = steps(net, library)

    net = model()
    optimizer = torch.optim.Adam(groups(net), lr=1e-2)
    noise = block["GradientNoise"](optimizer, 0.1, 7, "cpu")
    noise.set_unit_scale(net[2].weight, torch.tensor([0.0, 1.0, 2.0]))
    got = steps(net, optimizer, noise.add_)

    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))
    plain = steps(model(), torch.optim.Adam(groups(model()), lr=1e-2))
    assert not all(torch.equal(a, b) for a, b in zip(plain, got))  # noise was added


@pytest.mark.parametrize("schedule", sorted(SCHEDULE_CONSTANTS))
def test_script_constants_are_the_library_defaults(schedule: str) -> None:
    block = noise_block("gaussian", schedule)
    defaults = {
        f.name: f.default
        for f in dataclasses.fields(perturb.SCHEDULES[schedule])
        if f.default is not dataclasses.MISSING
    }
    for constant, (name, _) in SCHEDULE_CONSTANTS[schedule].items():
        assert block[constant] == defaults[name], constant
    if schedule == "cosine":  # the script writes the library's min_factor 0 away
        assert defaults["min_factor"] == 0.0
    dropnoise = noise_block("dropnoise", schedule)
    assert dropnoise["DROP_P"] == perturb.DropNoise().p


def test_zero_sigma_is_plain_torch_optim() -> None:
    block = noise_block("gaussian", "constant")
    net = model()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    noise = block["GradientNoise"](optimizer, 0.0, 7, "cpu")
    got = steps(net, optimizer, noise.add_)
    net = model()
    expected = steps(net, torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9))
    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))


def test_the_seed_picks_the_noise() -> None:
    block = noise_block("gaussian", "constant")

    def run(seed: int) -> list[torch.Tensor]:
        net = model()
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
        return steps(
            net, optimizer, block["GradientNoise"](optimizer, 0.1, seed, "cpu").add_
        )

    same = all(torch.equal(a, b) for a, b in zip(run(0), run(0)))
    other = all(torch.equal(a, b) for a, b in zip(run(0), run(1)))
    assert same and not other


def test_a_kind_without_a_script_template_fails_loudly() -> None:
    ctx = SimpleNamespace(
        train=SimpleNamespace(noise="brownian", noise_schedule="constant", sigma=0.1),
        noise_scales=None,
    )
    with pytest.raises(TemplateError, match="noise kind brownian"):
        make_environment().get_template("noise.py.j2").render(ctx=ctx)


def test_annealed_matches_neelakantan() -> None:
    block = noise_block("gaussian", "annealed")
    for step in (0, 1, 10):
        sigma = 0.1 * block["noise_factor"](step)
        assert math.isclose(sigma**2, 0.1**2 / (1 + step) ** 0.55)


@pytest.mark.parametrize("kind", sorted(perturb.NOISE_KINDS))
def test_slice_scales_are_the_librarys_bit_for_bit(kind: str) -> None:
    """Per-unit scales along dim 1 (an attention head's columns of an output
    projection) draw exactly the library's noise, and reach only those columns."""
    block = noise_block(kind, "constant")
    columns = torch.tensor([0.0] * 8 + [1.0] * 4 + [3.0] * 4)

    net = model()
    library = perturb.PerturbedOptimizer(
        torch.optim.SGD(groups(net), lr=1e-2),
        noise=kind,
        sigma=0.1,
        seed=7,
        prefetch=False,
    )
    library.set_unit_scale(net[2].weight, columns, dim=1)
    library.set_unit_scale(net[0].weight, torch.tensor([0.5] * 16))
    expected = steps(net, library)

    net = model()
    optimizer = torch.optim.SGD(groups(net), lr=1e-2)
    noise = block["GradientNoise"](optimizer, 0.1, 7, "cpu")
    noise.set_unit_scale(net[2].weight, columns, 1)
    noise.set_unit_scale(net[0].weight, torch.tensor([0.5] * 16))
    got = steps(net, optimizer, noise.add_)
    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))


def test_a_slice_scale_reaches_only_its_columns() -> None:
    block = noise_block("gaussian", "constant")
    columns = torch.tensor([0.0] * 8 + [1.0] * 4 + [3.0] * 4)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    grads = []
    for sigma in (0.0, 0.1):
        net = model()
        optimizer = torch.optim.SGD(net.parameters(), lr=1.0)
        noise = block["GradientNoise"](optimizer, sigma, 7, "cpu")
        noise.set_unit_scale(net[2].weight, columns, 1)
        nn.functional.cross_entropy(net(x), y).backward()
        noise.add_()
        grads.append(net[2].weight.grad.clone())
    delta = (grads[1] - grads[0]).abs()  # net[2].weight is (3, 16)
    assert torch.equal(delta[:, :8], torch.zeros(3, 8))  # scale 0: no noise
    assert bool((delta[:, 8:] > 0).all())


def test_slice_scale_checks_its_shape() -> None:
    net = model()
    library = perturb.PerturbedOptimizer(torch.optim.SGD(net.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="along dim 1"):
        library.set_unit_scale(net[2].weight, torch.ones(3), dim=1)
    with pytest.raises(ValueError, match="out of range"):
        library.set_unit_scale(net[2].weight, torch.ones(3), dim=2)

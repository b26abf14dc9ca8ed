"""The embedded optimizer block: same behaviour as the library, no ablagen import."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

import ablagen.perturb
from ablagen.codegen.embed import join_modules, strip_package_scaffolding
from ablagen.codegen.perturb_block import perturb_block_source
from ablagen.perturb import PerturbedOptimizer, WarmupSchedule


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _embedded() -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "generated_script"}
    # dont_inherit: a script does not get this test module's future imports
    code = compile(perturb_block_source(), "<block>", "exec", dont_inherit=True)
    exec(code, namespace)
    return namespace


def _train(namespace: dict[str, Any] | None) -> list[torch.Tensor]:
    """A few noisy Adam steps with either the library's or the embedded optimizer."""
    cls = PerturbedOptimizer if namespace is None else namespace["PerturbedOptimizer"]
    warmup = WarmupSchedule if namespace is None else namespace["WarmupSchedule"]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    opt = cls(
        torch.optim.Adam(model.parameters(), lr=1e-2),
        noise="gaussian",
        sigma=0.1,
        schedule=warmup(warmup_steps=3),
        seed=11,
        clip_norm=1.0,
    )
    opt.set_unit_scale(model[2].weight, torch.tensor([0.0, 1.0, 2.0]))
    data = torch.Generator().manual_seed(5)
    for _ in range(5):
        x, y = torch.randn(8, 6, generator=data), torch.randint(
            0, 3, (8,), generator=data
        )
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def test_embedded_optimizer_trains_bit_identically_to_the_library() -> None:
    library, embedded = _train(None), _train(_embedded())
    assert all(torch.equal(a, b) for a, b in zip(library, embedded, strict=True))
    torch.manual_seed(0)
    untouched = [
        p.detach()
        for p in nn.Sequential(
            nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)
        ).parameters()
    ]
    assert not torch.equal(library[0], untouched[0])  # it did train


def test_block_imports_nothing_from_ablagen() -> None:
    tree = ast.parse(perturb_block_source())
    modules = [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    ] + [
        node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
    ]
    assert modules  # it keeps its own imports ...
    assert not [
        m for m in modules if m.split(".")[0] in ("ablagen", "__future__", "numpy")
    ]


def test_block_is_stable_and_starts_with_its_header() -> None:
    source = perturb_block_source()
    assert source == perturb_block_source()
    first, second = source.splitlines()[:2]
    assert first.startswith(
        "# --- perturbation-aware optimizer (embedded from ablagen.perturb v"
    )
    assert first.endswith("edit there, not here) ---")
    assert second == "import math"  # the docstring and its blank lines are gone
    assert "__all__" not in source


def test_block_has_the_registries() -> None:
    namespace = _embedded()
    assert not set(ablagen.perturb.__all__) - set(namespace)  # every public name
    assert set(namespace["NOISE_KINDS"]) >= {
        "gaussian",
        "uniform",
        "dropnoise",
        "orthogonal",
    }
    assert set(namespace["SCHEDULES"]) >= {"constant", "annealed", "adaptive", "warmup"}


def test_scaffolding_is_stripped_and_the_rest_kept() -> None:
    before = '''"""Module docstring."""

from __future__ import annotations

import math

__all__ = ["f"]


def f() -> float:
    """Kept."""
    return math.pi


if __name__ == "__main__":
    print(f())
'''
    after = '''import math


def f() -> float:
    """Kept."""
    return math.pi
'''
    assert strip_package_scaffolding(before) == after


def test_modules_join_into_one_with_their_imports_merged_once() -> None:
    first = '''"""First."""

import math
from typing import Any

import torch


def area(r: float) -> Any:
    return math.pi * r * r
'''
    second = '''"""Second: uses the first."""

import os
import math
from typing import Callable, Any

import torch

from .first import area


def twice(f: Callable) -> float:
    return 2 * area(1.0)
'''
    assert join_modules([first, second]) == '''import math
import os
from typing import Any, Callable

import torch


def area(r: float) -> Any:
    return math.pi * r * r


def twice(f: Callable) -> float:
    return 2 * area(1.0)
'''

"""Joining library modules into one block of code (``generate.embed``)."""

from __future__ import annotations

from ablagen.generate.embed import join_modules, strip_package_scaffolding


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
    assert join_modules([first, second]) == """import math
import os
from typing import Any, Callable

import torch


def area(r: float) -> Any:
    return math.pi * r * r


def twice(f: Callable) -> float:
    return 2 * area(1.0)
"""

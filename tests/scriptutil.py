"""Helpers for tests that generate studies and load their scripts as modules."""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path
from types import ModuleType

from ablagen.generate.context import TrainConfig
from ablagen.generate.build import GenerateOptions, generate_study

_counter = itertools.count()


def generate(model: str, out: Path, **kwargs) -> Path:
    train = kwargs.pop("train", None) or TrainConfig(epochs=1)
    generate_study(GenerateOptions(model=str(model), out=out, train=train, **kwargs))
    return out


def load_script(path: Path) -> ModuleType:
    """Import a generated script as a module (its __main__ guard keeps it from running)."""
    name = f"_generated_{path.stem}_{next(_counter)}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module

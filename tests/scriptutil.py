"""Helpers for tests that generate studies and load their scripts as modules."""

from __future__ import annotations

import importlib.util
import itertools
import re
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


#: train()'s line that builds the model, as the script writes it: ``model = DigitsCNN()``
_BUILD = re.compile(r"^    model = (?P<expression>[^#\n]+?)(?:  #.*)?$", re.MULTILINE)


def new_model(module: ModuleType):
    """A fresh model, built by the expression the script itself builds it with."""
    source = Path(module.__file__).read_text()
    expression = _BUILD.search(source, source.index("\ndef train"))["expression"]
    return eval(expression, vars(module))  # noqa: S307 - the script's own expression


def seed_as_main(module: ModuleType, seed: int) -> None:
    """Seed as the script's main() does before it calls train()."""
    module.random.seed(seed)
    module.torch.manual_seed(seed)


def load_tensors(module: ModuleType) -> tuple:
    """(x_train, y_train, x_val, y_val) as the script's train() gets them."""
    if hasattr(module, "load_data"):
        return module.load_data()
    return tuple(module.torch.as_tensor(t) for t in module.build_data())
